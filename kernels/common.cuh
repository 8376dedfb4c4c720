// common.cuh: helpers shared by every kernel family. The runtime (src/backend/cuda/compile.rs)
// prepends this text to each kernels/<family>.cu before NVRTC compiles it, because the embedded
// sources have no file system to #include from. Keep it free of kernels (no __global__ here).
//
// Conventions of every family:
// - f32 data, row-major, NCHW images, KCRS conv weights, [out, in] linear weights.
// - Element counts and flat offsets are `long long` (VGG activations at batch 256 are ~8e8
//   elements; products of dims overflow int), dims are `int`.
// - Elementwise kernels use grid-stride loops, so any grid size is correct; the host picks
//   min(ceil(n / 256), 65535 * 8) blocks of 256 threads.
// - Reductions are deterministic: fixed tree order, no floating-point atomics, so the same
//   input gives the same bits on the same device.

#define ADV_INF __int_as_float(0x7f800000)

// SplitMix64 finaliser of (seed, index): the CUDA twin of src/rng.rs::hash64. Must stay
// bit-identical, since dropout masks drawn on the GPU and the CPU must agree.
__device__ __forceinline__ unsigned long long adv_hash64(unsigned long long seed,
                                                         unsigned long long index) {
    unsigned long long z = seed + index * 0x9E3779B97F4A7C15ULL + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 bits: exact twin of src/rng.rs::uniform01 (the 24-bit integer
// converts to f32 exactly, and the scale is a power of two).
__device__ __forceinline__ float adv_uniform01(unsigned long long seed, unsigned long long index) {
    return (float)(adv_hash64(seed, index) >> 40) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ float adv_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double adv_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float adv_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; every thread of the block must call it; the result is valid in thread 0.
// `scratch` holds one value per warp (32 entries are enough for 1024 threads).
__device__ __forceinline__ double adv_block_sum_d(double v, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = adv_warp_sum_d(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nwarps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : 0.0;
    if (warp == 0) v = adv_warp_sum_d(v);
    return v;
}

__device__ __forceinline__ float adv_block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = adv_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nwarps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) v = adv_warp_sum(v);
    return v;
}

__device__ __forceinline__ float adv_block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = adv_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nwarps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : -ADV_INF;
    if (warp == 0) v = adv_warp_max(v);
    return v;
}

#define ADV_GRID_STRIDE(i, n)                                                      \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// ---- tiled GEMM skeleton (used by gemm.cu and the implicit-GEMM convolutions in conv.cu) ----
// C[M, N] = sum_k A(m, k) * B(k, n), then st(m, n, acc) for every in-range (m, n).
// Block: 256 threads, tile ADV_BM x ADV_BN = 64 x 64, K step ADV_BK = 16; each thread owns a
// 4 x 4 micro-tile at rows ty + 16 i, cols tx + 16 j (strided, so shared-memory reads are
// broadcasts for A and 16 consecutive words for B: no bank conflicts). Grid: x over N tiles,
// y over M tiles. Loaders return 0 outside the matrix (and for padded/implicit zeros), so the
// main loop needs no bounds logic.
// Loads: A tile element idx -> (k = idx % 16, m = idx / 16), so 16 consecutive threads read 16
// consecutive k of one row (rows of weights are contiguous in k). B tile element idx ->
// (n = idx % 64, k = idx / 64), so consecutive threads read consecutive n (for convolutions:
// neighbouring output pixels, i.e. neighbouring input addresses). Each thread's n is fixed over
// the K loop, so the loader's n-only index math is hoisted by the compiler.
#define ADV_BM 64
#define ADV_BN 64
#define ADV_BK 16
#define ADV_PAD 4

// adv_tile_gemm over the reduction range [kb, ke) only (split-K: each split's partial sum).
template <class LoadA, class LoadB, class Store>
__device__ __forceinline__ void adv_tile_gemm_range(int M, int N, int kb, int ke, const LoadA& la,
                                                    const LoadB& lb, const Store& st) {
    __shared__ float As[ADV_BK][ADV_BM + ADV_PAD];
    __shared__ float Bs[ADV_BK][ADV_BN + ADV_PAD];
    const int t = threadIdx.x;
    const int tx = t & 15, ty = t >> 4;
    const int m0 = blockIdx.y * ADV_BM;
    const int n0 = blockIdx.x * ADV_BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int a_k = t & 15, a_m = t >> 4;   // + 16 * i rows
    const int b_n = t & 63, b_k = t >> 6;   // + 4 * i k's
    for (int k0 = kb; k0 < ke; k0 += ADV_BK) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int m = m0 + a_m + 16 * i, k = k0 + a_k;
            As[a_k][a_m + 16 * i] = (m < M && k < ke) ? la(m, k) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int k = k0 + b_k + 4 * i, n = n0 + b_n;
            Bs[b_k + 4 * i][b_n] = (k < ke && n < N) ? lb(k, n) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < ADV_BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (n < N) st(m, n, acc[i][j]);
        }
    }
}

