//! Tests of src/analysis: WordNet distances from the real data.noun, LC/CS1/CS2, streaming top-k,
//! ROC AUC, r1/r2, class-conditional Gaussians, prediction difference. All fast (host math).

use std::path::Path;

use advlens::analysis::detect::{detection_scores, GaussianAccumulator, GaussianConfig, Shrinkage};
use advlens::analysis::pd::{prediction_difference, prediction_difference_batch, top_n};
use advlens::analysis::ratios::{distance_ratios, histogram, RatioConfig};
use advlens::analysis::roc::{roc_auc, roc_curve, trapezoid_area};
use advlens::analysis::semantics::{
    distribution, lc_curve, neuron_semantics, neuron_semantics_from_labels, quadforms,
    uniform_edges, NeuronSemantics,
};
use advlens::analysis::topk::{top_fraction_k, Hit, TopK};
use advlens::analysis::wordnet::{
    correlation, parse_class_list, parse_wnid, wnid, Hierarchy, WordNet, MAX_PATH_FRONTIER,
};
use advlens::rng::Rng;

const WORDNET_DIR: &str = "/usr/share/wordnet";

/// Worst |got - want| - (atol + rtol |want|) over the slices; panics naming the worst index.
fn assert_close(got: &[f64], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, f64::NEG_INFINITY);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess.is_nan() || excess > worst.1 {
            worst = (
                i,
                if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                },
            );
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: worst index {i}: got {} want {} (atol {atol}, rtol {rtol})",
        got[i],
        want[i]
    );
}

fn wordnet() -> WordNet {
    WordNet::load(Path::new(WORDNET_DIR)).unwrap_or_else(|e| {
        panic!("WordNet 3.0 data.noun is required (Debian package wordnet-base): {e}")
    })
}

// ---------------------------------------------------------------- WordNet

#[test]
fn wordnet_known_pairs_from_real_data_noun() {
    let wn = wordnet();
    let tabby = parse_wnid("n02123045").unwrap();
    let persian = parse_wnid("n02123394").unwrap();
    let wolfhound = parse_wnid("n02090721").unwrap();
    let domestic_cat = parse_wnid("n02121808").unwrap();
    let d_tp = wn.distance(tabby, persian).unwrap();
    let d_tw = wn.distance(tabby, wolfhound).unwrap();
    let d_pw = wn.distance(persian, wolfhound).unwrap();
    println!("d(tabby, Persian cat) = {d_tp}");
    println!("d(tabby, Irish wolfhound) = {d_tw}");
    println!("d(Persian cat, Irish wolfhound) = {d_pw}");
    // Siblings under `domestic cat`: the paper's d = 2 for its sibling-cat pair.
    assert_eq!(d_tp, 2);
    // Through `domestic animal` (a second hypernym of both `domestic cat` and `dog`): 2 + 5.
    assert_eq!(d_tw, 7);
    assert_eq!(d_pw, 7);
    assert_eq!(wn.distance(tabby, domestic_cat), Some(1));
    assert_eq!(wn.distance(tabby, tabby), Some(0));
    assert_eq!(wn.distance(wolfhound, tabby), Some(d_tw));
    // Without multiple inheritance the route is through `carnivore`: 4 + 6.
    let carnivore = parse_wnid("n02075296").unwrap();
    let dp = wn.ancestor_depths(persian);
    let dw = wn.ancestor_depths(wolfhound);
    assert_eq!(dp[&carnivore] + dw[&carnivore], 10);
    assert_eq!(wn.get(tabby).unwrap().lemmas[0], "tabby");
    // Every noun reaches `entity`.
    assert!(dp.contains_key(&1740) && dw.contains_key(&1740));
    let paths = wn.hypernym_paths(persian, 8);
    assert!(!paths.is_empty());
    assert!(paths
        .iter()
        .all(|p| p[0] == 1740 && *p.last().unwrap() == persian));
}

