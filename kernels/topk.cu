// topk.cu: streaming per-channel top-k (E3 neuron mining): keep, for each of C channels, the k
// largest activations seen so far and the dataset ids of their images, across batches.
// Host twin: the reference in tests/cuda_ops.rs; runtime API: CudaBackend::topk_update.
//
// State per channel: vals[c*k .. c*k+k) sorted in "rank order" and ids likewise (u32); empty
// slots hold (-inf, 0xFFFFFFFF). Rank order: a before b iff a.v > b.v, or a.v == b.v and
// a.id < b.id (ties keep the earlier image: deterministic and batch-size independent). NaN
// activations rank as -inf.
//
// topk_merge_f32_v1: one block of 512 threads per channel, grid C. Inputs: acts [B, C] (one
//   batch of per-image channel values, e.g. channel_max output), B <= 1024 (the host splits
//   larger batches), image id of row n = first_id + n, state in (vin, iin), state out
//   (vout, iout) (distinct buffers: the host ping-pongs). Steps: load the channel's B values
//   into shared memory padded to 1024 with empties, bitonic-sort them in rank order (8 KB
//   shared), then merge with the sorted old list by merge-path ranks: old element i goes to
//   i + #(new before it), new element j to j + #(old before it) (binary searches); whatever
//   lands below k is written. No limit on k (old lists are read from global memory).

#define TOPK_SORT 1024
#define TOPK_EMPTY 0xFFFFFFFFu

__device__ __forceinline__ bool topk_before(float av, unsigned ai, float bv, unsigned bi) {
    return av > bv || (av == bv && ai < bi);
}

extern "C" __global__ void __launch_bounds__(512)
topk_merge_f32_v1(const float* __restrict__ acts, int B, int C, unsigned int first_id,
                  const float* __restrict__ vin, const unsigned int* __restrict__ iin,
                  float* __restrict__ vout, unsigned int* __restrict__ iout, int k) {
    __shared__ float sv[TOPK_SORT];
    __shared__ unsigned int si[TOPK_SORT];
    const int c = blockIdx.x;
    for (int j = threadIdx.x; j < TOPK_SORT; j += blockDim.x) {
        if (j < B) {
            float v = acts[(long long)j * C + c];
            sv[j] = isnan(v) ? -ADV_INF : v;
            si[j] = first_id + (unsigned int)j;
        } else {
            sv[j] = -ADV_INF;
            si[j] = TOPK_EMPTY;
        }
    }
    __syncthreads();
    for (int size = 2; size <= TOPK_SORT; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < TOPK_SORT / 2; t += blockDim.x) {
                int i = 2 * t - (t & (stride - 1));
                int j = i + stride;
                bool up = (i & size) == 0;
                float vi = sv[i], vj = sv[j];
                unsigned ii = si[i], ij = si[j];
                bool swap = up ? topk_before(vj, ij, vi, ii) : topk_before(vi, ii, vj, ij);
                if (swap) {
                    sv[i] = vj; sv[j] = vi;
                    si[i] = ij; si[j] = ii;
                }
            }
            __syncthreads();
        }
    }
    const float* vo = vin + (long long)c * k;
    const unsigned int* io = iin + (long long)c * k;
    float* vn = vout + (long long)c * k;
    unsigned int* in = iout + (long long)c * k;
    const int nb = B < k ? B : k;  // new elements past rank k can never be kept
    // Old element i: count new elements before it.
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        float v = vo[i];
        unsigned id = io[i];
        int lo = 0, hi = nb;
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (topk_before(sv[mid], si[mid], v, id)) lo = mid + 1; else hi = mid;
        }
        int pos = i + lo;
        if (pos < k) { vn[pos] = v; in[pos] = id; }
    }
    // New element j: count old elements before it.
    for (int j = threadIdx.x; j < nb; j += blockDim.x) {
        float v = sv[j];
        unsigned id = si[j];
        int lo = 0, hi = k;
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (topk_before(vo[mid], io[mid], v, id)) lo = mid + 1; else hi = mid;
        }
        int pos = j + lo;
        if (pos < k) { vn[pos] = v; in[pos] = id; }
    }
}
