// driver.cpp: the CUDA driver API subset that cudarc 0.19 and advlens call, on host memory.
//
// Device memory is host memory in guarded mappings (a PROT_NONE page after every allocation, the
// buffer's end flush against it), filled with NaN bytes when allocated. Streams are lazy queues:
// work runs only when the host has to wait (stream/event/context synchronize, a copy into
// pageable memory, a synchronous call), so a missing synchronize reads stale data. Limits and
// error codes follow a real sm_90 device. Every error is also explained on stderr, prefixed
// "advlens-cuda-emu:". No C++ exception leaves this library (Rust aborts on foreign unwinds).
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu_sched.h"

extern "C" const emu::Family* const emu_families[];
extern "C" const unsigned emu_nfamilies;

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void (*CUhostFn)(void*);

enum : int {
    OK = 0, E_INVALID_VALUE = 1, E_OUT_OF_MEMORY = 2, E_NOT_INITIALIZED = 3, E_NO_DEVICE = 100,
    E_INVALID_DEVICE = 101, E_INVALID_IMAGE = 200, E_INVALID_CONTEXT = 201, E_NO_BINARY = 209,
    E_INVALID_PTX = 218, E_UNSUPPORTED_PTX = 222, E_INVALID_HANDLE = 400, E_NOT_FOUND = 500,
    E_NOT_READY = 600, E_ILLEGAL_ADDRESS = 700, E_OUT_OF_RESOURCES = 701, E_LAUNCH_FAILED = 719,
    E_NOT_SUPPORTED = 801, E_UNKNOWN = 999,
};

namespace {

// ------------------------------------------------------------------------------------------------
// state
// ------------------------------------------------------------------------------------------------

struct Ctx { int device; };
struct Event;

struct Op {
    enum Kind { Kernel, Copy, Memset, Free, Record, Wait, Host } kind;
    std::unique_ptr<emu::LaunchSpec> launch;
    CUdeviceptr dptr = 0;  // copy/memset destination when on the device, free target
    unsigned char* dst = nullptr;
    const unsigned char* src = nullptr;
    std::vector<unsigned char> snapshot;  // pageable source copied at enqueue
    size_t bytes = 0;
    int value = 0;
    Event* event = nullptr;
    CUhostFn fn = nullptr;
    void* user = nullptr;
    const char* what = "";
};

struct Stream {
    std::deque<Op> q;
    unsigned long long enq = 0, done = 0;
};

struct Event {
    Stream* stream = nullptr;
    unsigned long long seq = 0;
    bool recorded = false, completed = true;
    double ms = 0;
};

struct Alloc {
    unsigned char* map;
    size_t map_len;
    size_t bytes;
};

struct Function {
    std::string name;
    const emu::KernelEntry* twin;
    const emu::Family* family;
    unsigned maxntid = 0;
    unsigned static_smem = 0;
    unsigned max_dyn = 48 * 1024;
};

struct Module { std::map<std::string, std::unique_ptr<Function>> fns; };

constexpr unsigned kSmemDefault = 48 * 1024;
constexpr unsigned kSmemOptin = 227 * 1024;
constexpr int kPtxMajor = 9, kPtxMinor = 0;  // the PTX ISA of CUDA 13.0
constexpr int kSm = 90;

std::recursive_mutex g_api;
std::mutex g_alloc_mu;  // also taken (try_lock) by the fault handler
bool g_init = false;
CUresult g_sticky = OK;
int g_ndev = 1;
size_t g_total = 0, g_used = 0;
std::vector<Ctx> g_ctx;
std::map<uintptr_t, Alloc> g_allocs;  // by buffer start
std::map<uintptr_t, size_t> g_pinned;
Stream g_null_stream;
std::vector<Stream*> g_streams;
std::unordered_map<std::string, std::pair<const emu::KernelEntry*, const emu::Family*>> g_twins;
thread_local Ctx* t_ctx = nullptr;
thread_local std::vector<Ctx*> t_ctx_stack;
struct sigaction g_prev_segv, g_prev_bus;

void say(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "advlens-cuda-emu: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
}

double now_ms() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// ------------------------------------------------------------------------------------------------
// faults: out-of-bounds accesses of emulated kernels land on guard pages
// ------------------------------------------------------------------------------------------------

std::string describe_address(uintptr_t a) {
    if (!g_alloc_mu.try_lock()) return "(allocation table busy)";
    std::string out = "not inside any live device allocation (freed memory or a wild pointer)";
    for (const auto& [start, al] : g_allocs) {
        uintptr_t lo = reinterpret_cast<uintptr_t>(al.map), hi = lo + al.map_len;
        if (a < lo || a >= hi) continue;
        char buf[200];
        if (a >= start + al.bytes)
            std::snprintf(buf, sizeof buf, "%zu bytes past the end of a %zu-byte device allocation at 0x%lx",
                          static_cast<size_t>(a - start - al.bytes), al.bytes, static_cast<unsigned long>(start));
        else
            std::snprintf(buf, sizeof buf, "%zu bytes before the start of a %zu-byte device allocation at 0x%lx",
                          static_cast<size_t>(start - a), al.bytes, static_cast<unsigned long>(start));
        out = buf;
        break;
    }
    g_alloc_mu.unlock();
    return out;
}

void chain(struct sigaction& prev, int sig, siginfo_t* si, void* uc) {
    if (prev.sa_flags & SA_SIGINFO) {
        if (prev.sa_sigaction) { prev.sa_sigaction(sig, si, uc); return; }
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
        return;
    }
    sigaction(sig, &prev, nullptr);  // default action when the fault repeats on return
}

void on_fault(int sig, siginfo_t* si, void* ucv) {
    std::string where = emu::where_am_i();
    if (where.empty()) {
        chain(sig == SIGSEGV ? g_prev_segv : g_prev_bus, sig, si, ucv);
        return;
    }
    auto* uc = static_cast<ucontext_t*>(ucv);
    bool is_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
    uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
    char msg[1024];
    int len = std::snprintf(msg, sizeof msg, "advlens-cuda-emu: %s: out-of-bounds %s of global memory at 0x%lx: %s "
                            "(CUDA_ERROR_ILLEGAL_ADDRESS on a GPU); aborting\n",
                            where.c_str(), is_write ? "write" : "read", static_cast<unsigned long>(a), describe_address(a).c_str());
    if (len > 0) (void)!write(2, msg, static_cast<size_t>(len) < sizeof msg ? static_cast<size_t>(len) : sizeof msg - 1);
    signal(SIGABRT, SIG_DFL);
    abort();
}

extern "C" void __sanitizer_set_death_callback(void (*)(void)) __attribute__((weak));

void on_sanitizer_death() {
    std::string where = emu::where_am_i();
    if (!where.empty())
        std::fprintf(stderr, "advlens-cuda-emu: the shared-memory bounds error above was raised by %s\n", where.c_str());
}

void install_fault_handlers() {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;  // a fault inside the handler kills the process
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(on_sanitizer_death);
}

// ------------------------------------------------------------------------------------------------
// memory
// ------------------------------------------------------------------------------------------------

size_t page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

CUresult dev_alloc(CUdeviceptr* out, size_t bytes, const char* api) {
    if (!out || bytes == 0) return E_INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_alloc_mu);
    if (bytes > g_total - g_used) {
        say("%s of %zu bytes: out of memory (%zu of %zu bytes in use; set ADVLENS_EMU_MEM_MB to change the device size)",
            api, bytes, g_used, g_total);
        return E_OUT_OF_MEMORY;
    }
    size_t pg = page(), data = (bytes + pg - 1) / pg * pg, len = data + 2 * pg;
    void* m = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return E_OUT_OF_MEMORY;
    auto* base = static_cast<unsigned char*>(m);
    if (mprotect(base + pg, data, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, len);
        return E_OUT_OF_MEMORY;
    }
    // The end of the buffer touches the trailing guard page (16-byte aligned start, as vector
    // loads need), so the first element past the end faults.
    unsigned char* ptr = base + pg + data - (bytes + 15) / 16 * 16;
    std::memset(base + pg, 0xff, data);  // NaN bytes: reads of unwritten memory show up
    g_allocs[reinterpret_cast<uintptr_t>(ptr)] = Alloc{base, len, bytes};
    g_used += bytes;
    *out = reinterpret_cast<CUdeviceptr>(ptr);
    return OK;
}

