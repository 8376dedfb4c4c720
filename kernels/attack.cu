// attack.cu: fast-gradient-sign steps, f32, flat arrays of n elements (pixel scale 0..255 or
// normalised, the kernel does not care). Launch: block 256, grid-stride, any grid.
// CPU twin: fgs_step in src/backend/cpu; ifgs_step has a host twin in tests/cuda_ops.rs.
//
// fgs_step_f32_v1: y = clamp(x - eps * sign(g), lo, hi), sign(0) = sign(NaN) = 0 (FGS ascent
//   passes -eps); clamp as f32::clamp (NaN x stays NaN; the host checks lo <= hi).
// ifgs_step_f32_v1: the fused iterative-FGS step of adversarial training, in place, one pass:
//   x = clamp(x - eps * sign(g), max(lo, x0 - radius), min(hi, x0 + radius)); a negative radius
//   means no projection onto the L-inf ball around the clean image x0 (x0 is then unread).
// l2_grad_f32_v1: gradient of lambda * ||a_n - b_n||_2 (unsquared) per row n of a, b [N, D]:
//   g = (lambda / norm) * (a - b), 0 for a row with norm 0 (the ensemble attack's distance term).
//   One block of 256 per row, grid N: a block sum of (a - b)^2 in f64 (the f32 difference
//   widened, as the CPU twin `l2_distance_grad` in src/backend/cpu does), then the scaled
//   difference in f32.

__device__ __forceinline__ float adv_sign(float g) {
    return g > 0.0f ? 1.0f : (g < 0.0f ? -1.0f : 0.0f);
}

extern "C" __global__ void fgs_step_f32_v1(const float* __restrict__ x,
                                           const float* __restrict__ grad,
                                           float* __restrict__ y, float eps, float lo, float hi,
                                           long long n) {
    // Rust's f32::clamp (the CPU oracle): a NaN stays NaN (fminf/fmaxf would turn it into lo).
    ADV_GRID_STRIDE(i, n) {
        float v = x[i] - eps * adv_sign(grad[i]);
        v = v < lo ? lo : v;
        y[i] = v > hi ? hi : v;
    }
}

extern "C" __global__ void ifgs_step_f32_v1(float* __restrict__ x, const float* __restrict__ grad,
                                            const float* __restrict__ x0, float eps,
                                            float radius, float lo, float hi, long long n) {
    ADV_GRID_STRIDE(i, n) {
        float l = lo, h = hi;
        if (radius >= 0.0f) {
            float c = x0[i];
            l = fmaxf(lo, c - radius);
            h = fminf(hi, c + radius);
        }
        x[i] = fminf(fmaxf(x[i] - eps * adv_sign(grad[i]), l), h);
    }
}

extern "C" __global__ void l2_grad_f32_v1(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ g, long long D, float lambda) {
    __shared__ double scratch[32];
    __shared__ float bscale;
    const long long off = (long long)blockIdx.x * D;
    double s = 0.0;
    for (long long j = threadIdx.x; j < D; j += blockDim.x) {
        double d = (double)(a[off + j] - b[off + j]);
        s += d * d;
    }
    s = adv_block_sum_d(s, scratch);
    if (threadIdx.x == 0) {
        double norm = sqrt(s);
        bscale = norm > 0.0 ? (float)((double)lambda / norm) : 0.0f;
    }
    __syncthreads();
    const float sc = bscale;
    for (long long j = threadIdx.x; j < D; j += blockDim.x)
        g[off + j] = sc == 0.0f ? 0.0f : sc * (a[off + j] - b[off + j]);
}
