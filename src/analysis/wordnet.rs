//! WordNet 3.0 noun hierarchy, the class tree distance and the class correlation matrix C of the
//! paper (Eq. 2).
//!
//! # Data
//! `data.noun` of WordNet 3.0 (Debian `wordnet-base`: `/usr/share/wordnet/data.noun`). Every line
//! is `offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt(dec) ptr... | gloss`; the licence
//! header lines start with two spaces and are skipped. Of the pointers only hypernyms (`@`) and
//! instance hypernyms (`@i`) to other nouns are kept: they form a DAG whose single root is
//! `entity` (n00001740). ImageNet ids ("wnids") are `n` + the 8-digit offset.
//!
//! # Tree distance
//! `d(a, b) = min over common ancestors s of depth_a(s) + depth_b(s)`, where `depth_x(s)` is the
//! smallest number of hypernym hops from `x` up to `s` (a synset is its own ancestor at depth 0).
//! Multiple inheritance (2 213 of the 82 115 noun synsets have several hypernyms) is handled by taking the
//! minimum over every upward path, i.e. the upward hop counts come from a breadth-first search of
//! the whole hypernym DAG, not from one chosen "primary" parent. Instance hypernyms count as
//! ordinary hypernym edges. This is the length of the shortest path between the two synsets that
//! goes up to a common hypernym and back down (WordNet "path" similarity without the +1).
//!
//! Measured on WordNet 3.0 (asserted in `tests/analysis.rs`, cross-checked with an independent
//! Python BFS over the same file): tabby (n02123045) vs Persian cat (n02123394) = 2, both being
//! direct hyponyms of `domestic cat`; this matches the paper's d = 2 for its sibling-cat pair in
//! Fig. 3. Persian cat vs Irish wolfhound (n02090721) = 7, and tabby vs Irish wolfhound = 7.
//! The paper's Fig. 3 shows d = 4 for "persian cat vs wolfhound" on a simplified drawing of the
//! tree; the real graph has more levels. The 7 comes from multiple inheritance: `domestic cat`
//! and `dog` both have `domestic animal` as a second hypernym, so the shortest route is
//! Persian cat -> domestic cat -> domestic animal (2 hops) plus Irish wolfhound -> wolfhound ->
//! hound -> hunting dog -> dog -> domestic animal (5 hops). Through the zoological ancestor
//! `carnivore` it would be 4 + 6 = 10. We keep the definition (shortest path, minimum over every
//! upward path) rather than fit the figure; with sigma = 1 any d >= 4 already gives
//! c < 3.4e-4, so the qualitative behaviour of C is the same.
//!
//! # C
//! `c_ij = exp(-d_ij^2 / (2 sigma^2))`, sigma = 1 by default (the paper's value).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The root of the noun hierarchy (`entity`).
pub const ENTITY: u32 = 1740;

/// One noun synset: its offset, its lemmas (underscores kept as in the file) and its hypernyms.
#[derive(Clone, Debug)]
pub struct Synset {
    pub offset: u32,
    pub lemmas: Vec<String>,
    /// Offsets of `@` and `@i` targets, in file order.
    pub hypernyms: Vec<u32>,
    pub gloss: String,
}

impl Synset {
    /// A display name: the first lemma with underscores as spaces.
    pub fn name(&self) -> String {
        self.lemmas
            .first()
            .map(|l| l.replace('_', " "))
            .unwrap_or_default()
    }
}

/// The WordNet noun graph (hypernym edges only).
#[derive(Clone, Debug)]
pub struct WordNet {
    pub source: PathBuf,
    synsets: HashMap<u32, Synset>,
}