template <class LoadA, class LoadB, class Store>
__device__ __forceinline__ void adv_tile_gemm(int M, int N, int Kd, const LoadA& la,
                                              const LoadB& lb, const Store& st) {
    adv_tile_gemm_range(M, N, 0, Kd, la, lb, st);
}

// ---- cp.async: global -> shared copies that bypass registers (sm_80+) ----
// adv_cp_async_f32 copies one float, or writes 0.0f when src is null (the implicit zeros of
// padding and of the tile edges), as `cp.async.ca.shared.global [dst], [src], 4, src-size` with
// src-size 0 zero-fills; `fallback` is any valid global address, passed when src is null so no
// null pointer reaches the instruction. adv_cp_async_f32x4 copies 16 aligned bytes (4 floats).
// Under the emulated driver the copies go through ::emu::cp_async, which lands them late
// (round-robin schedule) or early (random schedule) so a missing wait or barrier shows; on a
// compile without cp.async they are plain synchronous copies.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800) && !defined(ADVLENS_CUDA_EMU)
#define ADV_ASYNC_PTX 1
#else
#define ADV_ASYNC_PTX 0
#endif

__device__ __forceinline__ void adv_cp_async_f32(float* dst, const float* src,
                                                 const float* fallback) {
#if defined(ADVLENS_CUDA_EMU)
    (void)fallback;
    ::emu::cp_async(dst, src, 4, src ? 4 : 0);
#elif ADV_ASYNC_PTX
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d),
                 "l"(src ? src : fallback), "r"(src ? 4 : 0));
#else
    (void)fallback;
    *dst = src ? *src : 0.0f;
#endif
}

__device__ __forceinline__ void adv_cp_async_f32x4(float* dst, const float* src) {
#if defined(ADVLENS_CUDA_EMU)
    ::emu::cp_async(dst, src, 16, 16);
#elif ADV_ASYNC_PTX
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
#else
    *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
#endif
}

