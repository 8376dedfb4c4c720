//! Finite-difference checks of every layer's backward, and one-step checks of the optimisers
//! against hand-computed values. Each body runs on the CPU (and on CUDA with `--features cuda`
//! when a GPU is present) through `backend_test!`.
//!
//! Method: for a random cotangent r, L(x) = sum_i r_i * f(x)_i is evaluated in f64 from the f32
//! op; its central difference along every coordinate must match the backward pass fed dy = r.
//! Piecewise-linear ops use inputs kept away from their kinks (distinct max-pool inputs, |x| away
//! from 0 for ReLU) with a step smaller than that margin, so the differences are exact.
mod common;

use advlens::backend::{AdamParams, Backend, Conv2dParams, Pool2dParams, SgdParams};
use advlens::rng::Rng;
use advlens::Tensor;
use common::{assert_close, assert_close32, host, put, randn};

/// sum_i r_i y_i in f64.
fn dot(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `loss` along every coordinate of `x`, step `h`.
fn numeric_grad(x: &[f32], h: f32, loss: &dyn Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut xv = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xv[i];
            xv[i] = orig + h;
            let lp = loss(&xv);
            let up = xv[i] as f64;
            xv[i] = orig - h;
            let lm = loss(&xv);
            let down = xv[i] as f64;
            xv[i] = orig;
            (lp - lm) / (up - down)
        })
        .collect()
}

/// Compare an analytic gradient with the numeric one: atol is a fraction of the gradient's
/// largest magnitude (f32 rounding of the forward outputs, divided by 2h, lands there).
fn check_grad(what: &str, analytic: &[f32], numeric: &[f64], frac: f64, rtol: f64) {
    let scale = numeric.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    assert!(scale > 0.0, "{what}: numeric gradient is identically zero");
    assert_close(analytic, numeric, frac * scale, rtol, what);
}

/// Values away from zero by at least `margin`, random sign (ReLU inputs with no kink in reach).
fn away_from_zero(rng: &mut Rng, n: usize, margin: f32) -> Vec<f32> {
    randn(rng, n)
        .into_iter()
        .map(|v| if v >= 0.0 { v + margin } else { v - margin })
        .collect()
}

/// Distinct values on a 0.01 grid (shuffled) with small jitter: max-pool windows have a unique
/// maximum that a step below 0.003 cannot change.
fn distinct(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut idx: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut idx);
    idx.into_iter()
        .map(|i| (i as f64 * 0.01 - n as f64 * 0.005 + rng.uniform() * 0.003) as f32)
        .collect()
}

fn conv_case(be: &dyn Backend, seed: u64, xs: [usize; 4], k: usize, r: usize, p: Conv2dParams) {
    let mut rng = Rng::new(seed);
    let [n, c, h, w] = xs;
    let x = randn(&mut rng, n * c * h * w);
    let wt = randn(&mut rng, k * c * r * r);
    let b = randn(&mut rng, k);
    let ws = [k, c, r, r];
    let fwd = |x: &[f32], wt: &[f32], b: &[f32]| -> Tensor {
        be.conv2d(
            &put(be, &xs, x.to_vec()),
            &put(be, &ws, wt.to_vec()),
            Some(&put(be, &[k], b.to_vec())),
            p,
        )
        .expect("conv2d")
    };
    let y = fwd(&x, &wt, &b);
    let rr = randn(&mut rng, y.numel());
    let g = be
        .conv2d_backward(
            &put(be, &xs, x.clone()),
            &put(be, &ws, wt.clone()),
            &put(be, y.shape(), rr.clone()),
            p,
            true,
        )
        .expect("conv2d_backward");
    let tag = format!("conv2d {xs:?} k{k} r{r} {p:?}");
    // Linear in each argument: any step is exact up to rounding, so a large one minimises noise.
    let h = 0.5;
    let nx = numeric_grad(&x, h, &|v| dot(&rr, &host(&fwd(v, &wt, &b))));
    check_grad(
        &format!("{tag} dx"),
        &host(g.dx.as_ref().expect("dx")),
        &nx,
        1e-4,
        1e-3,
    );
    let nw = numeric_grad(&wt, h, &|v| dot(&rr, &host(&fwd(&x, v, &b))));
    check_grad(&format!("{tag} dw"), &host(&g.dw), &nw, 1e-4, 1e-3);
    let nb = numeric_grad(&b, h, &|v| dot(&rr, &host(&fwd(&x, &wt, v))));
    check_grad(&format!("{tag} db"), &host(&g.db), &nb, 1e-4, 1e-3);
    // want_dx = false must still give the same weight gradients.
    let g2 = be
        .conv2d_backward(
            &put(be, &xs, x.clone()),
            &put(be, &ws, wt.clone()),
            &put(be, y.shape(), rr.clone()),
            p,
            false,
        )
        .expect("conv2d_backward");
    assert!(g2.dx.is_none());
    // Same values up to summation order (a device may reduce in another order).
    assert_close32(&host(&g2.dw), &host(&g.dw), 1e-6, 1e-5, "dw without dx");
    // The data-only backward (frozen weights: attacks) gives the same dx.
    let dx_only = be
        .conv2d_backward_data(
            &put(be, &xs, x.clone()),
            &put(be, &ws, wt.clone()),
            &put(be, y.shape(), rr.clone()),
            p,
        )
        .expect("conv2d_backward_data");
    assert_eq!(dx_only.shape(), &xs[..]);
    let dx_full = host(g.dx.as_ref().expect("dx"));
    assert_close32(&host(&dx_only), &dx_full, 1e-6, 1e-5, "dx alone");
}