/// `n01234567` -> 1234567. Returns None unless the id is `n` followed by exactly 8 digits.
pub fn parse_wnid(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('n')?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// 1234567 -> `n01234567`.
pub fn wnid(offset: u32) -> String {
    format!("n{offset:08}")
}

impl WordNet {
    /// Read `dir/data.noun` (dir is e.g. `/usr/share/wordnet`); `dir` may also be the file itself.
    pub fn load(dir: &Path) -> Result<WordNet> {
        let path = if dir.is_dir() {
            dir.join("data.noun")
        } else {
            dir.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        WordNet::parse(&text, &path)
    }

    /// Parse the text of a `data.noun` file; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<WordNet> {
        let mut synsets = HashMap::with_capacity(90_000);
        for (lineno, line) in text.lines().enumerate() {
            if line.starts_with("  ") || line.trim().is_empty() {
                continue;
            }
            let s = parse_line(line).map_err(|msg| {
                Error::format(path, format!("line {}: {msg}: {}", lineno + 1, clip(line)))
            })?;
            synsets.insert(s.offset, s);
        }
        if synsets.is_empty() {
            return Err(Error::format(path, "no synsets found (is this data.noun?)"));
        }
        if !synsets.contains_key(&ENTITY) {
            return Err(Error::format(
                path,
                "no `entity` synset 00001740: not WordNet 3.0 data.noun",
            ));
        }
        Ok(WordNet {
            source: path.to_path_buf(),
            synsets,
        })
    }

    pub fn len(&self) -> usize {
        self.synsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.synsets.is_empty()
    }

    pub fn get(&self, offset: u32) -> Option<&Synset> {
        self.synsets.get(&offset)
    }

    /// Every ancestor of `offset` (itself included, at 0) with its smallest upward hop count.
    pub fn ancestor_depths(&self, offset: u32) -> HashMap<u32, u32> {
        let mut depth = HashMap::new();
        let mut queue = VecDeque::new();
        depth.insert(offset, 0u32);
        queue.push_back(offset);
        // Breadth-first, so the first time a node is reached is along a shortest upward path.
        while let Some(s) = queue.pop_front() {
            let d = depth[&s];
            if let Some(syn) = self.synsets.get(&s) {
                for &h in &syn.hypernyms {
                    if let std::collections::hash_map::Entry::Vacant(e) = depth.entry(h) {
                        e.insert(d + 1);
                        queue.push_back(h);
                    }
                }
            }
        }
        depth
    }

    /// Tree distance (see the module doc). None if either offset is unknown or they share no
    /// ancestor (cannot happen inside WordNet 3.0 nouns, which all reach `entity`).
    pub fn distance(&self, a: u32, b: u32) -> Option<u32> {
        if !self.synsets.contains_key(&a) || !self.synsets.contains_key(&b) {
            return None;
        }
        distance_from_depths(&self.ancestor_depths(a), &self.ancestor_depths(b))
    }

    /// A hypernym cycle reachable upward from `offset` (listed from its first node back to it),
    /// or None. WordNet has none; a corrupt or hostile data.noun can. Iterative depth-first
    /// search with three colours: O(nodes + edges).
    pub fn hypernym_cycle(&self, offset: u32) -> Option<Vec<u32>> {
        // 1 = on the current path, 2 = done.
        let mut colour: HashMap<u32, u8> = HashMap::new();
        let hyps = |s: u32| -> &[u32] {
            self.synsets
                .get(&s)
                .map(|x| x.hypernyms.as_slice())
                .unwrap_or(&[])
        };
        let mut stack: Vec<(u32, usize)> = vec![(offset, 0)];
        colour.insert(offset, 1);
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let hs = hyps(node);
            if *next < hs.len() {
                let h = hs[*next];
                *next += 1;
                match colour.get(&h) {
                    Some(1) => {
                        let start = stack.iter().position(|&(n, _)| n == h).unwrap_or(0);
                        let mut cycle: Vec<u32> = stack[start..].iter().map(|&(n, _)| n).collect();
                        cycle.push(h);
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        colour.insert(h, 1);
                        stack.push((h, 0));
                    }
                }
            } else {
                colour.insert(node, 2);
                stack.pop();
            }
        }
        None
    }

    /// The shortest upward paths from `offset` to a root, each listed root first and ending at
    /// `offset`, sorted by length then lexicographically; at most `max_paths` of them.
    ///
    /// Breadth-first by path length, so it stops as soon as the shortest `max_paths` paths are
    /// known instead of enumerating every path (whose number grows exponentially in a dense
    /// graph); at most [`MAX_PATH_FRONTIER`] partial paths are kept per length, and a path never
    /// visits a node twice, so cycles cannot make it loop.
    pub fn hypernym_paths(&self, offset: u32, max_paths: usize) -> Vec<Vec<u32>> {
        let mut out: Vec<Vec<u32>> = Vec::new();
        let mut frontier = vec![vec![offset]];
        while !frontier.is_empty() && out.len() < max_paths {
            let mut next = Vec::new();
            for path in frontier {
                let last = path[path.len() - 1];
                let hyps = self
                    .synsets
                    .get(&last)
                    .map(|s| s.hypernyms.as_slice())
                    .unwrap_or(&[]);
                if hyps.is_empty() {
                    let mut p = path;
                    p.reverse();
                    out.push(p);
                    continue;
                }
                for &h in hyps {
                    if !path.contains(&h) && next.len() < MAX_PATH_FRONTIER {
                        let mut p = path.clone();
                        p.push(h);
                        next.push(p);
                    }
                }
            }
            frontier = next;
        }
        out.sort_by(|x, y| x.len().cmp(&y.len()).then_with(|| x.cmp(y)));
        out.truncate(max_paths);
        out
    }
}

