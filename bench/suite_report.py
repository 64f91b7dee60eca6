#!/usr/bin/env python3
"""Turns bench/suite.sh's raw outputs into one table of figures against their goals, printed
and written between the suite markers of BENCHMARKS.md.

Usage: suite_report.py OUT_DIR STARTED COMMAND BENCHMARKS_MD
A figure whose output cannot be found is reported as "missing" (and fails the goal), never
guessed."""

import os
import re
import statistics
import sys

BEGIN = "<!-- suite:begin -->"
END = "<!-- suite:end -->"


def read(out, name):
    path = os.path.join(out, name)
    return open(path, encoding="utf-8").read() if os.path.exists(path) else ""


def find(pattern, text, group=1, cast=float):
    m = re.search(pattern, text, re.M)
    return cast(m.group(group).replace(",", "")) if m else None


def rows(out):
    """(benchmark, figure text, value, goal text, met) for every figure."""
    r = []

    def add(name, value, unit, goal_text, ok, fmt="{:.2f}", note=""):
        if value is None:
            r.append((name, "missing", goal_text, False))
            return
        text = fmt.format(value) + unit + (f" {note}" if note else "")
        r.append((name, text, goal_text, ok(value)))

    idle = read(out, "idle.txt")
    add("Idle CPU (embedded defaults)", find(r"= ([\d.]+)% of one core", idle), " % of a core",
        "≤ 0.2 %", lambda v: v <= 0.2, "{:.3f}")
    add("Idle RSS", find(r"RSS mean ([\d.]+) MiB", idle), " MiB", "≤ 10 MiB", lambda v: v <= 10, "{:.1f}")

    proc = read(out, "process.txt")
    for n in (100, 500):
        v = find(rf"^\| {n} \| \d+ \| \d+ \| ([\d.]+) \|", proc)
        add(f"Process collection, {n} watched", v, " µs per process", "≤ 10 µs", lambda v: v <= 10)

    met = read(out, "metrics.txt")
    for series in ("1000", "10000", "100000"):
        for fmt in ("text", "OpenMetrics"):
            v = find(rf"(?i)^\| {series} \| {fmt}[^|]*\| \d+ \| [\d.]+ \| ([\d.]+) \|", met)
            goal = "≤ 5 ms" if series == "10000" else "—"
            add(f"/metrics p99, {int(series):,} series, {fmt}", v, " ms", goal,
                (lambda v: v <= 5) if series == "10000" else (lambda v: True))

    tail = read(out, "log_tail.txt")
    for size in (256, 1024):
        v = find(rf"otlp\s+{size} B lines:\s+([\d.]+) MiB/s per CPU-second", tail)
        add(f"Log tail+parse+redact, {size} B lines", v, " MiB/s per core", "≥ 150 MiB/s",
            lambda v: v >= 150, "{:.1f}")

    med = lambda v: statistics.median(v) if v else None
    bare = read(out, "logs_none.txt")
    cpu = [float(x) for x in re.findall(r"agent CPU ([\d.]+)% of one core", bare)]
    rss = [float(x) for x in re.findall(r"RSS mean ([\d.]+) MiB", bare)]
    add("10k lines/s, no exporter: CPU", med(cpu), " % of a core", "≤ 3 %", lambda v: v <= 3,
        note=f"(median of {len(cpu)})")
    add("10k lines/s, no exporter: RSS", med(rss), " MiB", "≤ 16 MiB", lambda v: v <= 16, "{:.1f}")
    per_line = read(out, "logs_lines.txt")
    cpu = [float(x) for x in re.findall(r"agent CPU ([\d.]+)% of one core", per_line)]
    add("10k lines/s, one write(2) per line, no exporter: CPU", med(cpu), " % of a core", "≤ 3 %",
        lambda v: v <= 3, note=f"(median of {len(cpu)})")
    logs = read(out, "logs.txt")
    cpu = [float(x) for x in re.findall(r"agent CPU ([\d.]+)% of one core", logs)]
    p99 = [float(x) for x in re.findall(r"p99 ([\d.]+) ms", logs)]
    lost = re.findall(r"exported (\d+)/(\d+) lines", logs)
    add("10k lines/s, file exporter: CPU", med(cpu), " % of a core", "— (JSON + fdatasync per batch)",
        lambda v: True)
    add("10k lines/s, file exporter: append-to-record p99", med(p99), " ms", "≤ 50 ms",
        lambda v: v <= 50, "{:.1f}")
    if lost:
        missing = sum(int(w) - int(e) for e, w in lost)
        r.append(("10k lines/s: lines not exported", str(missing), "0", missing == 0))

    otlp = read(out, "otlp.txt")
    for b in (100, 512):
        sat = find(rf"^batch\s+{b}: saturation ([\d,]+) spans/s", otlp)
        add(f"OTLP/gRPC ingest+forward, batches of {b}", sat, " spans/s per core", "≥ 300,000",
            lambda v: v >= 300_000, "{:,.0f}")
    client = re.search(r"fixed-rate client (\w+)", otlp or "")
    sender = f", {client.group(1)} client" if client else ""
    for b in (100, 512):
        c = find(rf"^batch\s+{b}: .*CPU ([\d.]+) %", otlp)
        m = find(rf"^batch\s+{b}: .*RSS mean ([\d.]+) MiB", otlp)
        add(f"10k spans/s (batches of {b}{sender}): CPU", c, " % of a core", "≤ 3 %",
            lambda v: v <= 3)
        add(f"10k spans/s (batches of {b}{sender}): RSS", m, " MiB", "≤ 20 MiB",
            lambda v: v <= 20, "{:.1f}")

    om = read(out, "otlp_metrics.txt")
    pts = find(r"^median of \d+ runs: .* at (\d+) points/s", om)
    rate = f"({pts:,.0f} points/s measured)" if pts is not None else ""
    add("10k OTLP metric points/s (Python SDK, scraped every 15 s): CPU",
        find(r"^median of \d+ runs: agent ([\d.]+) % of a core", om), " % of a core",
        "≤ 3 %", lambda v: v <= 3, note=rate)
    served = find(r"(\d+) samples served", om, cast=int)
    add("/metrics p99 with the received series held",
        find(r"^median of \d+ runs: .*/metrics p50 [\d.]+ ms, p99 ([\d.]+) ms", om), " ms",
        "≤ 5 ms", lambda v: v <= 5,
        note=f"({served:,} samples)" if served is not None else "")

    alerts = read(out, "alerts.txt")
    add("Rule evaluation, 200 rules / 10k series", find(r"full cycle.*?median ([\d.]+) ms", alerts),
        " ms per cycle", "≤ 5 ms", lambda v: v <= 5)

    dora = read(out, "dora.txt")
    add("DORA 90-day report, 100 services (1 thread)",
        find(r"dora_report: .*?: median ([\d.]+) ms", dora), " ms", "≤ 50 ms", lambda v: v <= 50, "{:.1f}")
    hub = read(out, "dora_hub.txt")
    add("DORA hub idle, 400-day history of 100 services × 20 deploys/day",
        find(r"idle recomputation median [\d.]+ ms \(≈ ([\d.]+) %", hub), " % of a core", "≤ 1 %",
        lambda v: v <= 1)
    add("DORA hub at 1 deployment/s, same history",
        find(r"after one new deployment median [\d.]+ ms \(≈ ([\d.]+) %", hub), " % of a core", "≤ 25 %",
        lambda v: v <= 25, "{:.1f}")
    return r


def table(out, started, command):
    lines = [
        BEGIN,
        f"Last full run: {started}, `{command}` on this 2-core VM (medians; raw outputs of each bench",
        "are printed by the suite). Per-benchmark detail and history are in the sections below.",
    ]
    host = [l.strip() for l in read(out, "host.txt").splitlines() if l.startswith("host:")]
    if host:
        lines += [
            "",
            "Host markers (`python3 bench/host_marker.py`, before and after): "
            + "; ".join(h.removeprefix("host: ") for h in host)
            + ". Compare runs only when these are close.",
        ]
    lines += [
        "",
        "| benchmark | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for name, text, goal, ok in rows(out):
        lines.append(f"| {name} | {text} | {goal} | {'yes' if ok else '**no**'} |")
    lines.append(END)
    return "\n".join(lines)


def main():
    out, started, command, md = sys.argv[1:5]
    t = table(out, started, command)
    print(t)
    text = open(md, encoding="utf-8").read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + t + tail
    else:
        text = text.rstrip("\n") + "\n\n## The suite\n\n" + t + "\n"
    open(md, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    main()
