// sched.cpp: CUDA threads as fibers. A block runs on one worker OS thread; each CUDA thread of
// it runs on its own fiber stack and switches only at __syncthreads and warp collectives, so a
// barrier or shuffle means what it means on a GPU. A fiber whose thread finishes takes the next
// unstarted thread itself, so a kernel without barriers runs as a plain loop on one stack.
// When nothing can run, the scheduler decides: release a complete barrier, or report the
// barrier divergence / deadlock with the kernel, block and thread, never hang.
#include "emu_sched.h"

#include <sys/mman.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

extern "C" void emu_switch(void** save, void* load);
extern "C" void emu_fiber_trampoline();

namespace emu {

enum class St : unsigned char { Unstarted, Running, Ready, AtBarrier, AtWarp, Done };

struct Fiber;

struct PendingCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes, group;
    bool landed;  // random schedule: landed at issue, still pending until a wait covers it
};

struct ThreadState {
    dim3 tid;
    unsigned linear = 0;
    St st = St::Unstarted;
    Fiber* fiber = nullptr;
    WarpOp op = WarpOp::Sync;
    unsigned mask = 0;
    uint64_t value = 0, result = 0;
    int arg = 0, width = 32, pred = 0;
    std::vector<PendingCopy> copies;  // cp.async issued and not yet covered by a wait
    unsigned groups = 0;              // cp.async groups committed so far
};

struct Fiber {
    void* sp = nullptr;
    unsigned char* base = nullptr;  // lowest mapped byte (guard page)
    size_t bytes = 0;
    ThreadState* th = nullptr;
    bool fresh = true;  // sp must be (re)built before the next switch into it
    bool parked = false;
};

struct BlockState {
    const LaunchSpec* spec = nullptr;
    dim3 bid;
    unsigned n = 0, next = 0, ndone = 0, nbarrier = 0;
    int count_acc = 0, count_result = 0;
    std::vector<ThreadState> threads;
    std::vector<unsigned> order;
    std::vector<Fiber*> ready;
    std::vector<unsigned> warp_arrived;
    bool failed = false;
    std::string err;
};

thread_local ThreadState* tls_thread = nullptr;
thread_local BlockState* tls_block = nullptr;

namespace {

constexpr size_t kStack = 64 * 1024;

struct Schedule {
    bool random = false;
    uint64_t seed = 0;
};

Schedule parse_schedule() {
    Schedule s;
    const char* e = std::getenv("ADVLENS_EMU_SCHEDULE");
    if (!e || !*e || std::strcmp(e, "rr") == 0) return s;
    if (std::strncmp(e, "random", 6) == 0) {
        s.random = true;
        s.seed = e[6] == ':' ? std::strtoull(e + 7, nullptr, 10) : 1;
        return s;
    }
    std::fprintf(stderr, "advlens-cuda-emu: ADVLENS_EMU_SCHEDULE='%s' is not rr, random or random:SEED; using rr\n", e);
    return s;
}

const Schedule& schedule() {
    static const Schedule s = parse_schedule();
    return s;
}

struct Worker {
    void* sched_sp = nullptr;
    std::vector<Fiber*> fibers;
    std::mt19937_64 rng;
    bool altstack = false;
};

thread_local Worker* tls_worker = nullptr;

void fiber_main(Fiber* f);

void build_stack(Fiber* f) {
    // [guard page][ ... stack ... ] top; initial frame popped by emu_switch: r15 r14 r13 r12 rbx
    // rbp, then ret into the trampoline, which calls fiber_main(f) with a 16-aligned stack.
    uintptr_t top = reinterpret_cast<uintptr_t>(f->base + f->bytes) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top - 8);
    *sp = reinterpret_cast<void*>(&emu_fiber_trampoline);
    *--sp = nullptr;                                  // rbp
    *--sp = nullptr;                                  // rbx
    *--sp = reinterpret_cast<void*>(f);               // r12: argument
    *--sp = reinterpret_cast<void*>(&fiber_main);     // r13: entry
    *--sp = nullptr;                                  // r14
    *--sp = nullptr;                                  // r15
    f->sp = sp;
    f->fresh = false;
    f->parked = false;
}

Fiber* new_fiber() {
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t bytes = kStack + page;
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    mprotect(m, page, PROT_NONE);  // overflow of a fiber stack faults instead of corrupting
    Fiber* f = new Fiber;
    f->base = static_cast<unsigned char*>(m);
    f->bytes = bytes;
    return f;
}