__device__ __forceinline__ void adv_cp_async_commit() {
#if defined(ADVLENS_CUDA_EMU)
    ::emu::cp_async_commit();
#elif ADV_ASYNC_PTX
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void adv_cp_async_wait() {
#if defined(ADVLENS_CUDA_EMU)
    ::emu::cp_async_wait(N);
#elif ADV_ASYNC_PTX
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---- v3 SIMT GEMM skeleton (the f32 `_v3` convolutions of conv.cu) ----
// C[M, N] = sum over k in [kb, ke) of A(m, k) B(k, n), then st(m, n, acc) for in-range (m, n).
// Block: 256 threads as 16 x 16 (tx = t & 15, ty = t >> 4); tile BM x 128 (BM = 128 or 64),
// K step 8. Thread (tx, ty) owns rows ty*4 + i + 64u (u < BM/64, i < 4) and columns
// tx*4 + j + 64v (v < 2, j < 4): 8x8 accumulators at BM 128, 4x8 at BM 64. 64 (32) FMAs per k
// against 4 (3) 16-byte shared loads: per warp per k, 2 (1) broadcast A vectors (one
// wavefront each) and 2 B vectors of 16 distinct addresses (2 wavefronts each), no conflicts.
// Shared memory: As[2][8][BM + 4] (k-major, m contiguous) and Bs[2][8][132], two stages. The
// copies of chunk s + 1 are issued with cp.async before the FMAs of chunk s, so a chunk's
// global latency hides behind the previous chunk's math; 4-byte copies, zero-filled where the
// loader says the element is an implicit zero (padding, tile edges).
// Loaders: la.ptr(m, k) and lb.ptr(k, n) return the element's address, or nullptr for a zero;
// they are called only for m < M, kb <= k < ke, n < N. `fallback` is any valid global address.
// A copies: (k = t & 7, m = (t >> 3) + 32 i): 8 threads read 8 consecutive k of one row (rows
// of weights and of dy are contiguous in k); the shared stores As[k][m] hit banks 4k + m mod 32,
// all distinct in a warp. B copies: (n = t & 127, k = (t >> 7) + 2 i): consecutive threads read
// consecutive n (neighbouring output pixels) and store consecutive words.
template <int BM, class LoadA, class LoadB, class Store>
__device__ __forceinline__ void adv_tile_gemm_v3(int M, int N, int kb, int ke, const LoadA& la,
                                                 const LoadB& lb, const Store& st,
                                                 const float* fallback) {
    constexpr int BN = 128, BK = 8, MU = BM / 64, TM = 4 * MU;
    __align__(16) __shared__ float As[2][BK][BM + 4];
    __align__(16) __shared__ float Bs[2][BK][BN + 4];
    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int a_k = t & 7, a_m = t >> 3, b_n = t & 127, b_k = t >> 7;
    const bool b_in = n0 + b_n < N;
    auto load = [&](int buf, int k0) {
        const int ka = k0 + a_k;
#pragma unroll
        for (int i = 0; i < BM / 32; ++i) {
            const int m = m0 + a_m + 32 * i;
            adv_cp_async_f32(&As[buf][a_k][a_m + 32 * i],
                             (m < M && ka < ke) ? la.ptr(m, ka) : nullptr, fallback);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k = k0 + b_k + 2 * i;
            adv_cp_async_f32(&Bs[buf][b_k + 2 * i][b_n],
                             (b_in && k < ke) ? lb.ptr(k, n0 + b_n) : nullptr, fallback);
        }
    };
    float acc[TM][8];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    const int nk = ke > kb ? (ke - kb + BK - 1) / BK : 0;
    if (nk > 0) load(0, kb);
    adv_cp_async_commit();
    for (int s = 0; s < nk; ++s) {
        if (s + 1 < nk) load((s + 1) & 1, kb + (s + 1) * BK);
        adv_cp_async_commit();
        adv_cp_async_wait<1>();  // this thread's copies of chunk s have landed
        __syncthreads();         // ... and every other thread's
        const int buf = s & 1;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], b[8];
#pragma unroll
            for (int u = 0; u < MU; ++u) {
                const float4 v = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4 + 64 * u]);
                a[4 * u] = v.x; a[4 * u + 1] = v.y; a[4 * u + 2] = v.z; a[4 * u + 3] = v.w;
            }
#pragma unroll
            for (int v = 0; v < 2; ++v) {
                const float4 w = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4 + 64 * v]);
                b[4 * v] = w.x; b[4 * v + 1] = w.y; b[4 * v + 2] = w.z; b[4 * v + 3] = w.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();  // chunk s is read by all before chunk s + 2's copies overwrite it
    }
    adv_cp_async_wait<0>();
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + ty * 4 + (i & 3) + 64 * (i >> 2);
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int n = n0 + tx * 4 + (j & 3) + 64 * (j >> 2);
            if (n < N) st(m, n, acc[i][j]);
        }
    }
}

