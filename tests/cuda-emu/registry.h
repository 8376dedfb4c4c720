// registry.h: host twins of kernels, with parameter types deduced from the kernel's own
// signature, so a kernel and its twin cannot disagree.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

#include "runtime.h"

namespace emu {

template <class F, F f>
struct Twin;

template <class... A, void (*f)(A...)>
struct Twin<void (*)(A...), f> {
    static constexpr unsigned n = sizeof...(A);
    static constexpr unsigned sizes[n == 0 ? 1 : n] = {static_cast<unsigned>(sizeof(A))...};
    static constexpr unsigned aligns[n == 0 ? 1 : n] = {static_cast<unsigned>(alignof(A))...};
    struct Layout {
        unsigned off[n == 0 ? 1 : n];
        unsigned total;
    };
    static constexpr Layout layout() {
        Layout l{};
        unsigned o = 0;
        for (unsigned i = 0; i < n; ++i) {
            o = (o + aligns[i] - 1) / aligns[i] * aligns[i];
            l.off[i] = o;
            o += sizes[i];
        }
        l.total = o;
        return l;
    }
    static constexpr Layout L = layout();
    template <std::size_t... I>
    static void call(const unsigned char* a, std::index_sequence<I...>) {
        f(*reinterpret_cast<const std::decay_t<A>*>(a + L.off[I])...);
    }
    static void run(const unsigned char* a) { call(a, std::index_sequence_for<A...>{}); }
    static constexpr KernelEntry entry(const char* name) {
        return KernelEntry{name, n, sizes, L.off, L.total, &run};
    }
};

}  // namespace emu

#define EMU_TWIN(k) ::emu::Twin<decltype(&k), &k>::entry(#k)
