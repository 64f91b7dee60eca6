#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/seeds/<target>/) from fixtures already in the repository and
the opentelemetry-proto examples, so the committed corpora (fuzz/corpus/, minimised after the
runs) can be traced back to real inputs. Byte 0 of every input selects the target's settings
(see sidelight_collector::fuzzing and sidelight::fuzzing).

Usage: .venv/bin/python fuzz/seeds.py [OTLP_EXAMPLES_DIR]
(the venv of scripts/test.sh has protobuf and opentelemetry-proto for the protobuf seeds).
"""
import base64
import glob
import gzip
import hashlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")


def put(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def rust_byte_literals(path):
    """The br#"..."# / b"..." / r#"..."# literals of a Rust source file (test bodies)."""
    src = read(path).decode()
    out = [m.group(1) for m in re.finditer(r'b?r#"(.*?)"#', src, re.S)]
    out += [m.group(1) for m in re.finditer(r'\bb"((?:[^"\\]|\\.)*)"', src)]
    return [s.encode() for s in out]


LOGS = sorted(glob.glob(os.path.join(ROOT, "collector/tests/fixtures/logs/*")))

# log_line: every fixture line, auto-detected, then as json and as text; the redaction table.
for path in LOGS:
    for line in read(path).splitlines(keepends=True):
        put("log_line", b"\x00" + line)
        put("log_line", b"\x01" + line)
        put("log_line", b"\x02" + line)
for lit in rust_byte_literals("collector/src/logs/redact.rs") + rust_byte_literals(
    "collector/src/logs/parse.rs"
):
    if 4 < len(lit) < 4096:
        put("log_line", b"\x00" + lit)

# multiline: each fixture whole (default caps), with small caps, and with clock steps
# (ESC + 10 ms units) between lines so that poll() flushes mid-traceback.
for path in LOGS:
    data = read(path)
    put("multiline", b"\x00" + data)
    put("multiline", b"\x15" + data)
    stepped = b"\n".join(
        line + (b"\n\x1b\x64" if i % 3 == 2 else b"") for i, line in enumerate(data.split(b"\n"))
    )
    put("multiline", b"\x00" + stepped)

# OTLP: the repository's JSON fixtures and opentelemetry-proto's examples, as JSON and (via the
# Python reference encoder) as protobuf, plain and gzip. Byte 0: signal (0 traces, 1 metrics,
# 2 logs) | 4 for gzip.
examples = sys.argv[1] if len(sys.argv) > 1 else None
otlp = [(p, read(p)) for p in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/otlp/*.json")))]
if examples:
    otlp += [(p, open(p, "rb").read()) for p in sorted(glob.glob(os.path.join(examples, "*.json")))]


def signal_of(doc):
    if "resourceSpans" in doc:
        return 0
    if "resourceMetrics" in doc:
        return 1
    return 2


def hex_ids_to_base64(v):
    if isinstance(v, dict):
        return {
            k: (base64.b64encode(bytes.fromhex(x)).decode()
                if k in ("traceId", "spanId", "parentSpanId") and isinstance(x, str) else hex_ids_to_base64(x))
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [hex_ids_to_base64(x) for x in v]
    return v


try:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    MESSAGES = [ExportTraceServiceRequest, ExportMetricsServiceRequest, ExportLogsServiceRequest]
except ImportError:
    MESSAGES = None
    print("no protobuf/opentelemetry-proto here: protobuf seeds skipped", file=sys.stderr)

for path, data in otlp:
    doc = json.loads(data)
    s = signal_of(doc)
    put("otlp_json", bytes([s]) + data)
    put("otlp_json", bytes([s | 4]) + gzip.compress(data))
    if MESSAGES:
        msg = json_format.ParseDict(hex_ids_to_base64(doc), MESSAGES[s]())
        pb = msg.SerializeToString()
        put("otlp_protobuf", bytes([s]) + pb)
        put("otlp_protobuf", bytes([s | 4]) + gzip.compress(pb))

# webhooks: the test payloads of agent/src/webhooks.rs, each under every parser and event
# (byte 0: bits 0-1 parser, 2-4 event, 5 deploy on CI success).
for lit in rust_byte_literals("agent/src/webhooks.rs"):
    if not lit.lstrip().startswith(b"{"):
        continue
    for parser in range(3):
        for event in range(5 if parser == 0 else 4 if parser == 1 else 1):
            put("webhooks", bytes([parser | event << 2 | 0x20]) + lit)

# slack: the slash-command body of the chatops tests, commands, and a button press.
put("slack", b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Fsidelight&text=status&user_name=ana")
for text in ["status", "help", "dora api 30d", "dora 7d", "silence HighErrors 1h",
             'silence service="api",severity=~"crit.*" 30m', "ack HighErrors", "silence x soon"]:
    from urllib.parse import urlencode
    put("slack", urlencode({"command": "/sidelight", "text": text, "user_name": "ana"}).encode())
interaction = {"type": "block_actions", "user": {"id": "U1", "username": "ana"},
               "actions": [{"action_id": "ack", "value": "g1"}, {"action_id": "silence_1h", "value": "g1"}]}
put("slack", urlencode({"payload": json.dumps(interaction)}).encode())
