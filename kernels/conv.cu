// conv.cu: 2-D convolution forward, backward-data and backward-filter (square kernel R x R,
// zero padding `pad`, stride `stride`), f32, x NCHW [N,C,H,W], w KCRS [K,C,R,R], y/dy [N,K,P,Q]
// with P = (H + 2 pad - R) / stride + 1 (floor, like torch). CPU twin: src/backend/cpu (conv2d,
// conv2d_backward). Bias gradient db is a channel reduction: reduce.cu `bias_grad_nchw_f32_v1`.
//
// _v1 (direct, the second oracle and bench baseline): one thread per output element, plain
//   loops over the reduction, grid-stride over the flat output. Block 256, any grid.
//   fwd:        out (n,k,p,q), reduces over (c,r,s);
//   bwd_data:   out (n,c,h,w), reduces over (k,r,s) with p = (h + pad - r) / stride when exact;
//   bwd_filter: out (k,c,r,s), reduces over (n,p,q) (slow for large N*P*Q: baseline only).
// _v2 (tiled implicit GEMM in shared memory, adv_tile_gemm in common.cuh): 64x64 output tile
//   per block of 256 threads, K step 16, 4x4 register micro-tile per thread, im2col done on the
//   fly by the B loader (never materialised). Grid (ceil(Ncols/64), ceil(Mrows/64)).
//   fwd:        C[K, N*P*Q]  = W[K, C*R*R]      x im2col(x)[C*R*R, N*P*Q]  (+ bias per row)
//   bwd_data:   C[C, N*H*W]  = W^T[C, K*R*R]    x col(dy)[K*R*R, N*H*W]    (exact-stride gather)
//   bwd_filter: C[K, C*R*R]  = dy[K, N*P*Q]     x im2col(x)^T[N*P*Q, C*R*R]
//   Output index m,n is scattered back to NCHW/KCRS by the store functor.
//   Limits: M-tiles go in grid.y (<= 65535 tiles, i.e. 4M channels); no split-K, so
//   bwd_filter with a long N*P*Q reduction runs few blocks (v3 splits it).
// _v3 (the default; SIMT implicit GEMM on adv_tile_gemm_v3 in common.cuh): block tiles of
//   BM x 128 (BM 128: `_f32_v3`, 8x8 accumulators per thread; BM 64: `_m64_f32_v3`, 4x8), K step
//   8, 256 threads, A and B fragments read from shared memory as float4, two shared-memory
//   stages filled by cp.async (4-byte copies, zero-fill for padding and tile edges), so the
//   copies of chunk s + 1 are in flight during the FMAs of chunk s. Same loaders, stores and
//   GEMM shapes as v2 (the loaders give addresses, ptr(), instead of values).
//   Heuristic (src/backend/cuda/conv.rs, v3_tile_rows): BM 64 when the GEMM has <= 64 rows or
//   when 128-row tiles would give fewer blocks than the 132 SMs of an H100/H200 (one wave);
//   BM 128 otherwise. Grid (ceil(Ncols/128), ceil(Mrows/BM), splits).
//   Backward-filter is split-K: grid.z slices [z chunk, (z + 1) chunk) of the N*P*Q reduction,
//   each into a workspace ws[splits][K][C*R*R]; conv2d_splitk_sum_f32_v1 then adds the slices
//   in the fixed order z = 0, 1, ... (deterministic; no float atomics). splitk_plan: tiles =
//   ceil(K/BM) ceil(CRR/128); splits = min(ceil(264 / tiles) (two waves of 132 SMs),
//   N*P*Q / 64, 64, workspace <= 256 MiB); chunk = ceil(N*P*Q / splits) rounded up to 16; one
//   split writes dw directly.
//   Not yet: 16-byte copies (the implicit-GEMM gathers are 4-byte; weights would allow 16),
//   table-driven (c, r, s) offsets instead of two divisions per copied element, a third stage.
// _tf32_v1 / _bf16_v1: tensor cores (see their section below).

