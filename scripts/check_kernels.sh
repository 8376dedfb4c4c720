#!/usr/bin/env bash
# Offline CUDA kernel check (no GPU needed): compile every kernels/<family>.cu to PTX through
# advlens's own NVRTC path (`advlens kernels compile`), then assemble each PTX with
# `ptxas -arch=$ARCH -v`, print registers / shared memory / spills per kernel, and fail on any
# compile error, assembler error or register spill. Also prints the theoretical occupancy of each
# kernel on sm_90 (H100/H200): resident blocks per SM = min(32, by registers, by shared memory,
# by threads), where
#   threads  = the kernel's __launch_bounds__ (.maxntid in the PTX), else 256 (the host's 1-D
#              launches use 256; every tiled kernel declares its bounds);
#   by regs  = floor(floor(65536 / (ceil(regs * 32 / 256) * 256)) / warps per block)
#              (registers are allocated per warp in units of 256);
#   by smem  = floor(233472 / (smem + 1024)) (228 KiB per SM, 1 KiB reserved per block);
#   by thr   = floor(2048 / threads); occupancy = blocks * warps per block / 64 warps.
# The limiter column names the smallest bound.
#
# Prerequisite (CI, same as here):
#   pip install "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-nvcc==13.0.*"
# The wheels put libnvrtc.so.13 (+ libnvrtc-builtins.so.13.0) in site-packages/nvidia/cu13/lib and
# ptxas in site-packages/nvidia/cu13/bin. This script finds them (override with NVRTC_LIB_DIR and
# PTXAS) and puts the lib dir on LD_LIBRARY_PATH: NVRTC dlopens its builtins library by name, so
# the directory must be on the loader path, not only the libnvrtc file itself.
#
# Usage: scripts/check_kernels.sh [--arch sm_90] [--out DIR] [--advlens PATH]
#   --advlens: use an already built binary (built with --features cuda) instead of cargo run.
set -euo pipefail

ARCH=sm_90
OUT=""
ADVLENS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) ARCH="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --advlens) ADVLENS="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "check_kernels: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -n "$OUT" ]] || OUT="$ROOT/target/ptx-$ARCH"

# Candidate site-packages directories of every python3 on PATH (system, user, venv).
site_dirs() {
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" - <<'PY' 2>/dev/null || true
import site, sys
dirs = list(getattr(site, "getsitepackages", lambda: [])())
try:
    dirs.append(site.getusersitepackages())
except Exception:
    pass
dirs += [p for p in sys.path if p.endswith("-packages")]
print("\n".join(dict.fromkeys(dirs)))
PY
    done
}

find_in_sites() {  # $1 = relative glob under site-packages
    local d f
    while IFS= read -r d; do
        [[ -n "$d" ]] || continue
        for f in $d/$1; do
            [[ -e "$f" ]] && { echo "$f"; return 0; }
        done
    done < <(site_dirs)
    return 1
}

if [[ -z "${NVRTC_LIB_DIR:-}" ]]; then
    lib="$(find_in_sites 'nvidia/cu13/lib/libnvrtc.so.13' || find_in_sites 'nvidia/cuda_nvrtc/lib/libnvrtc.so.*' || true)"
    if [[ -z "$lib" && -e /usr/local/cuda/lib64/libnvrtc.so ]]; then lib=/usr/local/cuda/lib64/libnvrtc.so; fi
    [[ -n "$lib" ]] || { echo "check_kernels: libnvrtc.so.13 not found; run: pip install \"nvidia-cuda-nvrtc==13.0.*\" (or set NVRTC_LIB_DIR)" >&2; exit 1; }
    NVRTC_LIB_DIR="$(dirname "$lib")"