Worker* worker() {
    if (!tls_worker) {
        tls_worker = new Worker;
        tls_worker->rng.seed(schedule().seed);
        // Fault reports (guard pages) need a stack of their own when a fiber stack overflows.
        // Rust gives its threads a small alternate stack (a few KiB): too small for the fault
        // report's formatting, so ours replaces one that is missing or small.
        stack_t cur;
        if (sigaltstack(nullptr, &cur) == 0 && ((cur.ss_flags & SS_DISABLE) || cur.ss_size < 64 * 1024)) {
            stack_t ss;
            ss.ss_size = 256 * 1024;
            ss.ss_sp = std::malloc(ss.ss_size);
            ss.ss_flags = 0;
            if (ss.ss_sp && sigaltstack(&ss, nullptr) == 0) tls_worker->altstack = true;
        }
    }
    return tls_worker;
}

void fail(BlockState* b, const ThreadState* t, const std::string& what) {
    if (b->failed) return;
    b->failed = true;
    char buf[512];
    const dim3& bi = b->bid;
    if (t) {
        std::snprintf(buf, sizeof buf, "kernel `%s` block (%u,%u,%u) thread (%u,%u,%u): ",
                      b->spec->kernel->name, bi.x, bi.y, bi.z, t->tid.x, t->tid.y, t->tid.z);
    } else {
        std::snprintf(buf, sizeof buf, "kernel `%s` block (%u,%u,%u): ", b->spec->kernel->name,
                      bi.x, bi.y, bi.z);
    }
    b->err = std::string(buf) + what;
}

// Back to the scheduler; returns when the scheduler resumes this thread's fiber.
void yield(ThreadState* t) {
    Worker* w = tls_worker;
    emu_switch(&t->fiber->sp, w->sched_sp);
    tls_thread = t;
}

void fiber_main(Fiber* f) {
    Worker* w = tls_worker;
    for (;;) {
        BlockState* b = tls_block;
        while (b && !b->failed && b->next < b->n) {
            ThreadState* t = &b->threads[b->order[b->next++]];
            t->st = St::Running;
            t->fiber = f;
            f->th = t;
            tls_thread = t;
            b->spec->kernel->run(b->spec->args.data());
            if (!t->copies.empty())
                fail(b, t, "exited with " + std::to_string(t->copies.size()) +
                               " cp.async copies never waited for (cp.async.wait_group)");
            t->st = St::Done;
            b->ndone++;
            tls_thread = nullptr;
        }
        f->th = nullptr;
        f->parked = true;
        emu_switch(&f->sp, w->sched_sp);
    }
}

Fiber* idle_fiber(Worker* w, size_t& used) {
    if (used < w->fibers.size()) return w->fibers[used++];
    Fiber* f = new_fiber();
    if (!f) return nullptr;
    w->fibers.push_back(f);
    used++;
    return f;
}

void switch_into(Worker* w, Fiber* f) {
    if (f->fresh) build_stack(f);
    f->parked = false;
    tls_thread = f->th;
    emu_switch(&w->sched_sp, f->sp);
}

std::string lanes(unsigned m) {
    std::string s;
    for (int l = 0; l < 32; ++l)
        if (m & (1u << l)) s += (s.empty() ? "" : ",") + std::to_string(l);
    return s;
}

// Nothing can run and unstarted threads are gone: release a barrier or diagnose.
bool resolve_stall(BlockState* b) {
    for (const ThreadState& t : b->threads) {
        if (t.st != St::AtWarp) continue;
        unsigned w = t.linear / 32;
        unsigned missing = t.mask & ~b->warp_arrived[w];
        std::string why;
        for (int l = 0; l < 32; ++l) {
            if (!(missing & (1u << l))) continue;
            const ThreadState& o = b->threads[w * 32 + l];
            why = "lane " + std::to_string(l) + (o.st == St::Done ? " has exited" : " waits at __syncthreads");
            break;
        }
        fail(b, &t, "warp collective with mask 0x" + [](unsigned m) { char x[16]; std::snprintf(x, 16, "%08x", m); return std::string(x); }(t.mask) +
                        " never completes (deadlock): " + why + "; lanes waiting: " + lanes(b->warp_arrived[w] & t.mask));
        return false;
    }
    unsigned live = b->n - b->ndone;
    if (b->nbarrier == 0 || b->nbarrier != live) {
        fail(b, nullptr, "scheduler stalled with no runnable thread (internal error)");
        return false;
    }
    if (b->ndone > 0) {
        const ThreadState* waiter = nullptr;
        for (const ThreadState& t : b->threads)
            if (t.st == St::AtBarrier) { waiter = &t; break; }
        fail(b, waiter, "__syncthreads reached by " + std::to_string(b->nbarrier) + " of " +
                            std::to_string(b->n) + " threads; " + std::to_string(b->ndone) +
                            " exited without reaching it (barrier divergence)");
        return false;
    }
    b->count_result = b->count_acc;
    b->count_acc = 0;
    b->nbarrier = 0;
    for (ThreadState& t : b->threads) {
        if (t.st != St::AtBarrier) continue;
        t.st = St::Ready;
        b->ready.push_back(t.fiber);
    }
    if (schedule().random) std::shuffle(b->ready.begin(), b->ready.end(), tls_worker->rng);
    return true;
}