// ---- tensor-core MMA: one device function per shape, inline PTX on the GPU, a portable twin ---
// The emulated driver (tests/cuda-emu) compiles these sources as host C++, where inline PTX
// cannot run; it defines ADVLENS_CUDA_EMU. NVRTC defines __CUDA_ARCH__. ADV_MMA_PTX selects the
// `asm` path: only on a real sm_80+ compile, never under the emulator, and a GPU build can force
// the portable twin with -DADV_MMA_PORTABLE (a cross-check of the inline PTX).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800) && !defined(ADVLENS_CUDA_EMU) && \
    !defined(ADV_MMA_PORTABLE)
#define ADV_MMA_PTX 1
#else
#define ADV_MMA_PTX 0
#endif

// f32 -> tf32 as `cvt.rna.tf32.f32`: round to nearest, ties away from zero, to 10 explicit
// mantissa bits (the low 13 bits of the result are zero). Inf and NaN pass unchanged.
// Host twin: src/backend/precision.rs::round_tf32.
__device__ __forceinline__ unsigned adv_f32_to_tf32_portable(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;  // sign-magnitude: adding half an ulp rounds ties away
}
__device__ __forceinline__ unsigned adv_f32_to_tf32(float x) {
#if ADV_MMA_PTX
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    return adv_f32_to_tf32_portable(x);
#endif
}

// f32 -> bf16 bits, round to nearest even (`cvt.rn.bf16.f32`); NaN -> quiet NaN of its sign.
// Host twin: half::bf16::from_f32 (src/backend/precision.rs::round_bf16).
__device__ __forceinline__ unsigned adv_f32_to_bf16_portable(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return ((u >> 16) | 0x40u) & 0xffffu;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ unsigned adv_f32_to_bf16(float x) {
#if ADV_MMA_PTX
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return (unsigned)r;
#else
    return adv_f32_to_bf16_portable(x);
#endif
}
// Two bf16 in one 32-bit register as the MMA fragments hold them: the lower-indexed element
// (even k) in the low half.
__device__ __forceinline__ unsigned adv_bf16x2(float lo, float hi) {
    return adv_f32_to_bf16(lo) | (adv_f32_to_bf16(hi) << 16);
}
__device__ __forceinline__ float adv_bf16_lo(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float adv_bf16_hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }

// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k8" (.tf32) and "... mma.m16n8k16"
// (.bf16)); lane = threadIdx.x & 31 (1-D blocks), g = lane >> 2, t = lane & 3.
//   m16n8k8 tf32  A 16x8 row:  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//                 B 8x8 col:   b0 (k=t, n=g)  b1 (k=t+4, n=g)
//   m16n8k16 bf16 A 16x16 row, two bf16 per register (low half = even k):
//                 a0 (g, 2t..2t+1)  a1 (g+8, 2t..2t+1)  a2 (g, 2t+8..2t+9)  a3 (g+8, 2t+8..2t+9)
//                 B 16x8 col:  b0 (k=2t..2t+1, n=g)  b1 (k=2t+8..2t+9, n=g)
//   C/D 16x8 f32 (both):       c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
// So register i of A for (row, k) sits in lane (row & 7) * 4 + (k & 3) [tf32] or
// (row & 7) * 4 + ((k >> 1) & 3) [bf16], and B for (k, n) in lane n * 4 + (same k term).
// The portable twins gather, for each k, the A and B elements of this lane's four outputs with
// warp shuffles and accumulate in f32 in increasing k: d = fma(a, b, d). Products of tf32 or
// bf16 values are exact in f32, so a twin differs from the hardware only in the order of its
// f32 additions (the PTX ISA leaves that order open). All 32 lanes must call (full mask).

__device__ __forceinline__ void adv_mma_m16n8k8_tf32_portable(float d[4], const unsigned a[4],
                                                              const unsigned b[2],
                                                              const float c[4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float acc0 = c[0], acc1 = c[1], acc2 = c[2], acc3 = c[3];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int hi = k >> 2, kl = k & 3;
        float alo = __uint_as_float(__shfl_sync(0xffffffffu, a[hi ? 2 : 0], g * 4 + kl));
        float ahi = __uint_as_float(__shfl_sync(0xffffffffu, a[hi ? 3 : 1], g * 4 + kl));
        float b0 = __uint_as_float(__shfl_sync(0xffffffffu, b[hi], (2 * t) * 4 + kl));
        float b1 = __uint_as_float(__shfl_sync(0xffffffffu, b[hi], (2 * t + 1) * 4 + kl));
        acc0 = fmaf(alo, b0, acc0);
        acc1 = fmaf(alo, b1, acc1);
        acc2 = fmaf(ahi, b0, acc2);
        acc3 = fmaf(ahi, b1, acc3);
    }
    d[0] = acc0; d[1] = acc1; d[2] = acc2; d[3] = acc3;
}

// a, b: tf32 bit patterns (adv_f32_to_tf32); c, d: f32. d may alias c.
__device__ __forceinline__ void adv_mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                     const unsigned b[2], const float c[4]) {
#if ADV_MMA_PTX
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    adv_mma_m16n8k8_tf32_portable(d, a, b, c);
#endif
}

