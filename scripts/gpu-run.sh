#!/usr/bin/env bash
# Run on a GPU box, from the repository root, with the binaries `scripts/gpu-pack.sh` left in
# .gpu/ (the box needs no Rust). Results go to $OUT (default gpu-out/):
#
#   bash scripts/gpu-run.sh tests    # CUDA vs CPU for every op, golden files through CUDA, gradchecks
#   bash scripts/gpu-run.sh bench    # bench conv vs cuDNN for the three nets, PyTorch on the same layers
#   bash scripts/gpu-run.sh e2e      # train/eval/attack/reproduce --profile quick on --device cuda
#   bash scripts/gpu-run.sh all      # the three in turn (about 10 minutes on an H100)
#
# ADVLENS_REQUIRE_GPU=1 is set for the tests: a test that cannot open the GPU fails instead of
# printing "skipped", so a pass here is a pass on the GPU. Every step has its own time limit and
# its exit status is written to $OUT/summary.txt; the script goes on after a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
G=$PWD/.gpu
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
stage=${1:-all}

if [ ! -x "$G/advlens" ]; then
  echo "gpu-run: $G/advlens missing: run scripts/gpu-pack.sh on the build machine first" >&2
  exit 2
fi

# Libraries: the driver (system), NVRTC from the CUDA toolkit or pip, cuDNN from the Python env.
add_lib() { [ -d "$1" ] && LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; }
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do add_lib "$d"; done
for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  [ -d "$sp/nvidia" ] || continue
  while read -r lib; do add_lib "$(dirname "$lib")"; done < <(
    find "$sp/nvidia" \( -name 'libcudnn.so*' -o -name 'libnvrtc.so*' \) 2>/dev/null | sort -u)
done
export LD_LIBRARY_PATH

summary=$OUT/summary.txt
step() { # step NAME LIMIT_S CMD...: run CMD with a time limit, log to $OUT/NAME.log, record rc
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$summary"
  return 0
}

{
  cat "$G/COMMIT"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
} >"$OUT/machine.txt"

run_tests() {
  export ADVLENS_REQUIRE_GPU=1 ADVLENS_TEST_ROOT=$PWD ADVLENS_TEST_BIN=$G/advlens
  for t in cuda_ops cuda_conv cuda_tc golden_cuda gradcheck nn bench_cli; do
    step "test_$t" 240 "$G/tests/$t" --test-threads=1 --nocapture
  done
  unset ADVLENS_REQUIRE_GPU
}

run_bench() {
  for nb in resnet18:32 vgg16:32 alexnet:128; do
    local net=${nb%:*} batch=${nb#*:}
    step "bench_$net" 200 "$G/advlens" --device cuda bench conv --net "$net" --batch "$batch" \
      --json --out "$OUT/gpu_$net.json"
  done
  # Our older f32 kernels on the same layers, each run with cuDNN beside it, so v1/v2/v3 compare
  # through in-run ratios (v1, the direct kernels, with fewer iterations: it is the slow one).
  step bench_resnet18_v2 200 "$G/advlens" --device cuda bench conv --net resnet18 --batch 32 \
    --conv-version v2 --json --out "$OUT/gpu_resnet18_v2.json"
  step bench_vgg16_v2 200 "$G/advlens" --device cuda bench conv --net vgg16 --batch 32 \
    --conv-version v2 --json --out "$OUT/gpu_vgg16_v2.json"
  step bench_resnet18_v1 200 "$G/advlens" --device cuda bench conv --net resnet18 --batch 32 \
    --conv-version v1 --iters 5 --warmup 1 --json --out "$OUT/gpu_resnet18_v1.json"
  step bench_resnet18_tf32 120 "$G/advlens" --device cuda bench conv --net resnet18 --batch 32 \
    --cudnn-tf32 --json --out "$OUT/gpu_resnet18_tf32.json"
  # Our tensor-core kernels at each precision, cuDNN at the same precision beside them (TF32
  # math for tf32; BFLOAT16 tensors with FLOAT compute for bf16, never run before a GPU session).
  for prec in tf32 bf16; do
    for nb in resnet18:32 vgg16:32; do
      local net=${nb%:*} batch=${nb#*:}
      step "bench_${net}_$prec" 200 "$G/advlens" --device cuda --precision "$prec" bench conv \
        --net "$net" --batch "$batch" --json --out "$OUT/gpu_${net}_$prec.json"
    done
  done
  for net in resnet18 vgg16 alexnet; do
    [ -f "$OUT/gpu_$net.json" ] || continue
    step "torch_$net" 200 sh -c "python3 benches/torch_conv.py --net $net \
      --advlens-json '$OUT/gpu_$net.json' > '$OUT/torch_$net.json'"
  done
}

run_e2e() {
  local d=$G/fmnist runs=$OUT/e2e
  mkdir -p "$runs"
  for dev in cuda cpu; do
    step "train_small-resnet18_$dev" 200 "$G/advlens" --device "$dev" --json train \
      --model small-resnet18 --data "$d/train.safetensors" --val "$d/test.safetensors" \
      --epochs 1 --out "$runs/train_$dev"
  done
  step eval_cuda 60 "$G/advlens" --device cuda --json eval \
    --ckpt "$runs/train_cuda/last.safetensors" --data "$d/test.safetensors"
  # Issue 11: training with tf32 / bf16 convolutions must reach f32's accuracy within 0.5
  # points (small-vgg16, 3 epochs on the packed slice, validated on its test images).
  for prec in f32 tf32 bf16; do
    step "train_small-vgg16_$prec" 300 "$G/advlens" --device cuda --precision "$prec" --json \
      train --model small-vgg16 --data "$d/train.safetensors" --val "$d/test.safetensors" \
      --epochs 3 --out "$runs/vgg_$prec"
  done
  python3 - "$runs" >"$OUT/precision_check.txt" 2>&1 <<'PY'
import json, sys, pathlib
runs = pathlib.Path(sys.argv[1])
def top1(p):
    h = json.loads((runs / f"vgg_{p}" / "train.json").read_text())["history"]
    return 100.0 * h[-1]["val"]["top1"]
ref = top1("f32")
print(f"small-vgg16, 3 epochs, validation top-1: f32 {ref:.2f}%")
for p in ("tf32", "bf16"):
    a = top1(p)
    ok = abs(a - ref) <= 0.5
    print(f"{p}: {a:.2f}% ({a - ref:+.2f} points vs f32; bound 0.5) {'PASS' if ok else 'FAIL'}")
PY
  echo "precision_check rc=$?" | tee -a "$summary"
  step reproduce_quick_cuda 300 "$G/advlens" --device cuda --json reproduce --profile quick \
    --data "$d" --hierarchy data/wordnet/fashion_mnist_hierarchy.json --out "$runs/quick"
}

case $stage in
  tests) run_tests ;;
  bench) run_bench ;;
  e2e) run_e2e ;;
  all) run_tests; run_bench; run_e2e ;;
  *) echo "gpu-run: unknown stage '$stage' (tests, bench, e2e, all)" >&2; exit 2 ;;
esac
echo "gpu-run: results in $OUT (summary.txt, *.log, *.json)"