Fiber* pick_ready(BlockState* b, Worker* w) {
    size_t i = 0;
    if (schedule().random && b->ready.size() > 1) i = w->rng() % b->ready.size();
    Fiber* f = b->ready[i];
    b->ready.erase(b->ready.begin() + static_cast<long>(i));
    return f;
}

void prepare_dyn_smem(const LaunchSpec& s) {
    for (unsigned i = 0; i < s.family->ndyn; ++i) {
        unsigned char* p = s.family->dyn[i].addr();
        std::memset(p, 0xff, s.dyn_smem);  // NaN in every float and double
        std::memset(p + s.dyn_smem, 0xa5, kDynCanary);
    }
}

void check_dyn_smem(BlockState* b) {
    const LaunchSpec& s = *b->spec;
    for (unsigned i = 0; i < s.family->ndyn; ++i) {
        unsigned char* p = s.family->dyn[i].addr() + s.dyn_smem;
        for (unsigned j = 0; j < kDynCanary; ++j) {
            if (p[j] != 0xa5) {
                fail(b, nullptr, "wrote past the end of its dynamic shared memory (" +
                                     std::to_string(s.dyn_smem) + " bytes requested at launch; byte " +
                                     std::to_string(s.dyn_smem + j) + " written)");
                return;
            }
        }
    }
}

void run_block(const LaunchSpec& s, unsigned long long idx, BlockState& b, std::string& err) {
    Worker* w = worker();
    const dim3 bd = s.block;
    b.spec = &s;
    b.bid = dim3(static_cast<unsigned>(idx % s.grid.x), static_cast<unsigned>((idx / s.grid.x) % s.grid.y),
                 static_cast<unsigned>(idx / (static_cast<unsigned long long>(s.grid.x) * s.grid.y)));
    b.n = bd.x * bd.y * bd.z;
    b.next = b.ndone = b.nbarrier = 0;
    b.count_acc = b.count_result = 0;
    b.failed = false;
    b.err.clear();
    b.ready.clear();
    b.threads.resize(b.n);
    b.order.resize(b.n);
    b.warp_arrived.assign((b.n + 31) / 32, 0);
    for (unsigned i = 0; i < b.n; ++i) {
        ThreadState& t = b.threads[i];
        t = ThreadState{};
        t.linear = i;
        t.tid = dim3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
        b.order[i] = i;
    }
    if (schedule().random) std::shuffle(b.order.begin(), b.order.end(), w->rng);
    if (s.dyn_smem || s.family->ndyn) prepare_dyn_smem(s);
    tls_block = &b;
    size_t used = 0;
    for (;;) {
        if (b.failed) break;
        if (!b.ready.empty()) {
            switch_into(w, pick_ready(&b, w));
        } else if (b.next < b.n) {
            Fiber* f = idle_fiber(w, used);
            if (!f) { fail(&b, nullptr, "cannot map a fiber stack"); break; }
            f->fresh = f->fresh || !f->parked;
            switch_into(w, f);
        } else if (b.ndone == b.n) {
            break;
        } else if (!resolve_stall(&b)) {
            break;
        }
    }
    if (!b.failed && s.family->ndyn) check_dyn_smem(&b);
    // Fibers left inside the kernel (a failed block) are rebuilt before their next use.
    for (Fiber* f : w->fibers)
        if (!f->parked) f->fresh = true;
    tls_block = nullptr;
    tls_thread = nullptr;
    if (b.failed && err.empty()) err = b.err;
}

// ---- the worker pool: blocks of one launch spread over the cores ----