struct ConvGeom {
    int N, C, H, W, K, R, P, Q, stride, pad;
};

__device__ __forceinline__ ConvGeom conv_geom(int N, int C, int H, int W, int K, int R, int P,
                                              int Q, int stride, int pad) {
    ConvGeom g;
    g.N = N; g.C = C; g.H = H; g.W = W; g.K = K; g.R = R; g.P = P; g.Q = Q;
    g.stride = stride; g.pad = pad;
    return g;
}

// ------------------------------------------------------------------ v1: direct -------------

// has_bias: 0 or 1 (b is ignored when 0; pass any valid pointer).
extern "C" __global__ void conv2d_fwd_f32_v1(const float* __restrict__ x,
                                             const float* __restrict__ w,
                                             const float* __restrict__ b, float* __restrict__ y,
                                             int N, int C, int H, int W, int K, int R, int P,
                                             int Q, int stride, int pad, int has_bias) {
    long long total = (long long)N * K * P * Q;
    ADV_GRID_STRIDE(i, total) {
        int q = (int)(i % Q);
        int p = (int)((i / Q) % P);
        int k = (int)((i / ((long long)P * Q)) % K);
        int n = (int)(i / ((long long)K * P * Q));
        float acc = has_bias ? b[k] : 0.0f;
        for (int c = 0; c < C; ++c) {
            const float* xc = x + ((long long)n * C + c) * H * W;
            const float* wc = w + ((long long)k * C + c) * R * R;
            for (int r = 0; r < R; ++r) {
                int h = p * stride - pad + r;
                if (h < 0 || h >= H) continue;
                for (int s = 0; s < R; ++s) {
                    int ww = q * stride - pad + s;
                    if (ww < 0 || ww >= W) continue;
                    acc = fmaf(xc[(long long)h * W + ww], wc[r * R + s], acc);
                }
            }
        }
        y[i] = acc;
    }
}

extern "C" __global__ void conv2d_bwd_data_f32_v1(const float* __restrict__ dy,
                                                  const float* __restrict__ w,
                                                  float* __restrict__ dx, int N, int C, int H,
                                                  int W, int K, int R, int P, int Q, int stride,
                                                  int pad) {
    long long total = (long long)N * C * H * W;
    ADV_GRID_STRIDE(i, total) {
        int ww = (int)(i % W);
        int h = (int)((i / W) % H);
        int c = (int)((i / ((long long)H * W)) % C);
        int n = (int)(i / ((long long)C * H * W));
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) {
            const float* dyk = dy + ((long long)n * K + k) * P * Q;
            const float* wk = w + ((long long)k * C + c) * R * R;
            for (int r = 0; r < R; ++r) {
                int ph = h + pad - r;
                if (ph < 0 || ph % stride != 0) continue;
                int p = ph / stride;
                if (p >= P) continue;
                for (int s = 0; s < R; ++s) {
                    int qw = ww + pad - s;
                    if (qw < 0 || qw % stride != 0) continue;
                    int q = qw / stride;
                    if (q >= Q) continue;
                    acc = fmaf(dyk[(long long)p * Q + q], wk[r * R + s], acc);
                }
            }
        }
        dx[i] = acc;
    }
}

extern "C" __global__ void conv2d_bwd_filter_f32_v1(const float* __restrict__ x,
                                                    const float* __restrict__ dy,
                                                    float* __restrict__ dw, int N, int C, int H,
                                                    int W, int K, int R, int P, int Q, int stride,
                                                    int pad) {
    long long total = (long long)K * C * R * R;
    ADV_GRID_STRIDE(i, total) {
        int s = (int)(i % R);
        int r = (int)((i / R) % R);
        int c = (int)((i / ((long long)R * R)) % C);
        int k = (int)(i / ((long long)C * R * R));
        float acc = 0.0f;
        for (int n = 0; n < N; ++n) {
            const float* xc = x + ((long long)n * C + c) * H * W;
            const float* dyk = dy + ((long long)n * K + k) * P * Q;
            for (int p = 0; p < P; ++p) {
                int h = p * stride - pad + r;
                if (h < 0 || h >= H) continue;
                for (int q = 0; q < Q; ++q) {
                    int ww = q * stride - pad + s;
                    if (ww < 0 || ww >= W) continue;
                    acc = fmaf(xc[(long long)h * W + ww], dyk[(long long)p * Q + q], acc);
                }
            }
        }
        dw[i] = acc;
    }
}

