//! Models, gradients, checkpoints and resume of `advlens::nn`.

mod common;

use std::path::Path;

use advlens::backend::cpu::CpuBackend;
use advlens::backend::{Backend, Conv2dParams, Pool2dParams};
use advlens::io::{save_safetensors, OwnedTensor, SafeFile};
use advlens::nn::layers::{BatchNorm2d, FwdMode, Layer, LayerKind};
use advlens::nn::optim::{OptimConfig, Optimizer};
use advlens::nn::train::{self, RunDirs, TrainConfig};
use advlens::nn::{checkpoint, Model, ModelSpec};
use advlens::rng::Rng;
use advlens::Tensor;
use common::{assert_close, assert_close32, host, tiny_dataset};

const SMALL: [&str; 3] = ["small-alexnet", "small-vgg16", "small-resnet18"];

/// Random images on the 0..255 scale (never constant), [n, c, h, w].
fn images(rng: &mut Rng, n: usize, c: usize, h: usize, w: usize) -> Tensor {
    let v = (0..n * c * h * w)
        .map(|_| (rng.uniform() * 255.0) as f32)
        .collect();
    Tensor::from_vec(&[n, c, h, w], v).unwrap()
}

fn randv(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn unknown_model_lists_known_ones() {
    let e = Model::build("resnet50", 10, (1, 28, 28), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("resnet50") && e.contains("small-vgg16") && e.contains("alexnet"),
        "{e}"
    );
    let e = Model::build("small-vgg16", 10, (1, 4, 4), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("too small"), "{e}");
    let e = Model::build("small-vgg16", 10, (2, 28, 28), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("normalisation"), "{e}");
}

/// torchvision's totals for 1000 classes, and state_dict key names and counts.
#[test]
fn imagenet_models_match_torchvision_params_and_names() {
    let cases: [(&str, usize, usize, &[&str]); 3] = [
        (
            "alexnet",
            61_100_840,
            16,
            &[
                "features.0.weight",
                "features.10.bias",
                "classifier.1.weight",
                "classifier.6.bias",
            ],
        ),
        (
            "vgg16",
            138_357_544,
            32,
            &[
                "features.0.weight",
                "features.28.bias",
                "classifier.0.weight",
                "classifier.6.bias",
            ],
        ),
        (
            "resnet18",
            11_689_512,
            122,
            &[
                "conv1.weight",
                "bn1.running_var",
                "bn1.num_batches_tracked",
                "layer1.0.conv1.weight",
                "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean",
                "layer4.1.bn2.bias",
                "fc.weight",
            ],
        ),
    ];
    for (name, total, keys, must) in cases {
        let m = Model::build(name, 1000, (3, 224, 224), 1).unwrap();
        assert_eq!(m.num_params(), total, "{name} parameter count");
        let mut names: Vec<String> = m.params().iter().map(|p| p.name.clone()).collect();
        for bn in m.batchnorms() {
            names.push(bn.running_mean.name.clone());
            names.push(bn.running_var.name.clone());
            names.push(bn.num_batches_name.clone());
        }
        assert_eq!(names.len(), keys, "{name} state_dict key count");
        for k in must {
            assert!(names.iter().any(|n| n == k), "{name} lacks {k}");
        }
        let (c, h, w) = m.phi_shape().unwrap();
        let want = match name {
            "alexnet" => (256, 6, 6),
            "vgg16" => (512, 7, 7),
            _ => (512, 7, 7),
        };
        assert_eq!((c, h, w), want, "{name} phi shape");
    }
}

/// One ResNet-18 forward at 224 (the other two are too slow on a CPU for a unit test).
#[test]
fn resnet18_forward_at_224() {
    let be = CpuBackend::new();
    let mut m = Model::build("resnet18", 7, (3, 224, 224), 2).unwrap();
    let mut rng = Rng::new(5);
    let x = images(&mut rng, 1, 3, 224, 224);
    let t = std::time::Instant::now();
    let y = m.forward(&be, &x, false).unwrap();
    println!(
        "resnet18 forward 1x3x224x224: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(y.shape(), &[1, 7]);
    assert!(host(&y).iter().all(|v| v.is_finite()));
    assert_eq!(m.phi().unwrap().shape(), &[1, 512, 7, 7]);
}

// The fused ReLU ops give the bits of the separate ops they replace, on shapes that take every
// CPU conv path: grid groups (stride 1 on small planes, 3x3 and 5x5), one large plane per
// product, the 1x1 direct product, stride 2 gathered from small planes and unfolded per image on
// large ones, and the col2im backward (stride 2); batches of 1 and of primes. With parameter
// gradients, the conv's dw and db are those of the plain backward. Pools: 2x2/s2 on
// even and odd planes, 3x3/s2 and 3x3/s1/p1. Eval-mode batch norms with the ReLU after them,
// with and without a residual. The gated inputs are ReLU outputs, so about half of each gate is
// closed.
backend_test!(
    fused_relu_ops_give_the_separate_ops_bits,
    |be: &dyn Backend| {
        let mut rng = Rng::new(41);
        let mut t = |shape: &[usize], relu: bool| {
            let v = (0..shape.iter().product())
                .map(|_| {
                    let x = rng.normal() as f32;
                    if relu {
                        x.max(0.0)
                    } else {
                        x
                    }
                })
                .collect();
            be.upload(&Tensor::from_vec(shape, v).unwrap()).unwrap()
        };
        let same = |fused: &Tensor, separate: &Tensor, what: &str| {
            let (a, b) = (host(fused), host(separate));
            assert_eq!(a.len(), b.len(), "{what}");
            if let Some(i) = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x.to_bits() != y.to_bits())
            {
                panic!("{what}: element {i}: fused {} vs separate {}", a[i], b[i]);
            }
        };
        // (n, c, h, k, r, stride, pad)
        for (n, c, h, k, r, s, pad) in [
            (3, 5, 14, 7, 3, 1, 1),
            (1, 3, 28, 8, 5, 1, 2),
            (7, 13, 7, 11, 3, 1, 1),
            (2, 3, 17, 2, 5, 1, 2),
            (5, 6, 9, 4, 1, 1, 0),
            (1, 4, 20, 3, 1, 1, 0),
            (3, 4, 7, 9, 3, 2, 1),
            (2, 3, 37, 5, 3, 2, 1),
        ] {
            let what = format!("N{n} C{c} {h}x{h} K{k} {r}x{r} s{s} p{pad}");
            let p = Conv2dParams { stride: s, pad };
            let o = (h + 2 * pad - r) / s + 1;
            let (x, w, b) = (
                t(&[n, c, h, h], true),
                t(&[k, c, r, r], false),
                t(&[k], false),
            );
            for bias in [Some(&b), None] {
                let sep = be.relu(&be.conv2d(&x, &w, bias, p).unwrap()).unwrap();
                let fused = be.conv2d_relu(&x, &w, bias, p).unwrap();
                same(
                    &fused,
                    &sep,
                    &format!("conv2d_relu {what} bias {}", bias.is_some()),
                );
            }
            let dy = t(&[n, k, o, o], false);
            let sep = be
                .relu_backward(&x, &be.conv2d_backward_data(&x, &w, &dy, p).unwrap())
                .unwrap();
            let fused = be.conv2d_backward_data_relu(&x, &w, &dy, p).unwrap();
            same(&fused, &sep, &format!("conv2d_backward_data_relu {what}"));
            let apart = be.conv2d_backward(&x, &w, &dy, p, true).unwrap();
            let joint = be.conv2d_backward_relu(&x, &w, &dy, p).unwrap();
            let dx = be.relu_backward(&x, apart.dx.as_ref().unwrap()).unwrap();
            same(
                joint.dx.as_ref().unwrap(),
                &dx,
                &format!("conv2d_backward_relu dx {what}"),
            );
            same(
                &joint.dw,
                &apart.dw,
                &format!("conv2d_backward_relu dw {what}"),
            );
            same(
                &joint.db,
                &apart.db,
                &format!("conv2d_backward_relu db {what}"),
            );
        }
        for (n, c, h, w, kernel, stride, pad) in [
            (3, 5, 28, 28, 2, 2, 0),
            (2, 3, 7, 9, 2, 2, 0),
            (2, 3, 13, 13, 3, 2, 0),
            (1, 4, 6, 5, 3, 1, 1),
        ] {
            let p = Pool2dParams {
                kernel,
                stride,
                pad,
            };
            let x = t(&[n, c, h, w], true);
            let y = be.maxpool2d(&x, p).unwrap();
            let dy = t(y.shape(), false);
            let sep = be
                .relu_backward(&x, &be.maxpool2d_backward(&x, &dy, p).unwrap())
                .unwrap();
            let fused = be.maxpool2d_relu_backward(&x, &dy, p).unwrap();
            same(
                &fused,
                &sep,
                &format!("maxpool2d_relu_backward {h}x{w} {kernel}/{stride}/{pad}"),
            );
        }
        // Eval-mode batch norm with the ReLU after it, with and without a residual to add.
        for (n, c, h) in [(3, 5, 7), (1, 8, 28), (2, 3, 1)] {
            let x = t(&[n, c, h, h], false);
            let (g, b, m) = (t(&[c], false), t(&[c], false), t(&[c], false));
            let v = be
                .upload(&Tensor::from_vec(&[c], (0..c).map(|i| 0.5 + i as f32).collect()).unwrap())
                .unwrap();
            let skip = t(&[n, c, h, h], false);
            for sk in [None, Some(&skip)] {
                let mut z = be.batchnorm2d_eval(&x, &g, &b, &m, &v, 1e-5).unwrap();
                if let Some(s) = sk {
                    be.axpy(&mut z, 1.0, s).unwrap();
                }
                let sep = be.relu(&z).unwrap();
                let fused = be
                    .batchnorm2d_eval_relu(&x, &g, &b, &m, &v, 1e-5, sk)
                    .unwrap();
                same(
                    &fused,
                    &sep,
                    &format!(
                        "batchnorm2d_eval_relu N{n} C{c} {h}x{h} skip {}",
                        sk.is_some()
                    ),
                );
                let dy = t(&[n, c, h, h], false);
                let sep = be
                    .batchnorm2d_eval_backward(
                        &g,
                        &v,
                        1e-5,
                        &be.relu_backward(&fused, &dy).unwrap(),
                    )
                    .unwrap();
                let back = be
                    .batchnorm2d_eval_relu_backward(&fused, &g, &v, 1e-5, &dy)
                    .unwrap();
                same(
                    &back,
                    &sep,
                    &format!("batchnorm2d_eval_relu_backward N{n} C{c} {h}x{h}"),
                );
            }
        }
    }
);

// The models run a conv and the ReLU after it as one op, and on the way back a pool or a conv
// together with the ReLU before it. The forward gives the bits of `forward_with_activations`,
// which runs every layer alone; the input gradient is the same whether the convs' backwards
// compute parameter gradients (`conv2d_backward_relu`) or not (`conv2d_backward_data_relu`).
backend_test!(
    fused_model_passes_give_the_layer_by_layer_bits,
    |be: &dyn Backend| {
        let mut rng = Rng::new(43);
        for name in SMALL {
            let mut m = Model::build(name, 10, (1, 28, 28), 5).unwrap();
            let x = images(&mut rng, 3, 1, 28, 28);
            let fused = host(&m.predict(be, &x).unwrap());
            let (apart, _) = m.forward_with_activations(be, &x, &[]).unwrap();
            assert_eq!(fused, host(&apart), "{name}: logits");
            let logits = m.forward(be, &x, false).unwrap();
            assert_eq!(fused, host(&logits), "{name}: cached forward");
            let dl = be
                .upload(&Tensor::from_vec(&[3, 10], randv(&mut rng, 30)).unwrap())
                .unwrap();
            let mut grad = |param_grads: bool| {
                m.set_param_grads(param_grads);
                host(&m.backward(be, &dl, None, true).unwrap().unwrap())
            };
            let (attack, training) = (grad(false), grad(true));
            assert!(
                attack.iter().any(|&v| v != 0.0),
                "{name}: zero input gradient"
            );
            let same = attack
                .iter()
                .zip(&training)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name}: input gradient with and without parameter gradients"
            );
        }
    }
);

