#!/usr/bin/env bash
# Run a command against the emulated CUDA driver (tests/cuda-emu): builds the fake libcuda.so.1
# into target/cuda-emu when it is missing or older than its sources or kernels/, then runs CMD
# with it and NVRTC (the pip wheel nvidia-cuda-nvrtc==13.0.*) on LD_LIBRARY_PATH.
#
#   scripts/cuda-emu.sh cargo test --release --features cuda --test cuda_ops
#   scripts/cuda-emu.sh target/release/advlens --device cuda train ...
#   ADVLENS_EMU_SCHEDULE=random:7 scripts/cuda-emu.sh cargo test --features cuda --test golden_cuda
#
# Environment read by the emulator: ADVLENS_EMU_SCHEDULE (rr | random | random:SEED),
# ADVLENS_EMU_WORKERS (block worker threads, default: cores), ADVLENS_EMU_MEM_MB (device memory,
# default 8192), ADVLENS_EMU_DEVICES (default 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${ADVLENS_EMU_DIR:-$root/target/cuda-emu}"
[[ $# -gt 0 ]] || { sed -n '2,13p' "$0"; exit 2; }

stale=0
if [[ ! -e "$out/libcuda.so.1" ]]; then
    stale=1
elif [[ -n "$(find "$root/tests/cuda-emu" "$root/kernels" -newer "$out/libcuda.so.1" -type f -print -quit)" ]]; then
    stale=1
fi
if [[ $stale == 1 ]]; then
    # One builder at a time (parallel test jobs may call this together).
    exec 9>"$out.lock" 2>/dev/null || { mkdir -p "$(dirname "$out")"; exec 9>"$out.lock"; }
    flock 9
    if [[ ! -e "$out/libcuda.so.1" || -n "$(find "$root/tests/cuda-emu" "$root/kernels" -newer "$out/libcuda.so.1" -type f -print -quit)" ]]; then
        bash "$root/tests/cuda-emu/build.sh" "$out" >&2
    fi
    flock -u 9
fi

nvrtc_dir="${NVRTC_LIB_DIR:-}"
if [[ -z "$nvrtc_dir" ]]; then
    nvrtc_dir="$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)"
fi
if [[ -z "$nvrtc_dir" || ! -e "$nvrtc_dir/libnvrtc.so.13" ]]; then
    echo "cuda-emu: libnvrtc.so.13 not found: pip install \"nvidia-cuda-nvrtc==13.0.*\" (or set NVRTC_LIB_DIR)" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$out:$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ADVLENS_CUDA_EMULATED=1
exec "$@"
