// prelude.h: the CUDA dialect of kernels/*.cu as host C++ (the emulated driver's "nvcc").
// Included before common.cuh and one kernels/<family>.cu; nothing in kernels/ is changed.
//
// - __global__/__device__/__forceinline__ vanish; __launch_bounds__ is read from the PTX instead.
// - __shared__ is `thread_local`: at block scope that implies static storage, so every fiber
//   (CUDA thread) of a block, all on one worker OS thread, sees one copy, and blocks on other
//   workers see theirs. `extern __shared__ T a[]` becomes an extern thread_local array that the
//   generated family file defines with the device's maximum size plus a canary zone.
// - threadIdx/blockIdx/blockDim/gridDim read the current fiber's and block's coordinates.
// - __syncthreads and the warp intrinsics switch fibers (runtime.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <type_traits>

#include "runtime.h"

// Kernel sources ask for portable twins of inline PTX with this (kernels/common.cuh, ADV_MMA_PTX).
#define ADVLENS_CUDA_EMU 1

#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __constant__ const
#define __align__(n) alignas(n)

#define threadIdx (::emu::cur_thread_idx())
#define blockIdx (::emu::cur_block_idx())
#define blockDim (::emu::cur_block_dim())
#define gridDim (::emu::cur_grid_dim())
#define warpSize 32

// CUDA's vector types used by the kernels (16-byte aligned, as on the device).
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

inline void __syncthreads() { ::emu::syncthreads(); }
inline int __syncthreads_count(int p) { return ::emu::syncthreads_count(p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::warp_collective(mask, ::emu::WarpOp::Sync, 0, 0, 32); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <class T>
inline uint64_t emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles of values wider than 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T emu_from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return emu_from_bits<T>(::emu::warp_collective(mask, ::emu::WarpOp::Idx, emu_bits(v), src, width));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu_from_bits<T>(::emu::warp_collective(mask, ::emu::WarpOp::Down, emu_bits(v), (int)delta, width));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu_from_bits<T>(::emu::warp_collective(mask, ::emu::WarpOp::Up, emu_bits(v), (int)delta, width));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu_from_bits<T>(::emu::warp_collective(mask, ::emu::WarpOp::Xor, emu_bits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int p) {
    return (unsigned)::emu::warp_collective(mask, ::emu::WarpOp::Ballot, p != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0; }
inline int __all_sync(unsigned mask, int p) { return __ballot_sync(mask, p) == (mask & ::emu::warp_exists_mask()); }
inline unsigned __activemask() { return ::emu::warp_exists_mask(); }

// ---- math: the host libm stands in for CUDA's (CUDA's expf/logf are within 2 ulp; tests
// compare against the CPU oracle with tolerances, never bits, across devices) ----
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
// fmaf, fmaxf, sqrtf, expf, logf ... come from <math.h> in the global namespace.
using std::isnan; using std::isinf; using std::isfinite; using std::sqrt; using std::exp;
using std::log; using std::fma; using std::fmax; using std::fmin;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
template <class T> inline T __ldg(const T* p) { return *p; }

// ---- atomics: real host atomics (blocks run concurrently on the worker threads) ----
template <class T>
inline T emu_atomic_rmw(T* p, T (*op)(T, T), T v) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    for (;;) {
        T nv = op(old, v);
        if (__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
    }
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline float atomicAdd(float* p, float v) { return emu_atomic_rmw<float>(p, [](float a, float b) { return a + b; }, v); }
inline double atomicAdd(double* p, double v) { return emu_atomic_rmw<double>(p, [](double a, double b) { return a + b; }, v); }
inline int atomicMax(int* p, int v) { return emu_atomic_rmw<int>(p, [](int a, int b) { return a > b ? a : b; }, v); }
inline int atomicMin(int* p, int v) { return emu_atomic_rmw<int>(p, [](int a, int b) { return a < b ? a : b; }, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu_atomic_rmw<unsigned>(p, [](unsigned a, unsigned b) { return a > b ? a : b; }, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return emu_atomic_rmw<unsigned>(p, [](unsigned a, unsigned b) { return a < b ? a : b; }, v); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline float atomicExch(float* p, float v) { float o; __atomic_exchange(p, &v, &o, __ATOMIC_SEQ_CST); return o; }
inline int atomicCAS(int* p, int cmp, int v) { __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return cmp; }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return cmp; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) { __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return cmp; }
