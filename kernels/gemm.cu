// gemm.cu: plain f32 GEMM for linear layers, C[M,N] = sum_k A(m,k) B(k,n) (+ bias[n]), with
// arbitrary element strides so one kernel covers y = x w^T + b, dx = dy w and dw = dy^T x
// without transposing anything in memory:
//   A(m,k) = A[m*sam + k*sak], B(k,n) = B[k*sbk + n*sbn], C row-major [M,N] (ldc = N).
// has_bias: 0/1, bias indexed by column n (ignored when 0; pass any valid pointer).
// CPU twin: src/backend/cpu linear / linear_backward. The linear bias gradient (column sums of
// dy) is reduce.cu `col_sum_f32_v1`.
//
// _v1: one thread per C element, plain dot product; grid-stride, block 256, any grid.
// _v2: 64x64 tile per block of 256 threads through adv_tile_gemm (common.cuh), K step 16 in
//      shared memory, 4x4 register micro-tile. Grid (ceil(N/64), ceil(M/64)).

extern "C" __global__ void gemm_f32_v1(const float* __restrict__ A, long long sam, long long sak,
                                       const float* __restrict__ B, long long sbk,
                                       long long sbn, const float* __restrict__ bias,
                                       int has_bias, float* __restrict__ Cm, int M, int N,
                                       int K) {
    long long total = (long long)M * N;
    ADV_GRID_STRIDE(i, total) {
        int n = (int)(i % N);
        int m = (int)(i / N);
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) acc = fmaf(A[m * sam + k * sak], B[k * sbk + n * sbn], acc);
        Cm[i] = acc + (has_bias ? bias[n] : 0.0f);
    }
}

struct StridedLoad {
    const float* p; long long s0, s1;
    __device__ float operator()(int i, int j) const { return p[i * s0 + j * s1]; }
};
struct GemmStore {
    float* c; const float* bias; int has_bias; int N;
    __device__ void operator()(int m, int n, float v) const {
        c[(long long)m * N + n] = v + (has_bias ? bias[n] : 0.0f);
    }
};

extern "C" __global__ void __launch_bounds__(256)
gemm_f32_v2(const float* __restrict__ A, long long sam, long long sak,
            const float* __restrict__ B, long long sbk, long long sbn,
            const float* __restrict__ bias, int has_bias, float* __restrict__ Cm, int M, int N,
            int K) {
    StridedLoad la{A, sam, sak};
    StridedLoad lb{B, sbk, sbn};
    GemmStore st{Cm, bias, has_bias, N};
    adv_tile_gemm(M, N, K, la, lb, st);
}
