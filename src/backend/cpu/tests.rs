//! Unit tests of the CPU backend against direct loops and hand-computed values.
use super::*;
use crate::rng::Rng;

fn rand_t(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = crate::tensor::numel(shape);
    Tensor::from_vec(shape, (0..n).map(|_| rng.normal() as f32).collect()).unwrap()
}

/// Fails unless every |got - want| <= 1e-5 * max|want| + 1e-4 * |want|, naming the worst index.
/// An f32 sum of n products errs by about n * 2^-24 * sum |terms|, which a near-zero
/// (cancelling) output cannot meet relative to itself (seen: an output of 6.45e-4 off by 9e-7
/// in a 27-term sum), while any indexing error is off by the size of a term.
fn assert_close(case: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{case}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (i, e) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / (1e-5 * scale + 1e-4 * w.abs()))
        .enumerate()
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    assert!(
        e <= 1.0,
        "{case}: worst index {i}, err/tol {e}: got {} want {}",
        got[i],
        want[i]
    );
}

#[test]
fn conv_matches_direct_loops_on_awkward_shapes() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    // (n, c, h, w, k, r, stride, pad)
    for &case in &[
        (1, 3, 7, 5, 4, 3, 2, 1),
        (3, 2, 11, 13, 5, 3, 1, 1),
        (2, 5, 6, 6, 7, 1, 1, 0),
        (2, 3, 9, 7, 2, 5, 3, 2),
        (1, 1, 1, 1, 3, 1, 1, 0),
        // Small planes: images unfolded side by side, in groups of 2, 2 and 1 / of 5.
        (5, 3, 10, 10, 6, 3, 1, 1),
        (5, 4, 4, 4, 19, 3, 2, 1),
        // Output rows of 16+ columns at stride 2: the copy-based unfold.
        (2, 2, 33, 35, 3, 3, 2, 1),
        (3, 2, 4, 20, 17, 3, 1, 1),
        (5, 2, 20, 20, 3, 3, 2, 1),
    ] {
        forward_matches_direct_loops(&be, &mut rng, case);
    }
}

#[test]
fn conv_backward_data_matches_direct_loops() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(13);
    // (n, c, h, w, k, r, stride, pad). The stride-1 cases run as transposed convs whose packed
    // weights have K*R*R columns: past 256 (one k-block) a block boundary cuts a filter's taps
    // (31*9 = 279, 60*9 = 540, 12*25 = 300), and C = 5 or 7 leaves a part-filled panel.
    // 14x14 planes and 7x7 planes take grouped products of 2 and of up to 8 images, with a
    // shorter last group (batches 7 and 9).
    for &case in &[
        (3, 5, 14, 14, 31, 3, 1, 1),
        (2, 7, 7, 7, 60, 3, 1, 1),
        (2, 3, 9, 9, 12, 5, 1, 2),
        (7, 3, 14, 14, 5, 3, 1, 1),
        (9, 2, 7, 7, 3, 3, 1, 1),
        (2, 3, 9, 7, 33, 3, 2, 1),
        // One and two input channels: dx's product has 1 or 2 rows (the wide tail kernel).
        (3, 1, 20, 20, 16, 5, 1, 2),
        (2, 2, 30, 30, 8, 3, 1, 1),
    ] {
        let (n, c, h, w, k, r, s, p) = case;
        let x = rand_t(&mut rng, &[n, c, h, w]);
        let wt = rand_t(&mut rng, &[k, c, r, r]);
        let prm = Conv2dParams { stride: s, pad: p };
        let g = conv_geom("t", &x, &wt, prm).unwrap();
        let dy = rand_t(&mut rng, &[n, k, g.p, g.q]);
        let gr = be.conv2d_backward(&x, &wt, &dy, prm, true).unwrap();
        let want = naive_backward_data(&g, wt.as_cpu().unwrap(), dy.as_cpu().unwrap());
        assert_close(
            &format!("dx {case:?}"),
            gr.dx.unwrap().as_cpu().unwrap(),
            &want,
        );
        forward_matches_direct_loops(&be, &mut rng, case);
    }
}

