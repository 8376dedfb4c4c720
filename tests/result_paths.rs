//! Paths whose results no other test checked: each test here names the mutant (cargo-mutants,
//! issue 14) that survived the suite before it, and fails when the code is wrong that way.
//! Inputs are fresh seeded random values at sizes past the code's internal block sizes.

mod common;

use advlens::analysis::detect::{cholesky_packed, GaussianAccumulator, GaussianConfig, Shrinkage};
use advlens::analysis::pd::{above_threshold, prediction_difference_batch, top_n};
use advlens::analysis::ratios::{
    distance_ratios, histogram, mean_between_distance, mean_within_distance, row_distance_sums,
};
use advlens::analysis::semantics::{
    bin_index, lc_curve, neuron_semantics_from_labels, quadforms, uniform_edges, NeuronSemantics,
};
use advlens::analysis::topk::{top_fraction_k, Hit, TopK};
use advlens::attack::methods::{ensemble_attack, ensemble_mean_probs, input_grad, EnsembleAttack};
use advlens::backend::cpu::CpuBackend;
use advlens::backend::Backend;
use advlens::data::idx::IdxStream;
use advlens::nn::model::ModelSpec;
use advlens::nn::optim::{OptimConfig, Optimizer};
use advlens::nn::train::train_step;
use advlens::nn::Model;
use advlens::rng::Rng;
use advlens::Tensor;

/// The exact top k of a channel under the documented order (larger value, then smaller id).
fn brute_topk(vals: &[(f32, u32)], k: usize) -> Vec<Hit> {
    let mut v: Vec<Hit> = vals.iter().map(|&(value, id)| Hit { value, id }).collect();
    v.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.id.cmp(&b.id)));
    v.truncate(k);
    v
}

/// Mutant: `TopK::push_batch` wrong beyond its first 128-channel block (channel offset c0).
#[test]
fn topk_push_batch_is_exact_past_the_first_channel_block() {
    let (c, k) = (301usize, 7usize);
    let mut rng = Rng::new(20261202);
    let mut t = TopK::new(c, k).unwrap();
    let mut per_channel: Vec<Vec<(f32, u32)>> = vec![Vec::new(); c];
    let mut next_id = 0u32;
    for batch in [17usize, 1, 29, 5] {
        let ids: Vec<u32> = (0..batch as u32).map(|i| next_id + i).collect();
        next_id += batch as u32;
        // Quantised values, so ties (broken by id) occur.
        let acts: Vec<f32> = (0..batch * c)
            .map(|_| (rng.normal() * 4.0).round() as f32 / 4.0)
            .collect();
        for (b, &id) in ids.iter().enumerate() {
            for ch in 0..c {
                per_channel[ch].push((acts[b * c + ch], id));
            }
        }
        t.push_batch(&acts, &ids).unwrap();
    }
    let got = t.finish();
    for ch in 0..c {
        assert_eq!(got[ch], brute_topk(&per_channel[ch], k), "channel {ch}");
    }
}

fn direct_sums(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    a.chunks_exact(d)
        .map(|x| {
            b.chunks_exact(d)
                .map(|y| {
                    x.iter()
                        .zip(y)
                        .map(|(p, q)| (p - q) * (p - q))
                        .sum::<f64>()
                        .sqrt()
                })
                .sum()
        })
        .collect()
}

fn cloud(rng: &mut Rng, n: usize, d: usize, offset: f64) -> Vec<f64> {
    (0..n * d).map(|_| offset + rng.normal()).collect()
}

/// Mutants: the r1/r2 distance sums wrong past 256 rows (block index, partial last block), and
/// the centring on b's centroid removed (catastrophic cancellation far from the origin).
#[test]
fn distance_sums_are_exact_past_one_block_and_far_from_the_origin() {
    let mut rng = Rng::new(7);
    let d = 5;
    for offset in [0.0, 3.0e7] {
        let a = cloud(&mut rng, 300, d, offset);
        let b = cloud(&mut rng, 521, d, offset);
        let got = row_distance_sums(&a, &b, d);
        let want = direct_sums(&a, &b, d);
        assert_eq!(got.len(), 300);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-7 * w.abs(),
                "offset {offset}: row {i}: {g} vs {w}"
            );
        }
        // The within-set mean (diagonal left out) over 521 rows: 3 blocks.
        let n = 521.0;
        let w: f64 = direct_sums(&b, &b, d).iter().sum::<f64>() / (n * (n - 1.0));
        let g = mean_within_distance(&b, d).unwrap();
        assert!(
            (g - w).abs() <= 1e-7 * w,
            "offset {offset}: within {g} vs {w}"
        );
    }
}

/// Mutant: `IdxStream::next_item` accepting an item the data ends inside.
#[test]
fn idx_cut_inside_an_item_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut-idx3-ubyte");
    let mut bytes = vec![0, 0, 8, 3];
    for dim in [3u32, 2, 2] {
        bytes.extend(dim.to_be_bytes());
    }
    bytes.extend([1u8, 2, 3, 4, 5, 6, 7, 8, 9]); // items 0 and 1, then 1 of item 2's 4 bytes
    std::fs::write(&p, &bytes).unwrap();
    let mut s = IdxStream::open(&p, 0x0000_0803).unwrap();
    let mut buf = [0u8; 4];
    s.next_item(&mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
    s.next_item(&mut buf).unwrap();
    assert_eq!(buf, [5, 6, 7, 8]);
    let e = s.next_item(&mut buf).unwrap_err().to_string();
    assert!(e.contains("inside item 2"), "{e}");
}