/// Most partial paths [`WordNet::hypernym_paths`] keeps per path length.
pub const MAX_PATH_FRONTIER: usize = 1 << 14;

/// `min_s da[s] + db[s]` over the common keys.
pub fn distance_from_depths(da: &HashMap<u32, u32>, db: &HashMap<u32, u32>) -> Option<u32> {
    let (small, large) = if da.len() <= db.len() {
        (da, db)
    } else {
        (db, da)
    };
    small
        .iter()
        .filter_map(|(s, d)| large.get(s).map(|e| d + e))
        .min()
}

fn clip(line: &str) -> String {
    line.chars().take(80).collect()
}

fn parse_line(line: &str) -> std::result::Result<Synset, String> {
    let (data, gloss) = match line.split_once(" | ") {
        Some((d, g)) => (d, g.trim_end().to_string()),
        None => (line, String::new()),
    };
    let mut it = data.split_ascii_whitespace();
    let mut next = |what: &str| it.next().ok_or_else(|| format!("missing {what}"));
    let offset: u32 = next("offset")?
        .parse()
        .map_err(|_| "bad synset offset".to_string())?;
    let _lex_filenum = next("lex_filenum")?;
    let ss_type = next("ss_type")?;
    if ss_type != "n" {
        return Err(format!("ss_type '{ss_type}' is not a noun"));
    }
    let w_cnt = usize::from_str_radix(next("w_cnt")?, 16).map_err(|_| "bad w_cnt".to_string())?;
    // WordNet writes w_cnt as two hex digits and p_cnt as three decimal ones; nothing is
    // allocated from either (a lying count would otherwise size a vector).
    if w_cnt > 0xFF {
        return Err(format!(
            "w_cnt {w_cnt} is above WordNet's limit of 255 words"
        ));
    }
    let mut lemmas = Vec::new();
    for _ in 0..w_cnt {
        lemmas.push(next("word")?.to_string());
        let _lex_id = next("lex_id")?;
    }
    let p_cnt: usize = next("p_cnt")?
        .parse()
        .map_err(|_| "bad p_cnt".to_string())?;
    if p_cnt > 999 {
        return Err(format!(
            "p_cnt {p_cnt} is above WordNet's limit of 999 pointers"
        ));
    }
    let mut hypernyms = Vec::new();
    for _ in 0..p_cnt {
        let sym = next("pointer symbol")?;
        let target: u32 = next("pointer offset")?
            .parse()
            .map_err(|_| "bad pointer offset".to_string())?;
        let pos = next("pointer pos")?;
        let _src_tgt = next("pointer source/target")?;
        if (sym == "@" || sym == "@i") && pos == "n" {
            hypernyms.push(target);
        }
    }
    Ok(Synset {
        offset,
        lemmas,
        hypernyms,
        gloss,
    })
}

/// `exp(-d^2 / (2 sigma^2))`.
pub fn correlation(d: f64, sigma: f64) -> f64 {
    (-(d * d) / (2.0 * sigma * sigma)).exp()
}

/// One class of a hierarchy file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HierClass {
    pub index: usize,
    pub wnid: String,
    /// The name given in the class list, else the first WordNet lemma.
    pub name: String,
    pub lemmas: Vec<String>,
    /// Hypernym paths, root first, as wnids (at most `MAX_PATHS`, shortest first).
    pub hypernym_paths: Vec<Vec<String>>,
}

/// Paths stored per class in hierarchy files.
pub const MAX_PATHS: usize = 8;

/// Classes, their tree distances D and the correlation matrix C (row-major, K x K).
#[derive(Clone, Debug, PartialEq)]
pub struct Hierarchy {
    pub sigma: f64,
    pub classes: Vec<HierClass>,
    pub distance: Vec<u32>,
}