struct Pool {
    std::mutex m;
    std::condition_variable cv, done_cv;
    const LaunchSpec* spec = nullptr;
    unsigned long long total = 0;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    unsigned long long gen = 0;
    unsigned busy = 0;
    std::string err;
    std::vector<std::thread> threads;
};

Pool& pool() {
    static Pool* p = new Pool;  // never destroyed: workers outlive static destruction
    return *p;
}

void drain(Pool& p, const LaunchSpec& s) {
    BlockState b;
    std::string err;
    for (;;) {
        if (p.failed.load(std::memory_order_relaxed)) break;
        unsigned long long i = p.next.fetch_add(1);
        if (i >= p.total) break;
        run_block(s, i, b, err);
        if (!err.empty()) {
            std::lock_guard<std::mutex> g(p.m);
            if (p.err.empty()) p.err = err;
            p.failed = true;
            break;
        }
    }
}

void worker_loop(Pool* p) {
    unsigned long long seen = 0;
    for (;;) {
        const LaunchSpec* s;
        {
            std::unique_lock<std::mutex> g(p->m);
            p->cv.wait(g, [&] { return p->gen != seen; });
            seen = p->gen;
            s = p->spec;
        }
        drain(*p, *s);
        std::lock_guard<std::mutex> g(p->m);
        if (--p->busy == 0) p->done_cv.notify_all();
    }
}

}  // namespace

unsigned worker_count() {
    static const unsigned n = [] {
        const char* e = std::getenv("ADVLENS_EMU_WORKERS");
        long v = e ? std::strtol(e, nullptr, 10) : 0;
        if (v <= 0) v = static_cast<long>(std::thread::hardware_concurrency());
        return static_cast<unsigned>(v < 1 ? 1 : (v > 64 ? 64 : v));
    }();
    return n;
}

std::string schedule_name() {
    const Schedule& s = schedule();
    return s.random ? "random:" + std::to_string(s.seed) : "rr";
}

std::string run_launch(const LaunchSpec& s) {
    Pool& p = pool();
    unsigned long long total = static_cast<unsigned long long>(s.grid.x) * s.grid.y * s.grid.z;
    unsigned helpers = worker_count() - 1;
    if (total < 2) helpers = 0;
    {
        std::lock_guard<std::mutex> g(p.m);
        while (p.threads.size() < helpers) {
            p.threads.emplace_back(worker_loop, &p);
            p.threads.back().detach();
        }
        p.spec = &s;
        p.total = total;
        p.next = 0;
        p.failed = false;
        p.err.clear();
        if (helpers) {
            p.busy = static_cast<unsigned>(p.threads.size());
            p.gen++;
        }
    }
    if (helpers) p.cv.notify_all();
    drain(p, s);
    std::unique_lock<std::mutex> g(p.m);
    if (helpers) p.done_cv.wait(g, [&] { return p.busy == 0; });
    return p.err;
}

std::string where_am_i() {
    BlockState* b = tls_block;
    if (!b || !b->spec) return "";
    char buf[256];
    const ThreadState* t = tls_thread;
    std::snprintf(buf, sizeof buf, "kernel `%s` block (%u,%u,%u) thread (%u,%u,%u)", b->spec->kernel->name,
                  b->bid.x, b->bid.y, b->bid.z, t ? t->tid.x : 0, t ? t->tid.y : 0, t ? t->tid.z : 0);
    return buf;
}

// ---- what kernel code calls ----

const dim3& cur_thread_idx() { return tls_thread->tid; }
const dim3& cur_block_idx() { return tls_block->bid; }
const dim3& cur_block_dim() { return tls_block->spec->block; }
const dim3& cur_grid_dim() { return tls_block->spec->grid; }

void syncthreads() {
    ThreadState* t = tls_thread;
    BlockState* b = tls_block;
    t->st = St::AtBarrier;
    b->nbarrier++;
    yield(t);
}

int syncthreads_count(int p) {
    BlockState* b = tls_block;
    b->count_acc += p != 0;
    syncthreads();
    return b->count_result;
}

namespace {
void land(const PendingCopy& c) {
    std::memcpy(c.dst, c.src, c.src_bytes);
    std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}
}  // namespace

