// quadform.cu: batched quadratic forms of the paper's label-similarity matrix C (Eq. 2-5, 12),
// f32 in, f64 accumulation. CPU twin: quadform in src/backend/cpu.
//
// quadform_f32_v1: for each pair n of p, q [N, K] and one C [K, K] (row-major, not assumed
//   symmetric): pcq = p^T C q, pcp = p^T C p, qcq = q^T C q, cos = pcq / sqrt(pcp * qcq), and
//   cos = 0 unless pcp > 0 and qcq > 0 (C need not be positive semi-definite).
//   Launch: one block of 256 threads (8 warps) per pair, grid N, dynamic shared memory 2*K
//   floats (the pair's p and q rows: 8 KB at K = 1000). Warp w handles rows i = w, w+8, ...;
//   its 32 lanes read C[i, :] coalesced and form (Cq)_i and (Cp)_i by warp reduction, lane 0
//   accumulates p_i (Cq)_i, p_i (Cp)_i, q_i (Cq)_i. C (4 MB at K = 1000) stays in L2 across
//   blocks. Work O(N K^2).

extern "C" __global__ void quadform_f32_v1(const float* __restrict__ p,
                                           const float* __restrict__ cm,
                                           const float* __restrict__ q,
                                           float* __restrict__ pcq_out,
                                           float* __restrict__ pcp_out,
                                           float* __restrict__ qcq_out,
                                           float* __restrict__ cos_out, int K) {
    extern __shared__ float sh[];
    __shared__ double scratch[32];
    float* ps = sh;
    float* qs = sh + K;
    const long long row = blockIdx.x;
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
        ps[j] = p[row * K + j];
        qs[j] = q[row * K + j];
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    double a_pcq = 0.0, a_pcp = 0.0, a_qcq = 0.0;
    for (int i = warp; i < K; i += nwarps) {
        const float* ci = cm + (long long)i * K;
        double cq = 0.0, cp = 0.0;
        for (int j = lane; j < K; j += 32) {
            double c = (double)ci[j];
            cq += c * (double)qs[j];
            cp += c * (double)ps[j];
        }
        cq = adv_warp_sum_d(cq);
        cp = adv_warp_sum_d(cp);
        if (lane == 0) {
            a_pcq += (double)ps[i] * cq;
            a_pcp += (double)ps[i] * cp;
            a_qcq += (double)qs[i] * cq;
        }
    }
    a_pcq = adv_block_sum_d(a_pcq, scratch);
    a_pcp = adv_block_sum_d(a_pcp, scratch);
    a_qcq = adv_block_sum_d(a_qcq, scratch);
    if (threadIdx.x == 0) {
        pcq_out[row] = (float)a_pcq;
        pcp_out[row] = (float)a_pcp;
        qcq_out[row] = (float)a_qcq;
        // Like the CPU oracle: a zero or negative norm (C need not be positive semi-definite)
        // has no direction, so the cosine is 0 unless both norms are > 0.
        cos_out[row] = (a_pcp > 0.0 && a_qcq > 0.0) ? (float)(a_pcq / sqrt(a_pcp * a_qcq)) : 0.0f;
    }
}