#[test]
fn wordnet_parser_on_synthetic_lines() {
    let text = "  1 licence header line  \n  2 more header\n\
00001740 03 n 01 entity 0 000 | root  \n\
00000010 03 n 02 a_b 0 c 1 002 @ 00001740 n 0000 ~ 00000020 n 0000 | a  \n\
00000020 03 n 01 d 0 003 @ 00000010 n 0000 + 00000099 v 0101 %p 00000010 n 0000 | d  \n\
00000030 03 n 01 e 0 002 @i 00001740 n 0000 @ 00000099 v 0000 | e  \n";
    let wn = WordNet::parse(text, Path::new("synthetic")).unwrap();
    assert_eq!(wn.len(), 4);
    assert!(!wn.is_empty());
    let a = wn.get(10).unwrap();
    assert_eq!(a.lemmas, vec!["a_b", "c"]);
    assert_eq!(a.hypernyms, vec![1740]);
    assert_eq!(a.name(), "a b");
    // Non-hypernym pointers (~, +, %p) and hypernyms to other parts of speech are dropped; @i kept.
    assert_eq!(wn.get(20).unwrap().hypernyms, vec![10]);
    assert_eq!(wn.get(30).unwrap().hypernyms, vec![1740]);
    assert_eq!(wn.distance(20, 30), Some(3));
    assert_eq!(wnid(1740), "n00001740");
    assert_eq!(parse_wnid("n0000174"), None);
    assert_eq!(parse_wnid("x00001740"), None);
    let bad = "00001740 03 n 01 entity 0 001 @ 0000 | root\n";
    let e = WordNet::parse(bad, Path::new("bad.noun"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.noun") && e.contains("line 1"), "{e}");
}

/// Mutants (cargo-mutants, issue 14): `hypernym_cycle` (its loop bound, where the cycle starts,
/// a constant answer) and `distance` with one offset unknown (`||` -> `&&`: a known synset whose
/// hypernym pointer dangles would reach the unknown offset at distance 1).
#[test]
fn hypernym_cycles_and_dangling_pointers_on_synthetic_lines() {
    let text = "00001740 03 n 01 entity 0 000 | root\n\
00000010 03 n 01 a 0 001 @ 00000020 n 0000 | a\n\
00000020 03 n 01 b 0 002 @ 00001740 n 0000 @ 00000010 n 0000 | b\n\
00000030 03 n 01 c 0 001 @ 00000010 n 0000 | c\n\
00000040 03 n 01 d 0 002 @ 00000050 n 0000 @ 00000060 n 0000 | d\n\
00000050 03 n 01 e 0 001 @ 00001740 n 0000 | e\n\
00000060 03 n 01 f 0 002 @ 00000050 n 0000 @ 00000077 n 0000 | f\n";
    let wn = WordNet::parse(text, Path::new("cycle")).unwrap();
    assert_eq!(wn.hypernym_cycle(10), Some(vec![10, 20, 10]));
    assert_eq!(wn.hypernym_cycle(20), Some(vec![20, 10, 20]));
    // Reached from below: the cycle is listed from its first node, without the path into it.
    assert_eq!(wn.hypernym_cycle(30), Some(vec![10, 20, 10]));
    // A diamond (d -> e, d -> f -> e) and a dangling pointer are not cycles.
    assert_eq!(wn.hypernym_cycle(40), None);
    assert_eq!(wn.hypernym_cycle(1740), None);
    assert_eq!(wn.distance(40, 50), Some(1));
    assert_eq!(wn.distance(77, 60), None, "77 is not a synset");
    assert_eq!(wn.distance(60, 77), None, "77 is not a synset");
}

/// Mutants: `hypernym_paths` revisiting a node (`&&` -> `||`: a cycle would add ever longer
/// paths), and its per-length cap on partial paths (`<` -> `<=`).
#[test]
fn hypernym_paths_never_revisit_a_node_and_keep_at_most_the_cap() {
    let cyc = "00001740 03 n 01 entity 0 000 | root\n\
00000010 03 n 01 a 0 001 @ 00000020 n 0000 | a\n\
00000020 03 n 01 b 0 002 @ 00001740 n 0000 @ 00000010 n 0000 | b\n";
    let wn = WordNet::parse(cyc, Path::new("cycle")).unwrap();
    assert_eq!(wn.hypernym_paths(10, 50), vec![vec![1740, 20, 10]]);
    // x -> 129 parents -> 128 grandparents each -> entity: 16,512 partial paths of length 3,
    // of which the cap keeps the first 16,384 in pointer order.
    let (na, nb) = (129u32, 128u32);
    let mut text = String::from("00001740 03 n 01 entity 0 000 | root\n");
    let ptr = |o: u32| format!("@ {o:08} n 0000");
    let a_ids: Vec<u32> = (0..na).map(|i| 2_000_000 + i).collect();
    let ps: Vec<String> = a_ids.iter().map(|&o| ptr(o)).collect();
    text += &format!("00000010 03 n 01 x 0 {:03} {} | x\n", na, ps.join(" "));
    for (i, &a) in a_ids.iter().enumerate() {
        let b_ids: Vec<u32> = (0..nb).map(|j| 3_000_000 + i as u32 * nb + j).collect();
        let ps: Vec<String> = b_ids.iter().map(|&o| ptr(o)).collect();
        text += &format!("{a:08} 03 n 01 a 0 {nb:03} {} | a\n", ps.join(" "));
        for b in b_ids {
            text += &format!("{b:08} 03 n 01 b 0 001 {} | b\n", ptr(1740));
        }
    }
    let wn = WordNet::parse(&text, Path::new("wide")).unwrap();
    let paths = wn.hypernym_paths(10, 100_000);
    assert_eq!(
        paths.len(),
        MAX_PATH_FRONTIER,
        "partial paths kept at length 3"
    );
    assert_eq!(MAX_PATH_FRONTIER, 16_384);
    assert!(paths
        .iter()
        .all(|p| p.len() == 4 && p[0] == 1740 && p[3] == 10));
}

/// Mutants: the word and pointer count limits of `parse_line` (255 words and 999 pointers are
/// WordNet's own maxima and must parse; one more is refused by name, not by running out of
/// fields), and the clipped bad line in the error message.
#[test]
fn parser_count_limits_and_the_quoted_line() {
    let root = "00001740 03 n 01 entity 0 000 | root\n";
    let words: Vec<String> = (0..255).map(|i| format!("w{i} 0")).collect();
    let ok = format!(
        "{root}00000010 03 n ff {} 000 | many words\n",
        words.join(" ")
    );
    let wn = WordNet::parse(&ok, Path::new("w")).unwrap();
    assert_eq!(wn.get(10).unwrap().lemmas.len(), 255);
    let words: Vec<String> = (0..256).map(|i| format!("w{i} 0")).collect();
    let bad = format!(
        "{root}00000010 03 n 100 {} 000 | too many\n",
        words.join(" ")
    );
    let e = WordNet::parse(&bad, Path::new("w"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit of 255"), "{e}");
    let ptrs = |n: usize| -> String {
        (0..n)
            .map(|_| "@ 00001740 n 0000".to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ok = format!("{root}00000010 03 n 01 a 0 999 {} | a\n", ptrs(999));
    let wn = WordNet::parse(&ok, Path::new("p")).unwrap();
    assert_eq!(wn.get(10).unwrap().hypernyms.len(), 999);
    let bad = format!("{root}00000010 03 n 01 a 0 1000 {} | a\n", ptrs(1000));
    let e = WordNet::parse(&bad, Path::new("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit of 999"), "{e}");
    // The offending line is quoted, cut to 80 characters.
    let long = format!("00000010 03 x 01 {} | gloss\n", "y".repeat(200));
    let e = WordNet::parse(&format!("{root}{long}"), Path::new("q"))
        .unwrap_err()
        .to_string();
    let quoted: String = long.chars().take(80).collect();
    assert!(e.contains(&quoted), "{e}");
    assert!(
        !e.contains(&long.chars().take(81).collect::<String>()),
        "{e}"
    );
}

/// Mutants: `Hierarchy::build`'s sigma check (0 and +inf must be refused) and the line numbers
/// of a repeated class in `parse_class_list`.
#[test]
fn hierarchy_refuses_a_zero_or_infinite_sigma_and_names_repeated_lines() {
    let text = "00001740 03 n 01 entity 0 000 | root\n\
00000010 03 n 01 a 0 001 @ 00001740 n 0000 | a\n\
00000020 03 n 01 b 0 001 @ 00000010 n 0000 | b\n";
    let wn = WordNet::parse(text, Path::new("syn")).unwrap();
    let list = parse_class_list("n00000010\nn00000020\n", Path::new("c.txt")).unwrap();
    let h = Hierarchy::build(&wn, &list, 1.5, Path::new("c.txt")).unwrap();
    assert_eq!(h.num_classes(), 2);
    for sigma in [0.0, -1.0, f64::INFINITY, f64::NAN] {
        assert!(
            Hierarchy::build(&wn, &list, sigma, Path::new("c.txt")).is_err(),
            "sigma {sigma} accepted"
        );
    }
    let e = parse_class_list("n00000010\n# c\nn00000010\n", Path::new("c.txt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3: n00000010 repeats line 1"), "{e}");

    // Hierarchy::load refuses a distance matrix that is not K x K (no classes, a missing row,
    // a short row) instead of returning a hierarchy or panicking on it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h.json");
    h.write_json(&out, 100).unwrap();
    assert_eq!(Hierarchy::load(&out).unwrap(), h);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut w = v.clone();
        f(&mut w);
        let p = dir.path().join("bad.json");
        std::fs::write(&p, serde_json::to_vec(&w).unwrap()).unwrap();
        Hierarchy::load(&p)
    };
    assert!(edit(&|_| {}).is_ok());
    let none = edit(&|w| {
        w["classes"] = serde_json::json!([]);
        w["distance"] = serde_json::json!([]);
    });
    assert!(none.is_err(), "a hierarchy of no classes loaded");
    let missing_row = edit(&|w| {
        w["distance"].as_array_mut().unwrap().pop();
    });
    assert!(
        missing_row.is_err(),
        "a 1 x 2 distance loaded for 2 classes"
    );
    let short_row = edit(&|w| {
        w["distance"][1].as_array_mut().unwrap().pop();
    });
    assert!(short_row.is_err(), "a short distance row loaded");
    for sigma in [0.0, -1.0] {
        let bad = edit(&|w| w["sigma"] = serde_json::json!(sigma));
        assert!(bad.is_err(), "sigma {sigma} loaded");
    }
}

#[test]
fn class_list_errors_name_the_line() {
    let wn = wordnet();
    let p = Path::new("classes.txt");
    let e = parse_class_list("n02123045\n\nnot-an-id\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("not-an-id"), "{e}");
    let e = parse_class_list("n02123045\nn02123045\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2"), "{e}");
    let list = parse_class_list("# comment\nn02123045\tmy tabby\nn99999999\n", p).unwrap();
    let e = Hierarchy::build(&wn, &list, 1.0, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("n99999999"), "{e}");
}

#[test]
fn hierarchy_c_matrix_and_json_round_trip() {
    let wn = wordnet();
    let p = Path::new("classes.txt");
    let list = parse_class_list("n02123045\tmy tabby\nn02123394\nn02090721\n", p).unwrap();
    let h = Hierarchy::build(&wn, &list, 1.0, p).unwrap();
    assert_eq!(h.distance, vec![0, 2, 7, 2, 0, 7, 7, 7, 0]);
    assert_eq!(h.classes[0].name, "my tabby");
    assert_eq!(h.classes[1].name, "Persian cat");
    let c = h.c_matrix();
    let want: Vec<f64> = h
        .distance
        .iter()
        .map(|&d| (-(d as f64).powi(2) / 2.0).exp())
        .collect();
    assert_close(&c, &want, 0.0, 1e-15, "C");
    assert!((correlation(2.0, 1.0) - (-2.0f64).exp()).abs() < 1e-15);
    let c2 = h.c_matrix_with_sigma(2.0);
    assert!((c2[1] - (-0.5f64).exp()).abs() < 1e-15);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h.json");
    h.write_json(&out, 100).unwrap();
    let back = Hierarchy::load(&out).unwrap();
    assert_eq!(back, h);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["c"][0][1].as_f64().unwrap(), c[1]);
    // Without the full C the file still determines it through c_of_distance.
    h.write_json(&out, 2).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(v.get("c").is_none());
    assert_eq!(v["c_of_distance"][7].as_f64().unwrap(), c[2]);
    assert_eq!(Hierarchy::load(&out).unwrap(), h);
}

/// The committed derived files must be what the committed class tables give today.
#[test]
fn committed_hierarchies_match_a_rebuild() {
    let wn = wordnet();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/wordnet");
    for (list, json, full_c) in [
        (
            "fashion_mnist_classes.txt",
            "fashion_mnist_hierarchy.json",
            true,
        ),
        ("imagenet1k_classes.txt", "imagenet1k_hierarchy.json", false),
    ] {
        let lp = root.join(list);
        let text = std::fs::read_to_string(&lp).unwrap();
        let classes = parse_class_list(&text, &lp).unwrap();
        let h = Hierarchy::build(&wn, &classes, 1.0, &lp).unwrap();
        let committed = Hierarchy::load(&root.join(json)).unwrap();
        assert_eq!(
            committed, h,
            "{json} is stale: rerun `advlens wordnet build`"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(json)).unwrap()).unwrap();
        assert_eq!(v.get("c").is_some(), full_c, "{json}");
    }
    let fm = Hierarchy::load(&root.join("fashion_mnist_hierarchy.json")).unwrap();
    assert_eq!(fm.num_classes(), 10);
    // T-shirt (jersey) is a hyponym of shirt; sandal and sneaker are both shoes.
    assert_eq!(fm.distance[6], 1);
    assert_eq!(fm.distance[5 * 10 + 7], 2);
}

// ---------------------------------------------------------------- LC, CS1, CS2

fn naive_quad(a: &[f64], c: &[f64], b: &[f64], k: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..k {
        for j in 0..k {
            s += a[i] * c[i * k + j] * b[j];
        }
    }
    s
}

#[test]
fn lc_cs_hand_cases() {
    // Identity C: LC = |p|^2 and CS = plain cosine.
    let k = 3;
    let id = vec![1., 0., 0., 0., 1., 0., 0., 0., 1.];
    let p = vec![0.5, 0.5, 0.0];
    let q = vec![0.5, 0.0, 0.5];
    let qt = vec![0.0, 1.0, 0.0];
    let s = neuron_semantics(&p, &q, &qt, &id, 1, k).unwrap();
    assert!((s[0].lc - 0.5).abs() < 1e-15);
    assert!((s[0].cs1 - 0.5).abs() < 1e-15, "{:?}", s[0]);
    assert!((s[0].cs2 - 0.5f64.sqrt()).abs() < 1e-15, "{:?}", s[0]);
    // Correlated C: LC of a 50/50 split over two related classes.
    let c = vec![1., 0.5, 0., 0.5, 1., 0., 0., 0., 1.];
    let s = neuron_semantics(&p, &q, &qt, &c, 1, k).unwrap();
    assert!((s[0].lc - 0.75).abs() < 1e-15);
    // p^T C q = .25 + .125 + 0 + 0 = .375 ; q^T C q = .5 ; cs1 = .375 / sqrt(.75 * .5)
    assert!((s[0].cs1 - 0.375 / (0.375f64).sqrt()).abs() < 1e-14);
    // One-hot p = e0, q = e1: CS1 = c01; identical distributions: CS = 1.
    let s = neuron_semantics(&[1., 0., 0.], &[0., 1., 0.], &[1., 0., 0.], &c, 1, k).unwrap();
    assert_eq!(
        s[0],
        NeuronSemantics {
            lc: 1.0,
            cs1: 0.5,
            cs2: 1.0
        }
    );
    // From label lists.
    let s = neuron_semantics_from_labels(&[vec![0, 1]], &[vec![0, 2]], &[vec![2]], &c, k).unwrap();
    assert!((s[0].lc - 0.75).abs() < 1e-15);
    assert!(distribution(&[], 3).is_err());
    let e = distribution(&[0, 3], 3).unwrap_err().to_string();
    assert!(e.contains("label 3"), "{e}");
    assert_eq!(
        distribution(&[2, 0, 2, 2], 3).unwrap(),
        vec![0.25, 0.0, 0.75]
    );
}

#[test]
fn quadforms_match_naive_on_random_inputs() {
    let mut rng = Rng::new(0x5eed_0001);
    for &(n, k) in &[(1usize, 1usize), (7, 13), (3, 1), (17, 5)] {
        let mut rnd = |len: usize| -> Vec<f64> { (0..len).map(|_| rng.uniform()).collect() };
        let p = rnd(n * k);
        let q = rnd(n * k);
        // A symmetric PSD-ish C with unit diagonal, like exp(-d^2/2).
        let d: Vec<f64> = rnd(k * k);
        let mut c = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                let dd = 3.0 * (d[i * k + j] + d[j * k + i]);
                c[i * k + j] = if i == j { 1.0 } else { (-dd * dd / 2.0).exp() };
            }
        }
        let f = quadforms(&p, &c, &q, n, k).unwrap();
        let mut want = (vec![], vec![], vec![], vec![]);
        for r in 0..n {
            let (pr, qr) = (&p[r * k..(r + 1) * k], &q[r * k..(r + 1) * k]);
            let (a, b, cc) = (
                naive_quad(pr, &c, qr, k),
                naive_quad(pr, &c, pr, k),
                naive_quad(qr, &c, qr, k),
            );
            want.0.push(a);
            want.1.push(b);
            want.2.push(cc);
            want.3.push(a / (b * cc).sqrt());
        }
        assert_close(&f.pcq, &want.0, 1e-12, 1e-12, "pcq");
        assert_close(&f.pcp, &want.1, 1e-12, 1e-12, "pcp");
        assert_close(&f.qcq, &want.2, 1e-12, 1e-12, "qcq");
        assert_close(&f.cos, &want.3, 1e-12, 1e-12, "cos");
    }
    assert!(quadforms(&[1.0; 5], &[1.0; 4], &[1.0; 4], 2, 2).is_err());
}

#[test]
fn lc_curve_bins_and_counts() {
    let n = |lc: f64, cs1: f64, cs2: f64| NeuronSemantics { lc, cs1, cs2 };
    let neurons = vec![
        n(0.1, 0.9, 0.1),
        n(0.2, 0.7, 0.3),
        n(0.5, 0.4, f64::NAN),
        n(1.0, 0.2, 0.8),
        n(1.5, 0.0, 0.0), // outside
    ];
    let edges = uniform_edges(0.0, 1.0, 2);
    assert_eq!(edges, vec![0.0, 0.5, 1.0]);
    let bins = lc_curve(&neurons, &edges).unwrap();
    assert_eq!(bins[0].count, 2);
    assert!((bins[0].cs1_mean.unwrap() - 0.8).abs() < 1e-15);
    assert!((bins[0].cs2_mean.unwrap() - 0.2).abs() < 1e-15);
    assert_eq!(bins[1].count, 2); // 0.5 and the closed right edge 1.0
    assert!((bins[1].cs1_mean.unwrap() - 0.3).abs() < 1e-15);
    assert!((bins[1].cs2_mean.unwrap() - 0.8).abs() < 1e-15); // NaN left out of the mean
    assert!(lc_curve(&neurons, &[0.0]).is_err());
    assert!(lc_curve(&neurons, &[0.0, 0.0, 1.0]).is_err());
}

// ---------------------------------------------------------------- streaming top-k

fn full_sort_topk(vals: &[f32], ids: &[u32], c: usize, ch: usize, k: usize) -> Vec<Hit> {
    let mut v: Vec<Hit> = ids
        .iter()
        .enumerate()
        .map(|(r, &id)| Hit {
            value: vals[r * c + ch],
            id,
        })
        .collect();
    v.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.id.cmp(&b.id)));
    v.truncate(k);
    v
}