/// dx[n, c, h, w] = sum over k, r, s of w[k, c, r, s] dy[n, k, oi, oj] where
/// oi*stride + r - pad = h and oj*stride + s - pad = w, in f64.
fn naive_backward_data(g: &conv::Geom, w: &[f32], dy: &[f32]) -> Vec<f64> {
    let mut dx = vec![0.0f64; g.n * g.c * g.h * g.w];
    for (n, k, oi, oj) in (0..g.n).flat_map(|n| {
        (0..g.k)
            .flat_map(move |k| (0..g.p).flat_map(move |oi| (0..g.q).map(move |oj| (n, k, oi, oj))))
    }) {
        let d = dy[((n * g.k + k) * g.p + oi) * g.q + oj] as f64;
        for (c, r, s) in
            (0..g.c).flat_map(|c| (0..g.r).flat_map(move |r| (0..g.r).map(move |s| (c, r, s))))
        {
            let (hh, ww) = (oi * g.stride + r, oj * g.stride + s);
            if hh < g.pad || ww < g.pad || hh - g.pad >= g.h || ww - g.pad >= g.w {
                continue;
            }
            let wv = w[((k * g.c + c) * g.r + r) * g.r + s] as f64;
            dx[((n * g.c + c) * g.h + hh - g.pad) * g.w + ww - g.pad] += wv * d;
        }
    }
    dx
}

/// (n, c, h, w, k, r, stride, pad) of one conv test case.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// conv2d with a bias, on fresh random inputs, against the f64 direct loops.
fn forward_matches_direct_loops(be: &CpuBackend, rng: &mut Rng, case: Case) {
    let (n, c, h, w, k, r, s, p) = case;
    let x = rand_t(rng, &[n, c, h, w]);
    let wt = rand_t(rng, &[k, c, r, r]);
    let b = rand_t(rng, &[k]);
    let prm = Conv2dParams { stride: s, pad: p };
    let y = be.conv2d(&x, &wt, Some(&b), prm).unwrap();
    let g = conv_geom("t", &x, &wt, prm).unwrap();
    let want = conv::naive_forward(&g, x.as_cpu().unwrap(), wt.as_cpu().unwrap(), b.as_cpu());
    assert_close(&format!("forward {case:?}"), y.as_cpu().unwrap(), &want);
}

#[test]
fn conv_backward_is_the_adjoint_of_forward() {
    // <dy, conv(x, w)> = <dx, x> = <dw, w> for the bias-free conv (it is bilinear).
    let be = CpuBackend::new();
    let mut rng = Rng::new(12);
    let x = rand_t(&mut rng, &[2, 3, 9, 8]);
    let w = rand_t(&mut rng, &[4, 3, 3, 3]);
    let prm = Conv2dParams { stride: 2, pad: 1 };
    let y = be.conv2d(&x, &w, None, prm).unwrap();
    let dy = rand_t(&mut rng, y.shape());
    let gr = be.conv2d_backward(&x, &w, &dy, prm, true).unwrap();
    let dot = |a: &Tensor, b: &Tensor| -> f64 {
        a.as_cpu()
            .unwrap()
            .iter()
            .zip(b.as_cpu().unwrap())
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum()
    };
    let lhs = dot(&dy, &y);
    let dx = gr.dx.unwrap();
    assert!((lhs - dot(&dx, &x)).abs() < 1e-3 * lhs.abs().max(1.0));
    assert!((lhs - dot(&gr.dw, &w)).abs() < 1e-3 * lhs.abs().max(1.0));
    let db = gr.db.as_cpu().unwrap();
    let d = dy.as_cpu().unwrap();
    let pq = y.shape()[2] * y.shape()[3];
    let want0: f32 = (0..2)
        .map(|n| d[n * 4 * pq..n * 4 * pq + pq].iter().sum::<f32>())
        .sum();
    assert!((db[0] - want0).abs() < 1e-4);
}

#[test]
fn maxpool_ties_pick_first_and_padding_is_never_selected() {
    let be = CpuBackend::new();
    // All-negative input: zero padding would win, -inf padding must not.
    let x = Tensor::from_vec(&[1, 1, 2, 2], vec![-3.0, -1.0, -1.0, -2.0]).unwrap();
    let p = Pool2dParams {
        kernel: 3,
        stride: 2,
        pad: 1,
    };
    let y = be.maxpool2d(&x, p).unwrap();
    assert_eq!(y.as_cpu().unwrap(), &[-1.0]);
    let dy = Tensor::from_vec(&[1, 1, 1, 1], vec![5.0]).unwrap();
    let dx = be.maxpool2d_backward(&x, &dy, p).unwrap();
    // The tie between (0,1) and (1,0) goes to the first in row-major order.
    assert_eq!(dx.as_cpu().unwrap(), &[0.0, 5.0, 0.0, 0.0]);
    let bad = Pool2dParams {
        kernel: 2,
        stride: 1,
        pad: 2,
    };
    assert!(be.maxpool2d(&x, bad).is_err());
}