/// Mutant: the near-integer rule of `top_fraction_k` (ceil of a product that float rounding
/// pushed just above an integer).
#[test]
fn top_fraction_k_rounds_near_integers_and_ceils_the_rest() {
    let (n, f) = (
        std::hint::black_box(100usize),
        std::hint::black_box(0.07f64),
    );
    assert!(n as f64 * f > 7.0, "the float product this test relies on");
    assert_eq!(top_fraction_k(100, 0.07), 7);
    assert_eq!(top_fraction_k(50_000, 0.01), 500);
    assert_eq!(top_fraction_k(1_800, 0.01), 18);
    assert_eq!(top_fraction_k(101, 0.01), 2);
    assert_eq!(top_fraction_k(150, 0.01), 2);
    assert_eq!(top_fraction_k(10, 0.0001), 1);
    assert_eq!(top_fraction_k(10, 2.0), 10);
}

/// Mutants: the tolerance of the near-integer rule relative to the product (`*` -> `/`), an
/// infinite fraction taken as 100% (`&&` -> `||`), and the two accessors of `TopK`.
#[test]
fn top_fraction_k_tolerance_scales_with_the_product() {
    // 2e6 x 0.50000000005 = 1e6 + 1e-4: within 1e-9 of the product of an integer, so 1e6;
    // an absolute tolerance would make it 1e6 + 1.
    assert_eq!(top_fraction_k(2_000_000, 0.500_000_000_05), 1_000_000);
    assert_eq!(top_fraction_k(2_000_000, 0.500_000_01), 1_000_001);
    for bad in [f64::INFINITY, f64::NAN, -0.5, 0.0] {
        assert_eq!(top_fraction_k(50, bad), 1, "fraction {bad}");
    }
    assert_eq!(top_fraction_k(0, 0.5), 1);
    let t = TopK::new(5, 3).unwrap();
    assert_eq!((t.channels(), t.k()), (5, 3));
}

/// Mutants: the CPU backend's `TopKStream` (what E3 mining runs) ignoring a pushed batch or
/// finishing with nothing: it must keep what `TopK::push_batch` keeps.
#[test]
fn cpu_topk_stream_keeps_what_topk_keeps() {
    let (c, k) = (5usize, 3usize);
    let mut rng = Rng::new(77);
    let be = CpuBackend::new();
    let mut stream = be.topk_stream(c, k).unwrap();
    let mut direct = TopK::new(c, k).unwrap();
    let mut next = 0u32;
    for b in [4usize, 1, 6] {
        let acts: Vec<f32> = (0..b * c).map(|_| rng.normal() as f32).collect();
        let ids: Vec<u32> = (next..next + b as u32).collect();
        next += b as u32;
        stream
            .push(&Tensor::from_vec(&[b, c], acts.clone()).unwrap(), &ids)
            .unwrap();
        direct.push_batch(&acts, &ids).unwrap();
    }
    let got = stream.finish().unwrap();
    assert_eq!(got.len(), c);
    assert!(got.iter().all(|h| h.len() == k));
    assert_eq!(got, direct.finish());
}

/// Mutant: `quadforms`'s zero-norm rule (`den > 0` -> `>=`). Under a C that is not positive
/// semi-definite, |p|_C = 0 does not force p^T C q = 0, so a `>=` would divide a non-zero by 0.
#[test]
fn quadform_cosine_is_nan_whenever_a_norm_is_zero() {
    let c = [0.0, 1.0, 1.0, 0.0];
    let (p, q) = ([1.0, 0.0], [0.0, 1.0]);
    let f = quadforms(&p, &c, &q, 1, 2).unwrap();
    assert_eq!((f.pcq[0], f.pcp[0], f.qcq[0]), (1.0, 0.0, 0.0));
    assert!(f.cos[0].is_nan(), "cos {}", f.cos[0]);
}

/// Mutant: `neuron_semantics_from_labels` accepting label lists of different counts (`||` ->
/// `&&`); the refusal must name the lists, not surface later as a matrix-shape error.
#[test]
fn neuron_semantics_refuses_unequal_label_lists_by_name() {
    let c = [1.0, 0.5, 0.5, 1.0];
    let two = vec![vec![0u32, 1], vec![1]];
    let one = vec![vec![0u32]];
    assert!(neuron_semantics_from_labels(&two, &two, &two, &c, 2).is_ok());
    for (a, b) in [(&one, &two), (&two, &one)] {
        let e = neuron_semantics_from_labels(&two, a, b, &c, 2).unwrap_err();
        assert!(e.to_string().contains("label lists"), "{e}");
    }
}