#[test]
fn streaming_topk_equals_full_sort_across_batches_ties_and_merge() {
    let mut rng = Rng::new(0x7031);
    let (n, c) = (1009usize, 5usize);
    for &k in &[1usize, 37, 1009, 2000] {
        // Few distinct values: many ties; ids shuffled so arrival order is not id order.
        let vals: Vec<f32> = (0..n * c)
            .map(|_| (rng.below(23) as f32 - 11.0) * 0.25)
            .collect();
        let mut ids: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
        rng.shuffle(&mut ids);
        let mut single = TopK::new(c, k).unwrap();
        let mut start = 0;
        let sizes = [1usize, 7, 13, 64, 3];
        let mut bi = 0;
        while start < n {
            let b = sizes[bi % sizes.len()].min(n - start);
            single
                .push_batch(&vals[start * c..(start + b) * c], &ids[start..start + b])
                .unwrap();
            start += b;
            bi += 1;
        }
        // Two shards (odd / even rows) merged.
        let mut a = TopK::new(c, k).unwrap();
        let mut b = TopK::new(c, k).unwrap();
        for r in 0..n {
            let t = if r % 2 == 0 { &mut a } else { &mut b };
            t.push_batch(&vals[r * c..(r + 1) * c], &ids[r..r + 1])
                .unwrap();
        }
        a.merge(b).unwrap();
        let kept_sorted: Vec<Vec<Hit>> = (0..c).map(|ch| single.sorted(ch)).collect();
        let merged = a.finish();
        let got = single.finish();
        for ch in 0..c {
            let want = full_sort_topk(&vals, &ids, c, ch, k);
            assert_eq!(got[ch], want, "k {k} channel {ch}: stream vs full sort");
            assert_eq!(merged[ch], want, "k {k} channel {ch}: merge vs full sort");
            assert_eq!(kept_sorted[ch], want);
        }
    }
}

