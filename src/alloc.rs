//! Allocator settings for the hot loops.
//!
//! The training, attack and analysis loops allocate and free the same activation-sized buffers
//! on every step. glibc's malloc hands every block above its mmap threshold (128 KiB at start,
//! raised dynamically) back to the kernel on `free`, and trims the heap top above 128 KiB, so each
//! step paid page faults and the kernel's zeroing of fresh pages again: under `perf` about a fifth
//! of a small-vgg16 training step sat in `do_anonymous_page`, `brk` and TLB shoot-downs. Keeping
//! freed memory inside the process removes that cost (small-vgg16 w8 training 2,257 -> ~3,600
//! images/s and I-FGS 271 -> ~590 on 2 cores, `advlens bench model`, see benches/RESULTS.md).
//!
//! The cost is resident memory: peak use stays mapped after a large free. `ADVLENS_MALLOC=system`
//! keeps glibc's defaults (and glibc's own `MALLOC_*` environment settings then apply untouched).

/// Blocks up to this size come from the heap and are reused, not mapped per call. 32 MiB is the
/// largest threshold glibc accepts on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap top kept before returning it to the kernel.
const TRIM_THRESHOLD: i32 = 1 << 30;
/// Extra bytes requested on each heap growth, so a growing working set grows in few steps.
const TOP_PAD: i32 = 64 << 20;

/// Applies the settings above once, before any large allocation. Returns whether they were
/// applied (false off glibc, or when `ADVLENS_MALLOC=system`).
pub fn keep_freed_memory() -> bool {
    if std::env::var("ADVLENS_MALLOC").is_ok_and(|v| v == "system") {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes glibc's tuning parameters; it takes (param, value) ints and is
    // safe to call at any time, before or after other allocations, from any thread.
    unsafe {
        let a = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        let b = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        let c = libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        a == 1 && b == 1 && c == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_apply_on_glibc() {
        // mallopt returns 1 on success; a value glibc rejects (e.g. a threshold above its
        // maximum) would return 0 and silently leave the slow default in place.
        let applied = super::apply();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