#[test]
fn adaptive_avgpool_windows_overlap_like_torch() {
    let be = CpuBackend::new();
    // H = 5 -> 3 outputs: windows [0,2), [1,4), [3,5).
    let x = Tensor::from_vec(&[1, 1, 5, 1], vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let y = be.adaptive_avgpool2d(&x, 3, 1).unwrap();
    assert_eq!(y.as_cpu().unwrap(), &[1.5, 3.0, 4.5]);
    let dy = Tensor::from_vec(&[1, 1, 3, 1], vec![2.0, 3.0, 4.0]).unwrap();
    let dx = be.adaptive_avgpool2d_backward(&dy, 5, 1).unwrap();
    assert_eq!(dx.as_cpu().unwrap(), &[1.0, 2.0, 1.0, 3.0, 2.0]);
}

#[test]
fn softmax_xent_is_stable_and_not_averaged() {
    let be = CpuBackend::new();
    let z = Tensor::from_vec(&[2, 3], vec![1000.0, 0.0, -1000.0, 1.0, 2.0, 3.0]).unwrap();
    let (loss, d) = be.softmax_xent(&z, &[0, 2]).unwrap();
    let l = loss.as_cpu().unwrap();
    assert!(l[0].abs() < 1e-6, "{l:?}");
    let e: f64 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
    assert!((l[1] as f64 - e).abs() < 1e-6);
    let d = d.as_cpu().unwrap();
    assert!(d[0].abs() < 1e-6 && d[1].abs() < 1e-6);
    let p3 = (3.0 - (e + 3.0)).exp();
    assert!((d[5] as f64 - (p3 - 1.0)).abs() < 1e-6);
    assert!(be.softmax_xent(&z, &[0, 3]).is_err());
}

#[test]
fn dropout_mask_follows_the_counter_rng() {
    let be = CpuBackend::new();
    let x = Tensor::from_vec(&[40_000], vec![2.0; 40_000]).unwrap();
    let (y, m) = be.dropout(&x, 0.25, 9).unwrap();
    let (y, m) = (y.as_cpu().unwrap(), m.as_cpu().unwrap());
    for i in [0usize, 1, 16_384, 39_999] {
        let keep = crate::rng::uniform01(9, i as u64) >= 0.25;
        assert_eq!(m[i], if keep { 1.0 / 0.75 } else { 0.0 });
        assert_eq!(y[i], 2.0 * m[i]);
    }
    let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / 40_000.0;
    assert!((kept - 0.75).abs() < 0.02, "{kept}");
}

#[test]
fn quadform_zero_norm_gives_zero_cosine() {
    let be = CpuBackend::new();
    let p = Tensor::from_vec(&[2, 2], vec![0.0, 0.0, 1.0, 0.0]).unwrap();
    let q = Tensor::from_vec(&[2, 2], vec![1.0, 0.0, 0.6, 0.4]).unwrap();
    let c = Tensor::from_vec(&[2, 2], vec![1.0, 0.5, 0.5, 1.0]).unwrap();
    let r = be.quadform(&p, &c, &q).unwrap();
    assert_eq!(r.cos.as_cpu().unwrap()[0], 0.0);
    let pcq = 0.6 + 0.5 * 0.4;
    let qcq: f64 = 0.36 + 0.16 + 2.0 * 0.5 * 0.24;
    assert!((r.pcq.as_cpu().unwrap()[1] as f64 - pcq).abs() < 1e-6);
    assert!((r.cos.as_cpu().unwrap()[1] as f64 - pcq / qcq.sqrt()).abs() < 1e-6);
}

#[test]
fn shape_errors_name_the_op_and_do_not_panic() {
    let be = CpuBackend::new();
    let x = Tensor::zeros(&[1, 3, 4, 4]);
    let w = Tensor::zeros(&[2, 4, 3, 3]);
    let e = be
        .conv2d(&x, &w, None, Conv2dParams { stride: 1, pad: 0 })
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("conv2d:") && e.contains("[2, 4, 3, 3]"),
        "{e}"
    );
    let e = be
        .linear(
            &Tensor::zeros(&[2, 3]),
            &Tensor::zeros(&[4, 5]),
            &Tensor::zeros(&[4]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("linear:"), "{e}");
    assert!(be.add(&Tensor::zeros(&[2]), &Tensor::zeros(&[3])).is_err());
}

#[test]
fn batchnorm_train_normalises_with_biased_variance() {
    let be = CpuBackend::new();
    let x = Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 6.0]).unwrap();
    let g = Tensor::from_vec(&[1], vec![2.0]).unwrap();
    let b = Tensor::from_vec(&[1], vec![0.5]).unwrap();
    let r = be.batchnorm2d_train(&x, &g, &b, 0.0).unwrap();
    assert_eq!(r.mean.as_cpu().unwrap(), &[3.0]);
    assert_eq!(r.var.as_cpu().unwrap(), &[3.5]);
    let y = r.y.as_cpu().unwrap();
    assert!((y[0] as f64 - (2.0 * -2.0 / 3.5f64.sqrt() + 0.5)).abs() < 1e-6);
}