CUresult dev_free(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    auto it = g_allocs.find(static_cast<uintptr_t>(p));
    if (it == g_allocs.end()) {
        say("cuMemFree: 0x%llx is not the start of a live device allocation (double free?)", p);
        return E_INVALID_VALUE;
    }
    munmap(it->second.map, it->second.map_len);
    g_used -= it->second.bytes;
    g_allocs.erase(it);
    return OK;
}

bool inside_alloc(CUdeviceptr p, size_t bytes) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    auto it = g_allocs.upper_bound(static_cast<uintptr_t>(p));
    if (it == g_allocs.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second.bytes;
}

bool is_pinned(const void* h, size_t bytes) {
    auto a = reinterpret_cast<uintptr_t>(h);
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}

// ------------------------------------------------------------------------------------------------
// streams: lazy queues
// ------------------------------------------------------------------------------------------------

Stream* stream_of(void* h) { return h ? static_cast<Stream*>(h) : &g_null_stream; }

CUresult flush(Stream* s, unsigned long long upto);

CUresult flush_all() {
    CUresult r = flush(&g_null_stream, ~0ull);
    for (Stream* s : g_streams)
        if (r == OK) r = flush(s, ~0ull);
    return r;
}

CUresult exec(Op& op) {
    switch (op.kind) {
        case Op::Kernel: {
            std::string err = emu::run_launch(*op.launch);
            if (!err.empty()) {
                say("%s", err.c_str());
                return E_LAUNCH_FAILED;
            }
            return OK;
        }
        case Op::Copy:
        case Op::Memset:
            if (op.dptr && !inside_alloc(op.dptr, op.bytes)) {
                say("%s: device memory 0x%llx (+%zu bytes) was freed before the queued operation ran",
                    op.what, op.dptr, op.bytes);
                return E_ILLEGAL_ADDRESS;
            }
            if (op.kind == Op::Memset) std::memset(op.dst, op.value, op.bytes);
            else std::memmove(op.dst, op.snapshot.empty() ? op.src : op.snapshot.data(), op.bytes);
            return OK;
        case Op::Free: return dev_free(op.dptr);
        case Op::Record:
            op.event->completed = true;
            op.event->ms = now_ms();
            return OK;
        case Op::Wait:
            return flush(op.event->stream, op.event->seq);
        case Op::Host:
            op.fn(op.user);
            return OK;
    }
    return E_UNKNOWN;
}

CUresult flush(Stream* s, unsigned long long upto) {
    std::lock_guard<std::recursive_mutex> g(g_api);
    if (s == &g_null_stream)
        for (Stream* o : g_streams)
            if (CUresult r = flush(o, ~0ull)) return r;
    while (s->done < upto && !s->q.empty()) {
        if (g_sticky) return g_sticky;
        Op op = std::move(s->q.front());
        s->q.pop_front();
        s->done++;
        if (CUresult r = exec(op)) {
            g_sticky = r;
            return r;
        }
    }
    return g_sticky;
}