// ------------------------------------------------------------------ v2: implicit GEMM -------

// A(m = k_out, kk = c*R*R + r*R + s) = w[k_out, c, r, s]: rows of w are contiguous.
// Every loader has ptr() (the element's address, nullptr for an implicit zero: what the v3
// cp.async copies take) and operator() (the value: what the v2 and tensor-core loaders take).
struct FwdLoadW {
    const float* w; int CRR;
    __device__ const float* ptr(int m, int kk) const { return w + (long long)m * CRR + kk; }
    __device__ float operator()(int m, int kk) const { return *ptr(m, kk); }
};
// B(kk, col = (n, p, q)) = x[n, c, p*stride - pad + r, q*stride - pad + s] or 0 in the padding.
struct FwdLoadX {
    const float* x; ConvGeom g;
    __device__ const float* ptr(int kk, int col) const {
        int RR = g.R * g.R;
        int c = kk / RR, rs = kk - c * RR;
        int r = rs / g.R, s = rs - r * g.R;
        int PQ = g.P * g.Q;
        int n = col / PQ, pq = col - n * PQ;
        int p = pq / g.Q, q = pq - p * g.Q;
        int h = p * g.stride - g.pad + r, ww = q * g.stride - g.pad + s;
        if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) return nullptr;
        return x + (((long long)n * g.C + c) * g.H + h) * g.W + ww;
    }
    __device__ float operator()(int kk, int col) const {
        const float* p = ptr(kk, col);
        return p ? *p : 0.0f;
    }
};
struct FwdStore {
    float* y; const float* b; int has_bias; ConvGeom g;
    __device__ void operator()(int m, int col, float v) const {
        int PQ = g.P * g.Q;
        int n = col / PQ, pq = col - n * PQ;
        y[((long long)n * g.K + m) * PQ + pq] = v + (has_bias ? b[m] : 0.0f);
    }
};

extern "C" __global__ void __launch_bounds__(256)
conv2d_fwd_f32_v2(const float* __restrict__ x, const float* __restrict__ w,
                  const float* __restrict__ b, float* __restrict__ y, int N, int C, int H, int W,
                  int K, int R, int P, int Q, int stride, int pad, int has_bias) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    FwdLoadW la{w, C * R * R};
    FwdLoadX lb{x, g};
    FwdStore st{y, b, has_bias, g};
    adv_tile_gemm(K, N * P * Q, C * R * R, la, lb, st);
}

// A(m = c, kk = k*R*R + r*R + s) = w[k, c, r, s].
struct BwdDataLoadW {
    const float* w; ConvGeom g;
    __device__ const float* ptr(int m, int kk) const {
        int RR = g.R * g.R;
        int k = kk / RR, rs = kk - k * RR;
        return w + ((long long)k * g.C + m) * RR + rs;
    }
    __device__ float operator()(int m, int kk) const { return *ptr(m, kk); }
};
// B(kk, col = (n, h, w)) = dy[n, k, p, q] where h = p*stride - pad + r exactly, else 0.
struct BwdDataLoadDy {
    const float* dy; ConvGeom g;
    __device__ const float* ptr(int kk, int col) const {
        int RR = g.R * g.R;
        int k = kk / RR, rs = kk - k * RR;
        int r = rs / g.R, s = rs - r * g.R;
        int HW = g.H * g.W;
        int n = col / HW, hw = col - n * HW;
        int h = hw / g.W, ww = hw - h * g.W;
        int ph = h + g.pad - r, qw = ww + g.pad - s;
        if (ph < 0 || qw < 0) return nullptr;
        int p = ph / g.stride, q = qw / g.stride;
        if (p * g.stride != ph || q * g.stride != qw || p >= g.P || q >= g.Q) return nullptr;
        return dy + (((long long)n * g.K + k) * g.P + p) * g.Q + q;
    }
    __device__ float operator()(int kk, int col) const {
        const float* p = ptr(kk, col);
        return p ? *p : 0.0f;
    }
};
struct BwdDataStore {
    float* dx; ConvGeom g;
    __device__ void operator()(int m, int col, float v) const {
        int HW = g.H * g.W;
        int n = col / HW, hw = col - n * HW;
        dx[((long long)n * g.C + m) * HW + hw] = v;
    }
};