#[test]
fn topk_errors_and_fraction_helper() {
    let mut t = TopK::new(2, 3).unwrap();
    assert!(t.push_batch(&[1.0, 2.0, 3.0], &[0, 1]).is_err());
    let e = t
        .push_batch(&[1.0, f32::NAN], &[4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("channel 1") && e.contains("image 4"), "{e}");
    // A negative-signed NaN (which total_cmp ranks below -inf) is rejected too, even once the
    // heap is full.
    let mut t1 = TopK::new(1, 1).unwrap();
    t1.push_batch(&[5.0], &[0]).unwrap();
    assert!(t1.push_batch(&[-f32::NAN], &[1]).is_err());
    assert!(TopK::new(2, 0).is_err());
    assert!(t.merge(TopK::new(2, 4).unwrap()).is_err());
    assert_eq!(top_fraction_k(50_000, 0.01), 500);
    assert_eq!(top_fraction_k(500_000, 0.01), 5000);
    assert_eq!(top_fraction_k(10_000, 0.01), 100);
    assert_eq!(top_fraction_k(101, 0.01), 2);
    assert_eq!(top_fraction_k(5, 0.01), 1);
    assert_eq!(top_fraction_k(0, 0.01), 1);
    assert_eq!(top_fraction_k(7, 2.0), 7);
}

// ---------------------------------------------------------------- ROC / AUC

fn brute_auc(s: &[f32], l: &[u8]) -> f64 {
    let (mut num, mut pairs) = (0.0, 0.0);
    for i in 0..s.len() {
        for j in 0..s.len() {
            if l[i] == 1 && l[j] == 0 {
                pairs += 1.0;
                num += if s[i] > s[j] {
                    1.0
                } else if s[i] == s[j] {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    num / pairs
}

#[test]
fn roc_auc_matches_brute_force_mann_whitney() {
    let mut rng = Rng::new(0xa0c);
    for &n in &[2usize, 3, 17, 101, 997] {
        let mut labels: Vec<u8> = (0..n).map(|_| (rng.uniform() < 0.3) as u8).collect();
        labels[0] = 1;
        labels[n - 1] = 0;
        // Coarse values: many ties, including -0.0 vs 0.0.
        let scores: Vec<f32> = (0..n)
            .map(|i| {
                let v = (rng.below(9) as f32 - 4.0) * 0.5 + labels[i] as f32 * 0.5;
                if v == 0.0 && i % 2 == 0 {
                    -0.0
                } else {
                    v
                }
            })
            .collect();
        let auc = roc_auc(&scores, &labels).unwrap();
        let want = brute_auc(&scores, &labels);
        assert!((auc - want).abs() < 1e-12, "n {n}: {auc} vs {want}");
        let curve = roc_curve(&scores, &labels).unwrap();
        assert!((trapezoid_area(&curve) - want).abs() < 1e-12);
        let last = curve.last().unwrap();
        assert_eq!(
            (curve[0].fpr, curve[0].tpr, last.fpr, last.tpr),
            (0.0, 0.0, 1.0, 1.0)
        );
    }
}

#[test]
fn roc_auc_hand_cases() {
    assert_eq!(roc_auc(&[0.9, 0.8, 0.1, 0.2], &[1, 1, 0, 0]), Some(1.0));
    assert_eq!(roc_auc(&[0.1, 0.2, 0.9, 0.8], &[1, 1, 0, 0]), Some(0.0));
    assert_eq!(roc_auc(&[0.5, 0.5, 0.5], &[1, 0, 0]), Some(0.5));
    assert_eq!(roc_auc(&[1.0, 2.0, 3.0], &[1, 0, 1]), Some(0.5));
    assert_eq!(roc_auc(&[1.0, 2.0], &[1, 1]), None);
    assert_eq!(roc_auc(&[1.0, 2.0], &[1, 2]), None);
    assert_eq!(roc_auc(&[1.0, f32::NAN], &[1, 0]), None);
    assert_eq!(roc_auc(&[1.0], &[1, 0]), None);
    let (s, l) = detection_scores(&[-1.0, -2.0], &[-50.0]);
    assert_eq!(l, vec![0, 0, 1]);
    assert_eq!(roc_auc(&s, &l), Some(1.0));
}

// ---------------------------------------------------------------- r1 / r2

fn dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// r1 / r2 by the definitions, O(n^2) loops.
fn brute_ratios(
    real: &[f32],
    rl: &[u32],
    adv: &[f32],
    yo: &[u32],
    yt: &[u32],
    d: usize,
) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
    let class = |c: u32| -> Vec<&[f32]> {
        rl.iter()
            .enumerate()
            .filter(|(_, &l)| l == c)
            .map(|(i, _)| &real[i * d..(i + 1) * d])
            .collect()
    };
    let mean_to = |x: &[f32], s: &[&[f32]]| -> Option<f64> {
        (!s.is_empty()).then(|| s.iter().map(|p| dist(x, p)).sum::<f64>() / s.len() as f64)
    };
    let within = |s: &[&[f32]]| -> Option<f64> {
        if s.len() < 2 {
            return None;
        }
        let mut t = 0.0;
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                t += dist(s[i], s[j]);
            }
        }
        Some(t / (s.len() * (s.len() - 1) / 2) as f64)
    };
    let between = |s: &[&[f32]], u: &[&[f32]]| -> Option<f64> {
        if s.is_empty() || u.is_empty() {
            return None;
        }
        let t: f64 = s
            .iter()
            .flat_map(|a| u.iter().map(move |b| dist(a, b)))
            .sum();
        Some(t / (s.len() * u.len()) as f64)
    };
    let (mut r1, mut r2) = (vec![], vec![]);
    for i in 0..yo.len() {
        let x = &adv[i * d..(i + 1) * d];
        let (sy, st) = (class(yo[i]), class(yt[i]));
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        r1.push(div(mean_to(x, &sy), within(&sy)));
        let den = if yo[i] == yt[i] {
            within(&sy)
        } else {
            between(&sy, &st)
        };
        r2.push(div(mean_to(x, &st), den));
    }
    (r1, r2)
}

fn assert_opt_close(got: &[Option<f64>], want: &[Option<f64>], rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => assert!(
                (g - w).abs() <= 1e-12 + rtol * w.abs(),
                "{what}[{i}]: got {g} want {w}"
            ),
            (None, None) => {}
            _ => panic!("{what}[{i}]: got {g:?} want {w:?}"),
        }
    }
}

