"""A Python program that uses only the OpenTelemetry API and records many series, for the
end-to-end test of a gzipped /metrics body read by a real Prometheus (tests/tests/otlp_metrics.rs).
The SDK is set up from the standard OTEL_* variables alone by the SDK's own environment
configurator, as in otel_metrics_app.py; nothing here configures the SDK in code.

It records, for ROUTES routes `/r0` .. `/r{ROUTES-1}` (WIDE_ROUTES in the environment, default 200):
- a counter `wide.requests` (unit `{request}`): route `/rI` gets I+1 requests with status 200 and
  one with status 500;
- a histogram `wide.latency` (unit `s`) for the first ROUTES // 5 routes: route `/rI` gets I+1
  observations of 0.25 s;
- an observable gauge `wide.routes` (no unit): ROUTES.
Then it shuts the meter provider down (which exports everything) and exits 0.
"""

import os

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

_OTelSDKConfigurator().configure()

ROUTES = int(os.environ.get("WIDE_ROUTES", "200"))

meter = metrics.get_meter("wide.shop", "1.0")
requests = meter.create_counter("wide.requests", unit="{request}", description="Requests served")
latency = meter.create_histogram("wide.latency", unit="s", description="Time to serve a request")


def routes(_options: CallbackOptions):
    yield Observation(ROUTES, {})


meter.create_observable_gauge("wide.routes", callbacks=[routes], description="Routes served")

for i in range(ROUTES):
    route = f"/r{i}"
    requests.add(i + 1, {"route": route, "status": "200"})
    requests.add(1, {"route": route, "status": "500"})
    if i < ROUTES // 5:
        for _ in range(i + 1):
            latency.record(0.25, {"route": route})

metrics.get_meter_provider().shutdown()