extern "C" __global__ void __launch_bounds__(256)
conv2d_bwd_data_f32_v2(const float* __restrict__ dy, const float* __restrict__ w,
                       float* __restrict__ dx, int N, int C, int H, int W, int K, int R, int P,
                       int Q, int stride, int pad) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    BwdDataLoadW la{w, g};
    BwdDataLoadDy lb{dy, g};
    BwdDataStore st{dx, g};
    adv_tile_gemm(C, N * H * W, K * R * R, la, lb, st);
}

// A(m = k, j = (n, p, q)) = dy[n, k, p, q].
struct BwdFilterLoadDy {
    const float* dy; ConvGeom g;
    __device__ const float* ptr(int m, int j) const {
        int PQ = g.P * g.Q;
        int n = j / PQ, pq = j - n * PQ;
        return dy + ((long long)n * g.K + m) * PQ + pq;
    }
    __device__ float operator()(int m, int j) const { return *ptr(m, j); }
};
// B(j = (n, p, q), col = c*R*R + r*R + s): the forward's im2col element (col, j), transposed.
struct BwdFilterLoadX {
    FwdLoadX im;
    __device__ const float* ptr(int j, int col) const { return im.ptr(col, j); }
    __device__ float operator()(int j, int col) const { return im(col, j); }
};
struct BwdFilterStore {
    float* dw; int CRR;
    __device__ void operator()(int m, int col, float v) const {
        dw[(long long)m * CRR + col] = v;
    }
};

extern "C" __global__ void __launch_bounds__(256)
conv2d_bwd_filter_f32_v2(const float* __restrict__ x, const float* __restrict__ dy,
                         float* __restrict__ dw, int N, int C, int H, int W, int K, int R, int P,
                         int Q, int stride, int pad) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    BwdFilterLoadDy la{dy, g};
    BwdFilterLoadX lb{{x, g}};
    BwdFilterStore st{dw, C * R * R};
    adv_tile_gemm(K, C * R * R, N * P * Q, la, lb, st);
}

// ------------------------------------------------------------------ v3: SIMT, cp.async ----
// The v2 loaders and stores on adv_tile_gemm_v3 (common.cuh): BM x 128 tiles, 8x8 or 4x8
// register tiles, two cp.async stages. `_f32_v3` kernels use BM 128, `_m64_f32_v3` BM 64; the
// argument lists are v2's, plus `chunk` for backward-filter (split-K: grid.z slices of the
// N*P*Q reduction, each [z chunk, min((z + 1) chunk, N*P*Q)), into out + z K CRR; with one
// slice out is dw itself). Grid (ceil(Ncols / 128), ceil(Mrows / BM), splits), block 256.
template <int BM>
__device__ __forceinline__ void conv_fwd_v3(const float* x, const float* w, const float* b,
                                            float* y, ConvGeom g, int has_bias) {
    const int CRR = g.C * g.R * g.R;
    adv_tile_gemm_v3<BM>(g.K, g.N * g.P * g.Q, 0, CRR, FwdLoadW{w, CRR}, FwdLoadX{x, g},
                         FwdStore{y, b, has_bias, g}, w);
}
template <int BM>
__device__ __forceinline__ void conv_bwd_data_v3(const float* dy, const float* w, float* dx,
                                                 ConvGeom g) {
    adv_tile_gemm_v3<BM>(g.C, g.N * g.H * g.W, 0, g.K * g.R * g.R, BwdDataLoadW{w, g},
                         BwdDataLoadDy{dy, g}, BwdDataStore{dx, g}, w);
}
template <int BM>
__device__ __forceinline__ void conv_bwd_filter_v3(const float* x, const float* dy, float* out,
                                                   ConvGeom g, int chunk) {
    const int CRR = g.C * g.R * g.R, NPQ = g.N * g.P * g.Q;
    const int kb = blockIdx.z * chunk, ke = min(kb + chunk, NPQ);
    adv_tile_gemm_v3<BM>(g.K, CRR, kb, ke, BwdFilterLoadDy{dy, g}, BwdFilterLoadX{{x, g}},
                         BwdFilterStore{out + (long long)blockIdx.z * g.K * CRR, CRR}, dy);
}

