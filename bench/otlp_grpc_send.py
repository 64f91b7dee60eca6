"""Sends pre-encoded OTLP trace requests through grpcio at a fixed rate of spans per second.

grpcio is the transport of Python's OpenTelemetry OTLP/gRPC exporter, so the agent sees the
frames and writes a Python service would send. The requests are `otlp_load dump`'s, the same
bytes the Rust load tool sends.

Usage: otlp_grpc_send.py REQUESTS_FILE TARGET SPANS_PER_REQUEST RATE DURATION_S
Prints one JSON line at the end: {"ok_spans":..,"refused_requests":..,"wall_s":..}.
"""

import json
import struct
import sys
import time

import grpc

PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def load(path):
    data = open(path, "rb").read()
    bodies, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        bodies.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    if not bodies:
        sys.exit(f"{path}: no requests")
    return bodies


def main():
    path, target, spans, rate, duration = sys.argv[1:6]
    spans, rate, duration = int(spans), float(rate), float(duration)
    bodies = load(path)
    channel = grpc.insecure_channel(target)
    export = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
    interval = spans / rate
    ok = refused = i = 0
    start = time.monotonic()
    due = start
    while time.monotonic() - start < duration:
        try:
            export(bodies[i % len(bodies)], timeout=10)
            ok += spans
        except grpc.RpcError:
            refused += 1
        i += 1
        due += interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    wall = time.monotonic() - start
    print(json.dumps({"ok_spans": ok, "refused_requests": refused, "wall_s": round(wall, 3)}))


if __name__ == "__main__":
    main()
