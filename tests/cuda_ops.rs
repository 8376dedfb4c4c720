//! CUDA backend vs the CPU oracle, op by op, on fresh random inputs and awkward sizes (1, primes,
//! sizes that straddle the 64x64 GEMM tile and the 16-deep K step). Every GPU test first opens
//! `cuda:0` and prints "skipped: <reason>" and returns when it cannot (no driver, no NVRTC, no
//! device; with ADVLENS_REQUIRE_GPU=1 that is a failure instead). `nvrtc_compiles_every_kernel` needs no GPU, only libnvrtc (LD_LIBRARY_PATH as in
//! scripts/check_kernels.sh); it skips with a reason when libnvrtc cannot be loaded.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use advlens::backend::cpu::CpuBackend;
use advlens::backend::cuda::{compile, kernel_table, ConvVersion};
use advlens::backend::{AdamParams, Backend, Conv2dParams, DeviceRequest, Pool2dParams, SgdParams};
use advlens::rng::Rng;
use advlens::Tensor;
use common::{assert_close32, host, randn};

fn gpu(test: &str) -> Option<Arc<dyn Backend>> {
    match advlens::backend::open(DeviceRequest::Cuda(0)) {
        Ok(b) => Some(b),
        Err(e) => {
            common::skip_gpu(test, &e);
            None
        }
    }
}

use common::{cuda_or_skip as gpu_concrete, fresh_seed as seed};

/// The same host values on the CPU and on the GPU.
fn pair(cpu: &CpuBackend, g: &dyn Backend, shape: &[usize], v: Vec<f32>) -> (Tensor, Tensor) {
    let t = Tensor::from_vec(shape, v).expect("shape");
    (
        cpu.upload(&t).expect("cpu upload"),
        g.upload(&t).expect("gpu upload"),
    )
}

fn rand_pair(
    cpu: &CpuBackend,
    g: &dyn Backend,
    rng: &mut Rng,
    shape: &[usize],
) -> (Tensor, Tensor) {
    let n = shape.iter().product();
    pair(cpu, g, shape, randn(rng, n))
}

fn close(got: &Tensor, want: &Tensor, atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_close32(&host(got), &host(want), atol, rtol, what);
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Err(e) = compile::nvrtc_present() {
        common::skip_gpu("nvrtc_compiles_every_kernel", &e);
        return;
    }
    for fam in kernel_table::families() {
        let ptx = compile::compile_family(fam, "sm_90")
            .unwrap_or_else(|e| panic!("kernels/{fam}.cu: {e}"));
        let text = compile::ptx_text(&ptx);
        for k in kernel_table::ALL.iter().filter(|k| k.family == fam) {
            assert!(
                text.contains(&format!(".entry {}(", k.name)),
                "{} missing from the PTX of kernels/{fam}.cu",
                k.name
            );
        }
    }
}

#[test]
fn every_kernel_loads() {
    let Some(g) = gpu_concrete("every_kernel_loads") else {
        return;
    };
    let n = g.load_all_kernels().expect("load every kernel");
    assert_eq!(n, kernel_table::ALL.len());
    println!(
        "{} kernels loaded for {} on {}",
        n,
        g.arch(),
        g.device_name()
    );
}

