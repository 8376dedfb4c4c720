// mma.cu: unit kernels of the tensor-core MMA device functions in common.cuh, so a test can
// check one m16n8k8 tf32 / m16n8k16 bf16 product against a host reference of the same rounding.
// Launch: exactly one block of 32 threads (one warp). Row-major f32 inputs:
//   tf32: A [16 x 8], B [8 x 8] (k x n), C and D [16 x 8];
//   bf16: A [16 x 16], B [16 x 8] (k x n), C and D [16 x 8].
// Each lane loads its fragment registers by the PTX ISA layout (rounding as the conv kernels
// do), calls the MMA and stores its four D elements by the C/D layout, so a wrong lane map in
// either the loads here or the twin gives wrong D elements. portable != 0 runs the portable
// twin even where the inline PTX is compiled: on a GPU both can be compared.

extern "C" __global__ void __launch_bounds__(32)
mma_m16n8k8_tf32_v1(const float* __restrict__ A, const float* __restrict__ B,
                    const float* __restrict__ C, float* __restrict__ D, int portable) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    unsigned a[4], b[2];
    a[0] = adv_f32_to_tf32(A[g * 8 + t]);
    a[1] = adv_f32_to_tf32(A[(g + 8) * 8 + t]);
    a[2] = adv_f32_to_tf32(A[g * 8 + t + 4]);
    a[3] = adv_f32_to_tf32(A[(g + 8) * 8 + t + 4]);
    b[0] = adv_f32_to_tf32(B[t * 8 + g]);
    b[1] = adv_f32_to_tf32(B[(t + 4) * 8 + g]);
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                  C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    if (portable) adv_mma_m16n8k8_tf32_portable(d, a, b, c);
    else adv_mma_m16n8k8_tf32(d, a, b, c);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

extern "C" __global__ void __launch_bounds__(32)
mma_m16n8k16_bf16_v1(const float* __restrict__ A, const float* __restrict__ B,
                     const float* __restrict__ C, float* __restrict__ D, int portable) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    unsigned a[4], b[2];
    a[0] = adv_bf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = adv_bf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = adv_bf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = adv_bf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    b[0] = adv_bf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = adv_bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                  C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    if (portable) adv_mma_m16n8k16_bf16_portable(d, a, b, c);
    else adv_mma_m16n8k16_bf16(d, a, b, c);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}