void enqueue(Stream* s, Op&& op) {
    s->q.push_back(std::move(op));
    s->enq++;
}

// ------------------------------------------------------------------------------------------------
// modules: PTX in, host twins out
// ------------------------------------------------------------------------------------------------

void build_twin_table() {
    for (unsigned i = 0; i < emu_nfamilies; ++i) {
        const emu::Family* f = emu_families[i];
        for (unsigned j = 0; j < f->nentries; ++j) g_twins[f->entries[j].name] = {&f->entries[j], f};
    }
}

unsigned ptx_param_size(const std::string& decl) {
    size_t lb = decl.find('[');
    if (lb != std::string::npos) return static_cast<unsigned>(std::strtoul(decl.c_str() + lb + 1, nullptr, 10));
    static const std::pair<const char*, unsigned> types[] = {
        {".u64", 8}, {".s64", 8}, {".b64", 8}, {".f64", 8}, {".u32", 4}, {".s32", 4}, {".b32", 4},
        {".f32", 4}, {".u16", 2}, {".s16", 2}, {".b16", 2}, {".f16", 2}, {".u8", 1}, {".s8", 1}, {".b8", 1}};
    for (auto& [t, n] : types)
        if (decl.find(std::string(t) + " ") != std::string::npos) return n;
    return 0;
}

struct PtxEntry {
    std::string name;
    std::vector<unsigned> params;
    unsigned maxntid = 0;
    std::string body;
};

// Parse `.version`, `.target`, module-scope `.shared` and every `.entry`.
CUresult parse_ptx(const std::string& ptx, std::vector<PtxEntry>& entries, std::map<std::string, unsigned>& shared) {
    size_t v = ptx.find(".version ");
    if (v == std::string::npos) { say("cuModuleLoadData: the image is not PTX (no .version); the emulated driver runs PTX only"); return E_INVALID_IMAGE; }
    int maj = 0, min = 0;
    std::sscanf(ptx.c_str() + v, ".version %d.%d", &maj, &min);
    if (maj > kPtxMajor || (maj == kPtxMajor && min > kPtxMinor)) {
        say("cuModuleLoadData: PTX ISA %d.%d is newer than this driver's %d.%d (CUDA 13.0)", maj, min, kPtxMajor, kPtxMinor);
        return E_UNSUPPORTED_PTX;
    }
    size_t t = ptx.find(".target sm_");
    int sm = t == std::string::npos ? 0 : std::atoi(ptx.c_str() + t + 11);
    if (sm == 0 || sm > kSm) {
        say("cuModuleLoadData: PTX .target sm_%d cannot run on this sm_%d device", sm, kSm);
        return E_NO_BINARY;
    }
    size_t pos = 0;
    int depth = 0;
    while (pos < ptx.size()) {
        size_t eol = ptx.find('\n', pos);
        if (eol == std::string::npos) eol = ptx.size();
        std::string line = ptx.substr(pos, eol - pos);
        pos = eol + 1;
        if (depth == 0 && line.find(".shared") != std::string::npos && line.find(".extern") == std::string::npos) {
            size_t lb = line.find('['), sp = line.rfind(' ', lb);
            if (lb != std::string::npos && sp != std::string::npos)
                shared[line.substr(sp + 1, lb - sp - 1)] = static_cast<unsigned>(std::strtoul(line.c_str() + lb + 1, nullptr, 10));
        }
        size_t e = line.find(".entry ");
        if (depth != 0 || e == std::string::npos) {
            for (char c : line) depth += c == '{' ? 1 : (c == '}' ? -1 : 0);
            continue;
        }
        PtxEntry ent;
        size_t ns = e + 7, ne = line.find_first_of("( \t", ns);
        ent.name = line.substr(ns, ne - ns);
        // parameters up to ')', then directives, then the body in braces
        size_t close = ptx.find(')', pos - 1);
        std::string params = ptx.substr(pos - 1, close == std::string::npos ? 0 : close - pos + 1);
        size_t p = 0;
        while ((p = params.find(".param", p)) != std::string::npos) {
            size_t end = params.find_first_of(",\n", p);
            ent.params.push_back(ptx_param_size(params.substr(p, end - p) + " "));
            p = end == std::string::npos ? params.size() : end;
        }
        size_t open = ptx.find('{', close);
        std::string directives = ptx.substr(close, open - close);
        size_t mx = directives.find(".maxntid");
        if (mx != std::string::npos) {
            unsigned x = 1, y = 1, z = 1;
            std::sscanf(directives.c_str() + mx, ".maxntid %u, %u, %u", &x, &y, &z);
            ent.maxntid = x * y * z;
        }
        int d = 0;
        size_t q = open;
        for (; q < ptx.size(); ++q) {
            d += ptx[q] == '{' ? 1 : (ptx[q] == '}' ? -1 : 0);
            if (d == 0) break;
        }
        ent.body = ptx.substr(open, q - open);
        pos = q + 1;
        entries.push_back(std::move(ent));
    }
    return OK;
}

unsigned static_smem(const PtxEntry& e, const std::map<std::string, unsigned>& shared) {
    unsigned total = 0;
    for (auto& [name, bytes] : shared)
        if (e.body.find(name) != std::string::npos) total += bytes;
    size_t p = 0;  // function-scope ("demoted") shared variables
    while ((p = e.body.find(".shared .align", p)) != std::string::npos) {
        size_t lb = e.body.find('[', p), nl = e.body.find('\n', p);
        if (lb != std::string::npos && lb < nl) total += static_cast<unsigned>(std::strtoul(e.body.c_str() + lb + 1, nullptr, 10));
        p = nl;
    }
    return total;
}