void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    ThreadState* t = tls_thread;
    if (src_bytes > bytes || (bytes != 4 && bytes != 8 && bytes != 16)) {
        fail(tls_block, t, "cp.async of " + std::to_string(bytes) + " bytes with src-size " +
                               std::to_string(src_bytes) + " (PTX: 4, 8 or 16, src-size <= size)");
        yield(t);
    }
    if (reinterpret_cast<uintptr_t>(dst) % bytes || (src_bytes && reinterpret_cast<uintptr_t>(src) % bytes)) {
        fail(tls_block, t, "cp.async of " + std::to_string(bytes) + " bytes from a misaligned address");
        yield(t);
    }
    PendingCopy c{dst, src, bytes, src_bytes, t->groups, schedule().random};
    if (c.landed) land(c);
    t->copies.push_back(c);
}

void cp_async_commit() { tls_thread->groups++; }

void cp_async_wait(int pending_groups) {
    ThreadState* t = tls_thread;
    // Groups g < groups - pending_groups must be complete; uncommitted copies are in no group
    // and stay pending (as on a GPU).
    const long long done_below = static_cast<long long>(t->groups) - pending_groups;
    size_t keep = 0;
    for (size_t i = 0; i < t->copies.size(); ++i) {
        const PendingCopy& c = t->copies[i];
        if (static_cast<long long>(c.group) >= done_below) t->copies[keep++] = c;
        else if (!c.landed) land(c);
    }
    t->copies.resize(keep);
}

unsigned warp_exists_mask() {
    BlockState* b = tls_block;
    unsigned w = tls_thread->linear / 32;
    unsigned n = b->n - w * 32;
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1);
}

namespace {

int source_lane(const ThreadState& t, unsigned lane) {
    int w = t.width, seg = static_cast<int>(lane) / w * w, l = static_cast<int>(lane);
    switch (t.op) {
        case WarpOp::Idx: return seg + ((t.arg % w) + w) % w;
        case WarpOp::Down: return (l - seg) + t.arg < w ? l + t.arg : l;
        case WarpOp::Up: return (l - seg) >= t.arg ? l - t.arg : l;
        case WarpOp::Xor: { int s = l ^ t.arg; return s >= seg && s < seg + w ? s : l; }
        default: return l;
    }
}

void complete_warp(BlockState* b, unsigned w, unsigned mask, ThreadState* self) {
    ThreadState* lanes_ = &b->threads[w * 32];
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask & (1u << l)) && lanes_[l].value) ballot |= 1u << l;
    for (int l = 0; l < 32; ++l) {
        if (!(mask & (1u << l))) continue;
        ThreadState& t = lanes_[l];
        if (t.op != self->op || t.mask != mask || t.width != self->width) {
            fail(b, &t, "lanes of one warp met at different warp collectives (divergent shuffle/ballot/syncwarp)");
            return;
        }
        if (t.op == WarpOp::Ballot) { t.result = ballot; continue; }
        int src = source_lane(t, static_cast<unsigned>(l));
        if (!(mask & (1u << src))) {
            fail(b, &t, "shuffle reads lane " + std::to_string(src) + ", which is not in the mask (undefined on a GPU)");
            return;
        }
        t.result = lanes_[src].value;
    }
    b->warp_arrived[w] &= ~mask;
    for (int l = 0; l < 32; ++l) {
        if (!(mask & (1u << l))) continue;
        ThreadState& t = lanes_[l];
        if (&t == self) { t.st = St::Running; continue; }
        t.st = St::Ready;
        b->ready.push_back(t.fiber);
    }
}

}  // namespace

uint64_t warp_collective(unsigned mask, WarpOp op, uint64_t value, int arg, int width) {
    ThreadState* t = tls_thread;
    BlockState* b = tls_block;
    unsigned w = t->linear / 32, lane = t->linear % 32;
    unsigned exists = warp_exists_mask();
    if (!(mask & (1u << lane))) { fail(b, t, "calls a warp collective with a mask that excludes its own lane"); yield(t); }
    if (mask & ~exists) { fail(b, t, "warp collective mask names lanes beyond blockDim (partial warp)"); yield(t); }
    if (width <= 0 || width > 32 || (width & (width - 1))) { fail(b, t, "shuffle width is not a power of two <= 32"); yield(t); }
    t->op = op; t->mask = mask; t->value = value; t->arg = arg; t->width = width;
    t->st = St::AtWarp;
    b->warp_arrived[w] |= 1u << lane;
    if ((b->warp_arrived[w] & mask) == mask) {
        complete_warp(b, w, mask, t);
        if (b->failed) yield(t);
        return t->result;
    }
    yield(t);
    return t->result;
}

}  // namespace emu
