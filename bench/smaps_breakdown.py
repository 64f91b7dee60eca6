#!/usr/bin/env python3
"""Resident memory of a running process by mapping kind, from /proc/PID/smaps (MiB).

Usage: bench/smaps_breakdown.py PID

Kinds: the executable's text (`r-xp`), its read-only data and relro (`r--p`: .rodata, .eh_frame,
and .data.rel.ro once the loader made it read-only), its writable data, `[heap]` (the main malloc
arena), other anonymous mappings (other threads' malloc arenas, thread stacks), libc, the other
shared objects (ld.so, libm, libgcc_s, vdso) and the main stack. Used for the idle RSS figures in
BENCHMARKS.md: which part of a change's effect is heap, and which is file-backed pages whose count
moves with the load address and the build's layout.
"""
import collections
import os
import re
import sys


def main():
    pid = sys.argv[1]
    exe = os.path.realpath(f"/proc/{pid}/exe")
    rss = collections.OrderedDict()
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                perm, name = m.group(1), m.group(2)
                if name == exe:
                    kind = ("binary text" if "x" in perm
                            else "binary read-only data + relro" if perm.startswith("r-")
                            else "binary data")
                elif name == "[heap]":
                    kind = "[heap]"
                elif "/libc.so" in name:
                    kind = "libc"
                elif ".so" in name or name == "[vdso]":
                    kind = "ld.so, libm, libgcc_s, vdso"
                elif name == "[stack]":
                    kind = "main stack"
                else:
                    kind = "anonymous (other arenas, thread stacks)"
                continue
            if line.startswith("Rss:") and kind:
                rss[kind] = rss.get(kind, 0) + int(line.split()[1])
    total = sum(rss.values())
    for k, v in rss.items():
        print(f"{k:40} {v / 1024:6.2f} MiB")
    print(f"{'total':40} {total / 1024:6.2f} MiB")


if __name__ == "__main__":
    main()