backend_test!(conv2d_grad_stride2_pad1, |be: &dyn Backend| {
    conv_case(
        be,
        1,
        [2, 3, 7, 6],
        4,
        3,
        Conv2dParams { stride: 2, pad: 1 },
    );
});

backend_test!(conv2d_grad_stride1_pad1, |be: &dyn Backend| {
    conv_case(
        be,
        2,
        [1, 2, 5, 7],
        3,
        3,
        Conv2dParams { stride: 1, pad: 1 },
    );
});

backend_test!(conv2d_grad_1x1_and_5x5, |be: &dyn Backend| {
    conv_case(
        be,
        3,
        [3, 4, 3, 5],
        2,
        1,
        Conv2dParams { stride: 1, pad: 0 },
    );
    conv_case(
        be,
        4,
        [1, 2, 9, 8],
        3,
        5,
        Conv2dParams { stride: 3, pad: 2 },
    );
});

fn maxpool_case(be: &dyn Backend, seed: u64, xs: [usize; 4], p: Pool2dParams) {
    let mut rng = Rng::new(seed);
    let x = distinct(&mut rng, xs.iter().product());
    let fwd = |v: &[f32]| {
        be.maxpool2d(&put(be, &xs, v.to_vec()), p)
            .expect("maxpool2d")
    };
    let y = fwd(&x);
    let rr = randn(&mut rng, y.numel());
    let dx = be
        .maxpool2d_backward(&put(be, &xs, x.clone()), &put(be, y.shape(), rr.clone()), p)
        .expect("maxpool2d_backward");
    let nx = numeric_grad(&x, 1e-3, &|v| dot(&rr, &host(&fwd(v))));
    check_grad(
        &format!("maxpool {xs:?} {p:?} dx"),
        &host(&dx),
        &nx,
        1e-5,
        1e-4,
    );
}

backend_test!(maxpool_grad, |be: &dyn Backend| {
    let p = |kernel, stride, pad| Pool2dParams {
        kernel,
        stride,
        pad,
    };
    maxpool_case(be, 5, [2, 3, 9, 7], p(3, 2, 1));
    maxpool_case(be, 6, [1, 2, 7, 5], p(2, 2, 0));
    maxpool_case(be, 7, [1, 1, 6, 6], p(3, 1, 1));
});

