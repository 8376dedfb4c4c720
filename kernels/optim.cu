// optim.cu: in-place optimiser updates, f32, flat parameter arrays of n elements.
// Launch: block 256, grid-stride, any grid. CPU twins: sgd_step, adam_step in src/backend/cpu.
//
// sgd_step_f32_v1 (torch.optim.SGD, dampening 0, no nesterov):
//   g = grad + wd * p; buf = momentum * buf + g; p -= lr * buf.
// adam_step_f32_v1 (torch.optim.Adam, L2 weight decay added to grad, no amsgrad):
//   g = grad + wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), with bc1 = 1 - b1^t, bc2 = 1 - b2^t
//   computed on the host in f64 and passed as f32 (as torch does with Python floats).

extern "C" __global__ void sgd_step_f32_v1(float* __restrict__ p, const float* __restrict__ grad,
                                           float* __restrict__ buf, float lr, float momentum,
                                           float wd, long long n) {
    ADV_GRID_STRIDE(i, n) {
        float g = grad[i] + wd * p[i];
        float b = momentum * buf[i] + g;
        buf[i] = b;
        p[i] = p[i] - lr * b;
    }
}

extern "C" __global__ void adam_step_f32_v1(float* __restrict__ p, const float* __restrict__ grad,
                                            float* __restrict__ m, float* __restrict__ v,
                                            float lr, float beta1, float beta2, float eps,
                                            float wd, float bc1, float bc2_sqrt, long long n) {
    ADV_GRID_STRIDE(i, n) {
        float g = grad[i] + wd * p[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = p[i] - (lr / bc1) * (mi / denom);
    }
}
