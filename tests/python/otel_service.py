"""A FastAPI service instrumented with the OpenTelemetry SDK, for the end-to-end tests: it
exports its spans over OTLP to the agent, configured the way users configure it, through the
standard environment variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL = grpc | http/protobuf, OTEL_EXPORTER_OTLP_COMPRESSION = gzip).

Usage: otel_service.py --port N
Routes: GET /items/{item_id} (200), GET /fail (500: a span with status ERROR),
GET /work (200, or 500 for the fraction of calls set by the fault switch),
POST /fault?error_rate=R (the switch: 0 = healthy, 0.5 = every second /work call fails;
the initial rate comes from FAULT_ERROR_RATE, default 0; not instrumented),
GET /flush (exports every finished span now; 200 once the exporter answered)."""

import argparse
import os
import threading

import uvicorn
from fastapi import FastAPI, HTTPException
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def exporter():
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise SystemExit(f"unsupported OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}")
    return OTLPSpanExporter()


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter(), schedule_delay_millis=200))
trace.set_tracer_provider(provider)

app = FastAPI()


@app.get("/items/{item_id}")
def item(item_id: int):
    return {"item": item_id}


@app.get("/fail")
def fail():
    raise HTTPException(status_code=500, detail="boom")


# The fault switch. Deterministic: rate R fails exactly R of the calls (every 1/R-th one).
fault = {"error_rate": float(os.environ.get("FAULT_ERROR_RATE", "0")), "debt": 0.0}
fault_lock = threading.Lock()


@app.get("/work")
def work():
    with fault_lock:
        fault["debt"] += fault["error_rate"]
        failing = fault["debt"] >= 1.0
        if failing:
            fault["debt"] -= 1.0
    if failing:
        raise HTTPException(status_code=500, detail="injected fault")
    return {"ok": True}


@app.post("/fault")
def set_fault(error_rate: float):
    if not 0.0 <= error_rate <= 1.0:
        raise HTTPException(status_code=400, detail="error_rate must be in [0, 1]")
    with fault_lock:
        fault["error_rate"] = error_rate
        fault["debt"] = 0.0
    return {"error_rate": error_rate}


@app.get("/flush")
def flush():
    if not provider.force_flush(timeout_millis=10_000):
        raise HTTPException(status_code=504, detail="flush timed out")
    return {"flushed": True}


FastAPIInstrumentor.instrument_app(app, excluded_urls="flush,fault")

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        provider.shutdown()