#[test]
fn ratios_match_brute_force_on_random_clouds() {
    let mut rng = Rng::new(0x7a710);
    for &(d, k, offset) in &[(3usize, 4usize, 0.0f64), (7, 3, 1000.0), (1, 5, -3.0)] {
        // Class sizes 1 (undefined within-distance), primes, and an empty class.
        let sizes = [1usize, 5, 7, 11, 0];
        let mut real = vec![];
        let mut rl = vec![];
        for c in 0..k {
            for _ in 0..sizes[c % sizes.len()] {
                for _ in 0..d {
                    real.push((offset + c as f64 * 2.0 + rng.normal()) as f32);
                }
                rl.push(c as u32);
            }
        }
        let m = 13;
        let adv: Vec<f32> = (0..m * d)
            .map(|_| (offset + 3.0 * rng.normal()) as f32)
            .collect();
        let yo: Vec<u32> = (0..m).map(|_| rng.below(k) as u32).collect();
        let yt: Vec<u32> = (0..m).map(|_| rng.below(k) as u32).collect();
        let got =
            distance_ratios(&real, &rl, &adv, &yo, &yt, d, k, &RatioConfig::default()).unwrap();
        let (w1, w2) = brute_ratios(&real, &rl, &adv, &yo, &yt, d);
        // Far from the origin the Gram form loses a few digits (centring keeps it small).
        assert_opt_close(&got.r1, &w1, 1e-9, "r1");
        assert_opt_close(&got.r2, &w2, 1e-9, "r2");
        assert!(got.r1.iter().any(|r| r.is_some()));
    }
}

