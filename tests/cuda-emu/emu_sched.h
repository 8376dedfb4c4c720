// emu_sched.h: running one kernel launch on the worker pool (sched.cpp), used by driver.cpp.
#pragma once
#include <string>
#include <vector>

#include "runtime.h"

namespace emu {

struct LaunchSpec {
    const KernelEntry* kernel;
    const Family* family;
    dim3 grid, block;
    unsigned dyn_smem;
    std::vector<unsigned char> args;  // packed as the twin's offsets say
};

// Run every block; returns "" on success, else the first error (kernel, block, thread, what).
std::string run_launch(const LaunchSpec& spec);

// The schedule in force (ADVLENS_EMU_SCHEDULE: "rr" (default), "random" or "random:SEED").
std::string schedule_name();

// Worker threads that run blocks (ADVLENS_EMU_WORKERS, default: the number of cores).
unsigned worker_count();

// The kernel/block/thread running on this OS thread, for fault reports ("" when none).
std::string where_am_i();

constexpr unsigned kDynSmemMax = 227 * 1024;
constexpr unsigned kDynCanary = 4096;

}  // namespace emu
