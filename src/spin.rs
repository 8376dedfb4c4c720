//! Keeping the thread pool's other workers awake while a command runs.
//!
//! A rayon worker that finds no work yields to the OS 32 times and then sleeps; waking it takes
//! a futex call on the thread that has new work and, in a VM, tens of microseconds before it
//! runs. A small-model training or attack step is hundreds of parallel loops of a few hundred
//! microseconds each, with short serial stretches between them, so the other workers were
//! asleep at the start of most loops: under `perf`, the scheduler and futex paths took 11% of a
//! small-resnet18 fine-tune's samples (4% with the spinners).
//! A spinner is a job that occupies one worker and runs the pool's work from inside it
//! (`rayon::yield_now`), so that worker is never idle and never asleep. OpenMP runtimes do the
//! same by default (workers spin for a while before sleeping: KMP_BLOCKTIME, GOMP_SPINCOUNT).
//! It changes which thread runs a job, never what a job computes, so results keep their bits.

use std::sync::atomic::{AtomicBool, Ordering};

/// Idle polls between two yields to the OS scheduler (about 50 us), so that a spinner gives
/// its core away when the machine has more runnable threads than cores.
const POLLS_PER_OS_YIELD: u32 = 64;

/// Stops the spinners when dropped, also when the command panics or returns an error.
pub struct Spinners<'a> {
    stop: &'a AtomicBool,
}

impl Drop for Spinners<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Spawn one spinner per worker other than the calling one into `scope`; they run until the
/// returned guard is dropped. ADVLENS_SPIN=0 turns them off.
pub fn keep_awake<'s>(scope: &rayon::Scope<'s>, stop: &'s AtomicBool) -> Spinners<'s> {
    let off = std::env::var("ADVLENS_SPIN").is_ok_and(|v| v == "0");
    let owner = rayon::current_thread_index();
    if !off && owner.is_some() {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(move |_| spin(stop, owner));
        }
    }
    Spinners { stop }
}

fn spin(stop: &AtomicBool, owner: Option<usize>) {
    // The spawning thread runs the command; if it picked up a spinner while waiting inside a
    // parallel loop, that spinner would run until the command ends, which it then never does.
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut idle = 0u32;
    while !stop.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle.is_multiple_of(POLLS_PER_OS_YIELD) {
            std::thread::yield_now();
        } else {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Parallel work runs to completion under the spinners, the result is the one without
    /// them, and the scope returns once the guard is dropped (a spinner that never stopped
    /// would hang this test).
    #[test]
    fn spinners_run_the_pool_work_and_stop() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let sum = |n: u64| (0..n).into_par_iter().map(|i| i * i).sum::<u64>();
        let want = sum(100_000);
        let stop = AtomicBool::new(false);
        let got = pool.install(|| {
            rayon::scope(|s| {
                let _spin = keep_awake(s, &stop);
                (0..50).map(|_| sum(100_000)).collect::<Vec<_>>()
            })
        });
        assert!(got.iter().all(|&g| g == want));
        assert!(stop.load(Ordering::Acquire));
    }
}