#[test]
fn conv2d_matches_cpu_both_versions() {
    let Some(gb) = gpu_concrete("conv2d") else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    // (n, c, h, w, k, r, stride, pad): 1s, primes, K and C*R*R across the 64 / 16 tile edges.
    let cases = [
        (1, 1, 1, 1, 1, 1, 1, 0),
        (2, 3, 7, 5, 4, 3, 1, 1),
        (3, 5, 11, 13, 7, 3, 2, 1),
        (1, 2, 9, 9, 3, 5, 3, 2),
        (2, 17, 6, 6, 65, 1, 1, 0),
        (1, 7, 13, 11, 67, 3, 1, 1),
        // N*P*Q 800 over one dw tile: v3 splits the reduction 10 ways.
        (2, 3, 20, 20, 5, 3, 1, 1),
    ];
    for v in [ConvVersion::V1, ConvVersion::V2, ConvVersion::V3] {
        let g = gb.with_versions(v, v);
        for &(n, c, h, w, k, r, stride, pad) in &cases {
            let p = Conv2dParams { stride, pad };
            let what = format!("{v:?} n{n} c{c} {h}x{w} k{k} r{r} s{stride} p{pad}");
            let (xc, xg) = rand_pair(&cpu, &g, &mut rng, &[n, c, h, w]);
            let (wc, wg) = rand_pair(&cpu, &g, &mut rng, &[k, c, r, r]);
            let (bc, bg) = rand_pair(&cpu, &g, &mut rng, &[k]);
            let yc = cpu.conv2d(&xc, &wc, Some(&bc), p).expect("cpu conv");
            let yg = g.conv2d(&xg, &wg, Some(&bg), p).expect("gpu conv");
            close(&yg, &yc, 1e-3, 1e-4, &format!("conv2d {what}"));
            let yg0 = g.conv2d(&xg, &wg, None, p).expect("gpu conv no bias");
            let yc0 = cpu.conv2d(&xc, &wc, None, p).expect("cpu conv no bias");
            close(&yg0, &yc0, 1e-3, 1e-4, &format!("conv2d nobias {what}"));
            let shape = yc.shape().to_vec();
            let (dyc, dyg) = rand_pair(&cpu, &g, &mut rng, &shape);
            let gc = cpu
                .conv2d_backward(&xc, &wc, &dyc, p, true)
                .expect("cpu bwd");
            let gg = g.conv2d_backward(&xg, &wg, &dyg, p, true).expect("gpu bwd");
            close(
                gg.dx.as_ref().expect("dx"),
                gc.dx.as_ref().expect("dx"),
                1e-3,
                1e-4,
                &format!("dx {what}"),
            );
            close(&gg.dw, &gc.dw, 2e-3, 1e-4, &format!("dw {what}"));
            close(&gg.db, &gc.db, 1e-3, 1e-4, &format!("db {what}"));
            let gg2 = g
                .conv2d_backward(&xg, &wg, &dyg, p, false)
                .expect("gpu bwd no dx");
            assert!(gg2.dx.is_none());
        }
    }
}

#[test]
fn linear_matches_cpu_both_versions() {
    let Some(gb) = gpu_concrete("linear") else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    for v in [ConvVersion::V1, ConvVersion::V2] {
        let g = gb.with_versions(v, v);
        for &(n, i, o) in &[(1, 1, 1), (3, 17, 5), (65, 31, 67), (2, 129, 10)] {
            let what = format!("{v:?} n{n} i{i} o{o}");
            let (xc, xg) = rand_pair(&cpu, &g, &mut rng, &[n, i]);
            let (wc, wg) = rand_pair(&cpu, &g, &mut rng, &[o, i]);
            let (bc, bg) = rand_pair(&cpu, &g, &mut rng, &[o]);
            close(
                &g.linear(&xg, &wg, &bg).expect("gpu"),
                &cpu.linear(&xc, &wc, &bc).expect("cpu"),
                1e-3,
                1e-4,
                &format!("linear {what}"),
            );
            let (dyc, dyg) = rand_pair(&cpu, &g, &mut rng, &[n, o]);
            let gc = cpu.linear_backward(&xc, &wc, &dyc).expect("cpu");
            let gg = g.linear_backward(&xg, &wg, &dyg).expect("gpu");
            close(&gg.dx, &gc.dx, 1e-3, 1e-4, &format!("linear dx {what}"));
            close(&gg.dw, &gc.dw, 1e-3, 1e-4, &format!("linear dw {what}"));
            close(&gg.db, &gc.db, 1e-3, 1e-4, &format!("linear db {what}"));
        }
    }
}

