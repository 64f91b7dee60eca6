"""Sends OTLP metrics through the official OpenTelemetry Python SDK at a fixed rate of data points.

The SDK's periodic reader exports every series once per INTERVAL_MS, so the point rate is
SERIES * 1000 / INTERVAL_MS (5,000 series every 500 ms: 10,000 points/s). The series are spread
over FAMILIES instruments (fewer label sets per family than `agent.max_label_sets`), a quarter
each of counters, histograms (the SDK's default bounds), up-down counters and observable gauges,
and every series is updated before each export, so every point carries a new value.

Usage: otlp_metrics_send.py ENDPOINT SERIES INTERVAL_MS DURATION_S [FAMILIES=20] [INSTANCE=b1]
(ENDPOINT: the agent's OTLP/gRPC address, host:port.) Prints one JSON line at the end:
{"series":..,"rounds":..,"wall_s":..} (rounds: updates of every series).
"""

import json
import sys
import time

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


def main():
    endpoint, series, interval_ms, duration = sys.argv[1:5]
    families = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    instance = sys.argv[6] if len(sys.argv) > 6 else "b1"
    series, interval_ms, duration = int(series), int(interval_ms), float(duration)
    per_family = max(1, series // families)
    exporter = OTLPMetricExporter(endpoint=f"http://{endpoint}", insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "bench-metrics", "service.instance.id": instance}),
        metric_readers=[reader],
    )
    meter = provider.get_meter("bench.metrics", "1.0")
    attrs = [{"route": f"/r{i}", "code": "200"} for i in range(per_family)]
    updates = []
    gauge_value = [0.0]
    for f in range(families):
        kind = f % 4
        if kind == 0:
            c = meter.create_counter(f"bench.requests.{f}", unit="{request}")
            updates.append(lambda c=c: [c.add(1, a) for a in attrs])
        elif kind == 1:
            h = meter.create_histogram(f"bench.duration.{f}", unit="s")
            updates.append(lambda h=h: [h.record(0.01 * (i % 50), a) for i, a in enumerate(attrs)])
        elif kind == 2:
            u = meter.create_up_down_counter(f"bench.inflight.{f}", unit="{request}")
            updates.append(lambda u=u: [u.add(1 if i % 2 else -1, a) for i, a in enumerate(attrs)])
        else:

            def observe(_options: CallbackOptions):
                for a in attrs:
                    yield Observation(gauge_value[0], a)

            meter.create_observable_gauge(f"bench.temperature.{f}", callbacks=[observe], unit="Cel")
    start = time.monotonic()
    rounds = 0
    due = start
    while time.monotonic() - start < duration:
        for update in updates:
            update()
        gauge_value[0] += 1.0
        rounds += 1
        due += interval_ms / 1000.0
        time.sleep(max(0.0, due - time.monotonic()))
    provider.shutdown()
    wall = time.monotonic() - start
    print(json.dumps({"series": per_family * families, "rounds": rounds, "wall_s": round(wall, 2)}))


if __name__ == "__main__":
    main()
