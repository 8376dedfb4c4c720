// reduce.cu: reductions, f32 in, fixed-order trees (deterministic, no float atomics).
// CPU twins: sum_squares, channel_max, channel_mean, conv2d_backward's db, linear_backward's db.
//
// sum_squares_partial_f32_v1: block 256, grid G (host: min(ceil(n/1024), 1024)); block b writes
//   partial[b] = sum of x[i]^2 over its grid-stride share, accumulated in f64.
// sum_squares_final_f64_v1: one block of 256 sums the G partials into out[0] (f64).
// channel_max_f32_v1 / channel_mean_f32_v1: one block (256) per (n, c) plane of x[N,C,H,W],
//   grid N*C, output [N,C]. Max uses fmaxf (NaN-ignoring like f32::max on the CPU).
// bias_grad_nchw_f32_v1: one block (256) per channel k of dy[N,K,PQ]: db[k] = sum over n, pq.
// col_sum_f32_v1: one thread per column of a row-major [rows, cols] matrix (coalesced across
//   threads), block 256, grid ceil(cols/256): linear bias gradient.

extern "C" __global__ void sum_squares_partial_f32_v1(const float* __restrict__ x, long long n,
                                                      double* __restrict__ partial) {
    __shared__ double scratch[32];
    double acc = 0.0;
    ADV_GRID_STRIDE(i, n) {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = adv_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

extern "C" __global__ void sum_squares_final_f64_v1(const double* __restrict__ partial, int G,
                                                    double* __restrict__ out) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < G; i += blockDim.x) acc += partial[i];
    acc = adv_block_sum_d(acc, scratch);
    if (threadIdx.x == 0) out[0] = acc;
}

extern "C" __global__ void channel_max_f32_v1(const float* __restrict__ x,
                                              float* __restrict__ out, long long HW) {
    __shared__ float scratch[32];
    const float* xp = x + (long long)blockIdx.x * HW;
    float m = -ADV_INF;
    for (long long i = threadIdx.x; i < HW; i += blockDim.x) m = fmaxf(m, xp[i]);
    m = adv_block_max(m, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = m;
}

extern "C" __global__ void channel_mean_f32_v1(const float* __restrict__ x,
                                               float* __restrict__ out, long long HW) {
    __shared__ double scratch[32];
    const float* xp = x + (long long)blockIdx.x * HW;
    double s = 0.0;
    for (long long i = threadIdx.x; i < HW; i += blockDim.x) s += (double)xp[i];
    s = adv_block_sum_d(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)(s / (double)HW);
}

extern "C" __global__ void bias_grad_nchw_f32_v1(const float* __restrict__ dy,
                                                 float* __restrict__ db, int N, int K,
                                                 long long PQ) {
    __shared__ double scratch[32];
    const int k = blockIdx.x;
    double s = 0.0;
    for (int n = 0; n < N; ++n) {
        const float* p = dy + ((long long)n * K + k) * PQ;
        for (long long i = threadIdx.x; i < PQ; i += blockDim.x) s += (double)p[i];
    }
    s = adv_block_sum_d(s, scratch);
    if (threadIdx.x == 0) db[k] = (float)s;
}

extern "C" __global__ void col_sum_f32_v1(const float* __restrict__ a, float* __restrict__ out,
                                          int rows, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double s = 0.0;
    for (int r = 0; r < rows; ++r) s += (double)a[(long long)r * cols + c];
    out[c] = (float)s;
}