fi
if [[ -z "${PTXAS:-}" ]]; then
    PTXAS="$(find_in_sites 'nvidia/cu13/bin/ptxas' || find_in_sites 'nvidia/cuda_nvcc/bin/ptxas' || command -v ptxas || true)"
    [[ -n "$PTXAS" ]] || { echo "check_kernels: ptxas not found; run: pip install \"nvidia-cuda-nvcc==13.0.*\" (or set PTXAS)" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="$NVRTC_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "check_kernels: NVRTC from $NVRTC_LIB_DIR"
echo "check_kernels: $("$PTXAS" --version | tail -1) ($PTXAS)"

rm -rf "$OUT"
mkdir -p "$OUT"
if [[ -n "$ADVLENS" ]]; then
    "$ADVLENS" --device cpu kernels compile --arch "$ARCH" --out "$OUT"
else
    cargo run --quiet --features cuda -- --device cpu kernels compile --arch "$ARCH" --out "$OUT"
fi

shopt -s nullglob
ptx_files=("$OUT"/*.ptx)
[[ ${#ptx_files[@]} -gt 0 ]] || { echo "check_kernels: no PTX written to $OUT" >&2; exit 1; }

fail=0
kernels=0
printf '%-34s %-12s %5s %8s %8s %8s %7s %6s %6s %-7s %s\n' kernel family regs smem_B stack_B spill_B threads blk/SM occ limiter status
for ptx in "${ptx_files[@]}"; do
    fam="$(basename "$ptx" .ptx)"
    if ! log="$("$PTXAS" -arch="$ARCH" -v "$ptx" -o "$OUT/$fam.cubin" 2>&1)"; then
        echo "$log" >&2
        echo "check_kernels: ptxas failed on $ptx" >&2
        fail=1
        continue
    fi
    # ptxas -v prints, per entry: "Compiling entry function 'NAME'", then "N bytes stack frame,
    # S bytes spill stores, L bytes spill loads", then "Used R registers, ... B bytes smem".
    # Threads per block of each entry, from .maxntid (launch bounds) in the PTX.
    declare -A ntid=()
    while IFS=$'\t' read -r e n; do ntid[$e]=$n; done < <(awk '
        /^\.visible \.entry|^\.entry/ { match($0, /entry [A-Za-z0-9_]+/); cur = substr($0, RSTART + 6, RLENGTH - 6) }
        /\.maxntid/ && cur != "" { gsub(/,/, " "); n = 1; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) n *= $i; print cur "\t" n; cur = "" }' "$ptx")
    while IFS=$'\t' read -r name regs smem stack spill; do
        kernels=$((kernels + 1))
        status=ok
        if [[ "$spill" != "0" ]]; then status=SPILL; fail=1; fi
        thr="${ntid[$name]:-256}"
        read -r blocks occ lim < <(awk -v r="$regs" -v s="$smem" -v t="$thr" 'BEGIN {
            w = int((t + 31) / 32); rw = int((r * 32 + 255) / 256) * 256
            br = (r > 0) ? int(int(65536 / rw) / w) : 32
            bs = int(233472 / (s + 1024)); bt = int(2048 / t)
            b = 32; l = "blocks"
            if (br < b) { b = br; l = "regs" }
            if (bs < b) { b = bs; l = "smem" }
            if (bt < b) { b = bt; l = "threads" }
            printf "%d %.2f %s\n", b, b * w / 64, l }')
        printf '%-34s %-12s %5s %8s %8s %8s %7s %6s %6s %-7s %s\n' "$name" "$fam" "$regs" "$smem" "$stack" "$spill" "$thr" "$blocks" "$occ" "$lim" "$status"
    done < <(awk '
        /Compiling entry function/ { if (name != "") emit(); match($0, /'\''[^'\'']+'\''/); name = substr($0, RSTART + 1, RLENGTH - 2); regs = "?"; smem = 0; stack = 0; spill = 0 }
        /bytes stack frame/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "stack") stack = $i; if ($(i+1) == "bytes" && $(i+2) == "spill") spill += $i } }
        /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) { if ($i == "Used") regs = $(i+1); if ($(i+1) == "bytes" && $(i+2) == "smem") smem = $i } }
        function emit() { printf "%s\t%s\t%s\t%s\t%s\n", name, regs, smem, stack, spill }
        END { if (name != "") emit() }' <<<"$log")
done
if [[ $kernels -eq 0 ]]; then echo "check_kernels: ptxas reported no entry functions" >&2; fail=1; fi
if [[ $fail -ne 0 ]]; then
    echo "check_kernels: FAILED ($kernels kernels assembled; see errors / SPILL above)" >&2
    exit 1
fi
echo "check_kernels: OK, $kernels kernels in ${#ptx_files[@]} families assembled for $ARCH with no spills"
