#!/usr/bin/env python3
"""Names the functions a callgrind profile of the agent ran, for lld's --symbol-ordering-file.

Usage: link_order.py LINK_MAP CALLGRIND_OUT BINARY_NAME > agent/link-order.txt

LINK_MAP is lld's map of the profiled binary (built with SIDELIGHT_LINK_MAP=<path>);
CALLGRIND_OUT was written with `--dump-instr=yes --compress-pos=no --compress-strings=no`, so
every cost line starts with the address of an instruction that ran, relative to the object's
load base as the map's addresses are (the binary is position-independent). Each address is
looked up in the input sections of `.text`; one symbol per section that ran is printed, in
address order (which keeps the compiler's own locality among them).
"""

import bisect
import re
import sys

ADDR = re.compile(r"^(0x[0-9a-fA-F]+)\s")
MAP_LINE = re.compile(r"^\s*([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+(\d+)( +)(\S.*)$")


def text_sections(map_path):
    """(start, size, first symbol) for every input section of `.text`, sorted by start."""
    sections = []
    in_text = False
    current = None
    with open(map_path, encoding="utf-8", errors="replace") as f:
        next(f, None)  # header: VMA LMA Size Align Out In Symbol
        for line in f:
            m = MAP_LINE.match(line)
            if not m:
                continue
            vma, size, gap, name = m.group(1), m.group(3), len(m.group(5)), m.group(6).strip()
            # Output sections start one space after the Align column; input sections and
            # symbols are indented 8 and 16 spaces further in lld's layout.
            depth = gap - 1
            if depth == 0:
                in_text = name == ".text"
                current = None
                continue
            if not in_text:
                continue
            if ":(" in name:
                current = [int(vma, 16), int(size, 16), None]
                sections.append(current)
            elif current is not None and current[2] is None and depth > 8:
                current[2] = name
    sections = [s for s in sections if s[2] is not None and s[1] > 0]
    sections.sort()
    return sections


def executed(cg_path, binary_name):
    """Instruction addresses that ran inside the object whose path ends with binary_name."""
    addrs = set()
    ours = False
    with open(cg_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                ours = line.rstrip("\n").endswith("/" + binary_name) or line[3:].strip() == binary_name
                continue
            if not ours:
                continue
            m = ADDR.match(line)
            if m:
                addrs.add(int(m.group(1), 16))
    return addrs


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sections = text_sections(sys.argv[1])
    if not sections:
        sys.exit(f"{sys.argv[1]}: no input sections of .text found (not an lld map?)")
    starts = [s[0] for s in sections]
    addrs = executed(sys.argv[2], sys.argv[3])
    if not addrs:
        sys.exit(f"{sys.argv[2]}: no instructions of {sys.argv[3]} (was it run with --dump-instr=yes?)")
    hit = set()
    missed = 0
    for a in addrs:
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < sections[i][0] + sections[i][1]:
            hit.add(i)
        else:
            missed += 1
    size = sum(sections[i][1] for i in hit)
    total = sum(s[1] for s in sections)
    for i in sorted(hit):
        print(sections[i][2])
    print(
        f"link_order: {len(hit)} of {len(sections)} functions ran, {size / 1024:.0f} KiB of "
        f"{total / 1024:.0f} KiB of text; {missed} addresses outside any section",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
