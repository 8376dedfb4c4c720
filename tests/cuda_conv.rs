//! The f32 `_v3` convolutions (kernels/conv.cu: 128- and 64-row block tiles, cp.async stages,
//! split-K backward-filter) against the CPU oracle and the direct `_v1` kernels, on awkward
//! shapes with each tile height forced, and on the real conv layer lists of VGG-16, ResNet-18
//! and AlexNet at batch 2 with the shape heuristic. Inputs are fresh random values (the seed is
//! printed).
//!
//! Bound: both sides are f32 sums of the same n products in different orders, so each is within
//! gamma_n S of the exact sum, S = sum |a| |b| (computed as the oracle's conv of |x|, |w|, |dy|,
//! itself an f32 sum, inflated by 1 + gamma_n): |v3 - oracle| <= 2 gamma_n (1 + gamma_n) S.
//! That a-priori bound grows with n; the small awkward shapes (n of tens to hundreds) are where a
//! single lost or doubled term shows far above it, the layer lists check the index maps of the
//! real shapes.
#![cfg(feature = "cuda")]

mod common;

use advlens::backend::cpu::CpuBackend;
use advlens::backend::cuda::{ConvVersion, CudaBackend};
use advlens::backend::{Backend, Conv2dParams};
use advlens::bench::conv::conv_layers;
use advlens::rng::Rng;
use advlens::Tensor;
use common::{
    assert_within, cuda_or_skip as gpu, fresh_seed as seed, gamma, host, randn, tensor as t,
};

fn abs_t(x: &Tensor) -> Tensor {
    t(x.shape(), host(x).iter().map(|v| v.abs()).collect())
}

/// One convolution: (n, c, h, w, k, r, stride, pad).
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// Host inputs of one case and the oracle's results, with the S of each output.
struct Reference {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    dy: Tensor,
    prm: Conv2dParams,
    y: Tensor,
    dx: Tensor,
    dw: Tensor,
    s_y: Tensor,
    s_dx: Tensor,
    s_dw: Tensor,
    /// Reduction lengths of y (plus the bias), dx and dw.
    n_y: usize,
    n_dx: usize,
    n_dw: usize,
}

fn reference(rng: &mut Rng, case: Case) -> Reference {
    let (n, c, h, w, k, r, stride, pad) = case;
    let cpu = CpuBackend::new();
    let prm = Conv2dParams { stride, pad };
    let x = t(&[n, c, h, w], randn(rng, n * c * h * w));
    let wt = t(&[k, c, r, r], randn(rng, k * c * r * r));
    let b = t(&[k], randn(rng, k));
    let y = cpu.conv2d(&x, &wt, Some(&b), prm).expect("oracle conv");
    let dy = t(y.shape(), randn(rng, y.numel()));
    let g = cpu
        .conv2d_backward(&x, &wt, &dy, prm, true)
        .expect("oracle bwd");
    let (ax, aw, ab, ady) = (abs_t(&x), abs_t(&wt), abs_t(&b), abs_t(&dy));
    let s_y = cpu.conv2d(&ax, &aw, Some(&ab), prm).expect("S fwd");
    let sg = cpu
        .conv2d_backward(&ax, &aw, &ady, prm, true)
        .expect("S bwd");
    let (p, q) = (y.shape()[2], y.shape()[3]);
    Reference {
        x,
        w: wt,
        b,
        dy,
        prm,
        y,
        dx: g.dx.expect("dx"),
        dw: g.dw,
        s_y,
        s_dx: sg.dx.expect("S dx"),
        s_dw: sg.dw,
        n_y: c * r * r + 1,
        n_dx: k * r * r,
        n_dw: n * p * q,
    }
}

fn within(what: &str, got: &Tensor, want: &Tensor, s: &Tensor, n: usize, sides: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let g = gamma(n) * (1.0 + gamma(n));
    let allow: Vec<f64> = host(s)
        .iter()
        .map(|&v| sides * g * v as f64 + 1e-30)
        .collect();
    assert_within(&host(got), &host(want), &allow, what);
}