extern "C" __global__ void __launch_bounds__(256)
conv2d_fwd_f32_v3(const float* __restrict__ x, const float* __restrict__ w,
                  const float* __restrict__ b, float* __restrict__ y, int N, int C, int H,
                  int W, int K, int R, int P, int Q, int stride, int pad, int has_bias) {
    conv_fwd_v3<128>(x, w, b, y, conv_geom(N, C, H, W, K, R, P, Q, stride, pad), has_bias);
}
extern "C" __global__ void __launch_bounds__(256)
conv2d_bwd_data_f32_v3(const float* __restrict__ dy, const float* __restrict__ w,
                       float* __restrict__ dx, int N, int C, int H, int W, int K, int R,
                       int P, int Q, int stride, int pad) {
    conv_bwd_data_v3<128>(dy, w, dx, conv_geom(N, C, H, W, K, R, P, Q, stride, pad));
}
extern "C" __global__ void __launch_bounds__(256)
conv2d_bwd_filter_f32_v3(const float* __restrict__ x, const float* __restrict__ dy,
                         float* __restrict__ out, int N, int C, int H, int W, int K, int R,
                         int P, int Q, int stride, int pad, int chunk) {
    conv_bwd_filter_v3<128>(x, dy, out, conv_geom(N, C, H, W, K, R, P, Q, stride, pad), chunk);
}
extern "C" __global__ void __launch_bounds__(256)
conv2d_fwd_m64_f32_v3(const float* __restrict__ x, const float* __restrict__ w,
                      const float* __restrict__ b, float* __restrict__ y, int N, int C, int H,
                      int W, int K, int R, int P, int Q, int stride, int pad, int has_bias) {
    conv_fwd_v3<64>(x, w, b, y, conv_geom(N, C, H, W, K, R, P, Q, stride, pad), has_bias);
}
extern "C" __global__ void __launch_bounds__(256)
conv2d_bwd_data_m64_f32_v3(const float* __restrict__ dy, const float* __restrict__ w,
                           float* __restrict__ dx, int N, int C, int H, int W, int K, int R,
                           int P, int Q, int stride, int pad) {
    conv_bwd_data_v3<64>(dy, w, dx, conv_geom(N, C, H, W, K, R, P, Q, stride, pad));
}
extern "C" __global__ void __launch_bounds__(256)
conv2d_bwd_filter_m64_f32_v3(const float* __restrict__ x, const float* __restrict__ dy,
                             float* __restrict__ out, int N, int C, int H, int W, int K, int R,
                             int P, int Q, int stride, int pad, int chunk) {
    conv_bwd_filter_v3<64>(x, dy, out, conv_geom(N, C, H, W, K, R, P, Q, stride, pad), chunk);
}

// out[i] = sum over z = 0 .. splits-1 of ws[z n + i], in that order. Grid-stride, block 256.
extern "C" __global__ void conv2d_splitk_sum_f32_v1(const float* __restrict__ ws,
                                                    float* __restrict__ out, long long n,
                                                    int splits) {
    ADV_GRID_STRIDE(i, n) {
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += ws[(long long)z * n + i];
        out[i] = s;
    }
}

