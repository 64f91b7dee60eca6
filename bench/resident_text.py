#!/usr/bin/env python3
"""Which crates' code and data of a running agent are resident, per ELF section and per crate.

Usage: bench/resident_text.py PID BINARY [--top N]
       bench/resident_text.py --callgrind CALLGRIND_OUT BINARY [--top N]

BINARY is the same build with its symbol table (e.g. `CARGO_PROFILE_RELEASE_STRIP=none`): the
layout is the stripped binary's, only the table is kept. Reads /proc/PID/maps and
/proc/PID/pagemap (its present bit; root or the process's owner) for every page the binary maps,
names the section of each resident page, and splits each resident `.text` page between the
functions it holds (`nm -C -S`), attributed to a crate by the first path segment of the
demangled name (for `core`/`alloc`/`std` generics, the first other crate named in the generic
arguments, so `drop_in_place<tonic::..>` counts as tonic).

With --callgrind (a run under `valgrind --tool=callgrind --dump-instr=yes --compress-strings=no
--compress-pos=no`): the instructions the run executed, grouped into the 64 KiB windows the
kernel faults in around a touched page (`/sys/kernel/mm/...fault_around_bytes`), and per crate
the windows its executed functions touch and those that only it touches (what starting it
lazily, or not linking it, would save).
"""
import bisect
import collections
import os
import re
import signal
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def crate_of(name: str) -> str:
    if "::" not in name:
        return "(C / no path)"
    # Every path segment that starts a `a::b` path, in order.
    heads = [m.group(0) for m in re.finditer(r"(?<![A-Za-z0-9_:])[A-Za-z_][A-Za-z0-9_]*(?=::)", name)]
    if not heads:
        return "(C / no path)"
    first = heads[0]
    if first not in ("core", "alloc", "std"):
        return first
    for h in heads[1:]:
        if h not in ("core", "alloc", "std"):
            return h if h not in ("ptr", "mem") else "std"
    return "std"


def load_segments(binary):
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout
    segs = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            segs.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))  # offset, vaddr, filesz
    return segs


def load_sections(binary):
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    secs = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m and int(m.group(2), 16):
            secs.append((int(m.group(2), 16), int(m.group(4), 16), m.group(1)))
    secs.sort()
    return secs


def load_symbols(binary):
    out = subprocess.run(["nm", "-C", "-S", "--defined-only", binary], capture_output=True,
                         text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        f = line.split(" ", 3)
        if len(f) == 4 and f[2] in "tTwW":
            syms.append((int(f[0], 16), int(f[1], 16), f[3]))
    syms.sort()
    return syms


def callgrind(path, binary, top):
    syms = load_symbols(binary)
    starts = [s[0] for s in syms]
    main_addr = next(a for a, _, n in syms if n == "main")
    real = os.path.basename(binary)
    addrs, ob, fn, main_seen = set(), "", "", []
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                ob = line[3:].strip()
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("0x") and os.path.basename(ob) == real:
                a = int(line.split()[0], 16)
                addrs.add(a)
                if fn == "main":
                    main_seen.append(a)
    base = (min(main_seen) - main_addr) // PAGE * PAGE
    windows = collections.defaultdict(set)
    funcs = {}
    for a in addrs:
        link = a - base
        i = bisect.bisect_right(starts, link) - 1
        if i < 0 or link >= syms[i][0] + syms[i][1]:
            continue
        crate = crate_of(syms[i][2])
        windows[link // 65536].add(crate)
        funcs[syms[i][0]] = (syms[i][1], crate)
    print(f"executed: {len(funcs)} functions, {sum(s for s, _ in funcs.values()) / 1048576:.2f} MiB, "
          f"in {len(windows)} windows of 64 KiB = {len(windows) * 64 / 1024:.2f} MiB")
    touch, sole, fsize = collections.Counter(), collections.Counter(), collections.Counter()
    for crates in windows.values():
        for c in crates:
            touch[c] += 1
        if len(crates) == 1:
            sole[next(iter(crates))] += 1
    for size, c in funcs.values():
        fsize[c] += size
    print(f"  {'crate':28} {'windows':>8} {'only it':>8} {'executed KiB':>13}")
    for c, n in touch.most_common(top):
        print(f"  {c:28} {n:8} {sole[c]:8} {fsize[c] / 1024:13.0f}")


def main():
    if sys.argv[1] == "--callgrind":
        top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
        return callgrind(sys.argv[2], sys.argv[3], top)
    pid, binary = int(sys.argv[1]), sys.argv[2]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
    real = os.path.realpath(f"/proc/{pid}/exe")
    segs, secs, syms = load_segments(binary), load_sections(binary), load_symbols(binary)
    sec_starts = [s[0] for s in secs]
    resident = []  # link-time addresses of resident pages of the binary
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != real:
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            off = int(f[2], 16)
            pm.seek(lo // PAGE * 8)
            data = pm.read((hi - lo) // PAGE * 8)
            for i in range((hi - lo) // PAGE):
                (entry,) = struct.unpack_from("<Q", data, i * 8)
                if not entry >> 63 & 1:
                    continue
                foff = off + i * PAGE
                for s_off, s_vaddr, s_filesz in segs:
                    if s_off <= foff < s_off + max(s_filesz, 1) + PAGE:
                        resident.append(s_vaddr + foff - s_off)
                        break
    by_section = collections.Counter()
    text_pages = []
    for addr in resident:
        i = bisect.bisect_right(sec_starts, addr) - 1
        name = "(headers)"
        if i >= 0 and addr < secs[i][0] + secs[i][1]:
            name = secs[i][2]
        elif i + 1 < len(secs) and secs[i + 1][0] < addr + PAGE:
            name = secs[i + 1][2]
        by_section[name] += PAGE
        if name == ".text":
            text_pages.append(addr)
    print(f"resident pages of {binary}: {len(resident) * PAGE / 1048576:.2f} MiB")
    for name, b in by_section.most_common():
        size = next((s[1] for s in secs if s[2] == name), 0)
        print(f"  {name:24} {b / 1048576:6.2f} MiB resident of {size / 1048576:6.2f} MiB")
    # Split resident .text pages between the functions they hold.
    starts = [s[0] for s in syms]
    res_crate = collections.Counter()
    tot_crate = collections.Counter()
    for a, size, name in syms:
        tot_crate[crate_of(name)] += size
    for page in text_pages:
        i = max(bisect.bisect_right(starts, page) - 1, 0)
        while i < len(syms) and syms[i][0] < page + PAGE:
            a, size, name = syms[i]
            lo, hi = max(a, page), min(a + size, page + PAGE)
            if hi > lo:
                res_crate[crate_of(name)] += hi - lo
            i += 1
    total = sum(res_crate.values())
    print(f"\n.text resident by crate (bytes of functions on resident pages), {total / 1048576:.2f} MiB:")
    print(f"  {'crate':28} {'resident KiB':>12} {'.text KiB':>10}")
    for crate, b in res_crate.most_common(top):
        print(f"  {crate:28} {b / 1024:12.0f} {tot_crate[crate] / 1024:10.0f}")
    rest = sum(b for c, b in res_crate.most_common()[top:])
    print(f"  {'(others)':28} {rest / 1024:12.0f}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    main()