/// Mutant: `LcBin.hi` (or `lo`) not the bin's edges in the Fig. 4 output.
#[test]
fn lc_curve_bins_carry_their_own_edges() {
    let edges = uniform_edges(0.1, 0.9, 4);
    let neurons: Vec<NeuronSemantics> = [0.15, 0.35, 0.36, 0.9, 0.95]
        .iter()
        .map(|&lc| NeuronSemantics {
            lc,
            cs1: lc / 2.0,
            cs2: 1.0 - lc,
        })
        .collect();
    let bins = lc_curve(&neurons, &edges).unwrap();
    assert_eq!(bins.len(), 4);
    for (i, b) in bins.iter().enumerate() {
        assert_eq!((b.lo, b.hi), (edges[i], edges[i + 1]), "bin {i}");
    }
    let counts: Vec<usize> = bins.iter().map(|b| b.count).collect();
    assert_eq!(counts, [1, 2, 0, 1]);
    assert!((bins[1].cs1_mean.unwrap() - 0.1775).abs() < 1e-12);
    // An empty bin, and a bin whose only neuron has NaN cosines, have no mean (not NaN).
    assert_eq!((bins[2].cs1_mean, bins[2].cs2_mean), (None, None));
    let nan = NeuronSemantics {
        lc: 0.5,
        cs1: f64::NAN,
        cs2: f64::NAN,
    };
    let two = lc_curve(&[nan], &[0.0, 1.0]).unwrap();
    assert_eq!(two.len(), 1, "two edges make one bin");
    assert_eq!(
        (two[0].count, two[0].cs1_mean, two[0].cs2_mean),
        (1, None, None)
    );
    assert!(lc_curve(&[nan], &[0.0]).is_err());
}

/// Mutants: `bin_index`'s range rule (`||` -> `&&` twice, `x < lo` -> `==` / `<=`): NaN, values
/// below the first edge and a single edge have no bin; the first edge is in bin 0 and the last
/// edge in the last bin.
#[test]
fn bin_index_takes_the_first_edge_and_refuses_outside_values() {
    let e = [0.0, 1.0, 2.0, 4.0];
    assert_eq!(bin_index(&e, 0.0), Some(0));
    assert_eq!(bin_index(&e, 0.999), Some(0));
    assert_eq!(bin_index(&e, 1.0), Some(1));
    assert_eq!(bin_index(&e, 4.0), Some(2));
    assert_eq!(bin_index(&e, -0.5), None);
    assert_eq!(bin_index(&e, -1e-300), None);
    assert_eq!(bin_index(&e, 4.5), None);
    assert_eq!(bin_index(&e, f64::NAN), None);
    assert_eq!(bin_index(&[1.0], 1.0), None);
    assert_eq!(bin_index(&[], 1.0), None);
}

/// Mutants: the within-set mean's diagonal correction (`+` -> `-`: the Gram form's self-distance
/// of a point is sqrt of rounding noise, about 1e-8 of its norm, not 0, and must be taken back
/// out), two points being enough for a within-set mean, and an empty set having no between-set
/// mean.
#[test]
fn within_set_mean_takes_the_diagonal_noise_back_out() {
    let mut rng = Rng::new(3);
    let (n, d) = (12usize, 16usize);
    // Spread so that each point's norm is large against the float spacing of its square.
    let s: Vec<f64> = (0..n * d)
        .map(|i| (1.0 + (i % 5) as f64) * 37.0 * rng.normal())
        .collect();
    // Every ordered pair once (the zero self-distances add nothing).
    let want = direct_sums(&s, &s, d).iter().sum::<f64>() / (n * (n - 1)) as f64;
    let got = mean_within_distance(&s, d).unwrap();
    assert!(
        (got - want).abs() <= 1e-13 * want,
        "within {got} vs {want}: rel {:e}",
        (got - want).abs() / want
    );
    let two = &s[..2 * d];
    let d01 = direct_sums(&two[..d], &two[d..], d)[0];
    let w2 = mean_within_distance(two, d).expect("two points have a within-set mean");
    assert!((w2 - d01).abs() <= 1e-12 * d01, "{w2} vs {d01}");
    assert_eq!(mean_between_distance(&s, &[], d), None);
    assert_eq!(mean_between_distance(&[], &s, d), None);
    assert!(mean_between_distance(two, &s, d).unwrap() > 0.0);
}

/// Mutants: a zero denominator (every real point of the class the same) giving an infinite or
/// NaN ratio instead of none (`d > 0` -> `>=` / `true`).
#[test]
fn ratios_with_a_zero_denominator_are_undefined() {
    let d = 2;
    // Class 0: two identical points (within mean 0); class 1: a real spread.
    let real = [1.0f32, 1.0, 1.0, 1.0, 5.0, 0.0, 7.0, 1.0, 6.0, 3.0];
    let labels = [0u32, 0, 1, 1, 1];
    let adv = [2.0f32, 2.0, 6.0, 1.0];
    let r = distance_ratios(
        &real,
        &labels,
        &adv,
        &[0, 1],
        &[0, 0],
        d,
        2,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.r1[0], None, "r1 over a zero within-class mean");
    assert_eq!(
        r.r2[0], None,
        "r2 with y = y* over a zero within-class mean"
    );
    assert!(r.r1[1].is_some_and(|v| v.is_finite() && v > 0.0));
    assert!(r.r2[1].is_some_and(|v| v.is_finite() && v > 0.0));
}