backend_test!(small_models_shapes_phi_head_taps, |be: &dyn Backend| {
    let mut rng = Rng::new(11);
    for (name, phi, ntaps) in [
        ("small-alexnet", [32, 3, 3], 5),
        ("small-vgg16", [32, 3, 3], 7),
        ("small-resnet18", [64, 2, 2], 17),
    ] {
        let mut m = Model::build(name, 10, (1, 28, 28), 3).unwrap();
        let x = images(&mut rng, 3, 1, 28, 28);
        let logits = m.forward(be, &x, false).unwrap();
        assert_eq!(logits.shape(), &[3, 10], "{name}");
        let p = m.phi().unwrap().clone();
        assert_eq!(p.shape()[1..], phi, "{name} phi");
        assert_eq!(m.phi_shape().unwrap(), (phi[0], phi[1], phi[2]));
        // g(phi) reproduces the logits, and does not disturb the cache.
        let g = m.head(be, &p).unwrap();
        assert_close32(&host(&g), &host(&logits), 1e-5, 1e-5, name);
        assert_eq!(host(m.phi().unwrap()), host(&p));
        // Named conv activations: every one has the batch, is non-negative (post-ReLU), and
        // the logits are the same as a plain forward.
        let names = m.conv_layer_names();
        assert_eq!(names.len(), ntaps, "{name}: {names:?}");
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (l2, acts) = m.forward_with_activations(be, &x, &refs).unwrap();
        assert_close32(&host(&l2), &host(&logits), 1e-5, 1e-5, name);
        for (n, a) in names.iter().zip(&acts) {
            assert_eq!(a.rank(), 4, "{name} {n}");
            assert_eq!(a.shape()[0], 3);
            assert!(
                host(a).iter().all(|&v| v >= 0.0),
                "{name} {n} not post-ReLU"
            );
        }
        // The last conv's activation, max-pooled (VGG/AlexNet) or itself (ResNet), is phi.
        if name == "small-resnet18" {
            assert_eq!(host(acts.last().unwrap()), host(&p));
        }
        let e = m
            .forward_with_activations(be, &x, &["features.99"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("features.99"), "{e}");
        let e = m
            .forward(be, &images(&mut rng, 2, 1, 27, 28), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expects input"), "{e}");
    }
});

/// Central finite differences of L = w . logits (+ v . phi) at a few pixels against
/// `backward`'s input gradient. `train` uses batch statistics and a fixed dropout step.
fn input_grad_check(be: &dyn Backend, name: &str, train: bool, with_phi: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    // Training-mode BatchNorm needs a few values per channel in the deepest layer, or the batch
    // statistics make the loss too curved for finite differences.
    let (n, h, w) = if train { (8, 21, 19) } else { (2, 13, 15) };
    let mut m = Model::from_spec(
        &ModelSpec {
            width: if train { 6 } else { 4 },
            ..ModelSpec::new(name, 5, (1, h, w))
        },
        seed,
    )
    .unwrap();
    let x = images(&mut rng, n, 1, h, w);
    let step = 7;
    m.train_steps = step;
    let logits = m.forward(be, &x, train).unwrap();
    let wv = randv(&mut rng, logits.numel());
    let phi_shape = m.phi().unwrap().shape().to_vec();
    let vv = randv(&mut rng, phi_shape.iter().product());
    let w = be
        .upload(&Tensor::from_vec(logits.shape(), wv.clone()).unwrap())
        .unwrap();
    let v = be
        .upload(&Tensor::from_vec(&phi_shape, vv.clone()).unwrap())
        .unwrap();
    m.set_param_grads(false);
    let g = m
        .backward(be, &w, with_phi.then_some(&v), true)
        .unwrap()
        .unwrap();
    assert!(
        m.params().iter().all(|p| p.grad.is_none()),
        "param grads were accumulated"
    );
    let g = host(&g);
    assert_eq!(g.len(), x.numel());
    let gmax = g.iter().fold(0f32, |a, &b| a.max(b.abs())) as f64;
    assert!(gmax > 0.0, "{name}: zero input gradient");
    let mut loss = |xv: Vec<f32>| -> f64 {
        m.train_steps = step;
        let xt = Tensor::from_vec(x.shape(), xv).unwrap();
        let l = m.forward(be, &xt, train).unwrap();
        let mut s = dot(&host(&l), &wv);
        if with_phi {
            s += dot(&host(m.phi().unwrap()), &vv);
        }
        s
    };
    let base = host(&x);
    let mut got = Vec::new();
    let mut want = Vec::new();
    if train {
        // Training-mode BatchNorm couples every pixel of the batch to every output, so single
        // pixel differences pick up the kinks of many ReLUs/max-pools; directional derivatives
        // along random directions average them out.
        for _ in 0..3 {
            let d = randv(&mut rng, g.len());
            let h = 0.005f32;
            let a: Vec<f32> = base.iter().zip(&d).map(|(x, d)| x + h * d).collect();
            let b: Vec<f32> = base.iter().zip(&d).map(|(x, d)| x - h * d).collect();
            want.push((loss(a) - loss(b)) / (2.0 * h as f64));
            got.push(dot(&g, &d) as f32);
        }
        let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
        assert_close(
            &got,
            &want,
            2e-2 * scale,
            3e-2,
            &format!("{name} directional input derivatives (train, phi {with_phi})"),
        );
        return;
    }
    // The pixels with the largest gradient, and random ones.
    let mut idx: Vec<usize> = (0..g.len()).collect();
    idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    let mut picks: Vec<usize> = idx[..3].to_vec();
    picks.extend((0..5).map(|_| rng.below(g.len())));
    let h = 0.25f32;
    for &i in &picks {
        let mut a = base.clone();
        a[i] += h;
        let mut b = base.clone();
        b[i] -= h;
        want.push((loss(a) - loss(b)) / (2.0 * h as f64));
        got.push(g[i]);
    }
    assert_close(
        &got,
        &want,
        3e-3 * gmax,
        3e-2,
        &format!("{name} input grad (eval, phi {with_phi}) at {picks:?}"),
    );
}

backend_test!(
    input_gradients_match_finite_differences,
    |be: &dyn Backend| {
        for (i, name) in SMALL.iter().enumerate() {
            input_grad_check(be, name, false, false, 100 + i as u64);
            input_grad_check(be, name, false, true, 150 + i as u64);
            input_grad_check(be, name, true, true, 200 + i as u64);
        }
    }
);

/// Parameter gradients (CPU: parameters are perturbed in place on the host).
#[test]
fn parameter_gradients_match_finite_differences() {
    let be = CpuBackend::new();
    for (k, name) in SMALL.iter().enumerate() {
        let mut rng = Rng::new(300 + k as u64);
        let mut m = Model::from_spec(
            &ModelSpec {
                width: 6,
                ..ModelSpec::new(name, 3, (1, 20, 20))
            },
            k as u64,
        )
        .unwrap();
        let x = images(&mut rng, 8, 1, 20, 20);
        m.train_steps = 3;
        let logits = m.forward(&be, &x, true).unwrap();
        let wv = randv(&mut rng, logits.numel());
        let w = Tensor::from_vec(logits.shape(), wv.clone()).unwrap();
        assert!(m.backward(&be, &w, None, false).unwrap().is_none());
        let np = m.params().len();
        for pi in [0, 1, np / 2, np - 2, np - 1] {
            let (pname, g) = {
                let p = &m.params()[pi];
                (p.name.clone(), host(p.grad.as_ref().expect("grad")))
            };
            // Directional derivatives along random directions (see input_grad_check: the
            // training-mode forward is too kinky for single-entry differences).
            let mut got = Vec::new();
            let mut want = Vec::new();
            // Small steps: a ReLU network is piecewise linear, and moving every weight of a layer
            // crosses kinks quickly (h = 1e-3 is off by 10-30%), while below 1e-4 the f32 rounding
            // of the logits (~1e-7 absolute) shows up as ~1e-3 in the quotient. Hence h = 5e-5
            // and a 10% bar: wrong factors, signs or missing paths still fail it.
            let h = 5e-5f32;
            for _ in 0..2 {
                let d = randv(&mut rng, g.len());
                let mut f = |sgn: f32| -> f64 {
                    let orig = host(&m.params()[pi].value);
                    let moved: Vec<f32> =
                        orig.iter().zip(&d).map(|(v, d)| v + sgn * h * d).collect();
                    m.params_mut()[pi]
                        .value
                        .cpu_mut("t")
                        .unwrap()
                        .copy_from_slice(&moved);
                    m.train_steps = 3;
                    let l = m.forward(&be, &x, true).unwrap();
                    m.params_mut()[pi]
                        .value
                        .cpu_mut("t")
                        .unwrap()
                        .copy_from_slice(&orig);
                    dot(&host(&l), &wv)
                };
                want.push((f(1.0) - f(-1.0)) / (2.0 * h as f64));
                got.push(dot(&g, &d) as f32);
            }
            let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
            assert_close(
                &got,
                &want,
                5e-2 * scale.max(1e-4),
                1e-1,
                &format!("{name} directional derivative along {pname}"),
            );
        }
    }
}

/// torch semantics: momentum 0.1, running_var with the unbiased batch variance.
#[test]
fn batchnorm_running_statistics_follow_torch() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(8);
    let (n, c, h, w) = (3, 5, 7, 3);
    let xv: Vec<f32> = (0..n * c * h * w)
        .map(|_| 2.0 + 3.0 * rng.normal() as f32)
        .collect();
    let x = Tensor::from_vec(&[n, c, h, w], xv.clone()).unwrap();
    let mut l = Layer::new("bn", LayerKind::BatchNorm2d(BatchNorm2d::new("bn", c)));
    let mode = FwdMode {
        train: true,
        dropout_seed: 0,
    };
    for _ in 0..2 {
        let (_, s) = l.forward(&be, &x, mode, 0).unwrap();
        l.commit(&be, &x, &s).unwrap();
    }
    let LayerKind::BatchNorm2d(bn) = &l.kind else {
        unreachable!()
    };
    let cnt = (n * h * w) as f64;
    let (mut rm, mut rv) = (vec![], vec![]);
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| (0..h * w).map(move |p| (i, p)))
            .map(|(i, p)| xv[(i * c + ch) * h * w + p] as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / cnt;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (cnt - 1.0);
        // Two updates from (0, 1): m1 = 0.1 mean, m2 = 0.9 m1 + 0.1 mean.
        rm.push(0.19 * mean);
        rv.push(0.81 + 0.19 * var);
    }
    assert_close(
        &host(&bn.running_mean.value),
        &rm,
        1e-5,
        1e-4,
        "running_mean",
    );
    assert_close(&host(&bn.running_var.value), &rv, 1e-5, 1e-4, "running_var");
    assert_eq!(bn.num_batches_tracked, 2);
}

