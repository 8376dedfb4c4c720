//! Tensor cores, proven on the emulated driver (or a GPU): the MMA device functions of
//! kernels/common.cuh one tile at a time against a host reference of the same rounding, and the
//! tf32/bf16 implicit-GEMM convolutions (kernels/conv.cu `_tf32_v1`, `_bf16_v1`) against the CPU
//! oracle, forward, backward-data and backward-filter, on awkward shapes.
//!
//! Error bounds (written once, used below). u32 = 2^-24 is the f32 unit roundoff, n the
//! reduction length, S_i = sum over the reduction of |a'||b'| for output i (a', b' the rounded
//! inputs; computed by the f32 oracle on |a'|, |b'|).
//! - Same rounding, other order: products of tf32/bf16 values are exact in f32, so the device
//!   and the CPU twin (oracle on rounded inputs) differ only in their f32 summation order:
//!   |y_dev - y_twin| <= 2 * gamma_n * S_i, gamma_n = n u32 / (1 - n u32)  [BOUND_ORDER].
//! - Against exact f32: each input carries a relative error <= u (tf32 2^-11, bf16 2^-8), so
//!   |y_dev - y_f32| <= ((2u + u^2) (1 + gamma_n) + 2 gamma_n) * S_i  [BOUND_ROUNDING].
#![cfg(feature = "cuda")]

mod common;

use advlens::backend::cpu::CpuBackend;
use advlens::backend::{Backend, Conv2dParams, Precision};
use advlens::rng::Rng;
use advlens::Tensor;
use common::{
    assert_within, cuda_or_skip as gpu, fresh_seed as seed, gamma, host, randn, tensor as t,
};

/// Host reference of one MMA tile: inputs rounded as the device does, products accumulated in
/// f32 in increasing k (the portable twin's order) and in f64 (for the order-free bound).
fn mma_reference(
    p: Precision,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    kd: usize,
) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
    let (mut d32, mut d64, mut s) = (vec![0f32; 128], vec![0f64; 128], vec![0f64; 128]);
    for i in 0..16 {
        for j in 0..8 {
            let (mut acc, mut acc64, mut abs) =
                (c[i * 8 + j], c[i * 8 + j] as f64, c[i * 8 + j].abs() as f64);
            for k in 0..kd {
                let (x, y) = (p.round(a[i * kd + k]), p.round(b[k * 8 + j]));
                acc = x.mul_add(y, acc);
                acc64 += x as f64 * y as f64;
                abs += (x as f64 * y as f64).abs();
            }
            d32[i * 8 + j] = acc;
            d64[i * 8 + j] = acc64;
            s[i * 8 + j] = abs;
        }
    }
    (d32, d64, s)
}

#[test]
fn mma_tiles_match_the_host_reference() {
    let Some(g) = gpu("mma_tiles_match_the_host_reference") else {
        return;
    };
    let mut rng = Rng::new(seed());
    let emulated = std::env::var("ADVLENS_CUDA_EMULATED").is_ok_and(|v| v == "1");
    for (p, kd) in [(Precision::Tf32, 8usize), (Precision::Bf16, 16)] {
        for trial in 0..4 {
            let (a, b, c) = (
                randn(&mut rng, 16 * kd),
                randn(&mut rng, kd * 8),
                randn(&mut rng, 128),
            );
            let (d32, d64, s) = mma_reference(p, &a, &b, &c, kd);
            let (ta, tb, tc) = (
                t(&[16, kd], a.clone()),
                t(&[kd, 8], b.clone()),
                t(&[16, 8], c.clone()),
            );
            for portable in [true, false] {
                let what = format!("{p} trial {trial} portable {portable}");
                let d = host(&g.mma_tile(p, &ta, &tb, &tc, portable).expect("mma"));
                // Any summation order: |d - d64| <= gamma_{k+1} * (|c| + sum |a'b'|).
                let allow: Vec<f64> = s.iter().map(|&v| gamma(kd + 1) * v + 1e-30).collect();
                let d64f: Vec<f32> = d64.iter().map(|&v| v as f32).collect();
                let allow2: Vec<f64> = allow
                    .iter()
                    .zip(&d64)
                    .map(|(a, &v)| a + (v - v as f32 as f64).abs())
                    .collect();
                assert_within(&d, &d64f, &allow2, &format!("{what} vs f64"));
                // The twin (always on the emulator) sums in the reference's order: bit-exact.
                if portable || emulated {
                    let bad = d
                        .iter()
                        .zip(&d32)
                        .position(|(x, y)| x.to_bits() != y.to_bits());
                    assert!(
                        bad.is_none(),
                        "{what}: element {bad:?} differs from the same-order reference"
                    );
                }
                // The inputs really are rounded: an f32 product differs somewhere.
                let (f32d, _, _) = mma_reference(Precision::F32, &a, &b, &c, kd);
                assert!(
                    d.iter().zip(&f32d).any(|(x, y)| x != y),
                    "{what}: equals the unrounded product"
                );
            }
        }
    }
}

/// (n, c, h, w, k, r, stride, pad): batch 1, 1x1, 3x3 stride 2, 5x5, 7x7, 11x11 stride 4, K and
/// C*R*R across the 64 / 16 tile edges, N*P*Q never a multiple of 64.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
const CASES: &[Case] = &[
    (1, 3, 9, 9, 5, 1, 1, 0),
    (2, 5, 11, 13, 67, 3, 2, 1),
    (1, 3, 13, 12, 7, 5, 1, 2),
    (2, 2, 15, 15, 3, 7, 2, 3),
    (1, 3, 15, 15, 4, 11, 4, 2),
    (1, 17, 6, 7, 65, 3, 1, 1),
];