CUresult load_module(const char* image, Module** out) {
    if (!image) return E_INVALID_VALUE;
    if (std::memcmp(image, "\x7f" "ELF", 4) == 0) { say("cuModuleLoadData: got a cubin/ELF image; the emulated driver runs PTX only"); return E_INVALID_IMAGE; }
    std::string ptx(image);
    std::vector<PtxEntry> entries;
    std::map<std::string, unsigned> shared;
    if (CUresult r = parse_ptx(ptx, entries, shared)) return r;
    auto m = std::make_unique<Module>();
    for (const PtxEntry& e : entries) {
        auto it = g_twins.find(e.name);
        if (it == g_twins.end()) {
            say("cuModuleLoadData: PTX entry `%s` has no host twin: rebuild the emulated driver (scripts/cuda-emu.sh)", e.name.c_str());
            return E_INVALID_PTX;
        }
        const emu::KernelEntry* k = it->second.first;
        bool same = k->nparams == e.params.size();
        for (unsigned i = 0; same && i < k->nparams; ++i) same = k->sizes[i] == e.params[i];
        if (!same) {
            std::string ps, ts;
            for (unsigned s : e.params) ps += std::to_string(s) + " ";
            for (unsigned i = 0; i < k->nparams; ++i) ts += std::to_string(k->sizes[i]) + " ";
            say("cuModuleLoadData: `%s`: PTX parameter sizes [ %s] differ from the host twin's [ %s]: stale emulated driver",
                e.name.c_str(), ps.c_str(), ts.c_str());
            return E_INVALID_PTX;
        }
        auto f = std::make_unique<Function>();
        f->name = e.name;
        f->twin = k;
        f->family = it->second.second;
        f->maxntid = e.maxntid;
        f->static_smem = static_smem(e, shared);
        if (f->static_smem > kSmemDefault) {
            say("cuModuleLoadData: `%s` declares %u bytes of static shared memory (> 48 KiB)", e.name.c_str(), f->static_smem);
            return E_INVALID_PTX;
        }
        f->max_dyn = kSmemDefault - f->static_smem;
        m->fns[e.name] = std::move(f);
    }
    *out = m.release();
    return OK;
}

// ------------------------------------------------------------------------------------------------
// launch
// ------------------------------------------------------------------------------------------------

CUresult launch(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                unsigned smem, void* hstream, void** params, void** extra) {
    if (!f) return E_INVALID_HANDLE;
    const char* k = f->name.c_str();
    if (extra) { say("cuLaunchKernel(%s): `extra` argument packing is not supported", k); return E_NOT_SUPPORTED; }
    if (!gx || !gy || !gz || !bx || !by || !bz) { say("cuLaunchKernel(%s): zero grid or block dimension", k); return E_INVALID_VALUE; }
    unsigned long long threads = static_cast<unsigned long long>(bx) * by * bz;
    if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024) {
        say("cuLaunchKernel(%s): block (%u,%u,%u) exceeds 1024 threads or the per-dimension limits (1024,1024,64)", k, bx, by, bz);
        return E_INVALID_VALUE;
    }
    if (gx > 2147483647u || gy > 65535 || gz > 65535) {
        say("cuLaunchKernel(%s): grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", k, gx, gy, gz);
        return E_INVALID_VALUE;
    }
    if (f->maxntid && threads > f->maxntid) {
        say("cuLaunchKernel(%s): %llu threads per block, but __launch_bounds__ allows %u", k, threads, f->maxntid);
        return E_OUT_OF_RESOURCES;
    }
    if (smem > f->max_dyn) {
        say("cuLaunchKernel(%s): %u bytes of dynamic shared memory + %u static exceed the limit of %u (opt in with "
            "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, at most 227 KiB in all)", k, smem, f->static_smem, f->max_dyn + f->static_smem);
        return E_INVALID_VALUE;
    }
    const emu::KernelEntry* t = f->twin;
    if (t->nparams && !params) { say("cuLaunchKernel(%s): kernelParams is NULL", k); return E_INVALID_VALUE; }
    auto spec = std::make_unique<emu::LaunchSpec>();
    spec->kernel = t;
    spec->family = f->family;
    spec->grid = dim3(gx, gy, gz);
    spec->block = dim3(bx, by, bz);
    spec->dyn_smem = smem;
    spec->args.assign(t->argbuf_bytes + 16, 0);
    for (unsigned i = 0; i < t->nparams; ++i) {
        if (!params[i]) { say("cuLaunchKernel(%s): kernelParams[%u] is NULL", k, i); return E_INVALID_VALUE; }
        std::memcpy(spec->args.data() + t->offsets[i], params[i], t->sizes[i]);
    }
    Op op{Op::Kernel};
    op.launch = std::move(spec);
    enqueue(stream_of(hstream), std::move(op));
    return OK;
}

}  // namespace

// ================================================================================================
// the exported API
// ================================================================================================

#define API extern "C" __attribute__((visibility("default"))) CUresult
#define LOCK std::lock_guard<std::recursive_mutex> lock_(g_api)
#define NEED_INIT if (!g_init) return E_NOT_INITIALIZED
#define NEED_CTX                                                                               \
    NEED_INIT;                                                                                 \
    if (!t_ctx) { say("%s: no current context on this thread (bind one first)", __func__); return E_INVALID_CONTEXT; } \
    if (g_sticky) return g_sticky

