//! Every supported micro-kernel path against a float64 reference, on awkward sizes (1, primes,
//! sizes just past MR / NR / KC / MC / NC), every stride layout the backend uses and beta 0, 1
//! and 0.5; plus bit-identical results across thread counts.

use super::super::gemm::{sgemm_isa, Strides};
use super::*;
use crate::rng::Rng;

/// Tolerance of an f32 GEMM against f64: atol + rtol * sum_k |a||b| (the error bound of a
/// k-term f32 dot product grows with k * eps times the absolute sum).
#[allow(clippy::too_many_arguments)]
fn check(isa: Isa, m: usize, k: usize, n: usize, ta: bool, tb: bool, beta: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut rand = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
            .collect()
    };
    let a = rand(m * k);
    let b = rand(k * n);
    let c0 = rand(m * n);
    let sa = if ta {
        Strides::trans(m)
    } else {
        Strides::row(k)
    };
    let sb = if tb {
        Strides::trans(k)
    } else {
        Strides::row(n)
    };
    let at = |i: usize, p: usize| a[i * sa.rs + p * sa.cs] as f64;
    let bt = |p: usize, j: usize| b[p * sb.rs + j * sb.cs] as f64;
    let mut c = if beta == 0.0 {
        vec![f32::NAN; m * n] // beta 0 must never read C
    } else {
        c0.clone()
    };
    sgemm_isa(isa, m, k, n, &a, sa, &b, sb, beta, &mut c, Strides::row(n));
    let mut worst = (0.0f64, 0usize);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                s += at(i, p) * bt(p, j);
                abs += (at(i, p) * bt(p, j)).abs();
            }
            if beta != 0.0 {
                s += beta as f64 * c0[i * n + j] as f64;
                abs += (beta as f64 * c0[i * n + j] as f64).abs();
            }
            let err = (c[i * n + j] as f64 - s).abs();
            let tol = 1e-6 + 4.0 * f32::EPSILON as f64 * abs;
            if err.is_nan() || err > tol {
                panic!(
                    "{} m{m} k{k} n{n} ta{ta} tb{tb} beta{beta}: c[{i},{j}] = {} vs {s} \
                     (err {err:e} > tol {tol:e})",
                    isa.name(),
                    c[i * n + j]
                );
            }
            if err / tol > worst.0 {
                worst = (err / tol, i * n + j);
            }
        }
    }
    eprintln!(
        "{} m{m} k{k} n{n}: worst err/tol {:.3} at {}",
        isa.name(),
        worst.0,
        worst.1
    );
}

#[test]
fn every_isa_matches_f64_reference() {
    let isas = supported_isas();
    assert!(isas.contains(&Isa::Portable));
    let shapes = [
        (1, 1, 1),
        (1, 7, 1),
        (5, 3, 2),
        (13, 17, 33),
        (12, 257, 32),
        (7, 72, 49),
        (97, 31, 513),
        (8, 300, 19),
        (29, 5, 130),
        // One or two rows left after whole 4-row panels, over runs of full in-place panels
        // (the wide AVX2 tail kernel), across two k-blocks (beta 1 on the second).
        (10, 40, 200),
        (6, 300, 100),
        (1, 300, 250),
        // Several row blocks per task sharing each packed B k-block, over two k-blocks.
        (211, 300, 61),
    ];
    for (si, &(m, k, n)) in shapes.iter().enumerate() {
        for isa in &isas {
            for (ci, &(ta, tb, beta)) in [
                (false, false, 0.0),
                (true, false, 1.0),
                (false, true, 0.5),
                (true, true, 0.0),
            ]
            .iter()
            .enumerate()
            {
                check(*isa, m, k, n, ta, tb, beta, (si * 4 + ci) as u64);
            }
        }
    }
}

#[test]
fn same_bits_for_any_thread_count() {
    // Large enough to be split into blocks and run in parallel; the second is one block at the
    // full width, cut into narrower column blocks for the threads (`block_cols`); the third has
    // two rows past its last whole panel (the wide tail kernel) over in-place B panels; the
    // fourth is cut into a task per thread (`task_rows`), each of several row blocks sharing
    // one packed B k-block, over two k-blocks.
    for (m, k, n) in [
        (200, 300, 1100),
        (64, 576, 384),
        (10, 400, 700),
        (400, 520, 130),
    ] {
        same_bits_at(m, k, n);
    }
}