/// Run one case on `dev`; compare with the oracle (two f32 orders: 2 gamma S) and, when given,
/// with v1's results on the device (each within 2 gamma S of the exact sum... of the oracle: 4).
fn check_case(dev: &CudaBackend, re: &Reference, what: &str, v1: Option<&[Tensor; 3]>) {
    let up = |x: &Tensor| dev.upload(x).expect("upload");
    let (xg, wg, bg, dyg) = (up(&re.x), up(&re.w), up(&re.b), up(&re.dy));
    let y = dev.conv2d(&xg, &wg, Some(&bg), re.prm).expect("v3 conv");
    let g = dev
        .conv2d_backward(&xg, &wg, &dyg, re.prm, true)
        .expect("v3 bwd");
    let dx = g.dx.expect("dx");
    within(&format!("y {what}"), &y, &re.y, &re.s_y, re.n_y, 2.0);
    within(&format!("dx {what}"), &dx, &re.dx, &re.s_dx, re.n_dx, 2.0);
    within(&format!("dw {what}"), &g.dw, &re.dw, &re.s_dw, re.n_dw, 2.0);
    if let Some([y1, dx1, dw1]) = v1 {
        within(&format!("y vs v1 {what}"), &y, y1, &re.s_y, re.n_y, 4.0);
        within(
            &format!("dx vs v1 {what}"),
            &dx,
            dx1,
            &re.s_dx,
            re.n_dx,
            4.0,
        );
        within(
            &format!("dw vs v1 {what}"),
            &g.dw,
            dw1,
            &re.s_dw,
            re.n_dw,
            4.0,
        );
    }
}

fn run_v1(dev: &CudaBackend, re: &Reference) -> [Tensor; 3] {
    let v1 = dev.with_versions(ConvVersion::V1, ConvVersion::V1);
    let up = |x: &Tensor| v1.upload(x).expect("upload");
    let (xg, wg, bg, dyg) = (up(&re.x), up(&re.w), up(&re.b), up(&re.dy));
    let y = v1.conv2d(&xg, &wg, Some(&bg), re.prm).expect("v1 conv");
    let g = v1
        .conv2d_backward(&xg, &wg, &dyg, re.prm, true)
        .expect("v1 bwd");
    [y, g.dx.expect("dx"), g.dw]
}

/// 1s, primes, K / C / N*P*Q off the 128 and 64 tile edges and the K step of 8, strides 2 and 3,
/// 1x1, 5x5, 7x7 and 11x11 kernels, batch 1; the last two have long dw reductions (split-K).
const AWKWARD: &[Case] = &[
    (1, 1, 1, 1, 1, 1, 1, 0),
    (1, 3, 7, 5, 4, 3, 1, 1),
    (2, 5, 11, 13, 7, 3, 2, 1),
    (1, 2, 9, 9, 3, 5, 3, 2),
    (2, 17, 6, 6, 129, 1, 1, 0),
    (1, 13, 9, 9, 65, 1, 2, 0),
    (1, 3, 15, 15, 131, 7, 2, 3),
    (1, 3, 23, 21, 5, 11, 4, 2),
    (1, 67, 5, 5, 3, 5, 1, 2),
    (2, 3, 20, 20, 5, 3, 1, 1),
    (3, 9, 17, 19, 70, 3, 1, 1),
];

#[test]
fn v3_convs_match_the_oracle_and_v1_at_both_tile_heights() {
    let Some(base) = gpu("v3_convs_match_the_oracle_and_v1_at_both_tile_heights") else {
        return;
    };
    let dev = base.with_versions(ConvVersion::V3, ConvVersion::V2);
    let mut rng = Rng::new(seed());
    for &case in AWKWARD {
        let re = reference(&mut rng, case);
        let v1 = run_v1(&dev, &re);
        for rows in [Some(64), Some(128), None] {
            let d = dev.with_v3_tile_rows(rows).expect("tile rows");
            check_case(&d, &re, &format!("{case:?} tile rows {rows:?}"), Some(&v1));
        }
    }
}

#[test]
fn v3_tile_rows_other_than_64_or_128_are_refused() {
    let Some(base) = gpu("v3_tile_rows_other_than_64_or_128_are_refused") else {
        return;
    };
    for bad in [0, 32, 96, 256] {
        assert!(base.with_v3_tile_rows(Some(bad)).is_err(), "{bad} accepted");
    }
}

/// The conv layers of the full-size models at batch 2 on small images (every layer kind and
/// channel count of the real network; the image size only sets P and Q).
#[test]
fn v3_convs_match_the_oracle_on_the_real_layer_lists() {
    let Some(base) = gpu("v3_convs_match_the_oracle_on_the_real_layer_lists") else {
        return;
    };
    let dev = base.with_versions(ConvVersion::V3, ConvVersion::V2);
    let mut rng = Rng::new(seed());
    for (net, input) in [("vgg16", 32), ("resnet18", 32), ("alexnet", 67)] {
        let layers = conv_layers(net, 2, input).expect("layer list");
        let mut seen = std::collections::HashSet::new();
        for l in layers {
            let case = (l.n, l.c, l.h, l.w, l.k, l.r, l.stride, l.pad);
            if !seen.insert(case) {
                continue; // repeated blocks of the same shape
            }
            let re = reference(&mut rng, case);
            check_case(
                &dev,
                &re,
                &format!("{net} {} {}", l.name, l.shape_label()),
                None,
            );
        }
    }
}
