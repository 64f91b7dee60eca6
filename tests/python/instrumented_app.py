"""A FastAPI app with no OpenTelemetry code, for running under `opentelemetry-instrument` with
the variables the OpenTelemetry Operator injects for Python (tests/tests/kubernetes.rs): the
distro configures traces, metrics and logs from the environment.

Run as: opentelemetry-instrument uvicorn instrumented_app:app --port N (from tests/python).
Routes: GET /items/{item_id} (200, logs one line through the standard logging module)."""

import logging

from fastapi import FastAPI

app = FastAPI()
log = logging.getLogger("checkout")


@app.get("/items/{item_id}")
def item(item_id: int):
    log.warning("served item %d", item_id)
    return {"item": item_id}
