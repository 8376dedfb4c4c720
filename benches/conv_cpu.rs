//! CPU conv2d forward + backward (dx, dw, db) on VGG- and ResNet-like layer shapes, next to a
//! plain `matrixmultiply::sgemm` of the same work measured in the same run.
//!
//!     cargo bench --bench conv_cpu
//!
//! The conv on the CPU backend is three GEMMs per image around im2col/col2im:
//!   forward   [K x CRR] . [CRR x PQ]      backward-data  [CRR x K] . [K x PQ]
//!   backward-filter [K x PQ] . [PQ x CRR]
//! each 2*K*CRR*PQ flops, so one forward+backward is 6*N*K*CRR*PQ flops. The baseline runs
//! exactly those N*3 GEMMs (same M, N, K, operands already laid out, no im2col), so the ratio
//! conv / GEMM is the fraction of the GEMM's own speed that the full layer reaches.
//! After criterion's report, a summary table prints GFLOP/s (median sample) and the ratio.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use advlens::backend::cpu::{sgemm, CpuBackend, Strides};
use advlens::backend::{Backend, Conv2dParams};
use advlens::rng::Rng;
use advlens::Tensor;
use criterion::{black_box, Criterion, SamplingMode, Throughput};

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    n: usize,
    c: usize,
    hw: usize,
    k: usize,
    r: usize,
    stride: usize,
    pad: usize,
}

impl Shape {
    fn out(&self) -> usize {
        (self.hw + 2 * self.pad - self.r) / self.stride + 1
    }
    fn crr(&self) -> usize {
        self.c * self.r * self.r
    }
    fn pq(&self) -> usize {
        self.out() * self.out()
    }
    fn flops(&self) -> u64 {
        6 * (self.n * self.k * self.crr() * self.pq()) as u64
    }
    fn label(&self) -> String {
        format!(
            "{} N{} C{} {}x{} K{} {}x{} s{} p{}",
            self.name,
            self.n,
            self.c,
            self.hw,
            self.hw,
            self.k,
            self.r,
            self.r,
            self.stride,
            self.pad
        )
    }
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "vgg-conv3",
        n: 8,
        c: 64,
        hw: 56,
        k: 64,
        r: 3,
        stride: 1,
        pad: 1,
    },
    Shape {
        name: "resnet-layer2",
        n: 8,
        c: 128,
        hw: 28,
        k: 128,
        r: 3,
        stride: 1,
        pad: 1,
    },
    Shape {
        name: "resnet-down",
        n: 8,
        c: 64,
        hw: 56,
        k: 128,
        r: 3,
        stride: 2,
        pad: 1,
    },
];

/// (label, kind) -> per-iteration times of every sample criterion took.
static SAMPLES: Mutex<BTreeMap<(String, &'static str), Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(label: &str, kind: &'static str, iters: u64, d: Duration) {
    if let Ok(mut m) = SAMPLES.lock() {
        m.entry((label.to_string(), kind))
            .or_default()
            .push(d.as_secs_f64() / iters as f64);
    }
}

fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn bench_shape(c: &mut Criterion, s: Shape) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(7);
    let (o, crr, pq) = (s.out(), s.crr(), s.pq());
    let x = Tensor::from_vec(
        &[s.n, s.c, s.hw, s.hw],
        rand_vec(&mut rng, s.n * s.c * s.hw * s.hw),
    )
    .expect("x");
    let w = Tensor::from_vec(&[s.k, s.c, s.r, s.r], rand_vec(&mut rng, s.k * crr)).expect("w");
    let b = Tensor::from_vec(&[s.k], rand_vec(&mut rng, s.k)).expect("b");
    let dy = Tensor::from_vec(&[s.n, s.k, o, o], rand_vec(&mut rng, s.n * s.k * pq)).expect("dy");
    let p = Conv2dParams {
        stride: s.stride,
        pad: s.pad,
    };
    // GEMM operands of the same sizes as the conv's, laid out once outside the timing.
    let col = rand_vec(&mut rng, crr * pq);
    let wv = w.to_vec().expect("w");
    let dyv = rand_vec(&mut rng, s.k * pq);
    let mut y = vec![0.0f32; s.k * pq];
    let mut dcol = vec![0.0f32; crr * pq];
    let mut dw = vec![0.0f32; s.k * crr];

    let label = s.label();
    let mut g = c.benchmark_group(&label);
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(s.flops()));
    g.bench_function("conv fwd+bwd", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let out = be.conv2d(&x, &w, Some(&b), p).expect("conv2d");
                let grads = be
                    .conv2d_backward(&x, &w, &dy, p, true)
                    .expect("conv2d_backward");
                black_box((out, grads));
            }
            let d = t.elapsed();
            record(&label, "conv", iters, d);
            d
        })
    });
    g.bench_function("sgemm same work", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                for _ in 0..s.n {
                    let (rk, rc, rp) = (Strides::row(crr), Strides::row(pq), Strides::row(pq));
                    sgemm(s.k, crr, pq, &wv, rk, &col, rc, 0.0, &mut y, rp);
                    sgemm(
                        crr,
                        s.k,
                        pq,
                        &wv,
                        Strides::trans(crr),
                        &dyv,
                        rp,
                        0.0,
                        &mut dcol,
                        rp,
                    );
                    sgemm(
                        s.k,
                        pq,
                        crr,
                        &dyv,
                        rp,
                        &col,
                        Strides::trans(pq),
                        1.0,
                        &mut dw,
                        rk,
                    );
                }
                black_box((&y, &dcol, &dw));
            }
            let d = t.elapsed();
            record(&label, "gemm", iters, d);
            d
        })
    });
    g.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1500))
        .measurement_time(Duration::from_secs(6))
        .configure_from_args();
    for &s in SHAPES {
        bench_shape(&mut c, s);
    }
    c.final_summary();

    let Ok(mut samples) = SAMPLES.lock() else {
        return;
    };
    println!(
        "\nCPU conv2d forward+backward vs plain sgemm of the same GEMM work (f32, {} rayon threads)",
        rayon::current_num_threads()
    );
    println!(
        "{:<44} {:>8} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "shape", "GFLOP", "conv ms", "conv GF/s", "gemm ms", "gemm GF/s", "ratio"
    );
    for s in SHAPES {
        let label = s.label();
        let conv = samples.get_mut(&(label.clone(), "conv")).map(|v| median(v));
        let gemm = samples.get_mut(&(label.clone(), "gemm")).map(|v| median(v));
        if let (Some(tc), Some(tg)) = (conv, gemm) {
            let gf = s.flops() as f64 / 1e9;
            println!(
                "{:<44} {:>8.2} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>7.2}",
                label,
                gf,
                tc * 1e3,
                gf / tc,
                tg * 1e3,
                gf / tg,
                tg / tc
            );
        }
    }
}