/// Mutants: `histogram`'s edge checks (two edges are enough; non-increasing finite edges are
/// refused) and a value on the first edge counted in bin 0, not below.
#[test]
fn histogram_takes_two_edges_and_counts_the_first_edge_in() {
    let h = histogram(&[Some(0.0), Some(0.5), Some(1.0), Some(-0.1)], &[0.0, 1.0]).unwrap();
    assert_eq!(h.counts, vec![3]);
    assert_eq!((h.below, h.above, h.n), (1, 0, 4));
    let none = histogram(&[None, Some(f64::NAN)], &[0.0, 1.0]).unwrap();
    assert_eq!((none.n, none.missing, none.mean), (0, 2, None));
    for bad in [
        &[0.0, 2.0, 1.0][..],
        &[0.0, 1.0, 1.0],
        &[0.0, f64::NAN],
        &[0.0],
    ] {
        assert!(
            histogram(&[Some(0.5)], bad).is_err(),
            "edges {bad:?} accepted"
        );
    }
}

/// Mutant: `dist_sums`' empty-set shortcut sized by `a.len() * d` instead of the row count.
#[test]
fn distance_sums_to_an_empty_set_are_one_zero_per_row() {
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    assert_eq!(row_distance_sums(&a, &[], 2), vec![0.0; 3]);
    assert_eq!(row_distance_sums(&[], &a, 2), Vec::<f64>::new());
    assert_eq!(mean_within_distance(&a[..2], 2), None);
}

/// Mutant: `prediction_difference_batch` accepting a g_removed that is not B x M x K.
#[test]
fn pd_batch_rejects_a_removed_set_of_the_wrong_shape() {
    let k = 3;
    let g = vec![0.2f32, 0.3, 0.5, 0.6, 0.3, 0.1]; // B = 2
    let c: Vec<f64> = (0..k * k)
        .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let ok = vec![0.3f32; 2 * 2 * k];
    assert_eq!(
        prediction_difference_batch(&g, &ok, &c, k).unwrap().len(),
        4
    );
    for bad in [2 * 2 * k + k, 2 * 2 * k - 1, k] {
        let r = prediction_difference_batch(&g, &vec![0.3f32; bad], &c, k);
        assert!(r.is_err(), "g_removed of {bad} values accepted");
    }
}

/// Mutants: the two batch-shape checks of `prediction_difference_batch` with `||` -> `&&`. Each
/// bad length here is one the per-image check downstream cannot see: g of 7 values at K = 3
/// still cuts into two images, and 13 removed values over B = 2 still cut into two runs of 6.
#[test]
fn pd_batch_rejects_shapes_the_per_image_check_cannot_see() {
    let k = 3;
    let c: Vec<f64> = (0..k * k)
        .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.5 })
        .collect();
    let g6 = vec![0.2f32, 0.3, 0.5, 0.6, 0.3, 0.1];
    let g7 = [g6.clone(), vec![0.4]].concat();
    assert!(prediction_difference_batch(&g6, &[0.3f32; 12], &c, k).is_ok());
    assert!(
        prediction_difference_batch(&g7, &[0.3f32; 12], &c, k).is_err(),
        "g of 7 values accepted at K = 3"
    );
    assert!(
        prediction_difference_batch(&g6, &[0.3f32; 13], &c, k).is_err(),
        "13 removed values accepted for B = 2, K = 3"
    );
    assert!(prediction_difference_batch(&[], &[], &c, k).is_err());
    assert!(prediction_difference_batch(&g6, &[0.3f32; 12], &c, 0).is_err());
}

/// Mutants: `top_n`'s NaN arms deleted (a NaN then compares equal to everything and keeps its
/// index order) and `above_threshold`'s rule (`>` -> `>=` / `==` / `<`, or a constant result).
#[test]
fn pd_ranking_puts_nan_last_and_keeps_only_values_above_the_threshold() {
    let nan = f64::NAN;
    let pd = [nan, 1.0, 3.0, nan, 2.0, 0.5];
    let got: Vec<usize> = top_n(&pd, 6).iter().map(|&(i, _)| i).collect();
    assert_eq!(got, [2, 4, 1, 5, 0, 3], "NaN must rank last, ties by index");
    let rev = [2.0, nan, 1.0];
    let got: Vec<usize> = top_n(&rev, 3).iter().map(|&(i, _)| i).collect();
    assert_eq!(got, [0, 2, 1]);
    assert_eq!(top_n(&pd, 2), vec![(2, 3.0), (4, 2.0)]);
    assert_eq!(above_threshold(&pd, 1.0), vec![(2, 3.0), (4, 2.0)]);
    assert_eq!(
        above_threshold(&pd, 0.4),
        vec![(2, 3.0), (4, 2.0), (1, 1.0), (5, 0.5)]
    );
    assert_eq!(above_threshold(&pd, 3.0), vec![]);
    // Past the insertion-sort length the sort compares a NaN on either side: every NaN must
    // still come after every number, and the numbers in descending order.
    let mut rng = Rng::new(5);
    let long: Vec<f64> = (0..97)
        .map(|i| if i % 7 == 0 { nan } else { rng.normal() })
        .collect();
    let ranked = top_n(&long, long.len());
    let first_nan = ranked.iter().position(|r| r.1.is_nan()).unwrap();
    assert_eq!(first_nan, 97 - 14, "NaN ranked among the numbers");
    assert!(ranked[first_nan..].iter().all(|r| r.1.is_nan()));
    assert!(ranked[..first_nan].windows(2).all(|w| w[0].1 >= w[1].1));
}