// ------------------------------------------------------------ tensor cores: _tf32_v1, _bf16_v1 --
// The v2 implicit GEMMs on adv_tc_gemm (common.cuh): same loaders and stores, same argument
// lists, block 128 threads, grid (ceil(Ncols / 64), ceil(Mrows / 64)). Inputs (x, w, dy) are
// rounded to tf32 (cvt.rna) or bf16 (round to nearest even) on their way into shared memory;
// products are exact and accumulate in f32 (the bias is added in f32 after). CPU twin: the
// oracle on inputs rounded the same way (src/backend/precision.rs), equal up to the order of
// the f32 additions.

extern "C" __global__ void __launch_bounds__(128)
conv2d_fwd_tf32_v1(const float* __restrict__ x, const float* __restrict__ w,
                   const float* __restrict__ b, float* __restrict__ y, int N, int C, int H, int W,
                   int K, int R, int P, int Q, int stride, int pad, int has_bias) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    adv_tc_gemm<AdvTf32>(K, N * P * Q, C * R * R, FwdLoadW{w, C * R * R}, FwdLoadX{x, g},
                         FwdStore{y, b, has_bias, g});
}

extern "C" __global__ void __launch_bounds__(128)
conv2d_fwd_bf16_v1(const float* __restrict__ x, const float* __restrict__ w,
                   const float* __restrict__ b, float* __restrict__ y, int N, int C, int H, int W,
                   int K, int R, int P, int Q, int stride, int pad, int has_bias) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    adv_tc_gemm<AdvBf16>(K, N * P * Q, C * R * R, FwdLoadW{w, C * R * R}, FwdLoadX{x, g},
                         FwdStore{y, b, has_bias, g});
}

extern "C" __global__ void __launch_bounds__(128)
conv2d_bwd_data_tf32_v1(const float* __restrict__ dy, const float* __restrict__ w,
                        float* __restrict__ dx, int N, int C, int H, int W, int K, int R, int P,
                        int Q, int stride, int pad) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    adv_tc_gemm<AdvTf32>(C, N * H * W, K * R * R, BwdDataLoadW{w, g}, BwdDataLoadDy{dy, g},
                         BwdDataStore{dx, g});
}

extern "C" __global__ void __launch_bounds__(128)
conv2d_bwd_data_bf16_v1(const float* __restrict__ dy, const float* __restrict__ w,
                        float* __restrict__ dx, int N, int C, int H, int W, int K, int R, int P,
                        int Q, int stride, int pad) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    adv_tc_gemm<AdvBf16>(C, N * H * W, K * R * R, BwdDataLoadW{w, g}, BwdDataLoadDy{dy, g},
                         BwdDataStore{dx, g});
}

extern "C" __global__ void __launch_bounds__(128)
conv2d_bwd_filter_tf32_v1(const float* __restrict__ x, const float* __restrict__ dy,
                          float* __restrict__ dw, int N, int C, int H, int W, int K, int R, int P,
                          int Q, int stride, int pad) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    adv_tc_gemm<AdvTf32>(K, C * R * R, N * P * Q, BwdFilterLoadDy{dy, g},
                         BwdFilterLoadX{{x, g}}, BwdFilterStore{dw, C * R * R});
}

extern "C" __global__ void __launch_bounds__(128)
conv2d_bwd_filter_bf16_v1(const float* __restrict__ x, const float* __restrict__ dy,
                          float* __restrict__ dw, int N, int C, int H, int W, int K, int R, int P,
                          int Q, int stride, int pad) {
    ConvGeom g = conv_geom(N, C, H, W, K, R, P, Q, stride, pad);
    adv_tc_gemm<AdvBf16>(K, C * R * R, N * P * Q, BwdFilterLoadDy{dy, g},
                         BwdFilterLoadX{{x, g}}, BwdFilterStore{dw, C * R * R});
}