backend_test!(adaptive_avgpool_grad, |be: &dyn Backend| {
    let mut rng = Rng::new(8);
    for (xs, oh, ow) in [
        ([2, 3, 7, 5], 3, 2),
        ([1, 2, 5, 5], 1, 1),
        ([1, 1, 3, 4], 6, 6),
    ] {
        let x = randn(&mut rng, xs.iter().product());
        let fwd = |v: &[f32]| {
            be.adaptive_avgpool2d(&put(be, &xs, v.to_vec()), oh, ow)
                .expect("adaptive_avgpool2d")
        };
        let y = fwd(&x);
        assert_eq!(y.shape(), &[xs[0], xs[1], oh, ow]);
        let rr = randn(&mut rng, y.numel());
        let dx = be
            .adaptive_avgpool2d_backward(&put(be, y.shape(), rr.clone()), xs[2], xs[3])
            .expect("adaptive_avgpool2d_backward");
        let nx = numeric_grad(&x, 0.5, &|v| dot(&rr, &host(&fwd(v))));
        check_grad(
            &format!("avgpool {xs:?}->({oh},{ow}) dx"),
            &host(&dx),
            &nx,
            1e-4,
            1e-3,
        );
    }
});

backend_test!(relu_grad, |be: &dyn Backend| {
    let mut rng = Rng::new(9);
    let xs = [3, 2, 5, 1];
    let x = away_from_zero(&mut rng, 30, 0.05);
    let fwd = |v: &[f32]| be.relu(&put(be, &xs, v.to_vec())).expect("relu");
    let y = fwd(&x);
    let rr = randn(&mut rng, 30);
    let dx = be
        .relu_backward(&y, &put(be, &xs, rr.clone()))
        .expect("relu_backward");
    let nx = numeric_grad(&x, 1e-2, &|v| dot(&rr, &host(&fwd(v))));
    check_grad("relu dx", &host(&dx), &nx, 1e-5, 1e-4);
});

backend_test!(linear_grad, |be: &dyn Backend| {
    let mut rng = Rng::new(10);
    for (n, i, o) in [(3, 7, 5), (1, 1, 2), (4, 13, 1)] {
        let (x, w, b) = (
            randn(&mut rng, n * i),
            randn(&mut rng, o * i),
            randn(&mut rng, o),
        );
        let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
            be.linear(
                &put(be, &[n, i], x.to_vec()),
                &put(be, &[o, i], w.to_vec()),
                &put(be, &[o], b.to_vec()),
            )
            .expect("linear")
        };
        let rr = randn(&mut rng, n * o);
        let g = be
            .linear_backward(
                &put(be, &[n, i], x.clone()),
                &put(be, &[o, i], w.clone()),
                &put(be, &[n, o], rr.clone()),
            )
            .expect("linear_backward");
        let tag = format!("linear n{n} i{i} o{o}");
        let nx = numeric_grad(&x, 0.5, &|v| dot(&rr, &host(&fwd(v, &w, &b))));
        check_grad(&format!("{tag} dx"), &host(&g.dx), &nx, 1e-4, 1e-3);
        let nw = numeric_grad(&w, 0.5, &|v| dot(&rr, &host(&fwd(&x, v, &b))));
        check_grad(&format!("{tag} dw"), &host(&g.dw), &nw, 1e-4, 1e-3);
        let nb = numeric_grad(&b, 0.5, &|v| dot(&rr, &host(&fwd(&x, &w, v))));
        check_grad(&format!("{tag} db"), &host(&g.db), &nb, 1e-4, 1e-3);
    }
});