#[test]
fn pooling_matches_cpu() {
    let Some(g) = gpu("pooling") else { return };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    for &(n, c, h, w, k, s, p) in &[
        (1, 1, 1, 1, 1, 1, 0),
        (2, 3, 7, 9, 3, 2, 1),
        (1, 5, 13, 11, 2, 2, 0),
        (3, 2, 8, 8, 3, 1, 1),
    ] {
        let prm = Pool2dParams {
            kernel: k,
            stride: s,
            pad: p,
        };
        let what = format!("n{n} c{c} {h}x{w} k{k} s{s} p{p}");
        // Quantised values create ties, which must route to the first maximum on both sides.
        let v: Vec<f32> = randn(&mut rng, n * c * h * w)
            .iter()
            .map(|x| (x * 2.0).round())
            .collect();
        let (xc, xg) = pair(&cpu, g, &[n, c, h, w], v);
        let yc = cpu.maxpool2d(&xc, prm).expect("cpu");
        close(
            &g.maxpool2d(&xg, prm).expect("gpu"),
            &yc,
            0.0,
            0.0,
            &format!("maxpool {what}"),
        );
        let (dyc, dyg) = rand_pair(&cpu, g, &mut rng, yc.shape());
        close(
            &g.maxpool2d_backward(&xg, &dyg, prm).expect("gpu"),
            &cpu.maxpool2d_backward(&xc, &dyc, prm).expect("cpu"),
            1e-5,
            1e-5,
            &format!("maxpool bwd {what}"),
        );
    }
    for &(n, c, h, w, oh, ow) in &[
        (1, 1, 1, 1, 1, 1),
        (2, 3, 7, 5, 3, 2),
        (1, 4, 13, 13, 6, 6),
        (2, 2, 5, 3, 7, 7),
    ] {
        let what = format!("n{n} c{c} {h}x{w} -> {oh}x{ow}");
        let (xc, xg) = rand_pair(&cpu, g, &mut rng, &[n, c, h, w]);
        close(
            &g.adaptive_avgpool2d(&xg, oh, ow).expect("gpu"),
            &cpu.adaptive_avgpool2d(&xc, oh, ow).expect("cpu"),
            1e-5,
            1e-5,
            &format!("avgpool {what}"),
        );
        let (dyc, dyg) = rand_pair(&cpu, g, &mut rng, &[n, c, oh, ow]);
        close(
            &g.adaptive_avgpool2d_backward(&dyg, h, w).expect("gpu"),
            &cpu.adaptive_avgpool2d_backward(&dyc, h, w).expect("cpu"),
            1e-5,
            1e-5,
            &format!("avgpool bwd {what}"),
        );
    }
}

#[test]
fn pointwise_matches_cpu() {
    let Some(g) = gpu("pointwise") else { return };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    for &n in &[1usize, 7, 257, 100_003] {
        let shape = [n];
        let (ac, ag) = rand_pair(&cpu, g, &mut rng, &shape);
        let (bc, bg) = rand_pair(&cpu, g, &mut rng, &shape);
        close(
            &g.relu(&ag).expect("gpu"),
            &cpu.relu(&ac).expect("cpu"),
            0.0,
            0.0,
            "relu",
        );
        let yc = cpu.relu(&ac).expect("cpu");
        let yg = g.relu(&ag).expect("gpu");
        close(
            &g.relu_backward(&yg, &bg).expect("gpu"),
            &cpu.relu_backward(&yc, &bc).expect("cpu"),
            0.0,
            0.0,
            "relu bwd",
        );
        close(
            &g.add(&ag, &bg).expect("gpu"),
            &cpu.add(&ac, &bc).expect("cpu"),
            0.0,
            0.0,
            "add",
        );
        close(
            &g.mul(&ag, &bg).expect("gpu"),
            &cpu.mul(&ac, &bc).expect("cpu"),
            0.0,
            0.0,
            "mul",
        );
        close(
            &g.scale(&ag, -1.7).expect("gpu"),
            &cpu.scale(&ac, -1.7).expect("cpu"),
            0.0,
            0.0,
            "scale",
        );
        let (mut accc, mut accg) = (ac.clone(), ag.clone());
        cpu.axpy(&mut accc, 0.3, &bc).expect("cpu");
        g.axpy(&mut accg, 0.3, &bg).expect("gpu");
        close(&accg, &accc, 1e-6, 1e-6, "axpy");
        // Copy-on-write: the clone `ag` must not have changed.
        close(&ag, &ac, 0.0, 0.0, "axpy left its source clone alone");
        let ss = g.sum_squares(&ag).expect("gpu");
        let sc = cpu.sum_squares(&ac).expect("cpu");
        assert!(
            (ss - sc).abs() <= 1e-6 * sc.abs() + 1e-9,
            "sum_squares {ss} vs {sc}"
        );
        // Dropout masks are drawn from the same counter-based hash: they must agree exactly.
        let sd = rng.next_u64();
        let (dc, mc) = cpu.dropout(&ac, 0.37, sd).expect("cpu");
        let (dg, mg) = g.dropout(&ag, 0.37, sd).expect("gpu");
        close(&mg, &mc, 0.0, 0.0, "dropout mask");
        close(&dg, &dc, 0.0, 0.0, "dropout output");
        close(
            &g.fgs_step(&ag, &bg, 0.25, -1.0, 1.5).expect("gpu"),
            &cpu.fgs_step(&ac, &bc, 0.25, -1.0, 1.5).expect("cpu"),
            1e-6,
            0.0,
            "fgs_step",
        );
    }
}