fn tiny_model(seed: u64) -> Model {
    let mut spec = ModelSpec::new("small-vgg16", 10, (1, 28, 28));
    spec.width = 4;
    Model::from_spec(&spec, seed).unwrap()
}

fn images(rng: &mut Rng, n: usize) -> Tensor {
    let v: Vec<f32> = (0..n * 784)
        .map(|_| (rng.uniform() * 255.0) as f32)
        .collect();
    Tensor::from_vec(&[n, 1, 28, 28], v).unwrap()
}

fn softmax_rows(l: &[f32], k: usize) -> Vec<f64> {
    l.chunks_exact(k)
        .flat_map(|r| {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = r.iter().map(|&x| (x as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |x| x / s)
        })
        .collect()
}

/// Mutant: `ensemble_mean_probs` not the plain mean of each model's softmax.
#[test]
fn ensemble_mean_probs_is_the_mean_of_the_members_softmax() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    let x = images(&mut rng, 5);
    let mut models = vec![tiny_model(1), tiny_model(2), tiny_model(3)];
    // At initialisation every member is near uniform; a sharper classifier makes them differ.
    for m in models.iter_mut() {
        let mut ps = m.params_mut();
        let n = ps.len();
        for p in ps[n - 2..].iter_mut() {
            let v: Vec<f32> = p.value.to_vec().unwrap().iter().map(|x| 50.0 * x).collect();
            p.value = Tensor::from_vec(p.value.shape(), v).unwrap();
        }
    }
    let got = ensemble_mean_probs(&be, &mut models, &x).unwrap();
    let mut want = vec![0.0f64; 50];
    for m in models.iter_mut() {
        let p = softmax_rows(&m.predict(&be, &x).unwrap().to_vec().unwrap(), 10);
        want.iter_mut().zip(&p).for_each(|(w, v)| *w += v / 3.0);
    }
    common::assert_close(&got, &want, 1e-6, 1e-5, "ensemble mean probabilities");
    let one = softmax_rows(&models[0].predict(&be, &x).unwrap().to_vec().unwrap(), 10);
    let far = got
        .iter()
        .zip(&one)
        .any(|(g, o)| (*g as f64 - o).abs() > 1e-3);
    assert!(far, "the members differ, so the mean is not any one member");
}

/// The attack of Eq. 1 written out on the host: Adam on x* with the summed cross-entropy input
/// gradients plus lambda (x* - x) / ||x* - x|| per image, clipped to [0, 255] after each step.
fn attack_by_hand(
    be: &dyn Backend,
    models: &mut [Model],
    x: &[f32],
    n: usize,
    targets: &[u32],
    h: &EnsembleAttack,
) -> Vec<f32> {
    let per = x.len() / n;
    let (mut adv, mut m, mut v) = (x.to_vec(), vec![0f32; x.len()], vec![0f32; x.len()]);
    for step in 1..=h.steps as i32 {
        let t = Tensor::from_vec(&[n, 1, 28, 28], adv.clone()).unwrap();
        let mut g = vec![0f32; x.len()];
        for model in models.iter_mut() {
            let gi = input_grad(be, model, &t, targets)
                .unwrap()
                .2
                .to_vec()
                .unwrap();
            g.iter_mut().zip(&gi).for_each(|(a, b)| *a += b);
        }
        for i in 0..n {
            let (a, b) = (&adv[i * per..(i + 1) * per], &x[i * per..(i + 1) * per]);
            let norm = a
                .iter()
                .zip(b)
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            if norm > 0.0 {
                for j in 0..per {
                    g[i * per + j] += (h.lambda as f64 * (a[j] - b[j]) as f64 / norm) as f32;
                }
            }
        }
        let (bc1, bc2) = (
            1.0 - (h.beta1 as f64).powi(step),
            1.0 - (h.beta2 as f64).powi(step),
        );
        for j in 0..x.len() {
            m[j] = h.beta1 * m[j] + (1.0 - h.beta1) * g[j];
            v[j] = h.beta2 * v[j] + (1.0 - h.beta2) * g[j] * g[j];
            let denom = v[j].sqrt() / bc2.sqrt() as f32 + h.adam_eps;
            adv[j] = (adv[j] - (h.lr as f64 / bc1) as f32 * m[j] / denom).clamp(0.0, 255.0);
        }
    }
    adv
}