API cuInit(unsigned) {
    LOCK;
    if (g_init) return OK;
    const char* n = std::getenv("ADVLENS_EMU_DEVICES");
    g_ndev = n ? std::atoi(n) : 1;
    if (g_ndev < 0) g_ndev = 0;
    const char* mem = std::getenv("ADVLENS_EMU_MEM_MB");
    g_total = static_cast<size_t>(mem ? std::strtoull(mem, nullptr, 10) : 8192) << 20;
    g_ctx.resize(static_cast<size_t>(g_ndev));
    for (int i = 0; i < g_ndev; ++i) g_ctx[static_cast<size_t>(i)].device = i;
    build_twin_table();
    install_fault_handlers();
    g_init = true;
    return OK;
}

API cuDriverGetVersion(int* v) { if (!v) return E_INVALID_VALUE; *v = 13000; return OK; }

API cuGetExportTable(const void**, const void*) { return E_NOT_SUPPORTED; }

API cuGetErrorString(CUresult e, const char** s) {
    if (!s) return E_INVALID_VALUE;
    switch (e) {
        case OK: *s = "no error"; break;
        case E_INVALID_VALUE: *s = "invalid argument"; break;
        case E_OUT_OF_MEMORY: *s = "out of memory"; break;
        case E_NOT_INITIALIZED: *s = "initialization error"; break;
        case E_NO_DEVICE: *s = "no CUDA-capable device is detected"; break;
        case E_INVALID_DEVICE: *s = "invalid device ordinal"; break;
        case E_INVALID_IMAGE: *s = "device kernel image is invalid"; break;
        case E_INVALID_CONTEXT: *s = "invalid device context"; break;
        case E_NO_BINARY: *s = "no kernel image is available for execution on the device"; break;
        case E_INVALID_PTX: *s = "a PTX JIT compilation failed"; break;
        case E_UNSUPPORTED_PTX: *s = "the provided PTX was compiled with an unsupported toolchain."; break;
        case E_INVALID_HANDLE: *s = "invalid resource handle"; break;
        case E_NOT_FOUND: *s = "named symbol not found"; break;
        case E_NOT_READY: *s = "device not ready"; break;
        case E_ILLEGAL_ADDRESS: *s = "an illegal memory access was encountered"; break;
        case E_OUT_OF_RESOURCES: *s = "too many resources requested for launch"; break;
        case E_LAUNCH_FAILED: *s = "unspecified launch failure"; break;
        case E_NOT_SUPPORTED: *s = "operation not supported"; break;
        default: *s = "unknown error"; return E_INVALID_VALUE;
    }
    return OK;
}

API cuGetErrorName(CUresult e, const char** s) {
    if (!s) return E_INVALID_VALUE;
    switch (e) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case E_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case E_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case E_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case E_ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case E_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case E_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case E_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return OK;
}

// ---- devices ----

API cuDeviceGetCount(int* n) { NEED_INIT; if (!n) return E_INVALID_VALUE; *n = g_ndev; return OK; }

API cuDeviceGet(CUdevice* d, int ordinal) {
    NEED_INIT;
    if (!d) return E_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= g_ndev) return E_INVALID_DEVICE;
    *d = ordinal;
    return OK;
}

API cuDeviceGetName(char* name, int len, CUdevice d) {
    NEED_INIT;
    if (!name || len <= 0) return E_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return E_INVALID_DEVICE;
    std::snprintf(name, static_cast<size_t>(len), "advlens emulated CUDA device (sm_90 on the CPU, schedule %s, %u workers; not a GPU)",
                  emu::schedule_name().c_str(), emu::worker_count());
    return OK;
}

API cuDeviceTotalMem_v2(size_t* b, CUdevice d) {
    NEED_INIT;
    if (!b) return E_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return E_INVALID_DEVICE;
    *b = g_total;
    return OK;
}

API cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    NEED_INIT;
    if (!uuid) return E_INVALID_VALUE;
    std::memset(uuid, 0, 16);
    std::memcpy(uuid, "advlens-emu", 11);
    uuid[15] = static_cast<unsigned char>(d);
    return OK;
}
API cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

API cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    NEED_INIT;
    if (!v) return E_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return E_INVALID_DEVICE;
    switch (attr) {
        case 1: *v = 1024; break;                                  // max threads per block
        case 2: case 3: *v = 1024; break;                          // max block dim x, y
        case 4: *v = 64; break;                                    // z
        case 5: *v = 2147483647; break;                            // max grid x
        case 6: case 7: *v = 65535; break;                         // y, z
        case 8: *v = static_cast<int>(kSmemDefault); break;        // shared per block
        case 9: *v = 65536; break;                                 // total constant memory
        case 10: *v = 32; break;                                   // warp size
        case 12: *v = 65536; break;                                // registers per block
        case 13: *v = 1980000; break;                              // clock kHz (H200 boost)
        case 16: *v = 132; break;                                  // SMs
        case 19: case 41: case 115: *v = 1; break;                 // map host, UVA, memory pools
        case 36: *v = 2619000; break;                              // memory clock kHz
        case 37: *v = 6144; break;                                 // bus width
        case 38: *v = 50 * 1024 * 1024; break;                     // L2
        case 39: *v = 2048; break;                                 // threads per SM
        case 75: *v = kSm / 10; break;                             // CC major
        case 76: *v = kSm % 10; break;                             // CC minor
        case 81: *v = 228 * 1024; break;                           // shared per SM
        case 82: *v = 65536; break;                                // registers per SM
        case 97: *v = static_cast<int>(kSmemOptin); break;         // shared per block opt-in
        default: *v = 0; break;
    }
    return OK;
}

