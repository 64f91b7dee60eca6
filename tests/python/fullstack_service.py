"""A FastAPI service as users run one beside the agent, for the full-stack test: OpenTelemetry SDK
traces over OTLP/gRPC to the agent (the standard OTEL_* environment variables), and structlog JSON
lines (with trace ids, and exceptions rendered as dicts) to a file the agent tails.

Usage: fullstack_service.py --port N --log-file PATH
Routes: GET /items/{item_id} (200, logs info), GET /slow (200 after 30 ms, logs a warning),
GET /fail (500 after logging a ValueError with its traceback), GET /missing/{key} (404 after
logging a KeyError), GET /flush (exports every finished span now)."""

import argparse
import logging
import time

import structlog
import uvicorn
from fastapi import FastAPI, HTTPException
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=200))
trace.set_tracer_provider(provider)


def add_trace_ids(_logger, _name, event):
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def configure_logging(path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    out = logging.getLogger("checkout")
    out.handlers[:] = [handler]
    out.setLevel(logging.DEBUG)
    out.propagate = False
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_ids,
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    return structlog.get_logger("checkout")


app = FastAPI()
log = None


@app.get("/items/{item_id}")
def item(item_id: int):
    log.info("item served", item_id=item_id)
    return {"item": item_id}


@app.get("/slow")
def slow():
    time.sleep(0.03)
    log.warning("slow path taken", delay_ms=30)
    return {"slow": True}


@app.get("/fail")
def fail():
    try:
        raise ValueError("card declined")
    except ValueError:
        log.exception("payment failed")
    raise HTTPException(status_code=500, detail="payment failed")


@app.get("/missing/{key}")
def missing(key: str):
    try:
        {}[key]
    except KeyError:
        log.exception("lookup failed", key=key)
    raise HTTPException(status_code=404, detail="not found")


@app.get("/flush")
def flush():
    if not provider.force_flush(timeout_millis=10_000):
        raise HTTPException(status_code=504, detail="flush timed out")
    return {"flushed": True}


FastAPIInstrumentor.instrument_app(app, excluded_urls="flush")

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-file", required=True)
    args = parser.parse_args()
    log = configure_logging(args.log_file)
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        provider.shutdown()
