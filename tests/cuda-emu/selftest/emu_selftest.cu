// emu_selftest.cu: deliberately broken (and a few correct) kernels that prove the emulated
// driver's semantics (tests/cuda_emu.rs). Not part of advlens: built into the emulator only.
// Launch: grid and block as each test says; no common.cuh.

// Correct: out[b] = sum of 0..blockDim-1 through shared memory and two barriers.
extern "C" __global__ void emu_barrier_sum(int* out) {
    __shared__ int s[1024];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0;
        for (int i = 0; i < blockDim.x; ++i) acc += s[i];
        out[blockIdx.x] = acc;
    }
    __syncthreads();
}

// Broken: thread 0 skips the barrier (barrier divergence).
extern "C" __global__ void emu_divergent_barrier(int* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Correct: out[i] = value of lane (i + 1) % 32 via shfl, and a warp sum.
extern "C" __global__ void emu_shuffle(int* out, float* sum) {
    int lane = threadIdx.x & 31;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, (lane + 1) & 31);
    float v = (float)threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) sum[threadIdx.x >> 5] = v;
}

// Broken: lanes 16..31 wait at a barrier while 0..15 shuffle (deadlock on a GPU).
extern "C" __global__ void emu_shuffle_deadlock(float* out) {
    float v = 1.0f;
    if ((threadIdx.x & 31) < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// Broken when n < blockDim * gridDim: no bounds guard.
extern "C" __global__ void emu_unguarded_write(float* out, int n) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = (float)n;
}

// Broken when i >= 64: static shared-memory overrun.
extern "C" __global__ void emu_shared_overrun(float* out, int i) {
    __shared__ float s[64];
    s[threadIdx.x & 63] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = s[i];
}

// Dynamic shared memory: writes `n` floats; broken when n floats exceed the launch's size.
extern "C" __global__ void emu_dyn_smem(float* out, int n) {
    extern __shared__ float dyn[];
    if (threadIdx.x == 0) {
        for (int i = 0; i < n; ++i) dyn[i] = (float)i;
        out[0] = dyn[n - 1];
    }
}

// Copies in to out (to test stream ordering and NaN-filled fresh memory).
extern "C" __global__ void emu_copy(const float* in, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}

extern "C" __global__ void __launch_bounds__(128) emu_bounded(float* out) {
    out[threadIdx.x] = 1.0f;
}

// cp.async of one float (the emulator's cp_async under ADVLENS_CUDA_EMU, the PTX on NVRTC).
__device__ __forceinline__ void emu_cp4(float* dst, const float* src) {
#ifdef ADVLENS_CUDA_EMU
    ::emu::cp_async(dst, src, 4, 4);
#else
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src));
#endif
}
__device__ __forceinline__ void emu_cp_commit() {
#ifdef ADVLENS_CUDA_EMU
    ::emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void emu_cp_wait0() {
#ifdef ADVLENS_CUDA_EMU
    ::emu::cp_async_wait(0);
#else
    asm volatile("cp.async.wait_group 0;\n" ::);
#endif
}

// Correct (block 32): out[t] = shared slot t read after its copy was issued but before the wait
// (-1 if the copy has not landed: round-robin lands it at the wait, random at issue), out[32 + t]
// read after the wait (always in[t]).
extern "C" __global__ void emu_cp_async_timing(const float* in, float* out) {
    __shared__ float s[32];
    const int t = threadIdx.x;
    s[t] = -1.0f;
    emu_cp4(&s[t], &in[t]);
    emu_cp_commit();
    out[t] = s[t];
    emu_cp_wait0();
    out[32 + t] = s[t];
}

// Broken: copies issued and committed, never waited for.
extern "C" __global__ void emu_cp_async_unwaited(float* out) {
    __shared__ float s[32];
    emu_cp4(&s[threadIdx.x], &out[threadIdx.x]);
    emu_cp_commit();
}
