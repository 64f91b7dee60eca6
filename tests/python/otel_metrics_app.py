"""A Python program that uses only the OpenTelemetry API, for the end-to-end test of received
metrics and logs (tests/tests/otlp_metrics.rs). The SDK is set up from the standard OTEL_*
variables alone (exporters, protocol, endpoint, temporality preference, export interval, the
logging handler) by the SDK's own environment configurator — what `opentelemetry-instrument`
runs through `opentelemetry-distro` — so nothing here configures the SDK in code.

It records, in ROUNDS rounds spread over several export intervals (so that delta temporality
sends several deltas):
- a counter `bars.orders` (unit `{order}`), 50 in all;
- a histogram `bars.order.duration` (unit `s`), 50 observations of 0.25 s;
- an up-down counter `bars.queue.depth` (unit `{item}`), +5 then -2: 3;
- an observable gauge `bars.temperature` (unit `Cel`), 21.5;
and logs through the standard `logging` module: one ERROR record and one `logger.exception`
with a LookupError. It then shuts the providers down (which exports what is left) and exits 0.
"""

import logging
import time

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

# What `opentelemetry-instrument` does before the program starts (the distro's configurator is
# this class): read every OTEL_* variable and install the providers, exporters and the handler.
_OTelSDKConfigurator().configure()

ROUNDS = 5

meter = metrics.get_meter("bars.shop", "1.0")
orders = meter.create_counter("bars.orders", unit="{order}", description="Orders placed")
duration = meter.create_histogram(
    "bars.order.duration", unit="s", description="Time to place an order"
)
depth = meter.create_up_down_counter("bars.queue.depth", unit="{item}")


def temperature(_options: CallbackOptions):
    yield Observation(21.5, {"room": "cellar"})


meter.create_observable_gauge("bars.temperature", callbacks=[temperature], unit="Cel")

log = logging.getLogger("bars")
depth.add(5, {"queue": "orders"})
for i in range(ROUNDS):
    for _ in range(50 // ROUNDS):
        orders.add(1, {"shop": "main"})
        duration.record(0.25, {"shop": "main"})
    time.sleep(0.4)
depth.add(-2, {"queue": "orders"})
log.error("payment failed for order %d", 7)
try:
    raise LookupError("no such order")
except LookupError:
    log.exception("order lookup failed")
time.sleep(0.6)

# Flush and stop, so that the last points and the log
# records are sent before the process exits.
metrics.get_meter_provider().shutdown()
from opentelemetry import _logs  # noqa: E402

provider = _logs.get_logger_provider()
if hasattr(provider, "shutdown"):
    provider.shutdown()
