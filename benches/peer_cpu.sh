#!/usr/bin/env bash
# advlens vs PyTorch on the CPU, alternately, in one sitting (issue 12).
#
# For each (model, width) and each repeat it runs `advlens bench model` and then
# `benches/peer_cpu.py` (the same workloads in PyTorch) pinned to the same cores with the same
# thread count, and prints per workload the median over repeats of each side's rows/s and the
# ratio advlens / PyTorch. The ensemble workload (three models) is run once per width.
#
# Usage: benches/peer_cpu.sh [ADVLENS_BIN] [PYTHON]
#   env: THREADS (2), CPUS (0-1, for taskset), REPEATS (3), WIDTHS ("8 16"),
#        MODELS ("small-vgg16 small-alexnet small-resnet18"), ITERS (5), WARMUP (2),
#        OUT (dir for raw JSON), BEFORE (a second advlens binary, e.g. an older commit: it is
#        run in the same alternation and gets its own column and an after/before ratio)
# PyTorch is installed by hand for this (plain `pip install torch`), never by CI.
set -euo pipefail
BIN=${1:-target/release/advlens}
PY=${2:-python3}
THREADS=${THREADS:-2}
CPUS=${CPUS:-0-$((THREADS - 1))}
REPEATS=${REPEATS:-3}
WIDTHS=${WIDTHS:-"8 16"}
MODELS=${MODELS:-"small-vgg16 small-alexnet small-resnet18"}
ITERS=${ITERS:-5}
WARMUP=${WARMUP:-2}
BEFORE=${BEFORE:-}
OUT=${OUT:-$(mktemp -d)}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), threads $THREADS, cpus $CPUS"
echo "# advlens $("$BIN" --version 2>/dev/null || echo "$BIN") commit $(git -C "$HERE" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
echo "# torch $("$PY" -c 'import torch; print(torch.__version__)')"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for w in $WIDTHS; do
  for m in $MODELS; do
    wl=train,ifgs
    [ "$m" = small-vgg16 ] && wl=train,ifgs,ensemble
    for r in $(seq 1 "$REPEATS"); do
      taskset -c "$CPUS" "$BIN" --device cpu --threads "$THREADS" --json bench model \
        --model "$m" --width "$w" --workloads "$wl" --iters "$ITERS" --warmup "$WARMUP" \
        > "$OUT/advlens-$m-w$w-r$r.json"
      taskset -c "$CPUS" "$PY" -W ignore "$HERE/peer_cpu.py" --model "$m" --width "$w" \
        --workloads "$wl" --iters "$ITERS" --warmup "$WARMUP" --threads "$THREADS" \
        > "$OUT/torch-$m-w$w-r$r.jsonl"
      if [ -n "$BEFORE" ]; then
        taskset -c "$CPUS" "$BEFORE" --device cpu --threads "$THREADS" --json bench model \
          --model "$m" --width "$w" --workloads "$wl" --iters "$ITERS" --warmup "$WARMUP" \
          > "$OUT/before-$m-w$w-r$r.json"
      fi
    done
  done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$OUT" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
# Per repeat too: advlens and PyTorch of the same repeat ran back to back, so their ratio is
# the paired figure, and its range over repeats shows how far the VM's noise moves it.
paired = {}
def key(model, width, workload):
    return (model if workload != "ensemble" else "ensemble(3)", width, workload)
def repeat(f):
    return os.path.basename(f).rsplit("-r", 1)[1].split(".")[0]
for side, pat in ((0, "advlens-*.json"), (2, "before-*.json")):
    for f in glob.glob(os.path.join(out, pat)):
        r = json.load(open(f))
        for w in r["workloads"]:
            k = key(r["model"], r["width"], w["workload"])
            rows.setdefault(k, ([], [], []))[side].append(w["rows_per_s"])
            paired.setdefault((k, repeat(f)), [None, None, None])[side] = w["rows_per_s"]
for f in glob.glob(os.path.join(out, "torch-*.jsonl")):
    for line in open(f):
        w = json.loads(line)
        k = key(w["model"], w["width"], w["workload"])
        rows.setdefault(k, ([], [], []))[1].append(w["rows_per_s"])
        paired.setdefault((k, repeat(f)), [None, None, None])[1] = w["rows_per_s"]
before = any(v[2] for v in rows.values())
head = "| model | width | workload | advlens rows/s | PyTorch rows/s | advlens/PyTorch | paired range |"
if before:
    head += " before rows/s | after/before |"
print(head)
print("|---|---:|---|---:|---:|---:|---|" + ("---:|---:|" if before else ""))
med = lambda v: statistics.median(v) if v else float("nan")
for k in sorted(rows):
    a, t, b = (med(v) for v in rows[k])
    rs = sorted(p[0] / p[1] for (kk, _), p in paired.items() if kk == k and p[0] and p[1])
    span = f"{rs[0]:.2f}-{rs[-1]:.2f}" if rs else "-"
    line = f"| {k[0]} | {k[1]} | {k[2]} | {a:,.0f} | {t:,.0f} | {a / t:.2f} | {span} |"
    if before:
        line += f" {b:,.0f} | {a / b:.2f} |"
    print(line)
print(f"(rows/s: medians over repeats of each run's median; paired range: min-max over repeats "
      f"of advlens/PyTorch within one repeat; raw JSON in {out})")
EOF