fn abs_of(v: &[f32], p: Precision) -> Tensor {
    let r: Vec<f32> = v.iter().map(|&x| p.round(x).abs()).collect();
    t(&[r.len()], r)
}

/// Check one output against the twin (same rounding) and the f32 oracle with the bounds above.
fn check(
    p: Precision,
    what: &str,
    dev: &Tensor,
    twin: &Tensor,
    f32o: &Tensor,
    s: &Tensor,
    n: usize,
) {
    let (dev, twin, f32o, s) = (host(dev), host(twin), host(f32o), host(s));
    let u = p.input_unit_roundoff();
    let tiny = 1e-30;
    // S itself comes from an f32 sum: inflate by (1 + gamma_n).
    let order: Vec<f64> = s
        .iter()
        .map(|&v| 2.0 * gamma(n) * (1.0 + gamma(n)) * v as f64 + tiny)
        .collect();
    assert_within(&dev, &twin, &order, &format!("{what} vs CPU twin ({p})"));
    let rounding: Vec<f64> = s
        .iter()
        .map(|&v| {
            ((2.0 * u + u * u) * (1.0 + gamma(n)) + 2.0 * gamma(n)) * (1.0 + gamma(n)) * v as f64
                + tiny
        })
        .collect();
    assert_within(
        &dev,
        &f32o,
        &rounding,
        &format!("{what} vs f32 oracle ({p})"),
    );
    assert!(
        dev.iter().zip(&f32o).any(|(a, b)| a != b),
        "{what}: {p} result equals the f32 result everywhere (inputs not rounded?)"
    );
}

#[test]
fn tensor_core_convs_match_the_cpu_twin() {
    let Some(gb) = gpu("tensor_core_convs_match_the_cpu_twin") else {
        return;
    };
    let mut rng = Rng::new(seed());
    let f32o = CpuBackend::new();
    for p in [Precision::Tf32, Precision::Bf16] {
        let g = gb.with_precision(p);
        let twin = CpuBackend::with_precision(p);
        for &(n, c, h, w, k, r, stride, pad) in CASES {
            let t0 = std::time::Instant::now();
            let prm = Conv2dParams { stride, pad };
            let what = format!("n{n} c{c} {h}x{w} k{k} r{r} s{stride} p{pad}");
            let (xv, wv, bv) = (
                randn(&mut rng, n * c * h * w),
                randn(&mut rng, k * c * r * r),
                randn(&mut rng, k),
            );
            let (x, wt, b) = (
                t(&[n, c, h, w], xv.clone()),
                t(&[k, c, r, r], wv.clone()),
                t(&[k], bv),
            );
            let (xg, wg, bg) = (
                g.upload(&x).unwrap(),
                g.upload(&wt).unwrap(),
                g.upload(&b).unwrap(),
            );
            let y = g.conv2d(&xg, &wg, Some(&bg), prm).expect("device conv");
            let yt = twin.conv2d(&x, &wt, Some(&b), prm).expect("twin conv");
            let yf = f32o.conv2d(&x, &wt, Some(&b), prm).expect("f32 conv");
            // S for the forward: |x'| * |w'| + |b| (the bias is one more f32 addition: n + 1).
            let (ax, aw) = (
                abs_of(&xv, p).reshape(&[n, c, h, w]).unwrap(),
                abs_of(&wv, p).reshape(&[k, c, r, r]).unwrap(),
            );
            let ab = t(&[k], host(&b).iter().map(|v| v.abs()).collect());
            let sy = f32o.conv2d(&ax, &aw, Some(&ab), prm).expect("S fwd");
            check(p, &format!("fwd {what}"), &y, &yt, &yf, &sy, c * r * r + 1);

            let dyv = randn(&mut rng, y.numel());
            let dy = t(y.shape(), dyv.clone());
            let dyg = g.upload(&dy).unwrap();
            let gg = g
                .conv2d_backward(&xg, &wg, &dyg, prm, true)
                .expect("device bwd");
            let gt = twin
                .conv2d_backward(&x, &wt, &dy, prm, true)
                .expect("twin bwd");
            let gf = f32o
                .conv2d_backward(&x, &wt, &dy, prm, true)
                .expect("f32 bwd");
            let ady = abs_of(&dyv, p).reshape(y.shape()).unwrap();
            let sg = f32o
                .conv2d_backward(&ax, &aw, &ady, prm, true)
                .expect("S bwd");
            let (pp, qq) = (y.shape()[2], y.shape()[3]);
            check(
                p,
                &format!("dx {what}"),
                gg.dx.as_ref().unwrap(),
                gt.dx.as_ref().unwrap(),
                gf.dx.as_ref().unwrap(),
                sg.dx.as_ref().unwrap(),
                k * r * r,
            );
            check(
                p,
                &format!("dw {what}"),
                &gg.dw,
                &gt.dw,
                &gf.dw,
                &sg.dw,
                n * pp * qq,
            );
            // db is a plain f32 channel sum at every precision.
            common::assert_close32(
                &host(&gg.db),
                &host(&gf.db),
                1e-4,
                1e-4,
                &format!("db {what}"),
            );
            println!("{p} {what}: {:.2} s", t0.elapsed().as_secs_f64());
        }
    }
}
