#!/usr/bin/env bash
# The project's test command (README): installs what is missing, checks formatting and lints,
# compiles every CUDA kernel offline (NVRTC -> PTX -> ptxas for sm_90, failing on any spill), runs
# the whole suite, then runs every CUDA test for real against the emulated CUDA driver
# (tests/cuda-emu) with ADVLENS_REQUIRE_GPU=1, so a CUDA test that skips fails: once under the
# round-robin schedule and once under a seeded random one. A CPU-only build
# (--no-default-features) is checked and its unit tests run too.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }

bash scripts/install-deps.sh

stamp "cargo fmt --check"
cargo fmt --all -- --check

stamp "cargo clippy (all targets, all features; and CPU-only) -D warnings"
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo clippy --all-targets --no-default-features --quiet -- -D warnings

stamp "build the test binaries (all features)"
cargo test --all-features --no-run --quiet 2>&1 | grep -v '^ *Executable' || true
bin=target/debug/advlens

stamp "CUDA kernels: NVRTC compile + ptxas -v (sm_90)"
bash scripts/check_kernels.sh --advlens "$bin"

# The NVRTC test of tests/cuda_ops.rs compiles every kernel when libnvrtc (and its builtins
# library, which NVRTC opens by name) is on the loader path; point it at the pip wheel's lib dir.
nvrtc_dir=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
if [[ -n "$nvrtc_dir" && -d "$nvrtc_dir" ]]; then
  export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

stamp "cargo test (all features; no driver here, so the CUDA tests are left to the emulated runs below)"
ADVLENS_CUDA_DEFERRED=1 cargo test --all-features

# The CPU GEMM picks AVX-512, AVX2+FMA or portable code at run time; the run above took the best
# this machine has. Force the other paths through the golden files and the gradient checks (the
# same binaries: seconds each). A path the CPU lacks falls back to the best one and says so.
for isa in avx2 portable; do
  stamp "CPU GEMM path forced: ADVLENS_CPU_ISA=$isa (golden_ops, gradcheck)"
  ADVLENS_CUDA_DEFERRED=1 ADVLENS_CPU_ISA=$isa cargo test --all-features --quiet --test golden_ops --test gradcheck
done

# The fuzz smoke in CI is the corpus replay through the fuzz targets' own bodies, which cargo test
# ran above (tests/fuzz_replay.rs). Real libFuzzer runs (5 s per target) need the fuzz crate
# built, about 10 CPU-minutes from scratch, which the 15-minute suite cannot afford: opt in with
# ADVLENS_FUZZ_LIBFUZZER=1 (needs cargo-fuzz).
stamp "fuzz smoke: corpus replayed by cargo test above; libFuzzer runs only with ADVLENS_FUZZ_LIBFUZZER=1"
ADVLENS_FUZZ_REPLAY=0 ADVLENS_FUZZ_LIBFUZZER="${ADVLENS_FUZZ_LIBFUZZER:-0}" bash scripts/fuzz-smoke.sh

stamp "build the emulated CUDA driver"
bash tests/cuda-emu/build.sh target/cuda-emu

# The CUDA tests: whole files that only test CUDA, and the cuda twins of backend_test! in the
# others (named <test>::cuda).
# Every file runs under the round-robin schedule; the kernel-level files (where a race between
# threads of a block would show) run again under a seeded random one. The end-to-end files
# (bench_cli, cuda_e2e) only repeat those kernels at scale, so a second schedule adds minutes and
# no coverage.
kernel_files=(--test cuda_emu --test cuda_ops --test cuda_conv --test cuda_tc --test golden_cuda)
e2e_files=(--test bench_cli --test cuda_e2e)
twin_files=(--test nn --test gradcheck)
total=0
run_cuda() {  # schedule, then the whole-file tests to run
  local sched=$1; shift
  local log; log=$(mktemp)
  stamp "CUDA tests on the emulated driver, schedule $sched (ADVLENS_REQUIRE_GPU=1: a skip fails)"
  ADVLENS_REQUIRE_GPU=1 ADVLENS_EMU_SCHEDULE="$sched" scripts/cuda-emu.sh \
    cargo test --all-features "$@" 2>&1 | tee "$log"
  ADVLENS_REQUIRE_GPU=1 ADVLENS_EMU_SCHEDULE="$sched" scripts/cuda-emu.sh \
    cargo test --all-features "${twin_files[@]}" -- ::cuda 2>&1 | tee -a "$log"
  if grep -q "test result: FAILED\|error: test failed" "$log"; then rm -f "$log"; exit 1; fi
  local n; n=$(grep -o "test result: ok. [0-9]* passed" "$log" | awk '{s += $4} END {print s + 0}')
  if grep -q "skipped:" "$log"; then echo "a CUDA test skipped under the emulator" >&2; exit 1; fi
  echo "CUDA tests run against the emulated device (schedule $sched): $n passed, 0 skipped"
  total=$((total + n))
  rm -f "$log"
}
run_cuda rr "${kernel_files[@]}" "${e2e_files[@]}"
run_cuda random:20261201 "${kernel_files[@]}"

stamp "CPU-only build (--no-default-features): library unit tests"
cargo test --no-default-features --lib --quiet

stamp "done: $total CUDA test runs passed on the emulated device (two schedules)"
