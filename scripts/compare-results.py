#!/usr/bin/env python3
"""Compare two advlens results.json files apart from timings.

Timings: every value under a key 'seconds', 'seconds_total' or 'images_per_sec', and
environment.stages[].cached (which invocation ran a stage, not what it computed). With
--ignore-e2-work also E2's per-invocation work counters (shards_written, shards_reused,
attacked_now), which differ after a resumed or re-submitted attack.

Usage: compare-results.py A.json B.json [--ignore-e2-work]; exit 0 when identical."""
import json
import sys

TIMING = {"seconds", "seconds_total", "images_per_sec"}
E2_WORK = {"shards_written", "shards_reused", "attacked_now"}


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


def load(path, ignore_e2_work):
    with open(path) as f:
        d = json.load(f)
    for s in d.get("environment", {}).get("stages", []):
        s.pop("cached", None)
    if ignore_e2_work and isinstance(d.get("E2"), dict):
        for k in E2_WORK:
            d["E2"].pop(k, None)
    return strip(d)


def differences(x, y, path, out):
    """Append 'path: a != b' for every leaf where x and y differ."""
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            if k not in x or k not in y:
                out.append(f"{path}.{k}: only in {'B' if k not in x else 'A'}")
            else:
                differences(x[k], y[k], f"{path}.{k}", out)
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            differences(u, v, f"{path}[{i}]", out)
    elif x != y or type(x) is not type(y):
        out.append(f"{path}: {json.dumps(x)[:80]} != {json.dumps(y)[:80]}")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    ignore = "--ignore-e2-work" in sys.argv
    a, b = load(args[0], ignore), load(args[1], ignore)
    diff = []
    differences(a, b, "", diff)
    if not diff:
        print("results.json identical apart from timings")
        return 0
    print(f"{len(diff)} differences (A = {args[0]}, B = {args[1]}):")
    print("\n".join(diff[:40]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