#[test]
fn optimisers_match_cpu() {
    let Some(g) = gpu("optimisers") else { return };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    let n = 1031;
    let (mut pc, mut pg) = rand_pair(&cpu, g, &mut rng, &[n]);
    let (mut bc, mut bg) = rand_pair(&cpu, g, &mut rng, &[n]);
    let (mut mc, mut mg) = rand_pair(&cpu, g, &mut rng, &[n]);
    let v: Vec<f32> = randn(&mut rng, n).iter().map(|x| x * x).collect();
    let (mut vc, mut vg) = pair(&cpu, g, &[n], v);
    for step in 1..=3u64 {
        let (gc, gg) = rand_pair(&cpu, g, &mut rng, &[n]);
        let h = SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
        };
        cpu.sgd_step(&mut pc, &gc, &mut bc, h).expect("cpu");
        g.sgd_step(&mut pg, &gg, &mut bg, h).expect("gpu");
        let a = AdamParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            step,
        };
        cpu.adam_step(&mut pc, &gc, &mut mc, &mut vc, a)
            .expect("cpu");
        g.adam_step(&mut pg, &gg, &mut mg, &mut vg, a).expect("gpu");
    }
    close(&pg, &pc, 1e-5, 1e-5, "param");
    close(&bg, &bc, 1e-5, 1e-5, "sgd buf");
    close(&mg, &mc, 1e-5, 1e-5, "adam m");
    close(&vg, &vc, 1e-5, 1e-5, "adam v");
}