fn cfg(model: &str, epochs: usize, optim: OptimConfig) -> TrainConfig {
    TrainConfig {
        model: model.into(),
        width: Some(3),
        epochs,
        batch: 7,
        optim,
        lr_milestones: vec![1],
        lr_gamma: 0.5,
        seed: 21,
        limit: Some(37),
        val_limit: None,
        precision: Default::default(),
    }
}

fn state_of(m: &Model) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = m
        .params()
        .iter()
        .map(|p| (p.name.clone(), host(&p.value)))
        .collect();
    for bn in m.batchnorms() {
        v.push((bn.running_var.name.clone(), host(&bn.running_var.value)));
        v.push((
            bn.num_batches_name.clone(),
            vec![bn.num_batches_tracked as f32],
        ));
    }
    v
}

/// Two epochs in one go == one epoch, then resume for the second (bit for bit), for a model with
/// dropout + SGD and one with BatchNorm + Adam.
#[test]
fn resume_equals_uninterrupted_run() {
    let be = CpuBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("d.safetensors"), 40, 4, 1);
    for (model, optim) in [
        ("small-alexnet", OptimConfig::sgd(0.02, 0.9, 5e-4)),
        ("small-resnet18", OptimConfig::adam(2e-3, 1e-4)),
    ] {
        let a = dir.path().join(format!("{model}-a"));
        let b = dir.path().join(format!("{model}-b"));
        let full = train::train(
            &be,
            &cfg(model, 2, optim),
            &data,
            Some(&data),
            &RunDirs {
                out: a.clone(),
                resume: None,
            },
            &mut |_| {},
        )
        .unwrap();
        train::train(
            &be,
            &cfg(model, 1, optim),
            &data,
            None,
            &RunDirs {
                out: b.clone(),
                resume: None,
            },
            &mut |_| {},
        )
        .unwrap();
        let resumed = train::train(
            &be,
            &cfg(model, 2, optim),
            &data,
            None,
            &RunDirs {
                out: b.clone(),
                resume: Some(b.join("epoch-001.safetensors")),
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(state_of(&full.model), state_of(&resumed.model), "{model}");
        assert_eq!(full.history.len(), 2);
        assert_eq!(resumed.history.len(), 2);
        assert_eq!(full.history[1].lr, resumed.history[1].lr);
        assert_eq!(
            full.history[1].loss, resumed.history[1].loss,
            "{model} epoch-2 loss"
        );
        assert!(a.join("epoch-002.safetensors").exists() && a.join("last.safetensors").exists());
        assert!(a.join("train.json").exists());
        // Wrong model for the checkpoint.
        let e = train::train(
            &be,
            &cfg("small-vgg16", 2, optim),
            &data,
            None,
            &RunDirs {
                out: b.clone(),
                resume: Some(b.join("epoch-001.safetensors")),
            },
            &mut |_| {},
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("small-vgg16"), "{e}");
    }
}

#[test]
fn checkpoint_roundtrip_keeps_weights_buffers_and_optimiser() {
    let be = CpuBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(4);
    let mut m = Model::from_spec(
        &ModelSpec {
            width: 3,
            ..ModelSpec::new("small-resnet18", 6, (1, 17, 17))
        },
        9,
    )
    .unwrap();
    let mut opt = Optimizer::new(OptimConfig::adam(1e-3, 0.0)).unwrap();
    for _ in 0..2 {
        let x = images(&mut rng, 4, 1, 17, 17);
        let labels: Vec<u32> = (0..4).map(|_| rng.below(6) as u32).collect();
        train::train_step(&be, &mut m, &mut opt, &x, &labels).unwrap();
    }
    let p = dir.path().join("c.safetensors");
    checkpoint::save(&p, &m, 2, Some(&opt), &Default::default()).unwrap();
    let ck = checkpoint::load(&p).unwrap();
    assert_eq!(ck.epoch, 2);
    assert_eq!(ck.model.spec(), m.spec());
    assert_eq!(ck.model.train_steps, m.train_steps);
    assert_eq!(state_of(&ck.model), state_of(&m));
    let o = ck.optimizer.unwrap();
    assert_eq!(o.steps(), 2);
    let sa: Vec<(String, Vec<f32>)> = opt
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, host(t)))
        .collect();
    let sb: Vec<(String, Vec<f32>)> = o
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, host(t)))
        .collect();
    assert_eq!(sa, sb);
    assert!(sa
        .iter()
        .any(|(n, _)| n == "optim.layer1.0.conv1.weight.exp_avg_sq"));
    let mut m2 = ck.model;
    let x = images(&mut rng, 2, 1, 17, 17);
    assert_eq!(
        host(&m.predict(&be, &x).unwrap()),
        host(&m2.predict(&be, &x).unwrap())
    );
    // num_batches_tracked is stored as i64, like torch.
    let f = SafeFile::open(&p).unwrap();
    let (dt, shape, _) = f.bytes("bn1.num_batches_tracked").unwrap();
    assert_eq!((dt, shape.len()), (advlens::io::Dtype::I64, 0));
    assert_eq!(f.ints("bn1.num_batches_tracked").unwrap().1, vec![2]);
}

