//! The CPU's attainable FP32 FMA peak, measured rather than assumed (issue 12's "fraction of the
//! FMA peak"): every rayon thread runs independent chains of vector FMAs at once, with the widest
//! vectors the GEMM path uses (`sgemm::isa()`), and the best of several trials is the peak.
//!
//! Why measure: in a VM the clock and the number of FMA pipes per core are not reliably
//! readable (no cpufreq; the same flags on parts with one or two 512-bit pipes), so a datasheet
//! figure could be off by 2x either way. The loop is the roofline's ceiling: nothing does more
//! FP32 FLOPs per second on these cores than independent FMAs on registers. From the measured
//! rate and the `cpu MHz` of /proc/cpuinfo the report also derives FLOP per clock per core, which
//! says how many FMA pipes the loop found (e.g. 64 = two 16-lane pipes).

use std::time::Instant;

use serde::Serialize;

use crate::backend::cpu::sgemm::{isa, Isa};

/// Independent accumulators per thread: above latency x pipes (4 x 2) on current x86 cores, and
/// within the 32 (AVX-512) or 16 (AVX2) vector registers.
const CHAINS: usize = 12;
/// Trials; the fastest is the peak (interference only ever slows a trial down).
const TRIALS: usize = 5;
/// Each trial runs at least this long, so timer resolution and thread start-up do not count.
const MIN_TRIAL_S: f64 = 0.05;

/// The measured peak and how it was obtained.
#[derive(Clone, Debug, Serialize)]
pub struct CpuPeak {
    pub gflops: f64,
    pub threads: usize,
    pub isa: &'static str,
    /// f32 lanes per FMA instruction of the loop.
    pub lanes: usize,
    pub chains: usize,
    /// `cpu MHz` of /proc/cpuinfo, when readable (a VM reports the nominal clock).
    pub mhz: Option<f64>,
    /// gflops / threads / GHz: the FLOPs per clock per core the loop reached.
    pub flop_per_clk_per_core: Option<f64>,
}

impl CpuPeak {
    /// One line for reports: the figure and its derivation.
    pub fn describe(&self) -> String {
        let per_clk = match (self.mhz, self.flop_per_clk_per_core) {
            (Some(m), Some(f)) => format!(" = {f:.1} FLOP/clk/core at {m:.0} MHz (cpuinfo)"),
            _ => String::new(),
        };
        format!(
            "measured peak: {:.1} GFLOP/s, best of {TRIALS} trials of {} independent {}-lane FMA \
             chains ({}) on each of {} threads{per_clk}; override with --peak-tflops",
            self.gflops, self.chains, self.lanes, self.isa, self.threads
        )
    }
}

/// Measure the peak on the current rayon pool.
pub fn measure() -> CpuPeak {
    let path = isa();
    let lanes = lanes(path);
    let threads = rayon::current_num_threads();
    let mut iters: u64 = 1 << 16;
    // Calibrate on the whole pool so the trial length holds under its real load.
    while trial(path, iters) < MIN_TRIAL_S && iters < 1 << 40 {
        iters *= 2;
    }
    let best = (0..TRIALS)
        .map(|_| trial(path, iters))
        .fold(f64::INFINITY, f64::min);
    let flops = threads as f64 * iters as f64 * (CHAINS * lanes * 2) as f64;
    let gflops = flops / best / 1e9;
    let mhz = cpuinfo_mhz();
    CpuPeak {
        gflops,
        threads,
        isa: path.name(),
        lanes,
        chains: CHAINS,
        mhz,
        flop_per_clk_per_core: mhz.map(|m| gflops / threads as f64 / (m / 1e3)),
    }
}

fn lanes(path: Isa) -> usize {
    match path {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Portable => PORTABLE_LANES,
    }
}

/// Seconds for every pool thread to run `iters` iterations of the chains, started together.
fn trial(path: Isa, iters: u64) -> f64 {
    let t = Instant::now();
    let sums = rayon::broadcast(|_| chains(path, iters));
    std::hint::black_box(sums);
    t.elapsed().as_secs_f64()
}