#[test]
fn batchnorm_matches_cpu() {
    let Some(g) = gpu("batchnorm") else { return };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    for &(n, c, h, w) in &[(1, 1, 1, 2), (3, 5, 7, 3), (2, 17, 4, 5)] {
        let what = format!("n{n} c{c} {h}x{w}");
        let (xc, xg) = rand_pair(&cpu, g, &mut rng, &[n, c, h, w]);
        let (gc, gg) = rand_pair(&cpu, g, &mut rng, &[c]);
        let (bc, bg) = rand_pair(&cpu, g, &mut rng, &[c]);
        let tc = cpu.batchnorm2d_train(&xc, &gc, &bc, 1e-5).expect("cpu");
        let tg = g.batchnorm2d_train(&xg, &gg, &bg, 1e-5).expect("gpu");
        close(&tg.y, &tc.y, 1e-4, 1e-4, &format!("bn y {what}"));
        close(&tg.mean, &tc.mean, 1e-5, 1e-5, &format!("bn mean {what}"));
        close(&tg.var, &tc.var, 1e-5, 1e-5, &format!("bn var {what}"));
        let (dyc, dyg) = rand_pair(&cpu, g, &mut rng, &[n, c, h, w]);
        let (dxc, dgc, dbc) = cpu
            .batchnorm2d_backward(&xc, &gc, &tc.mean, &tc.var, 1e-5, &dyc)
            .expect("cpu");
        let (dxg, dgg, dbg) = g
            .batchnorm2d_backward(&xg, &gg, &tg.mean, &tg.var, 1e-5, &dyg)
            .expect("gpu");
        close(&dxg, &dxc, 1e-3, 1e-3, &format!("bn dx {what}"));
        close(&dgg, &dgc, 1e-4, 1e-4, &format!("bn dgamma {what}"));
        close(&dbg, &dbc, 1e-4, 1e-4, &format!("bn dbeta {what}"));
        let rv: Vec<f32> = randn(&mut rng, c).iter().map(|x| x * x + 0.1).collect();
        let (rvc, rvg) = pair(&cpu, g, &[c], rv);
        let (rmc, rmg) = rand_pair(&cpu, g, &mut rng, &[c]);
        close(
            &g.batchnorm2d_eval(&xg, &gg, &bg, &rmg, &rvg, 1e-5)
                .expect("gpu"),
            &cpu.batchnorm2d_eval(&xc, &gc, &bc, &rmc, &rvc, 1e-5)
                .expect("cpu"),
            1e-5,
            1e-5,
            &format!("bn eval {what}"),
        );
        close(
            &g.batchnorm2d_eval_backward(&gg, &rvg, 1e-5, &dyg)
                .expect("gpu"),
            &cpu.batchnorm2d_eval_backward(&gc, &rvc, 1e-5, &dyc)
                .expect("cpu"),
            1e-5,
            1e-5,
            &format!("bn eval bwd {what}"),
        );
    }
}

#[test]
fn losses_and_analysis_match_cpu() {
    let Some(g) = gpu("losses") else { return };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    for &(n, k) in &[(1usize, 1usize), (5, 10), (3, 1000), (2, 257)] {
        let (zc, zg) = rand_pair(&cpu, g, &mut rng, &[n, k]);
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let (lc, dc) = cpu.softmax_xent(&zc, &labels).expect("cpu");
        let (lg, dg) = g.softmax_xent(&zg, &labels).expect("gpu");
        close(&lg, &lc, 1e-5, 1e-5, "xent loss");
        close(&dg, &dc, 1e-6, 1e-5, "xent dlogits");
        close(
            &g.softmax(&zg).expect("gpu"),
            &cpu.softmax(&zc).expect("cpu"),
            1e-6,
            1e-5,
            "softmax",
        );
        let pv: Vec<f32> = randn(&mut rng, n * k).iter().map(|x| x.abs()).collect();
        let qv: Vec<f32> = randn(&mut rng, n * k).iter().map(|x| x.abs()).collect();
        let (pc, pg) = pair(&cpu, g, &[n, k], pv);
        let (qc, qg) = pair(&cpu, g, &[n, k], qv);
        let (cc, cg) = rand_pair(&cpu, g, &mut rng, &[k, k]);
        let fc = cpu.quadform(&pc, &cc, &qc).expect("cpu");
        let fg = g.quadform(&pg, &cg, &qg).expect("gpu");
        close(&fg.pcq, &fc.pcq, 1e-3, 1e-4, "pcq");
        close(&fg.pcp, &fc.pcp, 1e-3, 1e-4, "pcp");
        close(&fg.qcq, &fc.qcq, 1e-3, 1e-4, "qcq");
        close(&fg.cos, &fc.cos, 1e-4, 1e-3, "cos");
    }
    for &(n, c, h, w) in &[(1, 1, 1, 1), (3, 7, 5, 3), (2, 3, 29, 31)] {
        let (xc, xg) = rand_pair(&cpu, g, &mut rng, &[n, c, h, w]);
        close(
            &g.channel_max(&xg).expect("gpu"),
            &cpu.channel_max(&xc).expect("cpu"),
            0.0,
            0.0,
            "channel_max",
        );
        close(
            &g.channel_mean(&xg).expect("gpu"),
            &cpu.channel_mean(&xc).expect("cpu"),
            1e-6,
            1e-5,
            "channel_mean",
        );
    }
}

