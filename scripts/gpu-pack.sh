#!/usr/bin/env bash
# Build everything a GPU session needs, on this (Rust) machine, into .gpu/ (git-ignored), so the
# GPU box (no Rust, no network) only runs binaries: `scripts/gpu-run.sh` there.
#
#   bash scripts/gpu-pack.sh           # then hand .gpu to the box and run: bash scripts/gpu-run.sh
#
# .gpu/advlens                  release binary with our kernels and the cuDNN baseline (--features cudnn)
# .gpu/tests/<name>             the test binaries whose CUDA variants need a GPU (stripped)
# .gpu/fmnist/{train,test}.safetensors  a Fashion-MNIST slice for the end-to-end GPU runs
# .gpu/COMMIT                   the commit (and whether the tree was dirty) the binaries came from
#
# Everything is stripped of debug info to stay under the device tool's 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=(cuda_ops cuda_conv cuda_tc golden_cuda gradcheck nn bench_cli)
rm -rf .gpu && mkdir -p .gpu/tests

cargo build --release --features cudnn --quiet
cp target/release/advlens .gpu/advlens

# One test build; cargo's JSON messages name each test executable.
cargo test --release --features cudnn --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys, shutil
want = set(sys.argv[1:])
found = set()
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if "test" in t["kind"] and t["name"] in want:
        shutil.copy(m["executable"], ".gpu/tests/" + t["name"])
        found.add(t["name"])
missing = want - found
if missing:
    sys.exit("gpu-pack: no test executable for " + ", ".join(sorted(missing)))
' "${TESTS[@]}"

strip --strip-debug .gpu/advlens .gpu/tests/*

# 10,000 training and 2,000 test images: enough for timed epochs, small enough to carry.
./target/release/advlens --device cpu --json data import-idx --out .gpu/fmnist \
  --limit-train 10000 --limit-test 2000 >/dev/null

{
  echo "commit $(git rev-parse HEAD)"
  if git diff --quiet HEAD; then echo "tree clean"; else echo "tree dirty (uncommitted changes)"; fi
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
} >.gpu/COMMIT

du -sh .gpu/advlens .gpu/tests/* .gpu/fmnist | sed 's/^/gpu-pack: /'
total=$(du -sm .gpu | cut -f1)
if [ "$total" -gt 62 ]; then
  echo "gpu-pack: .gpu is ${total} MiB, over the 64 MiB carry limit" >&2
  exit 1
fi
