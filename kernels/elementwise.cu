// elementwise.cu: pointwise ops, f32, flat arrays of n elements (shape does not matter).
// Launch: block 256, grid min(ceil(n/256), 524280); every kernel is a grid-stride loop, so any
// grid is correct. Memory-bound; one version each (_v1): nothing to tile.
// CPU twins: relu, relu_backward, dropout, add, mul, scale, axpy in src/backend/cpu.
//
// dropout: element i kept iff adv_uniform01(seed, i) >= p (bit-exact twin of rng::uniform01),
// mask = keep ? scale : 0 with scale = 1/(1-p) computed on the host, y = x * mask.
// bias_add_nchw: y[i] += b[(i / inner) % C] (conv bias over NCHW with inner = H*W, or a
// linear bias with inner = 1).

extern "C" __global__ void relu_fwd_f32_v1(const float* __restrict__ x, float* __restrict__ y,
                                           long long n) {
    ADV_GRID_STRIDE(i, n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}

extern "C" __global__ void relu_bwd_f32_v1(const float* __restrict__ y,
                                           const float* __restrict__ dy, float* __restrict__ dx,
                                           long long n) {
    ADV_GRID_STRIDE(i, n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

extern "C" __global__ void dropout_fwd_f32_v1(const float* __restrict__ x,
                                              float* __restrict__ y, float* __restrict__ mask,
                                              long long n, unsigned long long seed, float p,
                                              float scale) {
    ADV_GRID_STRIDE(i, n) {
        float m = adv_uniform01(seed, (unsigned long long)i) >= p ? scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

extern "C" __global__ void add_f32_v1(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ y, long long n) {
    ADV_GRID_STRIDE(i, n) { y[i] = a[i] + b[i]; }
}

extern "C" __global__ void mul_f32_v1(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ y, long long n) {
    ADV_GRID_STRIDE(i, n) { y[i] = a[i] * b[i]; }
}

extern "C" __global__ void scale_f32_v1(const float* __restrict__ x, float* __restrict__ y,
                                        float alpha, long long n) {
    ADV_GRID_STRIDE(i, n) { y[i] = alpha * x[i]; }
}

// acc += alpha * x in place.
extern "C" __global__ void axpy_f32_v1(float* __restrict__ acc, const float* __restrict__ x,
                                       float alpha, long long n) {
    ADV_GRID_STRIDE(i, n) { acc[i] = fmaf(alpha, x[i], acc[i]); }
}

extern "C" __global__ void bias_add_nchw_f32_v1(float* __restrict__ y,
                                                const float* __restrict__ b, long long n, int C,
                                                long long inner) {
    ADV_GRID_STRIDE(i, n) { y[i] += b[(i / inner) % C]; }
}
