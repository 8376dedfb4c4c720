#!/usr/bin/env bash
# Builds the emulated CUDA driver: OUT/libcuda.so.1 (+ libcuda.so link) from tests/cuda-emu/*
# and kernels/*.cu, unchanged. Usage: tests/cuda-emu/build.sh [OUT] (default target/cuda-emu).
# Kernels are compiled with -fsanitize=bounds (static shared-memory and array overruns abort
# with the file, line and index; the driver adds the kernel, block and thread).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/cuda-emu}"
mkdir -p "$out/obj"
CXX="${CXX:-g++}"
flags=(-std=c++17 -O2 -g -fPIC -fvisibility=hidden -fno-strict-aliasing -ffp-contract=off -march=native
       -Wall -Wno-sign-compare -Wno-unknown-pragmas -Wno-unused-function -I "$here")
kflags=(-fsanitize=bounds -fno-sanitize-recover=bounds)

fams=()
for f in "$root"/kernels/*.cu; do fams+=("$(basename "$f" .cu)"); done
for fam in "${fams[@]}"; do python3 "$here/gen_family.py" "$root" "$fam" > "$out/obj/fam_$fam.cpp"; done
# The emulator's own test kernels (tests/cuda_emu.rs), beside the real families.
python3 "$here/gen_family.py" "$root" --selftest > "$out/obj/fam_emu_selftest.cpp"
python3 "$here/gen_family.py" "$root" --families "${fams[@]}" emu_selftest > "$out/obj/families.cpp"

jobs=()
compile() {  # src obj extra-flags...
    local src="$1" obj="$2"; shift 2
    "$CXX" "${flags[@]}" "$@" -c "$src" -o "$obj"
}
pids=()
for fam in "${fams[@]}" emu_selftest; do
    compile "$out/obj/fam_$fam.cpp" "$out/obj/fam_$fam.o" "${kflags[@]}" & pids+=($!)
    # two compiles at a time: the machines have two cores
    if (( ${#pids[@]} >= 2 )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
compile "$here/sched.cpp" "$out/obj/sched.o" & pids+=($!)
compile "$here/driver.cpp" "$out/obj/driver.o" & pids+=($!)
compile "$out/obj/families.cpp" "$out/obj/families.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
"$CXX" -c "$here/switch.S" -o "$out/obj/switch.o"
"$CXX" -shared -o "$out/libcuda.so.1.tmp" -Wl,-soname,libcuda.so.1 -Wl,--version-script="$here/exports.map" \
    -Wl,-z,defs "$out"/obj/*.o -lubsan -lpthread -ldl
mv "$out/libcuda.so.1.tmp" "$out/libcuda.so.1"
ln -sf libcuda.so.1 "$out/libcuda.so"
echo "cuda-emu: built $out/libcuda.so.1 (${#fams[@]} kernel families)"