backend_test!(batchnorm_train_grad, |be: &dyn Backend| {
    let mut rng = Rng::new(11);
    let eps = 1e-5;
    for xs in [[3usize, 2, 3, 5], [1, 3, 2, 3], [7, 2, 1, 1]] {
        let c = xs[1];
        // Shifted and scaled input so the normalisation does real work.
        let x: Vec<f32> = randn(&mut rng, xs.iter().product())
            .into_iter()
            .map(|v| 2.5 * v + 1.5)
            .collect();
        let gamma: Vec<f32> = randn(&mut rng, c)
            .into_iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect();
        let beta = randn(&mut rng, c);
        let fwd = |x: &[f32], g: &[f32], b: &[f32]| {
            be.batchnorm2d_train(
                &put(be, &xs, x.to_vec()),
                &put(be, &[c], g.to_vec()),
                &put(be, &[c], b.to_vec()),
                eps,
            )
            .expect("batchnorm2d_train")
        };
        let st = fwd(&x, &gamma, &beta);
        let rr = randn(&mut rng, x.len());
        let (dx, dg, db) = be
            .batchnorm2d_backward(
                &put(be, &xs, x.clone()),
                &put(be, &[c], gamma.clone()),
                &st.mean,
                &st.var,
                eps,
                &put(be, &xs, rr.clone()),
            )
            .expect("batchnorm2d_backward");
        let tag = format!("batchnorm train {xs:?}");
        let nx = numeric_grad(&x, 1e-2, &|v| dot(&rr, &host(&fwd(v, &gamma, &beta).y)));
        check_grad(&format!("{tag} dx"), &host(&dx), &nx, 2e-3, 1e-2);
        let ng = numeric_grad(&gamma, 1e-2, &|v| dot(&rr, &host(&fwd(&x, v, &beta).y)));
        check_grad(&format!("{tag} dgamma"), &host(&dg), &ng, 2e-3, 1e-2);
        let nb = numeric_grad(&beta, 1e-2, &|v| dot(&rr, &host(&fwd(&x, &gamma, v).y)));
        check_grad(&format!("{tag} dbeta"), &host(&db), &nb, 2e-3, 1e-2);
    }
});

backend_test!(batchnorm_eval_grad, |be: &dyn Backend| {
    let mut rng = Rng::new(12);
    let (xs, c, eps) = ([2usize, 3, 2, 3], 3, 1e-3);
    let x = randn(&mut rng, 36);
    let gamma = randn(&mut rng, c);
    let beta = randn(&mut rng, c);
    let rm = randn(&mut rng, c);
    let rv: Vec<f32> = randn(&mut rng, c)
        .into_iter()
        .map(|v| v.abs() + 0.2)
        .collect();
    let fwd = |v: &[f32]| {
        be.batchnorm2d_eval(
            &put(be, &xs, v.to_vec()),
            &put(be, &[c], gamma.clone()),
            &put(be, &[c], beta.clone()),
            &put(be, &[c], rm.clone()),
            &put(be, &[c], rv.clone()),
            eps,
        )
        .expect("batchnorm2d_eval")
    };
    let rr = randn(&mut rng, 36);
    let dx = be
        .batchnorm2d_eval_backward(
            &put(be, &[c], gamma.clone()),
            &put(be, &[c], rv.clone()),
            eps,
            &put(be, &xs, rr.clone()),
        )
        .expect("batchnorm2d_eval_backward");
    let nx = numeric_grad(&x, 0.5, &|v| dot(&rr, &host(&fwd(v))));
    check_grad("batchnorm eval dx", &host(&dx), &nx, 1e-4, 1e-3);
});

backend_test!(softmax_xent_grad, |be: &dyn Backend| {
    let mut rng = Rng::new(13);
    for (n, k, spread) in [(5usize, 7usize, 1.0f32), (1, 10, 3.0), (3, 2, 0.5)] {
        let z: Vec<f32> = randn(&mut rng, n * k)
            .into_iter()
            .map(|v| v * spread)
            .collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        // Per-sample weights: the gradient of sample r's own loss is row r of dlogits.
        let a = randn(&mut rng, n);
        let fwd = |v: &[f32]| {
            be.softmax_xent(&put(be, &[n, k], v.to_vec()), &labels)
                .expect("softmax_xent")
        };
        let (_, d) = fwd(&z);
        let d = host(&d);
        let analytic: Vec<f32> = d.iter().enumerate().map(|(i, &g)| g * a[i / k]).collect();
        let nz = numeric_grad(&z, 1e-2, &|v| dot(&a, &host(&fwd(v).0)));
        check_grad(
            &format!("softmax_xent n{n} k{k} dlogits"),
            &analytic,
            &nz,
            1e-3,
            1e-2,
        );
        // Each row of softmax - onehot sums to 0.
        for row in d.chunks(k) {
            assert!(row.iter().map(|&v| v as f64).sum::<f64>().abs() < 1e-6);
        }
    }
});

