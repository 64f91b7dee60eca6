"""Side by side: Sidelight's log source and Fluent Bit's `tail` on the same files in one
sitting, each from the head of the file to a sink that discards. For each workload and run the
reader is started on a fresh copy of the file and its record counter is polled
(`sidelight_log_records_total` at the agent's /metrics, `fluentbit_input_records_total` at Fluent
Bit's /api/v1/metrics/prometheus); CPU seconds are user + sys from /proc/PID/stat at the first
poll that saw the last record, peak RSS is VmHWM. Runs alternate agent / Fluent Bit; the median
of RUNS is reported with the ratio of lines per CPU-second (agent / Fluent Bit).

Run through bench/logs_vs_fluentbit.sh (it sets the paths); environment:
  AGENT_BIN, FLUENT_BIT, DATA (workload files), LINES, RUNS, WORKLOADS (comma list), REDACTION
  (on | off: the agent's built-in redaction; default on).
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

POLL_S = 0.05
STABLE_S = 4.0  # no change this long ends a run whose final count is not known in advance
TIMEOUT_S = 900.0
TICK = os.sysconf("SC_CLK_TCK")

JSON_WORKLOADS = {"pjl", "structlog", "loguru"}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def parse_value(line: str) -> float:
    # `name{labels} value [timestamp]`
    rest = line.split("}", 1)[1] if "}" in line else line.split(" ", 1)[1]
    return float(rest.split()[0])


def scrape_sum(url: str, metric: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return int(sum(parse_value(l) for l in text.splitlines()
                   if l.startswith(metric + "{") or l.startswith(metric + " ")))


def agent_cmd(work: str, log: str, workload: str, port: int, redaction: bool):
    fmt = "json" if workload in JSON_WORKLOADS else "text"
    red = "" if redaction else ", redaction: { builtins: false }"
    with open(f"{work}/agent.yaml", "w") as f:
        f.write(f"http: {{ listen: 127.0.0.1:{port} }}\nstore: {{ path: {work}/data }}\n"
                f"host: {{ interval: 15s }}\n"
                f"logs:\n  - {{ source: bench, include: [\"{log}\"], format: {fmt}{red} }}\n")
    argv = [os.environ["AGENT_BIN"], "run", "--config", f"{work}/agent.yaml"]
    return argv, f"http://127.0.0.1:{port}/metrics", "sidelight_log_records_total"


def fluentbit_cmd(work: str, log: str, workload: str, port: int, redaction: bool):
    with open(f"{work}/parsers.conf", "w") as f:
        f.write("[PARSER]\n    Name json\n    Format json\n")
    tail = [f"    Path {log}", "    Read_from_Head On", f"    DB {work}/fb.db"]
    if workload in JSON_WORKLOADS:
        tail.append("    Parser json")
    else:
        tail.append("    multiline.parser python")
    with open(f"{work}/fb.conf", "w") as f:
        f.write("[SERVICE]\n    Flush 1\n    Log_Level warn\n    HTTP_Server On\n"
                f"    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n    Parsers_File {work}/parsers.conf\n"
                "[INPUT]\n    Name tail\n" + "\n".join(tail) + "\n"
                "[OUTPUT]\n    Name null\n    Match *\n")
    argv = [os.environ["FLUENT_BIT"], "-c", f"{work}/fb.conf"]
    return argv, f"http://127.0.0.1:{port}/api/v1/metrics/prometheus", "fluentbit_input_records_total"


def run_one(reader: str, src: str, workload: str, expected: int | None, redaction: bool) -> dict:
    work = tempfile.mkdtemp(prefix=f"lvf-{reader}-")
    try:
        log = os.path.join(work, "app.log")
        # A hard link keeps each run on a fresh path (no checkpoint) without copying the data.
        try:
            os.link(src, log)
        except OSError:
            shutil.copyfile(src, log)
        port = free_port()
        build = agent_cmd if reader == "agent" else fluentbit_cmd
        argv, url, metric = build(work, log, workload, port, redaction)
        err = open(os.path.join(work, "stderr"), "w")
        proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, stderr=err)
        start = time.monotonic()
        last_count, last_change, cpu_at_last = -1, start, 0.0
        rss = 0
        try:
            while True:
                time.sleep(POLL_S)
                if proc.poll() is not None:
                    raise RuntimeError(f"{reader} exited with {proc.returncode}: "
                                       + open(os.path.join(work, "stderr")).read()[-2000:])
                count = scrape_sum(url, metric)
                now = time.monotonic()
                cpu = cpu_s(proc.pid)
                rss = hwm_kib(proc.pid)
                if count is not None and count != last_count:
                    last_count, last_change, cpu_at_last = count, now, cpu
                if expected is not None and last_count >= expected:
                    break
                if expected is None and last_count > 0 and now - last_change > STABLE_S:
                    break
                if now - start > TIMEOUT_S:
                    raise RuntimeError(f"{reader} timed out at {last_count} of {expected} records")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {"cpu_s": cpu_at_last, "records": last_count, "rss_mib": rss / 1024}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    data = os.environ["DATA"]
    runs = int(os.environ.get("RUNS", "3"))
    redaction = os.environ.get("REDACTION", "on") != "off"
    workloads = os.environ.get("WORKLOADS", "pjl,structlog,loguru,text").split(",")
    rows = []
    for w in workloads:
        src = os.path.join(data, f"{w}.log")
        records = int(open(src + ".records").read())
        size = os.path.getsize(src)
        # Fluent Bit's python multiline parser does not join the whole record the way the
        # agent does, so its count for `text` is found by waiting for the counter to settle.
        fb_expected = records if w in JSON_WORKLOADS else None
        res = {"agent": [], "fluentbit": []}
        for i in range(runs):
            for reader in ("agent", "fluentbit"):
                r = run_one(reader, src, w, records if reader == "agent" else fb_expected, redaction)
                res[reader].append(r)
                print(f"  {w} run {i + 1} {reader}: {r['cpu_s']:.2f} CPU s, {r['records']} records, "
                      f"peak RSS {r['rss_mib']:.1f} MiB, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        a = statistics.median(r["cpu_s"] for r in res["agent"])
        f = statistics.median(r["cpu_s"] for r in res["fluentbit"])
        rows.append({
            "workload": w, "lines": records, "mb": size / 1e6,
            "agent_cpu_s": a, "fb_cpu_s": f,
            "agent_lines_per_cpu_s": records / a if a else float("inf"),
            "fb_lines_per_cpu_s": records / f if f else float("inf"),
            "ratio": f / a if a else float("inf"),
            "agent_rss_mib": max(r["rss_mib"] for r in res["agent"]),
            "fb_rss_mib": max(r["rss_mib"] for r in res["fluentbit"]),
            "fb_records": res["fluentbit"][-1]["records"],
        })
    print(f"| workload | records | MB | Sidelight CPU s | Fluent Bit CPU s | Sidelight lines/CPU-s | "
          f"Fluent Bit lines/CPU-s | ratio | Sidelight peak RSS | Fluent Bit peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['lines']:,} | {r['mb']:.0f} | {r['agent_cpu_s']:.2f} | "
              f"{r['fb_cpu_s']:.2f} | {r['agent_lines_per_cpu_s']:,.0f} | {r['fb_lines_per_cpu_s']:,.0f} | "
              f"**{r['ratio']:.2f}×** | {r['agent_rss_mib']:.1f} MiB | {r['fb_rss_mib']:.1f} MiB |")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