fn same_bits_at(m: usize, k: usize, n: usize) {
    let mut rng = Rng::new(7);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    for isa in supported_isas() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            let mut c = vec![0.0f32; m * n];
            pool.install(|| {
                sgemm_isa(
                    isa,
                    m,
                    k,
                    n,
                    &a,
                    Strides::row(k),
                    &b,
                    Strides::row(n),
                    0.0,
                    &mut c,
                    Strides::row(n),
                )
            });
            c
        };
        let one = run(1);
        for t in [2, 3, 7] {
            let other = run(t);
            let same = one
                .iter()
                .zip(&other)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{} m{m} k{k} n{n}: 1 vs {t} threads differ",
                isa.name()
            );
        }
    }
}

#[test]
fn few_blocks_are_cut_into_one_per_thread() {
    for isa in supported_isas() {
        let (nr, full) = (isa.nr(), block_cols(isa, 64, 384, false, 2));
        assert!(full >= 384, "{}: one block at the full width", isa.name());
        for threads in [2, 3, 7] {
            let nc = block_cols(isa, 64, 384, true, threads);
            assert_eq!(nc % nr, 0, "{}: whole panels", isa.name());
            // Whole panels can leave a block fewer than threads (7 threads, 16 panels: 6 of 3).
            let blocks = 384usize.div_ceil(nc);
            assert!(
                (2..=threads).contains(&blocks),
                "{threads} threads: {blocks} blocks"
            );
        }
        // Enough blocks already, or too little work: the full width.
        assert_eq!(block_cols(isa, 400, 384, true, 2), full);
        assert_eq!(block_cols(isa, 64, 384, true, 1), full);
    }
}

#[test]
fn tasks_share_the_rows_out_evenly_in_whole_panels() {
    // resnet18 layer4: 512 rows, two threads, one task of 256 each (5 x 96 + 32 before).
    assert_eq!(task_rows(512, 4, true, 2), 256);
    assert_eq!(task_rows(512, 4, false, 2), 512);
    assert_eq!(task_rows(512, 4, true, 1), 512);
    // One MC block: no row split (the columns are cut instead, `block_cols`).
    assert_eq!(task_rows(MC, 4, true, 2), MC);
    // Whole panels, at most one task per thread or per MC rows.
    assert_eq!(task_rows(211, 4, true, 2), 108);
    assert_eq!(task_rows(211, 12, true, 7), 72);
    for (m, mr) in [(7, 4), (200, 4), (400, 12), (513, 4)] {
        let rb = row_block(m, mr);
        assert!(
            rb.is_multiple_of(mr) && rb <= MC.max(mr),
            "m{m}: {rb} rows a block"
        );
        assert_eq!(
            m.div_ceil(rb),
            m.div_ceil(MC),
            "m{m}: as many blocks as MC gives"
        );
    }
}

#[test]
fn isa_names_parse() {
    for i in Isa::ALL {
        assert_eq!(Isa::parse(i.name()), Some(i));
    }
    assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
    assert_eq!(Isa::parse("sse"), None);
    assert!(isa().supported());
}

#[test]
fn dot_nt_every_isa_matches_f64_reference() {
    assert_eq!(super::dot::block_rows(4001), 12);
    for (si, &(m, n, len)) in [
        (1, 1, 1),
        (3, 7, 15),
        (4, 6, 16),
        (5, 13, 17),
        (8, 72, 49),
        (9, 11, 784),
        // B in 12-row blocks (`block_rows`): 4 blocks, the last of 5 rows.
        (4, 41, 4001),
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng::new(100 + si as u64);
        let (lda, ldb, ldc) = (len + 3, len + 1, n + 2);
        let a: Vec<f32> = (0..m * lda).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..n * ldb).map(|_| rng.normal() as f32).collect();
        let c0: Vec<f32> = (0..m * ldc).map(|_| rng.normal() as f32).collect();
        for isa in supported_isas() {
            let mut c = c0.clone();
            dot_nt_acc(isa, m, n, len, &a, lda, &b, ldb, &mut c, ldc);
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j] as f64;
                    if j >= n {
                        assert_eq!(got, c0[i * ldc + j] as f64, "padding column written");
                        continue;
                    }
                    let (mut s, mut abs) = (c0[i * ldc + j] as f64, c0[i * ldc + j].abs() as f64);
                    for p in 0..len {
                        let t = a[i * lda + p] as f64 * b[j * ldb + p] as f64;
                        s += t;
                        abs += t.abs();
                    }
                    let tol = 1e-6 + 4.0 * f32::EPSILON as f64 * abs;
                    assert!(
                        (got - s).abs() <= tol,
                        "{} m{m} n{n} len{len}: c[{i},{j}] = {got} vs {s}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn packed_a_gives_the_same_bits_as_packing_per_block() {
    // m past MC, k past KC: several blocks and k-blocks read out of one PackedA.
    let (m, k, n) = (MC + 7, KC + 45, 70);
    let mut rng = Rng::new(9);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let am = Mat {
        data: &a,
        rs: k,
        cs: 1,
    };
    let bm = Mat {
        data: &b,
        rs: n,
        cs: 1,
    };
    for isa in supported_isas() {
        let mut c1 = vec![0.0f32; m * n];
        let mut c2 = vec![0.0f32; m * n];
        sgemm_on(isa, m, k, n, ASrc::Mat(am), &bm, 0.0, &mut c1, n, 1);
        let pk = PackedA::new(isa, m, k, am);
        sgemm_on(isa, m, k, n, ASrc::Packed(&pk), &bm, 0.0, &mut c2, n, 1);
        assert!(
            c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}",
            isa.name()
        );
    }
}

