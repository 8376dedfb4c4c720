// runtime.h: what emulated kernel code calls into (the scheduler in sched.cpp).
#pragma once
#include <cstdint>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3() = default;
    constexpr dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using uint3 = dim3;

namespace emu {

enum class WarpOp : int { Sync, Idx, Down, Up, Xor, Ballot };

struct ThreadState;  // sched.cpp
struct BlockState;

extern thread_local ThreadState* tls_thread;
extern thread_local BlockState* tls_block;

const dim3& cur_thread_idx();
const dim3& cur_block_idx();
const dim3& cur_block_dim();
const dim3& cur_grid_dim();

void syncthreads();
int syncthreads_count(int predicate);
// One warp-wide exchange: every lane named in `mask` must arrive with the same op and mask.
uint64_t warp_collective(unsigned mask, WarpOp op, uint64_t value, int arg, int width);
unsigned warp_exists_mask();

// cp.async (global -> shared, `bytes` of which the first `src_bytes` are read and the rest
// zero-filled), commit_group and wait_group. Under the round-robin schedule a copy lands when a
// wait_group covers its group (the latest a GPU may land it: a missing or short wait reads stale
// shared memory); under the random schedule it lands at issue (the earliest: a copy issued into
// a buffer other threads still read, without a barrier between, corrupts their reads). A thread
// that exits with copies it never waited for fails the launch.
void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);

// A kernel's host twin: parameter sizes (checked against the PTX .entry at module load) and a
// function that runs one CUDA thread with the arguments unpacked from a packed buffer.
struct KernelEntry {
    const char* name;
    unsigned nparams;
    const unsigned* sizes;
    const unsigned* offsets;
    unsigned argbuf_bytes;
    void (*run)(const unsigned char* args);
};

// A family's `extern __shared__` arrays (address on the calling thread, element size) so the
// scheduler can fill them with NaN and check the canary zone behind the launch's size.
struct DynSmem {
    unsigned char* (*addr)();
};

struct Family {
    const char* name;
    const KernelEntry* entries;
    unsigned nentries;
    const DynSmem* dyn;
    unsigned ndyn;
};

}  // namespace emu