__device__ __forceinline__ void adv_mma_m16n8k16_bf16_portable(float d[4], const unsigned a[4],
                                                               const unsigned b[2],
                                                               const float c[4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float acc0 = c[0], acc1 = c[1], acc2 = c[2], acc3 = c[3];
#pragma unroll
    for (int kp = 0; kp < 8; ++kp) {  // k pairs (2 kp, 2 kp + 1)
        const int hi = kp >> 2, kl = kp & 3;
        unsigned alo = __shfl_sync(0xffffffffu, a[hi ? 2 : 0], g * 4 + kl);
        unsigned ahi = __shfl_sync(0xffffffffu, a[hi ? 3 : 1], g * 4 + kl);
        unsigned b0 = __shfl_sync(0xffffffffu, b[hi], (2 * t) * 4 + kl);
        unsigned b1 = __shfl_sync(0xffffffffu, b[hi], (2 * t + 1) * 4 + kl);
        acc0 = fmaf(adv_bf16_lo(alo), adv_bf16_lo(b0), acc0);
        acc0 = fmaf(adv_bf16_hi(alo), adv_bf16_hi(b0), acc0);
        acc1 = fmaf(adv_bf16_lo(alo), adv_bf16_lo(b1), acc1);
        acc1 = fmaf(adv_bf16_hi(alo), adv_bf16_hi(b1), acc1);
        acc2 = fmaf(adv_bf16_lo(ahi), adv_bf16_lo(b0), acc2);
        acc2 = fmaf(adv_bf16_hi(ahi), adv_bf16_hi(b0), acc2);
        acc3 = fmaf(adv_bf16_lo(ahi), adv_bf16_lo(b1), acc3);
        acc3 = fmaf(adv_bf16_hi(ahi), adv_bf16_hi(b1), acc3);
    }
    d[0] = acc0; d[1] = acc1; d[2] = acc2; d[3] = acc3;
}

// a, b: packed bf16x2 (adv_bf16x2); c, d: f32. d may alias c.
__device__ __forceinline__ void adv_mma_m16n8k16_bf16(float d[4], const unsigned a[4],
                                                      const unsigned b[2], const float c[4]) {
#if ADV_MMA_PTX
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    adv_mma_m16n8k16_bf16_portable(d, a, b, c);
#endif
}

// ---- tensor-core tiled GEMM skeleton (conv.cu's _tf32_v1 / _bf16_v1 kernels) ----
// Same contract as adv_tile_gemm (loaders return values of A(m, k) and B(k, n) in range, the
// skeleton zero-fills outside; st(m, n, acc) for every in-range output), so every conv loader
// of the f32 _v2 kernels serves the tensor-core kernels unchanged.
// Block: 128 threads = 4 warps, block tile 64 x 64, K chunk 16; warp w owns the 32 x 32 sub-tile
// at rows 32 (w >> 1), cols 32 (w & 1): 2 x 4 MMA tiles of 16 x 8, 32 f32 accumulators per lane.
// Inputs are rounded once, when the chunk is written to shared memory (tf32: one word per
// element; bf16: two elements per word, even k low), so the shared tiles hold MMA operands and
// the fragment loads are plain 32-bit reads. Row stride KW + 4 words: the 32 lanes of a fragment
// read (row g, word t) hit banks (g (KW + 4) + t) mod 32, all distinct for KW = 16 and 8.
// Grid: (ceil(N / 64), ceil(M / 64)). One stage (load, barrier, MMA, barrier): no pipelining yet.
#define ADV_TC_BM 64
#define ADV_TC_BN 64
#define ADV_TC_BK 16
#define ADV_TC_THREADS 128

struct AdvTf32 {
    static constexpr int KPW = 1;  // K elements per 32-bit shared word
    template <class F>
    __device__ static __forceinline__ unsigned pack(const F& f) { return adv_f32_to_tf32(f(0)); }
    __device__ static __forceinline__ void mma(float d[4], const unsigned a[4],
                                               const unsigned b[2], const float c[4]) {
        adv_mma_m16n8k8_tf32(d, a, b, c);
    }
};
struct AdvBf16 {
    static constexpr int KPW = 2;
    template <class F>
    __device__ static __forceinline__ unsigned pack(const F& f) { return adv_bf16x2(f(0), f(1)); }
    __device__ static __forceinline__ void mma(float d[4], const unsigned a[4],
                                               const unsigned b[2], const float c[4]) {
        adv_mma_m16n8k16_bf16(d, a, b, c);
    }
};

template <class Prec, class LoadA, class LoadB, class Store>
__device__ __forceinline__ void adv_tc_gemm(int M, int N, int Kd, const LoadA& la,
                                            const LoadB& lb, const Store& st) {
    constexpr int KW = ADV_TC_BK / Prec::KPW;  // words per row of a chunk (16 tf32, 8 bf16)
    constexpr int LD = KW + 4;
    __shared__ unsigned As[ADV_TC_BM][LD];
    __shared__ unsigned Bs[ADV_TC_BN][LD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int m0 = blockIdx.y * ADV_TC_BM, n0 = blockIdx.x * ADV_TC_BN;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < Kd; k0 += ADV_TC_BK) {
        // A: consecutive threads take consecutive words of one row (weights are k-contiguous).
        for (int i = tid; i < ADV_TC_BM * KW; i += ADV_TC_THREADS) {
            const int kw = i % KW, m = m0 + i / KW, kb = k0 + kw * Prec::KPW;
            As[i / KW][kw] = Prec::pack([&](int j) {
                return (m < M && kb + j < Kd) ? la(m, kb + j) : 0.0f;
            });
        }
        // B: consecutive threads take consecutive n (neighbouring output pixels).
        for (int i = tid; i < ADV_TC_BN * KW; i += ADV_TC_THREADS) {
            const int nn = i % ADV_TC_BN, kw = i / ADV_TC_BN, n = n0 + nn;
            const int kb = k0 + kw * Prec::KPW;
            Bs[nn][kw] = Prec::pack([&](int j) {
                return (n < N && kb + j < Kd) ? lb(kb + j, n) : 0.0f;
            });
        }
        __syncthreads();
#pragma unroll
        for (int s = 0; s < KW / 8; ++s) {
            unsigned af[2][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = wm + mi * 16 + g;
                af[mi][0] = As[r][s * 8 + t];
                af[mi][1] = As[r + 8][s * 8 + t];
                af[mi][2] = As[r][s * 8 + t + 4];
                af[mi][3] = As[r + 8][s * 8 + t + 4];
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int c = wn + ni * 8 + g;
                bf[ni][0] = Bs[c][s * 8 + t];
                bf[ni][1] = Bs[c][s * 8 + t + 4];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) Prec::mma(acc[mi][ni], af[mi], bf[ni], acc[mi][ni]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int r = m0 + wm + mi * 16 + g, c = n0 + wn + ni * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int rr = r + (e >> 1) * 8, cc = c + (e & 1);
                if (rr < M && cc < N) st(rr, cc, acc[mi][ni][e]);
            }
        }
    }
}