API cuDeviceComputeCapability(int* major, int* minor, CUdevice) {
    if (!major || !minor) return E_INVALID_VALUE;
    *major = kSm / 10;
    *minor = kSm % 10;
    return OK;
}

// ---- contexts ----

API cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    LOCK;
    NEED_INIT;
    if (!ctx) return E_INVALID_VALUE;
    if (d < 0 || d >= g_ndev) return E_INVALID_DEVICE;
    *ctx = &g_ctx[static_cast<size_t>(d)];
    return OK;
}
API cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
API cuDevicePrimaryCtxRelease(CUdevice) { return OK; }
API cuDevicePrimaryCtxReset_v2(CUdevice) { return OK; }

API cuCtxGetCurrent(void** ctx) { NEED_INIT; if (!ctx) return E_INVALID_VALUE; *ctx = t_ctx; return OK; }
API cuCtxSetCurrent(void* ctx) { NEED_INIT; t_ctx = static_cast<Ctx*>(ctx); return OK; }
API cuCtxPushCurrent_v2(void* ctx) { NEED_INIT; t_ctx_stack.push_back(t_ctx); t_ctx = static_cast<Ctx*>(ctx); return OK; }
API cuCtxPopCurrent_v2(void** ctx) {
    NEED_INIT;
    if (ctx) *ctx = t_ctx;
    if (t_ctx_stack.empty()) { t_ctx = nullptr; return OK; }
    t_ctx = t_ctx_stack.back();
    t_ctx_stack.pop_back();
    return OK;
}
API cuCtxGetDevice(CUdevice* d) { NEED_CTX; if (!d) return E_INVALID_VALUE; *d = t_ctx->device; return OK; }
API cuCtxSynchronize() { LOCK; NEED_CTX; return flush_all(); }
API cuCtxSetLimit(int, size_t) { NEED_CTX; return OK; }
API cuCtxGetLimit(size_t* v, int) { NEED_CTX; if (v) *v = 0; return OK; }
API cuCtxSetCacheConfig(int) { NEED_CTX; return OK; }
API cuCtxGetCacheConfig(int* c) { NEED_CTX; if (c) *c = 0; return OK; }
API cuCtxSetFlags(unsigned) { NEED_CTX; return OK; }
API cuCtxGetFlags(unsigned* f) { NEED_CTX; if (f) *f = 0; return OK; }
API cuCtxGetStreamPriorityRange(int* lo, int* hi) { NEED_CTX; if (lo) *lo = 0; if (hi) *hi = -5; return OK; }

// ---- memory ----

API cuMemGetInfo_v2(size_t* free_, size_t* total) {
    NEED_CTX;
    std::lock_guard<std::mutex> g(g_alloc_mu);
    if (free_) *free_ = g_total - g_used;
    if (total) *total = g_total;
    return OK;
}

API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { LOCK; NEED_CTX; return dev_alloc(p, bytes, "cuMemAlloc"); }
API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { LOCK; NEED_CTX; return dev_alloc(p, bytes, "cuMemAllocAsync"); }
API cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t bytes, void*, void*) { LOCK; NEED_CTX; return dev_alloc(p, bytes, "cuMemAllocFromPoolAsync"); }

API cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    NEED_CTX;
    if (CUresult r = flush_all()) return r;  // cuMemFree synchronizes the device
    return dev_free(p);
}

// No current context needed: the stream names it, and buffers are dropped on any thread.
API cuMemFreeAsync(CUdeviceptr p, void* s) {
    LOCK;
    NEED_INIT;
    Op op{Op::Free};
    op.dptr = p;
    enqueue(stream_of(s), std::move(op));
    return OK;
}

API cuMemHostAlloc(void** pp, size_t bytes, unsigned) {
    LOCK;
    NEED_CTX;
    if (!pp || !bytes) return E_INVALID_VALUE;
    void* p = std::malloc(bytes);
    if (!p) return E_OUT_OF_MEMORY;
    std::memset(p, 0xff, bytes);
    g_pinned[reinterpret_cast<uintptr_t>(p)] = bytes;
    *pp = p;
    return OK;
}
API cuMemAllocHost_v2(void** pp, size_t bytes) { return cuMemHostAlloc(pp, bytes, 0); }

API cuMemFreeHost(void* p) {
    LOCK;
    NEED_INIT;
    auto it = g_pinned.find(reinterpret_cast<uintptr_t>(p));
    if (it == g_pinned.end()) return E_INVALID_VALUE;
    if (CUresult r = flush_all()) return r;
    g_pinned.erase(it);
    std::free(p);
    return OK;
}

