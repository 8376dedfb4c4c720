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

template <class LoadA, class LoadB, class Store>
__device__ __forceinline__ void adv_tile_gemm(int M, int N, int Kd, const LoadA& la,
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
    for (int k0 = 0; k0 < Kd; k0 += ADV_BK) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int m = m0 + a_m + 16 * i, k = k0 + a_k;
            As[a_k][a_m + 16 * i] = (m < M && k < Kd) ? la(m, k) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int k = k0 + b_k + 4 * i, n = n0 + b_n;
            Bs[b_k + 4 * i][b_n] = (k < Kd && n < N) ? lb(k, n) : 0.0f;
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