/// Rewrite a checkpoint with one tensor changed (None = removed) or one added.
fn tamper(src: &Path, dst: &Path, name: &str, with: Option<OwnedTensor>) {
    let f = SafeFile::open(src).unwrap();
    let mut out = Vec::new();
    let mut with = with;
    for n in f.names() {
        if n == name {
            if let Some(t) = with.take() {
                out.push((n.clone(), t));
            }
            continue;
        }
        let (dt, shape, b) = f.bytes(&n).unwrap();
        out.push((
            n.clone(),
            OwnedTensor {
                dtype: dt,
                shape: shape.to_vec(),
                data: b.to_vec(),
            },
        ));
    }
    if let Some(t) = with {
        out.push((name.to_string(), t));
    }
    save_safetensors(dst, &out, Some(f.metadata())).unwrap();
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::from_spec(
        &ModelSpec {
            width: 2,
            ..ModelSpec::new("small-vgg16", 10, (1, 28, 28))
        },
        1,
    )
    .unwrap();
    let good = dir.path().join("good.safetensors");
    m.save(&good, 0).unwrap();
    assert!(Model::load(&good).is_ok());
    let bad = dir.path().join("bad.safetensors");
    let shape = m.params()[0].value.shape().to_vec();
    let n: usize = shape.iter().product();
    let mut nan = vec![0.5f32; n];
    nan[n / 2] = f32::NAN;
    let cases: Vec<(&str, Option<OwnedTensor>, &str)> = vec![
        (
            "features.12.weight",
            None,
            "missing tensor 'features.12.weight'",
        ),
        (
            "features.0.weight",
            Some(OwnedTensor::f32(&[2, 1, 3], &[0.1; 6])),
            "has shape [2, 1, 3]",
        ),
        (
            "features.0.weight",
            Some(OwnedTensor::f32(&shape, &nan)),
            "non-finite",
        ),
        (
            "features.99.weight",
            Some(OwnedTensor::f32(&[1], &[1.0])),
            "unknown tensor 'features.99.weight'",
        ),
    ];
    for (name, t, want) in cases {
        tamper(&good, &bad, name, t);
        let e = Model::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("bad.safetensors"),
            "{name}: {e}"
        );
    }
    // A bare weights file (no metadata) is not a checkpoint, but loads into a built model.
    let f = SafeFile::open(&good).unwrap();
    let bare = dir.path().join("bare.safetensors");
    let tensors: Vec<(String, OwnedTensor)> = f
        .names()
        .into_iter()
        .map(|n| {
            let (dt, s, b) = f.bytes(&n).unwrap();
            (
                n.clone(),
                OwnedTensor {
                    dtype: dt,
                    shape: s.to_vec(),
                    data: b.to_vec(),
                },
            )
        })
        .collect();
    save_safetensors(&bare, &tensors, None).unwrap();
    let e = Model::load(&bare).unwrap_err().to_string();
    assert!(e.contains("metadata"), "{e}");
    let mut m2 = Model::from_spec(m.spec(), 77).unwrap();
    m2.load_weights(&bare).unwrap();
    assert_eq!(state_of(&m2), state_of(&m));
    // Truncated file.
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let e = Model::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors"), "{e}");
}