/// dx and dw of a conv by the direct loops in f64 (the adjoint of `conv::naive_forward`).
fn naive_backward(g: &conv::Geom, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0f64; g.n * g.c * g.h * g.w];
    let mut dw = vec![0.0f64; g.k * g.c * g.r * g.r];
    for ni in 0..g.n {
        for ki in 0..g.k {
            for oi in 0..g.p {
                for oj in 0..g.q {
                    let d = dy[((ni * g.k + ki) * g.p + oi) * g.q + oj] as f64;
                    for ci in 0..g.c {
                        for a in 0..g.r {
                            for b in 0..g.r {
                                let ih = (oi * g.stride + a) as isize - g.pad as isize;
                                let iw = (oj * g.stride + b) as isize - g.pad as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xi = ((ni * g.c + ci) * g.h + ih as usize) * g.w + iw as usize;
                                let wi = ((ki * g.c + ci) * g.r + a) * g.r + b;
                                dx[xi] += d * w[wi] as f64;
                                dw[wi] += d * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

#[test]
fn conv_backward_matches_direct_loops_on_every_path() {
    // Each case picks a path: stride 1 (dx as the transposed forward conv), stride 2 (dcol +
    // col2im), 1x1 (no column matrix); dw by row dot products (many pixels or few channels:
    // on the padded grid at stride 1, over an im2col otherwise) or by the GEMM (more than 16
    // output channels on fewer than 128 pixels).
    let be = CpuBackend::new();
    let mut rng = Rng::new(13);
    for &case in &[
        (2, 3, 13, 12, 5, 3, 1, 1),
        (3, 2, 9, 11, 17, 3, 1, 1),
        (2, 4, 9, 7, 19, 3, 2, 1),
        (1, 3, 16, 16, 6, 5, 1, 2),
        (2, 5, 6, 7, 23, 1, 1, 0),
        (2, 5, 6, 7, 3, 1, 2, 0),
        (1, 2, 5, 5, 3, 3, 1, 0),
        (3, 3, 5, 6, 4, 1, 1, 1),
        (2, 2, 7, 3, 5, 2, 1, 1),
        // Small planes: dw over groups of images (2, 2, 1 per thread run), dx through grouped
        // forward products (stride 1) and col2im (stride 2).
        (5, 3, 10, 10, 6, 3, 1, 1),
        (7, 4, 4, 4, 21, 3, 2, 1),
        (6, 5, 2, 2, 24, 3, 1, 1),
        (2, 2, 33, 35, 3, 3, 2, 1),
        (3, 2, 4, 20, 17, 3, 1, 1),
        (5, 2, 20, 20, 3, 3, 2, 1),
        // dw on the padded grid of one image at a time (planes of at least FILTER_GROUP_COLS
        // pixels), several images per thread run.
        (3, 2, 33, 32, 5, 3, 1, 1),
    ] {
        backward_matches_direct_loops(&be, &mut rng, case);
    }
}

/// conv2d_backward (dx and dw) on fresh random inputs against the f64 direct loops.
fn backward_matches_direct_loops(be: &CpuBackend, rng: &mut Rng, case: Case) {
    let (n, c, h, w, k, r, s, p) = case;
    let x = rand_t(rng, &[n, c, h, w]);
    let wt = rand_t(rng, &[k, c, r, r]);
    let prm = Conv2dParams { stride: s, pad: p };
    let g = conv_geom("t", &x, &wt, prm).unwrap();
    let dy = rand_t(rng, &[n, k, g.p, g.q]);
    let gr = be.conv2d_backward(&x, &wt, &dy, prm, true).unwrap();
    let (dx_ref, dw_ref) = naive_backward(
        &g,
        x.as_cpu().unwrap(),
        wt.as_cpu().unwrap(),
        dy.as_cpu().unwrap(),
    );
    let check = |what: &str, got: &[f32], want: &[f64]| {
        assert_close(&format!("{what} {case:?}"), got, want)
    };
    check("dx", gr.dx.unwrap().as_cpu().unwrap(), &dx_ref);
    check("dw", gr.dw.as_cpu().unwrap(), &dw_ref);
}

/// The grouped small-plane paths (images side by side on one padded grid: contiguous B runs at
/// stride 1, gathers otherwise) against the direct loops: groups cut short by the batch (65 =
/// 64 + 1 on 2x2 planes, 30 = 28 + 2 on 3x3, 6 = 5 + 1 on 7x7), C = 1, R = 1, 3, 5, pad 0, 1, 2
/// (pad >= R too), R = 2, strides 2 and 3, planes 1x1 to 7x7 and non-square, K past one 96-row GEMM block.
#[test]
fn conv_grouped_small_planes_match_direct_loops() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(14);
    // (n, c, h, w, k, r, stride, pad)
    for &case in &[
        (65, 3, 2, 2, 5, 3, 1, 1),
        (7, 1, 2, 2, 3, 3, 1, 1),
        (3, 2, 1, 1, 4, 1, 1, 0),
        (3, 2, 1, 1, 4, 3, 1, 1),
        (30, 2, 3, 3, 6, 3, 1, 1),
        (6, 3, 7, 7, 4, 3, 1, 1),
        (6, 2, 7, 7, 3, 5, 1, 2),
        (4, 2, 7, 7, 3, 5, 1, 0),
        (5, 2, 3, 3, 4, 3, 1, 2),
        (5, 2, 3, 6, 3, 3, 1, 1),
        (4, 2, 2, 2, 3, 1, 1, 1),
        (17, 2, 4, 4, 100, 3, 1, 1),
        (9, 3, 7, 7, 5, 3, 2, 1),
        (5, 2, 4, 4, 3, 1, 2, 0),
        (4, 2, 7, 7, 3, 5, 2, 2),
        (3, 1, 8, 6, 3, 3, 2, 0),
        (17, 2, 8, 8, 100, 3, 2, 1),
        (5, 2, 5, 6, 3, 3, 3, 1),
        (4, 2, 9, 5, 3, 5, 2, 1),
        (3, 2, 6, 6, 4, 2, 2, 0),
        (1, 3, 4, 4, 5, 3, 1, 1),
        // The widths with fixed-size row copies in Grid::fill and crop_group: 14 and 28.
        (3, 2, 14, 14, 3, 3, 1, 1),
        (2, 2, 28, 28, 4, 3, 1, 1),
        // dw groups of FILTER_GROUP_COLS / PQ images (20 of 7x7, 5 of 14x14) cut short by the
        // per-thread runs.
        (45, 2, 7, 7, 3, 3, 1, 1),
        (12, 2, 14, 14, 4, 5, 1, 2),
        // One group whose product runs in parallel (`few_groups`): its fill, crop and col2im
        // run in parallel too, and so do split-k dw's fill and spread.
        (64, 16, 2, 2, 64, 3, 1, 1),
        (64, 32, 4, 4, 16, 3, 2, 1),
    ] {
        forward_matches_direct_loops(&be, &mut rng, case);
        backward_matches_direct_loops(&be, &mut rng, case);
    }
}

/// The grouped paths give the same bits at any thread count (forward with its ReLU, dx plain
/// and gated) and from run to run at a fixed one (dw, whose per-thread runs depend on the count
/// by design); the gated dx is the plain one masked.
#[test]
fn conv_grouped_small_planes_are_deterministic() {
    let mut rng = Rng::new(15);
    // The last two are one group each with a product big enough to run in parallel, whose
    // copies then run in parallel too (`few_groups`): at 3 threads, not at 1.
    for &(n, c, h, w, k, r, s, p) in &[
        (70, 3, 2, 2, 20, 3, 1, 1),
        (40, 4, 7, 7, 24, 3, 2, 1),
        (64, 16, 2, 2, 64, 3, 1, 1),
        (64, 32, 4, 4, 16, 3, 2, 1),
    ] {
        let x = rand_t(&mut rng, &[n, c, h, w]);
        let wt = rand_t(&mut rng, &[k, c, r, r]);
        let prm = Conv2dParams { stride: s, pad: p };
        let g = conv_geom("t", &x, &wt, prm).unwrap();
        let dy = rand_t(&mut rng, &[n, k, g.p, g.q]);
        let (xs, ws, dys) = (
            x.as_cpu().unwrap(),
            wt.as_cpu().unwrap(),
            dy.as_cpu().unwrap(),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let ep = conv::Epilogue {
                    relu: true,
                    ..Default::default()
                };
                let y = conv::forward_with(&g, xs, ws, ep);
                let dx = conv::backward_data(&g, ws, dys, None);
                // x as the gate: dx where x > 0, as the ReLU before the conv would pass it.
                let gated = conv::backward_data(&g, ws, dys, Some(xs));
                (y, dx, conv::backward_filter(&g, xs, dys), gated)
            })
        };
        let (y1, dx1, dw1, gated1) = run(1);
        let (y3, dx3, dw3, gated3) = run(3);
        assert!(y1.iter().all(|&v| v >= 0.0), "relu {n} {h}x{w}");
        assert_eq!(y1, y3, "forward {n} {h}x{w}");
        assert_eq!(dx1, dx3, "dx {n} {h}x{w}");
        assert_eq!(gated1, gated3, "gated dx {n} {h}x{w}");
        let want: Vec<f32> = dx1
            .iter()
            .zip(xs)
            .map(|(&d, &m)| if m > 0.0 { d } else { 0.0 })
            .collect();
        assert_eq!(gated3, want, "gate {n} {h}x{w}");
        assert_eq!(dw3, run(3).2, "dw {n} {h}x{w}");
        assert_eq!(dw1, run(1).2, "dw {n} {h}x{w}");
    }
}

/// The eval-mode batchnorm forward and backward write every element (their outputs skip the
/// zero fill): on awkward sizes, with the heap first filled with NaN-patterned blocks of the
/// same sizes and freed, each output matches the formula.
#[test]
fn batchnorm_eval_writes_every_element() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(17);
    for (n, c, hw) in [(1, 1, 1), (3, 5, 7), (2, 3, 29), (4, 16, 196)] {
        drop(vec![f32::NAN; n * c * hw]);
        let x = rand_t(&mut rng, &[n, c, hw, 1]);
        let dy = rand_t(&mut rng, &[n, c, hw, 1]);
        let gamma = rand_t(&mut rng, &[c]);
        let beta = rand_t(&mut rng, &[c]);
        let mean = rand_t(&mut rng, &[c]);
        let var: Vec<f32> = (0..c).map(|_| rng.normal().abs() as f32 + 0.1).collect();
        let var = Tensor::from_vec(&[c], var).unwrap();
        let y = be
            .batchnorm2d_eval(&x, &gamma, &beta, &mean, &var, 1e-5)
            .unwrap();
        let dx = be
            .batchnorm2d_eval_backward(&gamma, &var, 1e-5, &dy)
            .unwrap();
        let (xs, dys) = (x.cpu("t").unwrap(), dy.cpu("t").unwrap());
        let (g, b, m, v) = (
            gamma.cpu("t").unwrap(),
            beta.cpu("t").unwrap(),
            mean.cpu("t").unwrap(),
            var.cpu("t").unwrap(),
        );
        let scale = |ch: usize| g[ch] as f64 / (v[ch] as f64 + 1e-5f32 as f64).sqrt();
        let ch = |i: usize| i / hw % c;
        let want_y: Vec<f64> = (0..xs.len())
            .map(|i| scale(ch(i)) * (xs[i] as f64 - m[ch(i)] as f64) + b[ch(i)] as f64)
            .collect();
        let want_dx: Vec<f64> = (0..dys.len())
            .map(|i| scale(ch(i)) * dys[i] as f64)
            .collect();
        let case = format!("n{n} c{c} hw{hw}");
        assert_close(&format!("{case} y"), y.cpu("t").unwrap(), &want_y);
        assert_close(&format!("{case} dx"), dx.cpu("t").unwrap(), &want_dx);
    }
}
