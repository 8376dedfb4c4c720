#!/usr/bin/env bash
# The project's test command (README): installs what is missing, checks formatting and lints,
# compiles every CUDA kernel offline (NVRTC -> PTX -> ptxas for sm_90, failing on spills), and runs
# the whole test suite on the CPU. GPU tests print "skipped: ..." here and run for real on a GPU box.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, all features) -D warnings"
cargo clippy --all-targets --all-features --quiet -- -D warnings

echo "== CUDA kernels: NVRTC compile + ptxas -v (sm_90)"
bash scripts/check_kernels.sh

# The NVRTC test of tests/cuda_ops.rs compiles every kernel when libnvrtc (and its builtins
# library, which NVRTC opens by name) is on the loader path; point it at the pip wheel's lib dir.
nvrtc_dir=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
if [[ -n "$nvrtc_dir" && -d "$nvrtc_dir" ]]; then
  export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

echo "== cargo test"
cargo test --all-features