#[test]
fn ratios_on_constructed_clouds_with_known_values() {
    // Two cross-polytopes (A +- s e_i, B +- s e_i) in D dims, centres L apart, L >> s.
    let d = 5usize;
    let s = 1.0f64;
    let l = 1.0e4f64;
    let a: Vec<f64> = vec![0.0; d];
    let mut b = vec![0.0; d];
    b[0] = l;
    let mut real = vec![];
    let mut rl = vec![];
    for (c, centre) in [&a, &b].iter().enumerate() {
        for i in 0..d {
            for sign in [1.0, -1.0] {
                let mut p = centre.to_vec();
                p[i] += sign * s;
                real.extend(p.iter().map(|&v| v as f32));
                rl.push(c as u32);
            }
        }
    }
    // Adversarial points: at A (orig 0, target 1) and at B (orig 0, target 1).
    let adv: Vec<f32> = a.iter().chain(b.iter()).map(|&v| v as f32).collect();
    let r = distance_ratios(
        &real,
        &rl,
        &adv,
        &[0, 0],
        &[1, 1],
        d,
        2,
        &RatioConfig::default(),
    )
    .unwrap();
    // Each point of a cross-polytope: 1 antipode at 2s, 2D-2 points at s sqrt 2.
    let within = (2.0 * s + (2 * d - 2) as f64 * s * 2f64.sqrt()) / (2 * d - 1) as f64;
    let r1_at_mean = s / within;
    assert!((r.r1[0].unwrap() - r1_at_mean).abs() < 1e-9, "{:?}", r.r1);
    // At its own class centre r1 < 1 (closer than typical members); r2 ~ 1 when L >> s.
    assert!(r1_at_mean < 1.0);
    assert!((r.r2[0].unwrap() - 1.0).abs() < 1e-3, "{:?}", r.r2);
    // Sitting on the target class: r2 = s / ~L, r1 = ~L / within.
    assert!(
        (r.r2[1].unwrap() - s / l).abs() < 1e-3 * s / l + 1e-9,
        "{:?}",
        r.r2
    );
    assert!(
        (r.r1[1].unwrap() - l / within).abs() < 1e-3 * l / within,
        "{:?}",
        r.r1
    );

    // The cap: same seed -> same result; counts capped.
    let cfg = RatioConfig {
        max_per_class: Some(4),
        seed: 9,
    };
    let c1 = distance_ratios(&real, &rl, &adv, &[0, 0], &[1, 1], d, 2, &cfg).unwrap();
    let c2 = distance_ratios(&real, &rl, &adv, &[0, 0], &[1, 1], d, 2, &cfg).unwrap();
    assert_eq!(c1.real_per_class, vec![4, 4]);
    assert_eq!(c1.r1, c2.r1);
    let big = RatioConfig {
        max_per_class: Some(1000),
        seed: 9,
    };
    let c3 = distance_ratios(&real, &rl, &adv, &[0, 0], &[1, 1], d, 2, &big).unwrap();
    assert_opt_close(&c3.r1, &r.r1, 1e-12, "cap above size");
    // Bad inputs.
    assert!(distance_ratios(&real, &rl, &adv, &[0, 2], &[1, 1], d, 2, &cfg).is_err());
    assert!(distance_ratios(&real, &rl, &adv[1..], &[0, 0], &[1, 1], d, 2, &cfg).is_err());
}

