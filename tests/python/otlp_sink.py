"""A downstream OTLP sink for the export tests, built on PyPI opentelemetry-proto + grpcio.

Serves the three OTLP gRPC services and OTLP/HTTP (POST /v1/{traces,metrics,logs}, protobuf,
gzip) and records what it accepts. GET /state answers JSON with what was received so far.
Failure injection: --unavailable-fraction answers UNAVAILABLE (gRPC) / 503 (HTTP) that share of
requests at random; while the --down-file exists every request is refused that way.
--refuse-with resource_exhausted refuses with gRPC RESOURCE_EXHAUSTED without RetryInfo (a
server that is only busy; HTTP: 429) instead, invalid_argument with INVALID_ARGUMENT (HTTP 400).

Prints one line `READY grpc=PORT http=PORT` on stdout once both servers listen.

Usage: otlp_sink.py [--grpc-port N] [--http-port N] [--unavailable-fraction F] [--down-file P]
                   [--refuse-with unavailable|resource_exhausted|invalid_argument]
"""

import argparse
import gzip
import json
import os
import random
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Record:
    """What the sink accepted (guarded by one lock: gRPC and HTTP threads write it)."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.args = args
        self.rng = random.Random(args.seed)
        self.requests = {"traces": 0, "metrics": 0, "logs": 0}
        self.items = {"traces": 0, "metrics": 0, "logs": 0}
        self.refused = 0
        self.spans = []  # span names, in arrival order (duplicates kept: they would be a bug)
        self.logs = []  # log bodies
        self.resources = []  # distinct resource attribute dicts
        self.scopes = []  # distinct {name, version, attributes}
        self.points_by_metric = {}
        self.build_info_times = []  # time_unix_nano of every sidelight_build_info point
        self.raw = []  # with --keep-raw: every accepted traces/logs request as JSON (MessageToDict)

    def refuse(self):
        """Whether to refuse this request (down file, or the random fraction)."""
        with self.lock:
            down = self.args.down_file and os.path.exists(self.args.down_file)
            refuse = down or self.rng.random() < self.args.unavailable_fraction
            if refuse:
                self.refused += 1
            return refuse

    def _resource(self, res):
        attrs = {kv["key"]: next(iter(kv.get("value", {}).values()), None)
                 for kv in MessageToDict(res).get("attributes", [])}
        if attrs not in self.resources:
            self.resources.append(attrs)

    def _scope(self, scope):
        d = MessageToDict(scope)
        entry = {
            "name": d.get("name", ""),
            "version": d.get("version", ""),
            "attributes": {kv["key"]: next(iter(kv.get("value", {}).values()), None)
                           for kv in d.get("attributes", [])},
        }
        if entry not in self.scopes:
            self.scopes.append(entry)

    def traces(self, req):
        with self.lock:
            self.requests["traces"] += 1
            if self.args.keep_raw:
                self.raw.append(MessageToDict(req))
            for rs in req.resource_spans:
                self._resource(rs.resource)
                for ss in rs.scope_spans:
                    self._scope(ss.scope)
                    for span in ss.spans:
                        self.spans.append(span.name)
                        self.items["traces"] += 1

    def metrics(self, req):
        with self.lock:
            self.requests["metrics"] += 1
            for rm in req.resource_metrics:
                self._resource(rm.resource)
                for sm in rm.scope_metrics:
                    self._scope(sm.scope)
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        points = list(getattr(m, kind).data_points) if kind else []
                        self.items["metrics"] += len(points)
                        self.points_by_metric[m.name] = self.points_by_metric.get(m.name, 0) + len(points)
                        if m.name == "sidelight_build_info":
                            self.build_info_times.extend(p.time_unix_nano for p in points)

    def logs_(self, req):
        with self.lock:
            self.requests["logs"] += 1
            if self.args.keep_raw:
                self.raw.append(MessageToDict(req))
            for rl in req.resource_logs:
                self._resource(rl.resource)
                for sl in rl.scope_logs:
                    self._scope(sl.scope)
                    for lr in sl.log_records:
                        self.logs.append(lr.body.string_value)
                        self.items["logs"] += 1

    def state(self):
        with self.lock:
            return {
                "requests": self.requests,
                "items": self.items,
                "refused": self.refused,
                "spans": self.spans,
                "logs": self.logs,
                "resources": self.resources,
                "scopes": self.scopes,
                "points_by_metric": self.points_by_metric,
                "build_info_times": self.build_info_times,
                "raw": self.raw,
            }


def servicers(rec):
    code = {
        "unavailable": grpc.StatusCode.UNAVAILABLE,
        "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    }[rec.args.refuse_with]

    def guard(context):
        if rec.refuse():
            context.abort(code, f"sink: {rec.args.refuse_with} (injected)")

    class Trace(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            guard(context)
            rec.traces(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            guard(context)
            rec.metrics(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request, context):
            guard(context)
            rec.logs_(request)
            return logs_service_pb2.ExportLogsServiceResponse()

    return Trace(), Metrics(), Logs()


HTTP_SIGNALS = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse, "traces"),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse, "metrics"),
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse, "logs"),
}


def http_handler(rec):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body, ctype, extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/state":
                self._send(200, json.dumps(rec.state()).encode(), "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self):
            entry = HTTP_SIGNALS.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if entry is None:
                self._send(404, b"not found", "text/plain")
                return
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self._send(415, b"protobuf only", "text/plain")
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if rec.refuse():
                status = {"unavailable": 503, "resource_exhausted": 429, "invalid_argument": 400}[rec.args.refuse_with]
                extra = [("Retry-After", "0")] if status != 400 else []
                self._send(status, f"sink: {rec.args.refuse_with} (injected)".encode(), "text/plain", extra)
                return
            req_type, resp_type, signal = entry
            req = req_type()
            req.ParseFromString(body)
            {"traces": rec.traces, "metrics": rec.metrics, "logs": rec.logs_}[signal](req)
            self._send(200, resp_type().SerializeToString(), "application/x-protobuf")

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--unavailable-fraction", type=float, default=0.0)
    p.add_argument("--down-file", default="")
    p.add_argument("--refuse-with", default="unavailable",
                   choices=["unavailable", "resource_exhausted", "invalid_argument"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep-raw", action="store_true",
                   help="keep every traces and logs request whole (in /state's raw)")
    args = p.parse_args()
    rec = Record(args)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.so_reuseport", 0)])
    trace, metrics, logs = servicers(rec)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(trace, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(logs, server)
    grpc_port = server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    if grpc_port == 0:
        sys.exit(f"cannot bind gRPC port {args.grpc_port}")
    server.start()

    ThreadingHTTPServer.allow_reuse_address = True
    http = ThreadingHTTPServer(("127.0.0.1", args.http_port), http_handler(rec))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"READY grpc={grpc_port} http={http.server_address[1]}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