/// Mutants: the ensemble attack's lambda distance term dropped or mis-scaled, or the members'
/// gradients not summed.
#[test]
fn ensemble_attack_follows_eq1_with_its_distance_term() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    let n = 3;
    let x = images(&mut rng, n);
    let xs = x.to_vec().unwrap();
    let targets = [4u32, 7, 0];
    let mut models = vec![tiny_model(5), tiny_model(6)];
    let run = |models: &mut [Model], lambda: f32| {
        let h = EnsembleAttack {
            steps: 4,
            lambda,
            ..EnsembleAttack::default()
        };
        let got = ensemble_attack(&be, models, &x, &targets, &h)
            .unwrap()
            .to_vec()
            .unwrap();
        let want = attack_by_hand(&be, models, &xs, n, &targets, &h);
        (got, want)
    };
    // Adam is blind to a common scale of the gradient, so a mis-scaled lambda only shows when
    // the distance term and the cross-entropy terms are of one size: lambda = the mean norm of
    // the summed cross-entropy input gradient (the distance term's norm is lambda itself).
    let mut ce = vec![0f32; xs.len()];
    for m in models.iter_mut() {
        let g = input_grad(&be, m, &x, &targets)
            .unwrap()
            .2
            .to_vec()
            .unwrap();
        ce.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
    }
    let lambda = ce
        .chunks_exact(784)
        .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>() as f32
        / n as f32;
    assert!(lambda > 0.0);
    let (got, want) = run(&mut models, lambda);
    let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    common::assert_close(
        &got,
        &want64,
        2e-3,
        1e-5,
        "ensemble attack vs Eq. 1 by hand",
    );
    for other in [0.0, 2.0 * lambda] {
        let (o, _) = run(&mut models, other);
        let moved = got
            .iter()
            .zip(&o)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 0.05,
            "lambda {other} instead of {lambda} moves x* by {moved} at most"
        );
    }
}

/// Mutant: `Optimizer::set_lr` a no-op (the learning-rate schedule silently ignored).
#[test]
fn set_lr_scales_the_next_update() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(13);
    let x = images(&mut rng, 4);
    let labels = [1u32, 2, 3, 4];
    let delta = |lr: Option<f32>| {
        let mut m = tiny_model(9);
        let before: Vec<Vec<f32>> = m
            .params()
            .iter()
            .map(|p| p.value.to_vec().unwrap())
            .collect();
        let mut opt = Optimizer::new(OptimConfig::sgd(0.01, 0.0, 0.0)).unwrap();
        if let Some(lr) = lr {
            opt.set_lr(lr);
        }
        train_step(&be, &mut m, &mut opt, &x, &labels).unwrap();
        m.params()
            .iter()
            .zip(&before)
            .flat_map(|(p, b)| {
                let a = p.value.to_vec().unwrap();
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y) as f64)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<f64>>()
    };
    let (base, scaled, zero) = (delta(None), delta(Some(0.03)), delta(Some(0.0)));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(norm(&base) > 0.0);
    let ratio = norm(&scaled) / norm(&base);
    assert!(
        (ratio - 3.0).abs() < 1e-3,
        "lr 0.03 / 0.01 moved the weights {ratio} times as far"
    );
    assert_eq!(norm(&zero), 0.0, "lr 0 still moved the weights");
}

/// Mutants: `cholesky_packed`'s refusal of a NaN, infinite or non-positive pivot (`||` ->
/// `&&`), and its packed-lower indexing past D = 2.
#[test]
fn cholesky_reproduces_its_matrix_and_refuses_bad_pivots() {
    let d = 4;
    let b = [
        2.0, 0.1, -0.3, 0.7, 0.4, 1.5, 0.2, -0.1, 0.3, 0.9, 3.0, 0.5, -0.6, 0.2, 0.8, 1.1,
    ];
    // A = B B^T + I: symmetric positive definite.
    let mut a = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            a[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>()
                + if i == j { 1.0 } else { 0.0 };
        }
    }
    let l = cholesky_packed(&a, d).unwrap();
    let at = |i: usize, j: usize| if j <= i { l[i * (i + 1) / 2 + j] } else { 0.0 };
    for i in 0..d {
        for j in 0..d {
            let llt: f64 = (0..d).map(|k| at(i, k) * at(j, k)).sum();
            assert!((llt - a[i * d + j]).abs() < 1e-12, "(L L^T)[{i}][{j}]");
        }
    }
    for bad in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
        let mut m = a.clone();
        m[2 * d + 2] = bad;
        assert_eq!(cholesky_packed(&m, d), None, "pivot {bad} accepted");
    }
}

/// Dense f64 Gaussian of one class written out plainly: the mean, the MLE covariance S, the
/// shrunk `(1 - l) S + l (tr S / D) I` plus `eps I`, and the log-density by Gaussian
/// elimination with partial pivoting (not a Cholesky, so it shares no code path with the fit).
struct DirectGaussian {
    mean: Vec<f64>,
    sigma: Vec<f64>,
}

fn direct_moments(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (rows.len() as f64, rows[0].len());
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let mut s = vec![0.0; d * d];
    for r in rows {
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] += (r[i] - mean[i]) * (r[j] - mean[j]) / n;
            }
        }
    }
    (mean, s)
}

impl DirectGaussian {
    fn new(mean: Vec<f64>, s: &[f64], lambda: f64, eps: f64) -> DirectGaussian {
        let d = mean.len();
        let mu = (0..d).map(|i| s[i * d + i]).sum::<f64>() / d as f64;
        let mut sigma: Vec<f64> = s.iter().map(|v| v * (1.0 - lambda)).collect();
        for i in 0..d {
            sigma[i * d + i] += lambda * mu + eps;
        }
        DirectGaussian { mean, sigma }
    }