#[test]
fn evaluate_checks_class_count_and_nan_loss_is_reported() {
    let be = CpuBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("d.safetensors"), 20, 4, 2);
    let mut m = Model::build("small-alexnet", 5, (1, 12, 12), 0).unwrap();
    let e = train::evaluate(&be, &mut m, &data, 8, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 classes") && e.contains("has 5"), "{e}");
    // An absurd learning rate drives the loss to inf/NaN: Error::Numeric with the epoch/step.
    let mut c = cfg("small-alexnet", 3, OptimConfig::sgd(1e30, 0.9, 0.0));
    c.limit = None;
    let e = train::train(
        &be,
        &c,
        &data,
        None,
        &RunDirs {
            out: dir.path().join("nan"),
            resume: None,
        },
        &mut |_| {},
    )
    .err()
    .unwrap();
    assert!(matches!(e, advlens::Error::Numeric(_)), "{e}");
    assert!(e.to_string().contains("epoch"), "{e}");
}

/// Training-mode BatchNorm through the layer (batch statistics in the backward).
#[test]
fn batchnorm_train_backward_matches_finite_differences() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(12);
    let (n, c, h, w) = (2, 3, 2, 3);
    let xv: Vec<f32> = (0..n * c * h * w).map(|_| rng.normal() as f32).collect();
    let x = Tensor::from_vec(&[n, c, h, w], xv.clone()).unwrap();
    let mut bn = BatchNorm2d::new("bn", c);
    bn.weight.value = Tensor::from_vec(&[c], vec![0.7, -1.3, 2.0]).unwrap();
    let mut l = Layer::new("bn", LayerKind::BatchNorm2d(bn));
    let mode = FwdMode {
        train: true,
        dropout_seed: 0,
    };
    let wv = randv(&mut rng, x.numel());
    let (y, s) = l.forward(&be, &x, mode, 0).unwrap();
    let dy = Tensor::from_vec(x.shape(), wv.clone()).unwrap();
    let m = advlens::nn::layers::BwdMode {
        want_dx: true,
        param_grads: true,
    };
    let dx = host(&l.backward(&be, &x, &y, &s, &dy, m).unwrap().unwrap());
    let loss = |v: Vec<f32>| {
        let t = Tensor::from_vec(x.shape(), v).unwrap();
        dot(&host(&l.forward(&be, &t, mode, 0).unwrap().0), &wv)
    };
    let hh = 1e-3f32;
    let want: Vec<f64> = (0..xv.len())
        .map(|i| {
            let mut a = xv.clone();
            a[i] += hh;
            let mut b = xv.clone();
            b[i] -= hh;
            (loss(a) - loss(b)) / (2.0 * hh as f64)
        })
        .collect();
    assert_close(&dx, &want, 2e-3, 1e-2, "batchnorm train dx");
}