/// A class list entry: wnid and optional name, with the line it came from.
#[derive(Clone, Debug)]
pub struct ClassEntry {
    pub line: usize,
    pub wnid: String,
    pub offset: u32,
    pub name: Option<String>,
}

/// Parse a class list: one wnid per line, optionally `wnid<TAB>name`; blank lines and `#`
/// comments are skipped.
pub fn parse_class_list(text: &str, path: &Path) -> Result<Vec<ClassEntry>> {
    let mut out: Vec<ClassEntry> = Vec::new();
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (id, name) = match line.split_once('\t') {
            Some((a, b)) => (
                a.trim(),
                Some(b.trim().to_string()).filter(|s| !s.is_empty()),
            ),
            None => (t, None),
        };
        let offset = parse_wnid(id).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "line {}: '{id}' is not a WordNet noun id (n + 8 digits)",
                    i + 1
                ),
            )
        })?;
        if let Some(prev) = seen.insert(offset, i + 1) {
            return Err(Error::format(
                path,
                format!("line {}: {id} repeats line {prev}", i + 1),
            ));
        }
        out.push(ClassEntry {
            line: i + 1,
            wnid: id.to_string(),
            offset,
            name,
        });
    }
    if out.is_empty() {
        return Err(Error::format(path, "no classes in class list"));
    }
    Ok(out)
}