    fn log_density(&self, x: &[f64]) -> f64 {
        let d = self.mean.len();
        let mut a = self.sigma.clone();
        let mut b: Vec<f64> = x.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        let r0 = b.clone();
        let mut log_det = 0.0;
        for col in 0..d {
            let p = (col..d)
                .max_by(|&i, &j| a[i * d + col].abs().total_cmp(&a[j * d + col].abs()))
                .unwrap();
            for j in 0..d {
                a.swap(col * d + j, p * d + j);
            }
            b.swap(col, p);
            let piv = a[col * d + col];
            log_det += piv.abs().ln();
            for i in col + 1..d {
                let f = a[i * d + col] / piv;
                for j in col..d {
                    a[i * d + j] -= f * a[col * d + j];
                }
                b[i] -= f * b[col];
            }
        }
        let mut sol = vec![0.0; d];
        for i in (0..d).rev() {
            let s: f64 = (i + 1..d).map(|j| a[i * d + j] * sol[j]).sum();
            sol[i] = (b[i] - s) / a[i * d + i];
        }
        let maha: f64 = r0.iter().zip(&sol).map(|(r, s)| r * s).sum();
        -0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + maha)
    }
}

/// Mutants: the class-conditional Gaussians past D = 2 (packed-row offsets, the rank-1 and
/// GEMM moment paths mixed in one class), the ridge relative to the mean variance, a class with
/// one sample (nothing to shrink: l = 1), more than one 64-sample block of a class in the
/// batched log-density, and the per-class summary.
#[test]
fn gaussians_match_a_dense_f64_fit_in_five_dimensions() {
    let (d, k) = (5usize, 4usize);
    let mut rng = Rng::new(20261207);
    // Class 0: 150 correlated rows far from the origin; class 1: 9; class 2: none; class 3: 1.
    let sizes = [150usize, 9, 0, 1];
    let mut rows: Vec<(Vec<f64>, u32)> = Vec::new();
    for (c, &m) in sizes.iter().enumerate() {
        for _ in 0..m {
            let z: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let r: Vec<f64> = (0..d)
                .map(|j| {
                    let v = 40.0 * c as f64 - 7.0 * j as f64
                        + (j as f64 + 1.0) * z[j]
                        + 0.7 * z[(j + 2) % d];
                    (v as f32) as f64
                })
                .collect();
            rows.push((r, c as u32));
        }
    }
    // Interleave the classes so that batches mix them; batch sizes put class 0 through both
    // the rank-1 (< 8 rows of a class) and the GEMM path.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let feats: Vec<f32> = order
        .iter()
        .flat_map(|&i| rows[i].0.iter().map(|&v| v as f32))
        .collect();
    let labels: Vec<u32> = order.iter().map(|&i| rows[i].1).collect();
    let mut acc = GaussianAccumulator::new(k, d).unwrap();
    let mut start = 0;
    for b in [3usize, 5, 40, 1, 7, 200] {
        let e = (start + b).min(labels.len());
        acc.add_batch(&feats[start * d..e * d], &labels[start..e])
            .unwrap();
        start = e;
    }
    assert_eq!(start, labels.len());
    assert_eq!(acc.counts(), vec![150, 9, 0, 1]);
    assert_eq!((acc.dim(), acc.num_classes()), (d, k));

    let per_class: Vec<Option<(Vec<f64>, Vec<f64>)>> = (0..k as u32)
        .map(|c| {
            let rs: Vec<Vec<f64>> = rows
                .iter()
                .filter(|r| r.1 == c)
                .map(|r| r.0.clone())
                .collect();
            (!rs.is_empty()).then(|| direct_moments(&rs))
        })
        .collect();
    let trace_over_d = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>() / d as f64;
    let fitted: Vec<f64> = per_class
        .iter()
        .flatten()
        .map(|(_, s)| trace_over_d(s))
        .collect();
    let mean_var = fitted.iter().sum::<f64>() / fitted.len() as f64;

    for (ridge, l) in [(1e-3, 0.3), (0.05, 0.0)] {
        let cfg = GaussianConfig {
            shrinkage: Shrinkage::Fixed(l),
            ridge,
        };
        let g = acc.fit(&cfg).unwrap();
        let eps = ridge * mean_var;
        assert!(
            (g.ridge() - eps).abs() < 1e-9 * eps,
            "ridge {} vs {eps}",
            g.ridge()
        );
        assert_eq!(g.dim(), d);
        let summary = g.summary();
        assert_eq!(
            summary.iter().map(|s| (s.class, s.n)).collect::<Vec<_>>(),
            [(0, 150), (1, 9), (3, 1)]
        );
        let mut want_all = Vec::new();
        for (c, pc) in per_class.iter().enumerate() {
            let Some((mean, s)) = pc else {
                assert!(g.mean(c).is_none());
                continue;
            };
            // One sample: S = 0 is already a multiple of I, so the fit takes l = 1 only under
            // Ledoit-Wolf; a fixed l is used as given.
            let dg = DirectGaussian::new(mean.clone(), s, l, eps);
            let probe: Vec<f64> = mean
                .iter()
                .enumerate()
                .map(|(j, m)| m + 1.5 - j as f64)
                .collect();
            let p32: Vec<f32> = probe.iter().map(|&v| v as f32).collect();
            let p64: Vec<f64> = p32.iter().map(|&v| v as f64).collect();
            let want = dg.log_density(&p64);
            let got = g.log_density(&p32, c).unwrap();
            assert!(
                (got - want).abs() < 1e-6 * (1.0 + want.abs()),
                "ridge {ridge} l {l} class {c}: {got} vs {want}"
            );
            let sm = summary.iter().find(|x| x.class == c).unwrap();
            assert_eq!(sm.shrinkage, l);
            let log_det_want =
                -2.0 * dg.log_density(&dg.mean) - d as f64 * (2.0 * std::f64::consts::PI).ln();
            assert!(
                (sm.log_det - log_det_want).abs() < 1e-6 * (1.0 + log_det_want.abs()),
                "class {c} log det {} vs {log_det_want}",
                sm.log_det
            );
            for (a, b) in g.mean(c).unwrap().iter().zip(mean) {
                assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "class {c} mean");
            }
            want_all.push((c, dg));
        }
        // The batched log-density over every sample of the fitted classes (class 0 spans three
        // 64-sample blocks), against the dense reference.
        let bx: Vec<f32> = rows
            .iter()
            .flat_map(|(r, _)| r.iter().map(|&v| v as f32))
            .collect();
        let bc: Vec<u32> = rows.iter().map(|r| r.1).collect();
        let got = g.log_density_batch(&bx, &bc).unwrap();
        for (i, (r, c)) in rows.iter().enumerate() {
            let dg = &want_all.iter().find(|w| w.0 == *c as usize).unwrap().1;
            let want = dg.log_density(r);
            assert!(
                (got[i] - want).abs() < 1e-6 * (1.0 + want.abs()),
                "batch row {i} class {c}: {} vs {want}",
                got[i]
            );
        }
        assert!(g.log_density_batch(&bx[..d], &[2]).is_err());
        assert!(g.log_density_batch(&bx[..d], &[9]).is_err());
        assert!(g.log_density(&bx[..d], 9).is_err());
    }
    // Ledoit-Wolf on the one-sample class: S = 0, nothing to shrink toward, l = 1.
    let lw = acc.fit(&GaussianConfig::default()).unwrap();
    let one = lw.summary().into_iter().find(|s| s.class == 3).unwrap();
    assert_eq!(one.shrinkage, 1.0);
    // Refusals: a ridge below 0 or not finite, a fixed l outside [0, 1].
    for ridge in [-1e-9, f64::NAN, f64::INFINITY] {
        let cfg = GaussianConfig {
            shrinkage: Shrinkage::Fixed(0.1),
            ridge,
        };
        let e = acc.fit(&cfg).unwrap_err().to_string();
        assert!(e.contains("ridge must be >= 0"), "ridge {ridge}: {e}");
    }
    for l in [-0.01, 1.01] {
        let cfg = GaussianConfig {
            shrinkage: Shrinkage::Fixed(l),
            ridge: 1e-3,
        };
        assert!(acc.fit(&cfg).is_err(), "shrinkage {l} accepted");
    }
}