/// Not a test: GFLOP/s of every supported path and of `matrixmultiply` (the previous GEMM) on
/// 2048^3 and on conv-shaped products, medians of 5 (`cargo test --release --lib
/// sgemm_speed -- --ignored --nocapture`).
#[test]
#[ignore]
fn sgemm_speed() {
    let shapes = [
        (2048, 2048, 2048, "2048^3"),
        (64, 576, 3136, "vgg conv3 fwd/image (K64 CRR576 PQ3136)"),
        (8, 72, 840, "small-vgg16 w8 conv2 fwd/image (padded grid)"),
        (32, 288, 61, "small-vgg16 w8 conv6 fwd/image (padded grid)"),
    ];
    for &(m, k, n, what) in &shapes {
        let mut rng = Rng::new(1);
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let mut c = vec![0.0f32; m * n];
        let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(1.0, 2000.0) as usize;
        let mut time = |f: &mut dyn FnMut(&mut [f32])| {
            let mut t: Vec<f64> = (0..5)
                .map(|_| {
                    let s = std::time::Instant::now();
                    for _ in 0..reps {
                        f(&mut c);
                    }
                    s.elapsed().as_secs_f64() / reps as f64
                })
                .collect();
            t.sort_by(|x, y| x.total_cmp(y));
            2.0 * (m * n * k) as f64 / t[2] / 1e9
        };
        let mut line = format!("{what}:");
        for isa in supported_isas() {
            let g = time(&mut |c| {
                sgemm_isa(
                    isa,
                    m,
                    k,
                    n,
                    &a,
                    Strides::row(k),
                    &b,
                    Strides::row(n),
                    0.0,
                    c,
                    Strides::row(n),
                )
            });
            line += &format!(" {} {g:.1}", isa.name());
        }
        let g = time(&mut |c| {
            // SAFETY: a, b and c are m*k, k*n and m*n row-major slices.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        });
        eprintln!(
            "{line} matrixmultiply {g:.1} GFLOP/s ({} threads)",
            rayon::current_num_threads()
        );
    }
}

/// `copy_row` copies the row and zero-fills the panel's tail for every width a panel can have;
/// `copy_fixed` copies exactly N values at unaligned offsets and leaves the neighbours alone.
#[test]
fn panel_row_copies_are_exact() {
    let src: Vec<f32> = (0..40).map(|i| i as f32 + 0.5).collect();
    for nr in [16, 24, 32] {
        for w in 0..=nr {
            let mut dst = vec![f32::NAN; nr];
            copy_row(&mut dst, &src[3..3 + w]);
            assert_eq!(&dst[..w], &src[3..3 + w], "nr {nr} w {w}: row");
            assert!(
                dst[w..].iter().all(|&v| v == 0.0),
                "nr {nr} w {w}: tail not zeroed"
            );
        }
    }
    fn fixed<const N: usize>(src: &[f32]) {
        let mut dst = vec![-1.0f32; N + 2];
        copy_fixed::<N>(&mut dst[1..], &src[1..]);
        assert_eq!(&dst[1..N + 1], &src[1..N + 1], "N {N}");
        assert_eq!(
            (dst[0], dst[N + 1]),
            (-1.0, -1.0),
            "N {N}: neighbours written"
        );
    }
    fixed::<4>(&src);
    fixed::<8>(&src);
    fixed::<16>(&src);
    fixed::<24>(&src);
    fixed::<32>(&src);
}
