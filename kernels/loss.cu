// loss.cu: softmax, softmax cross-entropy (forward + gradient in one pass) and the feature
// matching (consistency) loss of adversarial training, f32. CPU twins: softmax, softmax_xent in
// src/backend/cpu; feature_match has a host twin in tests/cuda_ops.rs (it is not a Backend op:
// models build it from sub/sum_squares on the CPU).
//
// softmax_f32_v1 / softmax_xent_f32_v1: one block (256) per row of logits [N, K], grid N;
//   two block reductions (max, then sum of exp(z - max) in f32), numerically stable.
//   loss[n] = logsumexp(z) - z[label], dlogits = softmax(z) - onehot(label) (per-sample, not
//   divided by N). Labels are u32 and must be < K (checked on the host before launch).
// feature_match_fwd_f32_v1: one block (256) per sample n of a, b [N, D]:
//   loss[n] = sum_j (a - b)^2 (f64 accumulation).
// feature_match_bwd_f32_v1: grid-stride over N*D: da = 2 (a - b) * gloss[n], db = -da.

extern "C" __global__ void softmax_f32_v1(const float* __restrict__ z, float* __restrict__ prob,
                                          int K) {
    __shared__ float scratch[32];
    __shared__ float bcast[2];
    const float* zr = z + (long long)blockIdx.x * K;
    float* pr = prob + (long long)blockIdx.x * K;
    float m = -ADV_INF;
    for (int j = threadIdx.x; j < K; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = adv_block_max(m, scratch);
    if (threadIdx.x == 0) bcast[0] = m;
    __syncthreads();
    m = bcast[0];
    float s = 0.0f;
    for (int j = threadIdx.x; j < K; j += blockDim.x) s += expf(zr[j] - m);
    s = adv_block_sum(s, scratch);
    if (threadIdx.x == 0) bcast[1] = s;
    __syncthreads();
    float inv = 1.0f / bcast[1];
    for (int j = threadIdx.x; j < K; j += blockDim.x) pr[j] = expf(zr[j] - m) * inv;
}

extern "C" __global__ void softmax_xent_f32_v1(const float* __restrict__ z,
                                               const unsigned int* __restrict__ labels,
                                               float* __restrict__ loss,
                                               float* __restrict__ dz, int K) {
    __shared__ float scratch[32];
    __shared__ float bcast[2];
    const int row = blockIdx.x;
    const float* zr = z + (long long)row * K;
    float* dr = dz + (long long)row * K;
    const int label = (int)labels[row];
    float m = -ADV_INF;
    for (int j = threadIdx.x; j < K; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = adv_block_max(m, scratch);
    if (threadIdx.x == 0) bcast[0] = m;
    __syncthreads();
    m = bcast[0];
    float s = 0.0f;
    for (int j = threadIdx.x; j < K; j += blockDim.x) s += expf(zr[j] - m);
    s = adv_block_sum(s, scratch);
    if (threadIdx.x == 0) bcast[1] = s;
    __syncthreads();
    s = bcast[1];
    float inv = 1.0f / s;
    for (int j = threadIdx.x; j < K; j += blockDim.x)
        dr[j] = expf(zr[j] - m) * inv - (j == label ? 1.0f : 0.0f);
    if (threadIdx.x == 0) loss[row] = (logf(s) + m) - zr[label];
}

extern "C" __global__ void feature_match_fwd_f32_v1(const float* __restrict__ a,
                                                    const float* __restrict__ b,
                                                    float* __restrict__ loss, long long D) {
    __shared__ double scratch[32];
    const float* ar = a + (long long)blockIdx.x * D;
    const float* br = b + (long long)blockIdx.x * D;
    double s = 0.0;
    for (long long j = threadIdx.x; j < D; j += blockDim.x) {
        double d = (double)ar[j] - (double)br[j];
        s += d * d;
    }
    s = adv_block_sum_d(s, scratch);
    if (threadIdx.x == 0) loss[blockIdx.x] = (float)s;
}

extern "C" __global__ void feature_match_bwd_f32_v1(const float* __restrict__ a,
                                                    const float* __restrict__ b,
                                                    const float* __restrict__ gloss,
                                                    float* __restrict__ da,
                                                    float* __restrict__ db, long long N,
                                                    long long D) {
    ADV_GRID_STRIDE(i, N * D) {
        float g = 2.0f * (a[i] - b[i]) * gloss[i / D];
        da[i] = g;
        db[i] = -g;
    }
}