#[test]
fn cuda_only_ops_match_host_twins() {
    let Some(g) = gpu_concrete("cuda_only_ops") else {
        return;
    };
    let mut rng = Rng::new(seed());
    // Feature matching: loss[n] = ||a_n - b_n||^2, da = 2 (a - b) g, db = -da.
    let (n, d) = (3usize, 1001usize);
    let a = randn(&mut rng, n * d);
    let b = randn(&mut rng, n * d);
    let gl = randn(&mut rng, n);
    let up = |v: &[f32], s: &[usize]| {
        g.upload(&Tensor::from_vec(s, v.to_vec()).expect("shape"))
            .expect("upload")
    };
    let (ag, bg, gg) = (up(&a, &[n, d]), up(&b, &[n, d]), up(&gl, &[n]));
    let want: Vec<f32> = (0..n)
        .map(|i| {
            (0..d)
                .map(|j| ((a[i * d + j] - b[i * d + j]) as f64).powi(2))
                .sum::<f64>() as f32
        })
        .collect();
    assert_close32(
        &host(&g.feature_match(&ag, &bg).expect("fm")),
        &want,
        1e-3,
        1e-5,
        "feature_match",
    );
    let (da, db) = g.feature_match_backward(&ag, &bg, &gg).expect("fm bwd");
    let want_da: Vec<f32> = (0..n * d)
        .map(|i| 2.0 * (a[i] - b[i]) * gl[i / d])
        .collect();
    let want_db: Vec<f32> = want_da.iter().map(|v| -v).collect();
    assert_close32(&host(&da), &want_da, 1e-6, 1e-6, "feature_match da");
    assert_close32(&host(&db), &want_db, 1e-6, 1e-6, "feature_match db");

    // Fused iterative FGS with projection onto the L-inf ball around x0.
    let m = 4099;
    let x0 = randn(&mut rng, m);
    let gr = randn(&mut rng, m);
    let mut xg = up(&x0, &[m]);
    let x0g = up(&x0, &[m]);
    let grg = up(&gr, &[m]);
    let mut want = x0.clone();
    for _ in 0..3 {
        g.ifgs_step(&mut xg, &grg, Some(&x0g), 0.4, 1.0, -2.0, 2.0)
            .expect("ifgs");
        for i in 0..m {
            let s = if gr[i] > 0.0 {
                1.0
            } else if gr[i] < 0.0 {
                -1.0
            } else {
                0.0
            };
            let lo = (-2.0f32).max(x0[i] - 1.0);
            let hi = 2.0f32.min(x0[i] + 1.0);
            want[i] = (want[i] - 0.4 * s).max(lo).min(hi);
        }
    }
    assert_close32(&host(&xg), &want, 1e-6, 0.0, "ifgs_step");
    assert_close32(&host(&x0g), &x0, 0.0, 0.0, "ifgs_step left x0 alone");

    // Streaming top-k over batches of different sizes (one > 1024 to exercise the host split),
    // with ties (quantised values) that must keep the earlier image.
    let (c, k) = (5usize, 37usize);
    let mut st = g.topk_new(c, k).expect("topk");
    let mut all: Vec<Vec<(f32, u32)>> = vec![Vec::new(); c];
    let mut next_id = 0u32;
    for &bsz in &[1usize, 300, 1500, 7] {
        let v: Vec<f32> = randn(&mut rng, bsz * c)
            .iter()
            .map(|x| (x * 4.0).round())
            .collect();
        for r in 0..bsz {
            for ch in 0..c {
                all[ch].push((v[r * c + ch], next_id + r as u32));
            }
        }
        let t = up(&v, &[bsz, c]);
        g.topk_update(&mut st, &t, next_id).expect("topk update");
        next_id += bsz as u32;
    }
    let (vals, ids) = g.topk_read(&st).expect("topk read");
    for ch in 0..c {
        let mut ref_list = all[ch].clone();
        ref_list.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for j in 0..k {
            assert_eq!(
                (vals[ch * k + j], ids[ch * k + j]),
                ref_list[j],
                "topk channel {ch} rank {j}"
            );
        }
    }
}