namespace {

CUresult copy_to_device(CUdeviceptr dst, const void* src, size_t bytes, void* s, bool sync, const char* api) {
    if (!bytes) return OK;
    if (!src || !inside_alloc(dst, bytes)) {
        say("%s: destination 0x%llx (+%zu bytes) is not inside a live device allocation", api, dst, bytes);
        return E_INVALID_VALUE;
    }
    Op op{Op::Copy};
    op.dptr = dst;
    op.dst = reinterpret_cast<unsigned char*>(dst);
    op.bytes = bytes;
    op.what = api;
    if (is_pinned(src, bytes) && !sync) {
        op.src = static_cast<const unsigned char*>(src);  // read when the stream gets there
    } else {
        auto* b = static_cast<const unsigned char*>(src);  // pageable: staged now
        op.snapshot.assign(b, b + bytes);
    }
    Stream* st = stream_of(s);
    enqueue(st, std::move(op));
    return sync ? flush_all() : OK;
}

CUresult copy_to_host(void* dst, CUdeviceptr src, size_t bytes, void* s, bool sync, const char* api) {
    if (!bytes) return OK;
    if (!dst || !inside_alloc(src, bytes)) {
        say("%s: source 0x%llx (+%zu bytes) is not inside a live device allocation", api, src, bytes);
        return E_INVALID_VALUE;
    }
    Op op{Op::Copy};
    op.dptr = src;
    op.dst = static_cast<unsigned char*>(dst);
    op.src = reinterpret_cast<const unsigned char*>(src);
    op.bytes = bytes;
    op.what = api;
    Stream* st = stream_of(s);
    enqueue(st, std::move(op));
    // Into pinned memory the copy stays queued; into pageable memory the host has to wait.
    if (sync) return flush_all();
    if (!is_pinned(dst, bytes)) return flush(st, st->enq);
    return OK;
}

CUresult copy_dtod(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void* s, bool sync, const char* api) {
    if (!bytes) return OK;
    if (!inside_alloc(dst, bytes) || !inside_alloc(src, bytes)) {
        say("%s: 0x%llx -> 0x%llx (+%zu bytes) is not inside live device allocations", api, src, dst, bytes);
        return E_INVALID_VALUE;
    }
    Op op{Op::Copy};
    op.dptr = dst;
    op.dst = reinterpret_cast<unsigned char*>(dst);
    op.src = reinterpret_cast<const unsigned char*>(src);
    op.bytes = bytes;
    op.what = api;
    enqueue(stream_of(s), std::move(op));
    return sync ? flush_all() : OK;
}

CUresult memset_d8(CUdeviceptr dst, unsigned char v, size_t n, void* s, bool sync) {
    if (!n) return OK;
    if (!inside_alloc(dst, n)) {
        say("cuMemsetD8: 0x%llx (+%zu bytes) is not inside a live device allocation", dst, n);
        return E_INVALID_VALUE;
    }
    Op op{Op::Memset};
    op.dptr = dst;
    op.dst = reinterpret_cast<unsigned char*>(dst);
    op.bytes = n;
    op.value = v;
    op.what = "cuMemsetD8";
    enqueue(stream_of(s), std::move(op));
    return sync ? flush_all() : OK;
}

}  // namespace

API cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { LOCK; NEED_CTX; return copy_to_device(d, h, n, nullptr, true, "cuMemcpyHtoD"); }
API cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) { LOCK; NEED_CTX; return copy_to_device(d, h, n, s, false, "cuMemcpyHtoDAsync"); }
API cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { LOCK; NEED_CTX; return copy_to_host(h, d, n, nullptr, true, "cuMemcpyDtoH"); }
API cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) { LOCK; NEED_CTX; return copy_to_host(h, d, n, s, false, "cuMemcpyDtoHAsync"); }
API cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s_, size_t n) { LOCK; NEED_CTX; return copy_dtod(d, s_, n, nullptr, true, "cuMemcpyDtoD"); }
API cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s_, size_t n, void* s) { LOCK; NEED_CTX; return copy_dtod(d, s_, n, s, false, "cuMemcpyDtoDAsync"); }
API cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { LOCK; NEED_CTX; return memset_d8(d, v, n, nullptr, true); }
API cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* s) { LOCK; NEED_CTX; return memset_d8(d, v, n, s, false); }

// ---- streams and events ----

API cuStreamCreate(void** s, unsigned) {
    LOCK;
    NEED_CTX;
    if (!s) return E_INVALID_VALUE;
    auto* st = new Stream;
    g_streams.push_back(st);
    *s = st;
    return OK;
}
API cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }

API cuStreamDestroy_v2(void* s) {
    LOCK;
    NEED_INIT;
    if (!s) return E_INVALID_HANDLE;
    CUresult r = flush(stream_of(s), ~0ull);
    for (size_t i = 0; i < g_streams.size(); ++i)
        if (g_streams[i] == s) g_streams.erase(g_streams.begin() + static_cast<long>(i));
    delete static_cast<Stream*>(s);
    return r;
}

API cuStreamSynchronize(void* s) { LOCK; NEED_INIT; return flush(stream_of(s), ~0ull); }
API cuStreamQuery(void* s) { LOCK; NEED_INIT; return flush(stream_of(s), ~0ull); }

API cuStreamWaitEvent(void* s, void* e, unsigned) {
    LOCK;
    NEED_CTX;
    if (!e) return E_INVALID_HANDLE;
    Event* ev = static_cast<Event*>(e);
    if (!ev->recorded || ev->stream == stream_of(s)) return OK;
    Op op{Op::Wait};
    op.event = ev;
    enqueue(stream_of(s), std::move(op));
    return OK;
}

API cuLaunchHostFunc(void* s, CUhostFn fn, void* user) {
    LOCK;
    NEED_CTX;
    Op op{Op::Host};
    op.fn = fn;
    op.user = user;
    enqueue(stream_of(s), std::move(op));
    return OK;
}

API cuEventCreate(void** e, unsigned) {
    LOCK;
    NEED_CTX;
    if (!e) return E_INVALID_VALUE;
    *e = new Event;
    return OK;
}

API cuEventDestroy_v2(void* e) {
    LOCK;
    NEED_INIT;
    if (!e) return E_INVALID_HANDLE;
    Event* ev = static_cast<Event*>(e);
    if (ev->recorded && !ev->completed) flush(ev->stream, ev->seq);  // queued records point at it
    delete ev;
    return OK;
}