fn chains(path: Isa, iters: u64) -> f32 {
    match path {
        // SAFETY: `isa()` returns Avx512 / Avx2 only when the CPU reports the features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::chains_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::chains_avx2(iters) },
        _ => chains_portable(iters),
    }
}

/// Width of the portable loop's arrays: what the compiler vectorises with the baseline ISA.
const PORTABLE_LANES: usize = 8;

/// x <- x * a + b with separate multiply and add (the portable GEMM path has no FMA), counted
/// as 2 FLOPs per lane like the fused loops.
fn chains_portable(iters: u64) -> f32 {
    let mut acc = [[1.0f32; PORTABLE_LANES]; CHAINS];
    let (a, b) = (std::hint::black_box(0.5f32), std::hint::black_box(0.5f32));
    for _ in 0..iters {
        for c in acc.iter_mut() {
            for v in c.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// x <- x * 0.5 + 0.5 on CHAINS zmm registers: stays at 1.0, never denormal or infinite.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains_avx512(iters: u64) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.5));
        let b = _mm512_set1_ps(std::hint::black_box(0.5));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains_avx2(iters: u64) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.5));
        let b = _mm256_set1_ps(std::hint::black_box(0.5));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}

/// The first `cpu MHz` line of /proc/cpuinfo.
fn cpuinfo_mhz() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|m| m.is_finite() && *m > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{sgemm, Strides};

    /// The chains compute what they claim: 1.0 is the fixed point of x * 0.5 + 0.5, so the
    /// sum is CHAINS * lanes whatever the iteration count.
    #[test]
    fn chains_stay_at_the_fixed_point() {
        let path = isa();
        let want = (CHAINS * lanes(path)) as f32;
        assert_eq!(chains(path, 1000), want);
        assert_eq!(chains_portable(7), (CHAINS * PORTABLE_LANES) as f32);
    }

    /// A peak that a real GEMM beats, or one far beyond any x86 core (2 pipes x 16 lanes x 2 at
    /// 6 GHz = 384 GFLOP/s per core), is a wrong FLOP count or a loop the compiler removed.
    #[test]
    fn measured_peak_bounds_a_real_gemm() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        // Both figures are best-of-trials, so a neighbour can only lower them, but not always
        // equally: the suite runs tests side by side and the machine may be shared. Each round
        // measures the peak and the GEMM back to back, so the two see the same neighbours, and
        // the round with the lowest GEMM/peak ratio is judged (up to six rounds). The best peak
        // and best GEMM of different rounds did not pair that way, and failed once with two
        // builds running beside the suite (64.9 against 50.4). A wrong FLOP count or a removed
        // loop is off by far more than 10%, in every round.
        let (peak, gemm) = pool.install(|| {
            let mut best = (measure(), gemm_gflops(384));
            for _ in 0..5 {
                if best.1 <= best.0.gflops * 1.10 {
                    break;
                }
                let round = (measure(), gemm_gflops(384));
                if round.1 / round.0.gflops < best.1 / best.0.gflops {
                    best = round;
                }
            }
            best
        });
        assert!(peak.gflops.is_finite() && peak.gflops > 0.0, "{peak:?}");
        assert!(peak.gflops < 384.0, "implausible one-core peak {peak:?}");
        assert!(
            gemm <= peak.gflops * 1.10,
            "sgemm at {gemm:.1} GFLOP/s beats the measured peak {:.1}",
            peak.gflops
        );
        assert!(peak.describe().contains(peak.isa));
    }

    fn gemm_gflops(n: usize) -> f64 {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
        let mut c = vec![0.0f32; n * n];
        let r = Strides::row(n);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            sgemm(n, n, n, &a, r, &a, r, 0.0, &mut c, r);
            best = best.min(t.elapsed().as_secs_f64());
        }
        2.0 * (n * n * n) as f64 / best / 1e9
    }
}
