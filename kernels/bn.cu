// bn.cu: 2-D batch normalisation over N, H, W per channel, f32 NCHW. CPU twins:
// batchnorm2d_train / _eval / _backward / _eval_backward in src/backend/cpu.
//
// bn_stats_f32_v1: one block (256) per channel c, grid C: two passes over the channel's N*H*W
//   values in f64 (mean, then biased variance of the deviations: no E[x^2]-E[x]^2 cancellation).
// bn_apply_f32_v1: grid-stride over N*C*HW, block 256: y = (x - mean) / sqrt(var + eps) * gamma
//   + beta; used for training (batch stats) and eval (running stats).
// bn_bwd_reduce_f32_v1: one block per channel: dbeta = sum dy, dgamma = sum dy * xhat (f64).
// bn_bwd_dx_f32_v1: grid-stride: dx = gamma * rstd / M * (M dy - dbeta - xhat dgamma), M=N*HW.
// bn_eval_bwd_f32_v1: grid-stride: dx = dy * gamma / sqrt(running_var + eps).

extern "C" __global__ void bn_stats_f32_v1(const float* __restrict__ x, float* __restrict__ mean,
                                           float* __restrict__ var, int N, int C, long long HW) {
    __shared__ double scratch[32];
    __shared__ double bmean;
    const int c = blockIdx.x;
    double s = 0.0;
    for (int n = 0; n < N; ++n) {
        const float* p = x + ((long long)n * C + c) * HW;
        for (long long i = threadIdx.x; i < HW; i += blockDim.x) s += (double)p[i];
    }
    s = adv_block_sum_d(s, scratch);
    const double M = (double)N * (double)HW;
    if (threadIdx.x == 0) bmean = s / M;
    __syncthreads();
    const double mu = bmean;
    double q = 0.0;
    for (int n = 0; n < N; ++n) {
        const float* p = x + ((long long)n * C + c) * HW;
        for (long long i = threadIdx.x; i < HW; i += blockDim.x) {
            double d = (double)p[i] - mu;
            q += d * d;
        }
    }
    q = adv_block_sum_d(q, scratch);
    if (threadIdx.x == 0) {
        mean[c] = (float)mu;
        var[c] = (float)(q / M);
    }
}

extern "C" __global__ void bn_apply_f32_v1(const float* __restrict__ x,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ var,
                                           const float* __restrict__ gamma,
                                           const float* __restrict__ beta, float eps,
                                           float* __restrict__ y, int C, long long HW,
                                           long long total) {
    ADV_GRID_STRIDE(i, total) {
        int c = (int)((i / HW) % C);
        y[i] = (x[i] - mean[c]) / sqrtf(var[c] + eps) * gamma[c] + beta[c];
    }
}

extern "C" __global__ void bn_bwd_reduce_f32_v1(const float* __restrict__ x,
                                                const float* __restrict__ dy,
                                                const float* __restrict__ mean,
                                                const float* __restrict__ var, float eps,
                                                float* __restrict__ dgamma,
                                                float* __restrict__ dbeta, int N, int C,
                                                long long HW) {
    __shared__ double scratch[32];
    const int c = blockIdx.x;
    const float mu = mean[c];
    const float rstd = 1.0f / sqrtf(var[c] + eps);
    double sb = 0.0, sg = 0.0;
    for (int n = 0; n < N; ++n) {
        long long off = ((long long)n * C + c) * HW;
        for (long long i = threadIdx.x; i < HW; i += blockDim.x) {
            double g = (double)dy[off + i];
            sb += g;
            sg += g * (double)((x[off + i] - mu) * rstd);
        }
    }
    sb = adv_block_sum_d(sb, scratch);
    if (threadIdx.x == 0) dbeta[c] = (float)sb;
    sg = adv_block_sum_d(sg, scratch);
    if (threadIdx.x == 0) dgamma[c] = (float)sg;
}

extern "C" __global__ void bn_bwd_dx_f32_v1(const float* __restrict__ x,
                                            const float* __restrict__ dy,
                                            const float* __restrict__ mean,
                                            const float* __restrict__ var,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ dgamma,
                                            const float* __restrict__ dbeta, float eps,
                                            float* __restrict__ dx, int C, long long HW,
                                            long long total) {
    const float M = (float)(total / C);
    ADV_GRID_STRIDE(i, total) {
        int c = (int)((i / HW) % C);
        float rstd = 1.0f / sqrtf(var[c] + eps);
        float xhat = (x[i] - mean[c]) * rstd;
        dx[i] = gamma[c] * rstd / M * (M * dy[i] - dbeta[c] - xhat * dgamma[c]);
    }
}

extern "C" __global__ void bn_eval_bwd_f32_v1(const float* __restrict__ dy,
                                              const float* __restrict__ gamma,
                                              const float* __restrict__ rvar, float eps,
                                              float* __restrict__ dx, int C, long long HW,
                                              long long total) {
    ADV_GRID_STRIDE(i, total) {
        int c = (int)((i / HW) % C);
        dx[i] = dy[i] * gamma[c] / sqrtf(rvar[c] + eps);
    }
}