/// Mutant: the shift of a class's moment sums taken from another row than the class's own
/// first (`r[0] * d` -> `r[0] / d`). A class at 1e7 with a spread of 10, whose first row comes
/// after a class near 0 in its batch, keeps a variance that a shift from the other class would
/// lose to cancellation (1e-16 x 1e14 / 100 = 1e-4 of it).
#[test]
fn a_class_far_from_the_origin_keeps_its_variance() {
    let mut rng = Rng::new(20261208);
    let mut far = GaussianAccumulator::new(2, 2).unwrap();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..40 {
        let c = u32::from(i >= 4);
        let base = if c == 1 { 1.0e7 } else { 0.0 };
        rows.push((base + 10.0 * rng.normal()) as f32);
        rows.push((base - 10.0 * rng.normal()) as f32);
        labels.push(c);
    }
    far.add_batch(&rows, &labels).unwrap();
    let g = far
        .fit(&GaussianConfig {
            shrinkage: Shrinkage::Fixed(0.0),
            ridge: 0.0,
        })
        .unwrap();
    let class1: Vec<Vec<f64>> = (4..40)
        .map(|i| vec![rows[2 * i] as f64, rows[2 * i + 1] as f64])
        .collect();
    let (m1, s1) = direct_moments(&class1);
    let dg = DirectGaussian::new(m1, &s1, 0.0, 0.0);
    let probe = [rows[10], rows[11]];
    let want = dg.log_density(&[probe[0] as f64, probe[1] as f64]);
    let got = g.log_density(&probe, 1).unwrap();
    assert!(
        (got - want).abs() < 1e-7 * want.abs(),
        "far class: {got} vs {want}"
    );
}

/// Mutant: the zero-variance refusal (`eps > 0` -> `>=`): every class constant leaves no
/// variance for the ridge to scale, said as such (not as a failed Cholesky further on).
#[test]
fn constant_features_are_refused_as_zero_variance() {
    let mut flat = GaussianAccumulator::new(2, 3).unwrap();
    flat.add_batch(&[1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0], &[0, 0, 1])
        .unwrap();
    let e = flat
        .fit(&GaussianConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("zero variance"), "{e}");
}