API cuEventRecord(void* e, void* s) {
    LOCK;
    NEED_CTX;
    if (!e) return E_INVALID_HANDLE;
    Event* ev = static_cast<Event*>(e);
    if (ev->recorded && !ev->completed) flush(ev->stream, ev->seq);  // one pending record per event
    Stream* st = stream_of(s);
    Op op{Op::Record};
    op.event = ev;
    enqueue(st, std::move(op));
    ev->stream = st;
    ev->seq = st->enq;
    ev->recorded = true;
    ev->completed = false;
    return OK;
}
API cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }

API cuEventSynchronize(void* e) {
    LOCK;
    NEED_INIT;
    if (!e) return E_INVALID_HANDLE;
    Event* ev = static_cast<Event*>(e);
    if (!ev->recorded) return OK;
    return flush(ev->stream, ev->seq);
}

// Polling is waiting too: a query runs the work up to the event, so loops on it terminate.
API cuEventQuery(void* e) { return cuEventSynchronize(e); }

API cuEventElapsedTime(float* ms, void* a, void* b) {
    LOCK;
    NEED_INIT;
    if (!ms || !a || !b) return E_INVALID_VALUE;
    Event *ea = static_cast<Event*>(a), *eb = static_cast<Event*>(b);
    if (!ea->recorded || !eb->recorded) return E_INVALID_HANDLE;
    if (!ea->completed || !eb->completed) return E_NOT_READY;
    *ms = static_cast<float>(eb->ms - ea->ms);
    return OK;
}
API cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---- modules and functions ----

API cuModuleLoadData(void** m, const void* image) {
    LOCK;
    NEED_CTX;
    if (!m) return E_INVALID_VALUE;
    Module* mod = nullptr;
    if (CUresult r = load_module(static_cast<const char*>(image), &mod)) return r;
    *m = mod;
    return OK;
}
API cuModuleLoadDataEx(void** m, const void* image, unsigned, void*, void**) { return cuModuleLoadData(m, image); }

API cuModuleLoad(void** m, const char* path) {
    LOCK;
    NEED_CTX;
    FILE* f = path ? std::fopen(path, "rb") : nullptr;
    if (!f) return E_NOT_FOUND;
    std::string text;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
    return cuModuleLoadData(m, text.c_str());
}

API cuModuleUnload(void* m) { LOCK; NEED_INIT; delete static_cast<Module*>(m); return OK; }

API cuModuleGetFunction(void** f, void* m, const char* name) {
    LOCK;
    NEED_CTX;
    if (!f || !m || !name) return E_INVALID_VALUE;
    auto& fns = static_cast<Module*>(m)->fns;
    auto it = fns.find(name);
    if (it == fns.end()) return E_NOT_FOUND;
    *f = it->second.get();
    return OK;
}

API cuModuleGetGlobal_v2(CUdeviceptr*, size_t*, void*, const char*) { NEED_CTX; return E_NOT_FOUND; }

API cuFuncGetAttribute(int* v, int attr, void* fn) {
    NEED_INIT;
    if (!v || !fn) return E_INVALID_VALUE;
    Function* f = static_cast<Function*>(fn);
    switch (attr) {
        case 0: *v = static_cast<int>(f->maxntid ? f->maxntid : 1024); break;
        case 1: *v = static_cast<int>(f->static_smem); break;
        case 4: *v = 32; break;  // registers: unknown here; ptxas reports the real count
        case 5: case 6: *v = kSm; break;
        case 8: *v = static_cast<int>(f->max_dyn); break;
        default: *v = 0; break;
    }
    return OK;
}

API cuFuncSetAttribute(void* fn, int attr, int v) {
    NEED_INIT;
    if (!fn) return E_INVALID_HANDLE;
    Function* f = static_cast<Function*>(fn);
    if (attr == 8) {
        if (v < 0 || static_cast<unsigned>(v) + f->static_smem > kSmemOptin) {
            say("cuFuncSetAttribute(%s): %d bytes of dynamic shared memory + %u static exceed 227 KiB", f->name.c_str(), v, f->static_smem);
            return E_INVALID_VALUE;
        }
        f->max_dyn = static_cast<unsigned>(v);
    }
    return OK;
}
API cuFuncSetCacheConfig(void*, int) { return OK; }

API cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned smem, void* s, void** params, void** extra) {
    LOCK;
    NEED_CTX;
    return launch(static_cast<Function*>(f), gx, gy, gz, bx, by, bz, smem, s, params, extra);
}

API cuLaunchCooperativeKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, unsigned smem, void* s, void** params) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, s, params, nullptr);
}

API cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void* fn, int block, size_t smem) {
    if (!n || !fn || block <= 0) return E_INVALID_VALUE;
    Function* f = static_cast<Function*>(fn);
    int by_threads = 2048 / block, by_smem = static_cast<int>((228 * 1024) / (f->static_smem + smem + 1024));
    *n = by_threads < by_smem ? by_threads : by_smem;
    if (*n > 32) *n = 32;
    return OK;
}
API cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, void* fn, int block, size_t smem, unsigned) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, fn, block, smem);
}

// ---- memory pools: one implicit pool; attributes are accepted and ignored ----

API cuDeviceGetDefaultMemPool(void** pool, CUdevice) { if (!pool) return E_INVALID_VALUE; *pool = &g_null_stream; return OK; }
API cuDeviceGetMemPool(void** pool, CUdevice d) { return cuDeviceGetDefaultMemPool(pool, d); }
API cuMemPoolSetAttribute(void*, int, void*) { return OK; }
API cuMemPoolGetAttribute(void*, int, void* v) { if (v) std::memset(v, 0, 8); return OK; }
API cuMemPoolTrimTo(void*, size_t) { return OK; }