impl Hierarchy {
    /// Build the hierarchy of `classes` (from `parse_class_list`; `path` names the list in errors).
    pub fn build(wn: &WordNet, classes: &[ClassEntry], sigma: f64, path: &Path) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::InvalidArg(format!(
                "--sigma must be a positive number, got {sigma}"
            )));
        }
        let mut hc = Vec::with_capacity(classes.len());
        let mut depths = Vec::with_capacity(classes.len());
        for (index, c) in classes.iter().enumerate() {
            let syn = wn.get(c.offset).ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "line {}: {} is not a noun synset of {}",
                        c.line,
                        c.wnid,
                        wn.source.display()
                    ),
                )
            })?;
            if let Some(cycle) = wn.hypernym_cycle(c.offset) {
                let names: Vec<String> = cycle.into_iter().map(wnid).collect();
                return Err(Error::format(
                    &wn.source,
                    format!(
                        "the hypernyms of {} (line {} of {}) form a cycle: {}; WordNet's noun \
                         hierarchy has none, so this data.noun is corrupt",
                        c.wnid,
                        c.line,
                        path.display(),
                        names.join(" -> ")
                    ),
                ));
            }
            hc.push(HierClass {
                index,
                wnid: c.wnid.clone(),
                name: c.name.clone().unwrap_or_else(|| syn.name()),
                lemmas: syn.lemmas.iter().map(|l| l.replace('_', " ")).collect(),
                hypernym_paths: wn
                    .hypernym_paths(c.offset, MAX_PATHS)
                    .into_iter()
                    .map(|p| p.into_iter().map(wnid).collect())
                    .collect(),
            });
            depths.push(wn.ancestor_depths(c.offset));
        }
        let k = classes.len();
        let mut distance = vec![0u32; k * k];
        for i in 0..k {
            for j in i + 1..k {
                let d = distance_from_depths(&depths[i], &depths[j]).ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "{} and {} share no hypernym in {}",
                            classes[i].wnid,
                            classes[j].wnid,
                            wn.source.display()
                        ),
                    )
                })?;
                distance[i * k + j] = d;
                distance[j * k + i] = d;
            }
        }
        Ok(Hierarchy {
            sigma,
            classes: hc,
            distance,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// C as a row-major K x K f64 matrix.
    pub fn c_matrix(&self) -> Vec<f64> {
        self.distance
            .iter()
            .map(|&d| correlation(d as f64, self.sigma))
            .collect()
    }

    /// C for another sigma (same distances).
    pub fn c_matrix_with_sigma(&self, sigma: f64) -> Vec<f64> {
        self.distance
            .iter()
            .map(|&d| correlation(d as f64, sigma))
            .collect()
    }

    pub fn max_distance(&self) -> u32 {
        self.distance.iter().copied().max().unwrap_or(0)
    }

    /// Write the hierarchy as JSON (atomically). Layout: one top-level object with `format`,
    /// `sigma`, `num_classes`, `classes` (one compact object per line), `distance` (K rows of
    /// integers, one row per line), `c_of_distance` (C value for d = 0..=max d), and `c` (K rows
    /// of floats) only when K <= `full_c_max_classes`: for ImageNet-1k a full f64 C would be
    /// ~19 MB of text while `distance` + `c_of_distance` determine it exactly
    /// (`c[i][j] = c_of_distance[distance[i][j]]`).
    pub fn write_json(&self, out: &Path, full_c_max_classes: usize) -> Result<()> {
        let text = self
            .to_json_text(full_c_max_classes)
            .map_err(|e| Error::Json {
                path: out.to_path_buf(),
                source: e,
            })?;
        crate::io::write_atomic(out, |w| std::io::Write::write_all(w, text.as_bytes()))
    }

    /// The text `write_json` writes (hand-laid-out JSON so that matrices stay one row per line;
    /// every value is still produced by serde_json).
    pub fn to_json_text(&self, full_c_max_classes: usize) -> serde_json::Result<String> {
        use std::fmt::Write as _;
        let k = self.num_classes();
        let mut s = String::new();
        fn js<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<String> {
            serde_json::to_string(v)
        }
        let _ = writeln!(s, "{{");
        let _ = writeln!(s, "  \"format\": {},", js("advlens-wordnet-hierarchy-v1")?);
        let _ = writeln!(
            s,
            "  \"distance_definition\": {},",
            js("min over common hypernym ancestors s of hops(a->s) + hops(b->s); hops = shortest upward path in the WordNet 3.0 noun hypernym DAG (@ and @i)")?
        );
        let _ = writeln!(s, "  \"source\": {},", js("WordNet 3.0 data.noun")?);
        let _ = writeln!(s, "  \"sigma\": {},", js(&self.sigma)?);
        let _ = writeln!(s, "  \"num_classes\": {k},");
        let _ = writeln!(s, "  \"classes\": [");
        for (i, c) in self.classes.iter().enumerate() {
            let sep = if i + 1 < k { "," } else { "" };
            let _ = writeln!(s, "    {}{sep}", js(c)?);
        }
        let _ = writeln!(s, "  ],");
        let _ = writeln!(s, "  \"distance\": [");
        for i in 0..k {
            let sep = if i + 1 < k { "," } else { "" };
            let _ = writeln!(s, "    {}{sep}", js(&self.distance[i * k..(i + 1) * k])?);
        }
        let _ = writeln!(s, "  ],");
        let cod: Vec<f64> = (0..=self.max_distance())
            .map(|d| correlation(d as f64, self.sigma))
            .collect();
        let with_c = k <= full_c_max_classes;
        let _ = writeln!(
            s,
            "  \"c_of_distance\": {}{}",
            js(&cod)?,
            if with_c { "," } else { "" }
        );
        if with_c {
            let c = self.c_matrix();
            let _ = writeln!(s, "  \"c\": [");
            for i in 0..k {
                let sep = if i + 1 < k { "," } else { "" };
                let _ = writeln!(s, "    {}{sep}", js(&c[i * k..(i + 1) * k])?);
            }
            let _ = writeln!(s, "  ]");
        }
        let _ = writeln!(s, "}}");
        Ok(s)
    }

    /// Read a file written by `write_json` (validating shapes and the symmetric zero-diagonal D).
    pub fn load(path: &Path) -> Result<Hierarchy> {
        #[derive(Deserialize)]
        struct Raw {
            sigma: f64,
            classes: Vec<HierClass>,
            distance: Vec<Vec<u32>>,
        }
        let raw: Raw = crate::io::read_json(path)?;
        let k = raw.classes.len();
        if k == 0 || raw.distance.len() != k || raw.distance.iter().any(|r| r.len() != k) {
            return Err(Error::format(
                path,
                format!("distance must be {k} x {k} for {k} classes"),
            ));
        }
        if !(raw.sigma.is_finite() && raw.sigma > 0.0) {
            return Err(Error::format(path, format!("bad sigma {}", raw.sigma)));
        }
        let distance: Vec<u32> = raw.distance.concat();
        for i in 0..k {
            if distance[i * k + i] != 0 {
                return Err(Error::format(path, format!("distance[{i}][{i}] is not 0")));
            }
            for j in 0..i {
                if distance[i * k + j] != distance[j * k + i] {
                    return Err(Error::format(
                        path,
                        format!("distance is not symmetric at [{i}][{j}]"),
                    ));
                }
            }
        }
        Ok(Hierarchy {
            sigma: raw.sigma,
            classes: raw.classes,
            distance,
        })
    }
}