backend_test!(sgd_one_step, |be: &dyn Backend| {
    let mut p = put(be, &[4], vec![1.0, -2.0, 0.5, 3.0]);
    let g = put(be, &[4], vec![0.1, -0.3, 0.0, 2.0]);
    let mut buf = put(be, &[4], vec![0.2, 0.0, -0.1, 1.0]);
    let h = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
    };
    be.sgd_step(&mut p, &g, &mut buf, h).expect("sgd_step");
    // By hand: g' = g + 0.01 p; buf = 0.9 buf + g'; p -= 0.1 buf.
    // e.g. element 0: g' = 0.11, buf = 0.18 + 0.11 = 0.29, p = 1 - 0.029 = 0.971.
    assert_close32(
        &host(&buf),
        &[0.29, -0.32, -0.085, 2.93],
        1e-6,
        1e-6,
        "sgd buf",
    );
    assert_close32(
        &host(&p),
        &[0.971, -1.968, 0.5085, 2.707],
        1e-6,
        1e-6,
        "sgd param",
    );
});

backend_test!(adam_steps, |be: &dyn Backend| {
    // Step 1 from zero moments: the update is lr * g / (|g| + eps) = lr * sign(g).
    let mut p = put(be, &[2], vec![1.0, -2.0]);
    let g = put(be, &[2], vec![0.5, -0.25]);
    let (mut m, mut v) = (put(be, &[2], vec![0.0; 2]), put(be, &[2], vec![0.0; 2]));
    let h = AdamParams {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    be.adam_step(&mut p, &g, &mut m, &mut v, h)
        .expect("adam_step");
    assert_close32(&host(&p), &[0.99, -1.99], 1e-6, 1e-6, "adam step 1 param");
    assert_close32(&host(&m), &[0.05, -0.025], 1e-8, 1e-6, "adam step 1 m");
    // 1 - beta2 is formed from the f32 beta2 (0.99900001), 1.3e-5 away from 0.001.
    assert_close32(
        &host(&v),
        &[0.00025, 0.0000625],
        1e-10,
        1e-4,
        "adam step 1 v",
    );

    // Step 3 with moments in flight and L2 weight decay, against the textbook form
    // m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t), p -= lr * m_hat / (sqrt(v_hat) + eps).
    let mut rng = Rng::new(14);
    let n = 9;
    let p0 = randn(&mut rng, n);
    let g0 = randn(&mut rng, n);
    let m0: Vec<f32> = randn(&mut rng, n).into_iter().map(|x| 0.1 * x).collect();
    let v0: Vec<f32> = randn(&mut rng, n)
        .into_iter()
        .map(|x| 0.01 * x * x)
        .collect();
    let h = AdamParams {
        lr: 0.003,
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.1,
        step: 3,
    };
    let (mut p, mut m, mut v) = (
        put(be, &[n], p0.clone()),
        put(be, &[n], m0.clone()),
        put(be, &[n], v0.clone()),
    );
    be.adam_step(&mut p, &put(be, &[n], g0.clone()), &mut m, &mut v, h)
        .expect("adam_step");
    let (b1, b2) = (0.8f64, 0.99f64);
    let mut want = (vec![], vec![], vec![]);
    for i in 0..n {
        let g = g0[i] as f64 + 0.1 * p0[i] as f64;
        let mi = b1 * m0[i] as f64 + (1.0 - b1) * g;
        let vi = b2 * v0[i] as f64 + (1.0 - b2) * g * g;
        let mh = mi / (1.0 - b1.powi(3));
        let vh = vi / (1.0 - b2.powi(3));
        want.0.push(p0[i] as f64 - 0.003 * mh / (vh.sqrt() + 1e-6));
        want.1.push(mi);
        want.2.push(vi);
    }
    assert_close(&host(&p), &want.0, 1e-6, 1e-5, "adam step 3 param");
    assert_close(&host(&m), &want.1, 1e-7, 1e-5, "adam step 3 m");
    assert_close(&host(&v), &want.2, 1e-9, 1e-5, "adam step 3 v");
    let zero = AdamParams { step: 0, ..h };
    assert!(be
        .adam_step(&mut p, &put(be, &[n], g0.clone()), &mut m, &mut v, zero)
        .is_err());
});