#[test]
fn host_tensors_are_refused_with_the_op_name() {
    let Some(g) = gpu("host_tensors") else { return };
    let x = Tensor::from_vec(&[2], vec![1.0, -1.0]).expect("shape");
    let e = g.relu(&x).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("relu") && e.contains("host"), "{e}");
}

#[test]
fn l2_distance_grad_matches_cpu() {
    let Some(g) = gpu("l2_distance_grad") else {
        return;
    };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    // Awkward row lengths (1, a prime, more than one block-stride), a row with zero distance.
    for &(n, d) in &[(1usize, 1usize), (3, 257), (4, 784), (2, 3001)] {
        let (ac, ag) = rand_pair(&cpu, g, &mut rng, &[n, d]);
        let mut bv = randn(&mut rng, n * d);
        bv[..d].copy_from_slice(&host(&ac)[..d]); // row 0: b == a, gradient 0
        let (bc, bg) = pair(&cpu, g, &[n, d], bv);
        let want = cpu.l2_distance_grad(&ac, &bc, 0.37).expect("cpu");
        let got = g.l2_distance_grad(&ag, &bg, 0.37).expect("gpu");
        assert!(host(&want)[..d].iter().all(|&x| x == 0.0));
        // The same f64 norm per row; only the summation order differs (block tree vs serial).
        close(&got, &want, 1e-7, 1e-5, &format!("l2 grad [{n}, {d}]"));
    }
}

#[test]
fn topk_stream_on_the_device_matches_the_host_heaps() {
    let Some(g) = gpu("topk_stream") else { return };
    let g = g.as_ref();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed());
    // 130 channels (more than the host's 128-channel blocks), k = 7, batches of 37 images whose
    // values repeat (ties go to the smaller id), 5 batches.
    let (c, k) = (130usize, 7usize);
    let mut host_st = cpu.topk_stream(c, k).expect("cpu state");
    let mut dev_st = g.topk_stream(c, k).expect("gpu state");
    let mut next = 0u32;
    for _ in 0..5 {
        let b = 37usize;
        let v: Vec<f32> = (0..b * c)
            .map(|_| (rng.below(20) as f32) * 0.25 - 1.0)
            .collect();
        let ids: Vec<u32> = (next..next + b as u32).collect();
        next += b as u32;
        let (hc, hg) = pair(&cpu, g, &[b, c], v);
        host_st.push(&hc, &ids).expect("cpu push");
        dev_st.push(&hg, &ids).expect("gpu push");
    }
    let want = host_st.finish().expect("cpu finish");
    let got = dev_st.finish().expect("gpu finish");
    assert_eq!(got, want);
    // NaN is refused on both.
    let mut dev_st = g.topk_stream(2, 1).expect("gpu state");
    let (_, bad) = pair(&cpu, g, &[1, 2], vec![1.0, f32::NAN]);
    assert!(dev_st.push(&bad, &[0]).is_err());
}

#[test]
fn large_transfers_through_the_staging_buffers_round_trip() {
    let Some(g) = gpu("staging") else { return };
    let mut rng = Rng::new(seed());
    // 9 Mi values: three 4 Mi chunks through the two pinned staging buffers, each way.
    let n = 9 << 20;
    let v = randn(&mut rng, n);
    let t = Tensor::from_vec(&[n], v.clone()).expect("shape");
    let d = g.upload(&t).expect("upload");
    let back = host(&d);
    let first_bad = back
        .iter()
        .zip(&v)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(first_bad, None, "staged round trip differs");
}
