#!/usr/bin/env python3
"""Where the command's own thread works alone, by backend op, from a `perf` recording.

Record with DWARF call graphs (frame pointers do not cross rayon's job boundaries), then:

    perf record -e cpu-clock -F 500 --call-graph dwarf,16384 -o run.data -- \
        taskset -c 0-1 advlens --device cpu --threads 2 advtrain ... (or bench model ...)
    perf script -i run.data > run.txt
    python3 benches/perf_serial.py run.txt [window_s]

The command runs on one pool worker (`cli::main` puts `run_command` there); its samples are
attributed to the innermost `Backend` method on their stack (`~module::fn` when none). A sample
counts as serial when no other thread has a working sample (not spinning, yielding or stealing:
the IDLE leaf frames)
within 0.75 window on either side (default window 0.002 s, two sampling periods at 500 Hz). The
serial share of an op is the time the other cores had nothing of it to do: too few tasks, a
thread still waking up, or a serial stage between parallel ones. Rough on a VM whose vCPUs are
descheduled now and then, which shows as serial too.
"""
import bisect
import collections
import re
import sys

# Leaf frames of a thread with nothing to do: rayon's idle loop and `crate::spin`'s poll.
IDLE = (
    "sched_yield",
    "wait_until",
    "spin::spin",
    "_mm_pause",
    "spin_loop",
    "yield_now",
    "find_work",
    "steal",
    "crossbeam",
)
OP = re.compile(r"as advlens::backend::Backend>::(\w+)")
CALLER = re.compile(r"advlens::(nn|attack|bench|experiments)::[\w:]+")


def main():
    path = sys.argv[1]
    window = float(sys.argv[2]) if len(sys.argv) > 2 else 0.002
    mine, others = [], []
    for block in open(path).read().split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) < 2:
            continue
        t = float(lines[0].split()[2].rstrip(":"))
        if "run_command" in block:
            mine.append((t, op_of(lines[1:])))
        elif not any(w in lines[1] for w in IDLE) and "sched_yield" not in block:
            others.append(t)
    others.sort()
    total, serial = collections.Counter(), collections.Counter()
    for t, op in mine:
        total[op] += 1
        i = bisect.bisect_left(others, t - 0.75 * window)
        if not (i < len(others) and others[i] <= t + 0.75 * window):
            serial[op] += 1
    n = max(len(mine), 1)
    s = sum(serial.values())
    print(f"command thread: {len(mine)} samples, serial {s} ({100 * s / n:.1f}%)")
    for op, v in total.most_common(20):
        print(f"{100 * v / n:5.1f}% of samples, {100 * serial[op] / v:5.1f}% of them serial  {op}")


def op_of(frames):
    for f in frames:
        m = OP.search(f)
        if m:
            return m.group(1)
    for f in frames:
        m = CALLER.search(f)
        if m:
            return "~" + m.group(0)[:60]
    return "?"


if __name__ == "__main__":
    main()