#[test]
fn histogram_counts() {
    let vals = [
        Some(0.5),
        Some(1.0),
        Some(1.5),
        Some(2.0),
        Some(-1.0),
        Some(9.0),
        None,
        Some(f64::NAN),
    ];
    let h = histogram(&vals, &[0.0, 1.0, 2.0]).unwrap();
    assert_eq!(h.counts, vec![1, 3]);
    assert_eq!((h.below, h.above, h.missing, h.n), (1, 1, 2, 6));
    assert!((h.mean.unwrap() - 13.0 / 6.0).abs() < 1e-15);
    assert!(histogram(&vals, &[1.0]).is_err());
}

// ---------------------------------------------------------------- Gaussian detection

#[test]
fn gaussian_log_density_matches_direct_2d_formula() {
    let mut rng = Rng::new(0x6a55);
    let n = 41;
    let mut feats = vec![];
    let mut labels = vec![];
    for i in 0..n {
        let (z1, z2) = (rng.normal(), rng.normal());
        // Correlated, far from the origin, two classes (class 1 shifted).
        let c = (i % 2) as f64;
        feats.push((100.0 + 2.0 * z1 + 5.0 * c) as f32);
        feats.push((-50.0 + 0.8 * z1 + 0.5 * z2) as f32);
        labels.push(c as u32);
    }
    // Fit in awkward batches; must equal one batch.
    let mut acc = GaussianAccumulator::new(3, 2).unwrap();
    let mut start = 0;
    for b in [1usize, 7, 13, 20] {
        let e = (start + b).min(n);
        acc.add_batch(&feats[start * 2..e * 2], &labels[start..e])
            .unwrap();
        start = e;
    }
    assert_eq!(acc.counts(), vec![21, 20, 0]);
    let cfg = GaussianConfig {
        shrinkage: Shrinkage::Fixed(0.0),
        ridge: 0.0,
    };
    let g = acc.fit(&cfg).unwrap();
    for class in 0..2u32 {
        let xs: Vec<[f64; 2]> = (0..n)
            .filter(|&i| labels[i] == class)
            .map(|i| [feats[2 * i] as f64, feats[2 * i + 1] as f64])
            .collect();
        let m = xs.len() as f64;
        let mu = [
            xs.iter().map(|x| x[0]).sum::<f64>() / m,
            xs.iter().map(|x| x[1]).sum::<f64>() / m,
        ];
        let cov = |a: usize, b: usize| {
            xs.iter()
                .map(|x| (x[a] - mu[a]) * (x[b] - mu[b]))
                .sum::<f64>()
                / m
        };
        let (sxx, sxy, syy) = (cov(0, 0), cov(0, 1), cov(1, 1));
        let det = sxx * syy - sxy * sxy;
        assert_close(g.mean(class as usize).unwrap(), &mu, 1e-9, 1e-12, "mean");
        for probe in [
            [101.0f32, -49.0],
            [90.0, -60.0],
            [mu[0] as f32, mu[1] as f32],
        ] {
            let (dx, dy) = (probe[0] as f64 - mu[0], probe[1] as f64 - mu[1]);
            let maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / det;
            let want = -(2.0 * std::f64::consts::PI).ln() - 0.5 * det.ln() - 0.5 * maha;
            let got = g.log_density(&probe, class as usize).unwrap();
            assert!(
                (got - want).abs() < 1e-8 * (1.0 + want.abs()),
                "class {class} probe {probe:?}: {got} vs {want}"
            );
        }
    }
    // The empty class cannot be scored; a wrong-length feature is a shape error.
    assert!(g.log_density(&[0.0, 0.0], 2).is_err());
    assert!(g.log_density(&[0.0], 0).is_err());
    let batch = g.log_density_batch(&feats, &labels).unwrap();
    for (i, &c) in labels.iter().enumerate() {
        let single = g.log_density(&feats[2 * i..2 * i + 2], c as usize).unwrap();
        assert_eq!(batch[i], single, "batch vs single, row {i}");
    }
    assert!(g.log_density_batch(&feats[..2], &[2]).is_err());
    // One batch (GEMM path for x x^T) vs row by row (rank-1 path): same fit.
    let mut one = GaussianAccumulator::new(3, 2).unwrap();
    one.add_batch(&feats, &labels).unwrap();
    let g_one = one.fit(&cfg).unwrap();
    let b_one = g_one.log_density_batch(&feats, &labels).unwrap();
    assert_close(&b_one, &batch, 1e-9, 1e-12, "one batch vs many");
    // Full shrinkage: covariance (tr S / D) I.
    let g1 = acc
        .fit(&GaussianConfig {
            shrinkage: Shrinkage::Fixed(1.0),
            ridge: 0.0,
        })
        .unwrap();
    let s = &g1.summary()[0];
    assert_eq!(s.shrinkage, 1.0);
    let bad = acc.fit(&GaussianConfig {
        shrinkage: Shrinkage::Fixed(1.5),
        ridge: 0.0,
    });
    assert!(bad.is_err());
}

