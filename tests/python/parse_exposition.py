"""Parses a /metrics body with the official Python client's parsers and prints a JSON summary:
per family its type, its number of samples and its series (`name{k=v,...}`, labels sorted, values
raw, empty ones left out as Prometheus stores them), the oracle other readers of the registry are
compared with.

Usage: parse_exposition.py openmetrics|text < body
Exits non-zero (with the parser's message) if the exposition is not valid."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text


def main() -> int:
    mode = sys.argv[1]
    body = sys.stdin.read()
    parse = parse_openmetrics if mode == "openmetrics" else parse_text
    families = {}
    for family in parse(body):
        series = sorted(
            s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if v) + "}"
            for s in family.samples
        )
        families[family.name] = {
            "type": family.type,
            "samples": len(family.samples),
            "series": series,
        }
    json.dump(families, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
