// pool.cu: max pooling (square window k, stride, pad) and torch-style adaptive average pooling,
// f32 NCHW. CPU twins: maxpool2d(_backward), adaptive_avgpool2d(_backward) in src/backend/cpu.
// Launch: block 256, grid-stride over the flat output (forward) or flat input (backward), any
// grid. Backward kernels are gathers (one thread per input element sums every window that
// routed to it), so they need no atomics and are deterministic.
//
// Max pool contract: padded cells are -inf and never selected; ties pick the FIRST maximum in
// row-major window order (strict '>' after seeding with the first in-range cell; the first NaN
// wins, so NaN propagates like torch and the CPU oracle); the backward
// routes dy only to that element, recomputing the argmax from x (nothing is stored by forward).
// Adaptive avg window i spans [floor(i*H/oh), ceil((i+1)*H/oh)) (torch.nn.AdaptiveAvgPool2d).

// Argmax (flat h*W+w within the plane) of window (p, q), or -1 when no cell is in range.
__device__ __forceinline__ int maxpool_argmax(const float* __restrict__ xp, int H, int W, int k,
                                              int stride, int pad, int p, int q, float* best_out) {
    int h0 = p * stride - pad, w0 = q * stride - pad;
    int best_i = -1;
    float best = -ADV_INF;
    for (int r = 0; r < k; ++r) {
        int h = h0 + r;
        if (h < 0 || h >= H) continue;
        for (int s = 0; s < k; ++s) {
            int w = w0 + s;
            if (w < 0 || w >= W) continue;
            float v = xp[h * W + w];
            // Strict '>' keeps the first maximum; a NaN wins (once) so it propagates, exactly
            // like the CPU oracle's pool_argmax.
            if (best_i < 0 || v > best || (isnan(v) && !isnan(best))) {
                best = v;
                best_i = h * W + w;
            }
        }
    }
    *best_out = best;
    return best_i;
}

extern "C" __global__ void maxpool2d_fwd_f32_v1(const float* __restrict__ x,
                                                float* __restrict__ y, int NC, int H, int W,
                                                int P, int Q, int k, int stride, int pad) {
    long long total = (long long)NC * P * Q;
    ADV_GRID_STRIDE(i, total) {
        int q = (int)(i % Q);
        int p = (int)((i / Q) % P);
        long long plane = i / ((long long)P * Q);
        float best;
        int bi = maxpool_argmax(x + plane * H * W, H, W, k, stride, pad, p, q, &best);
        y[i] = bi >= 0 ? best : -ADV_INF;
    }
}

extern "C" __global__ void maxpool2d_bwd_f32_v1(const float* __restrict__ x,
                                                const float* __restrict__ dy,
                                                float* __restrict__ dx, int NC, int H, int W,
                                                int P, int Q, int k, int stride, int pad) {
    long long total = (long long)NC * H * W;
    ADV_GRID_STRIDE(i, total) {
        int w = (int)(i % W);
        int h = (int)((i / W) % H);
        long long plane = i / ((long long)H * W);
        const float* xp = x + plane * H * W;
        const float* dyp = dy + plane * P * Q;
        int self = h * W + w;
        // Windows containing row h: p*stride - pad <= h <= p*stride - pad + k - 1.
        int hp = h + pad, wp = w + pad;
        int p_lo = hp - k + 1 <= 0 ? 0 : (hp - k + 1 + stride - 1) / stride;
        int p_hi = min(hp / stride, P - 1);
        int q_lo = wp - k + 1 <= 0 ? 0 : (wp - k + 1 + stride - 1) / stride;
        int q_hi = min(wp / stride, Q - 1);
        float acc = 0.0f;
        for (int p = p_lo; p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                float best;
                if (maxpool_argmax(xp, H, W, k, stride, pad, p, q, &best) == self)
                    acc += dyp[p * Q + q];
            }
        dx[i] = acc;
    }
}

extern "C" __global__ void adaptive_avgpool2d_fwd_f32_v1(const float* __restrict__ x,
                                                         float* __restrict__ y, int NC, int H,
                                                         int W, int OH, int OW) {
    long long total = (long long)NC * OH * OW;
    ADV_GRID_STRIDE(i, total) {
        int ow = (int)(i % OW);
        int oh = (int)((i / OW) % OH);
        long long plane = i / ((long long)OH * OW);
        int h0 = (oh * H) / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
        int w0 = (ow * W) / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
        const float* xp = x + plane * H * W;
        float acc = 0.0f;
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) acc += xp[h * W + w];
        y[i] = acc / (float)((h1 - h0) * (w1 - w0));
    }
}

extern "C" __global__ void adaptive_avgpool2d_bwd_f32_v1(const float* __restrict__ dy,
                                                         float* __restrict__ dx, int NC, int H,
                                                         int W, int OH, int OW) {
    long long total = (long long)NC * H * W;
    ADV_GRID_STRIDE(i, total) {
        int w = (int)(i % W);
        int h = (int)((i / W) % H);
        long long plane = i / ((long long)H * W);
        const float* dyp = dy + plane * OH * OW;
        // Output rows whose window [floor(oh*H/OH), ceil((oh+1)*H/OH)) contains h. Windows
        // overlap when H is not a multiple of OH (and many contain h when OH > H), so scan from
        // 0 and stop once windows start past h: OH, OW are small (1..7) in every model here.
        const int oh_lo = 0, ow_lo = 0;
        float acc = 0.0f;
        for (int oh = oh_lo; oh < OH; ++oh) {
            int h0 = (oh * H) / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
            if (h0 > h) break;
            if (h >= h1) continue;
            for (int ow = ow_lo; ow < OW; ++ow) {
                int w0 = (ow * W) / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
                if (w0 > w) break;
                if (w >= w1) continue;
                acc += dyp[oh * OW + ow] / (float)((h1 - h0) * (w1 - w0));
            }
        }
        dx[i] = acc;
    }
}