/// scikit-learn's ledoit_wolf_shrinkage, written out on centred data.
fn ledoit_wolf_direct(x: &[Vec<f64>]) -> f64 {
    let n = x.len();
    let d = x[0].len();
    let mu: Vec<f64> = (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let xc: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().zip(&mu).map(|(a, b)| a - b).collect())
        .collect();
    let mut s = vec![0.0; d * d];
    for r in &xc {
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] += r[i] * r[j] / n as f64;
            }
        }
    }
    let tr: f64 = (0..d).map(|i| s[i * d + i]).sum();
    let m = tr / d as f64;
    let beta_: f64 = xc
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().powi(2))
        .sum();
    let delta_: f64 = s.iter().map(|v| v * v).sum();
    let beta = (beta_ / n as f64 - delta_) / (d * n) as f64;
    let delta = (delta_ - 2.0 * m * tr + d as f64 * m * m) / d as f64;
    beta.min(delta) / delta
}

#[test]
fn ledoit_wolf_shrinkage_matches_direct_formula() {
    let mut rng = Rng::new(0x1ed0);
    for &(n, d) in &[(40usize, 5usize), (7, 11), (3, 2)] {
        let rows: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let z: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
                (0..d)
                    .map(|j| 30.0 + (j as f64 + 1.0) * z[j] + 0.5 * z[(j + 1) % d])
                    .map(|v| (v as f32) as f64)
                    .collect()
            })
            .collect();
        let feats: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let mut acc = GaussianAccumulator::new(1, d).unwrap();
        acc.add_batch(&feats, &vec![0; n]).unwrap();
        let g = acc.fit(&GaussianConfig::default()).unwrap();
        let got = g.summary()[0].shrinkage;
        let want = ledoit_wolf_direct(&rows);
        assert!(
            (got - want).abs() < 1e-7,
            "n {n} d {d}: shrinkage {got} vs direct {want}"
        );
        assert!((0.0..=1.0).contains(&got));
    }
    let mut acc = GaussianAccumulator::new(2, 3).unwrap();
    assert!(acc.add_batch(&[1.0, 2.0, 3.0], &[2]).is_err());
    assert!(acc.add_batch(&[1.0, f32::INFINITY, 3.0], &[0]).is_err());
    assert!(acc.fit(&GaussianConfig::default()).is_err());
}

// ---------------------------------------------------------------- prediction difference

#[test]
fn prediction_difference_hand_case() {
    let k = 3;
    let e = (-0.5f64).exp();
    let c = vec![1.0, e, 0.0, e, 1.0, 0.0, 0.0, 0.0, 1.0];
    let g = [0.7f32, 0.2, 0.1];
    let removed = [
        0.2f32, 0.7, 0.1, // swaps mass between correlated classes
        0.7, 0.2, 0.1, // no change
        0.2, 0.2, 0.6, // moves mass to an unrelated class
    ];
    let pd = prediction_difference(&g, &removed, &c).unwrap();
    let v1 = [0.5f64, -0.5, 0.0];
    let v3 = [0.5f64, 0.0, -0.5];
    let q = |v: &[f64; 3]| naive_quad(v, &c, v, k);
    let want = [q(&v1), 0.0, q(&v3)];
    // Inputs are f32: the differences carry f32 rounding.
    assert_close(&pd, &want, 1e-7, 1e-6, "PD");
    assert!((want[0] - (0.5 - 0.5 * e)).abs() < 1e-15);
    // The move to an unrelated class matters more than a swap between related ones.
    assert_eq!(top_n(&pd, 2), vec![(2, pd[2]), (0, pd[0])]);
    assert_eq!(
        top_n(&[1.0, 3.0, 3.0, f64::NAN], 4)[..3],
        [(1, 3.0), (2, 3.0), (0, 1.0)]
    );
    let batch =
        prediction_difference_batch(&[g, g].concat(), &[removed, removed].concat(), &c, k).unwrap();
    assert_eq!(&batch[..3], &pd[..]);
    assert_eq!(&batch[3..], &pd[..]);
    assert!(prediction_difference(&g, &removed[..4], &c).is_err());
    assert!(prediction_difference(&g, &removed, &c[..4]).is_err());
}
