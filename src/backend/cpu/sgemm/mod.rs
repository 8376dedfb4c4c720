//! Our f32 GEMM: packed panels, cache blocking and one register-tile micro-kernel per ISA
//! (AVX-512 -> AVX2+FMA -> portable), chosen at run time (issue 12).
//!
//! C[m, n] = A[m, k] B[k, n] + beta C, all three strided. The k dimension is cut into blocks of
//! `KC`, which every C element sums in the same order whatever thread computes it; m and n are
//! cut into tasks of a share of the rows by at most NC columns that rayon runs in parallel, each
//! walking its rows in blocks of at most MC and packing its own A and B blocks (each B k-block
//! once for all its row blocks) into per-thread buffers that live as long as the thread (no
//! allocation in steady state).
//! Results therefore do not depend on the thread count. `ADVLENS_CPU_ISA=avx512|avx2|portable`
//! forces a path (an ISA the CPU lacks falls back to the best one it has, said once on stderr).

mod dot;
mod kernels;

pub use dot::{dot_nt_acc, dot_nt_acc_rows};

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use kernels::TileOut;

use super::{for_each_chunk, written};

/// k-block: the depth of one packed panel pass. Each C element's sum is split at multiples of
/// it, so it is part of the summation order. 128 on AVX2 (to keep the 24-wide B panel in L1)
/// measured no faster on resnet18's layers, and with its new rounding one eval-mode
/// finite-difference check of tests/nn.rs (a random small-vgg16 pixel, h = 0.25) missed its
/// tolerance: 256 everywhere.
const KC: usize = 256;
/// Most rows of C per block (a multiple of every MR); `row_block` evens them out.
const MC: usize = 96;
/// Columns of C per block (a multiple of the path's NR): 512 on AVX-512 and the portable
/// path, 480 on AVX2 (NR = 24).
const NC: usize = 512;
const NC_AVX2: usize = 480;
/// Blocks of at most this many rows of C read a plain matrix's B panels in place.
const IN_PLACE_MAX_ROWS: usize = 32;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PAR_MIN_FMAS: usize = 1 << 20;

/// The instruction sets with a micro-kernel, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The path's in-place B kernel, if it has one (AVX2: for small channel counts, packing the
    /// im2col panels cost 20% of a small-alexnet w8 I-FGS step, more than half the kernel's own
    /// time, since each packed value fed only m = 8-32 FMAs).
    fn rows_kernel(self) -> Option<RowsKernelFn> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(kernels::avx2::kernel_rows),
            _ => None,
        }
    }

    /// Columns of the path's register tile.
    pub fn nr(self) -> usize {
        self.spec().1
    }

    /// (MR, NR, kernel) of the path; only called for a supported ISA.
    fn spec(self) -> (usize, usize, KernelFn) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (
                kernels::avx512::MR,
                kernels::avx512::NR,
                kernels::avx512::kernel,
            ),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (kernels::avx2::MR, kernels::avx2::NR, kernels::avx2::kernel),
            _ => (
                kernels::portable::MR,
                kernels::portable::NR,
                kernels::portable::kernel,
            ),
        }
    }
}

type KernelFn = unsafe fn(usize, *const f32, *const f32, TileOut);
/// A micro-kernel that reads B in place: step p of the panel is the NR floats at
/// `b + offs[p]` (`kernels::avx2::kernel_rows`).
type RowsKernelFn = unsafe fn(usize, *const f32, *const f32, *const usize, TileOut);

/// The ISAs this machine supports, best first (tests run each of them).
pub fn supported_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.supported()).collect()
}

/// The path every GEMM of this process uses: `ADVLENS_CPU_ISA` if set and supported, else the
/// best the CPU has.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = supported_isas().first().copied().unwrap_or(Isa::Portable);
        let Ok(want) = std::env::var("ADVLENS_CPU_ISA") else {
            return best;
        };
        match Isa::parse(&want) {
            Some(i) if i.supported() => i,
            Some(i) => {
                eprintln!(
                    "advlens: ADVLENS_CPU_ISA={} is not supported by this CPU; using {}",
                    i.name(),
                    best.name()
                );
                best
            }
            None => {
                eprintln!(
                    "advlens: ADVLENS_CPU_ISA={want:?} is not one of avx512, avx2, portable; \
                     using {}",
                    best.name()
                );
                best
            }
        }
    })
}

/// A matrix operand: element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// C's base pointer, shared by the block tasks, which write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: every task writes a disjoint set of C elements (its own rows x columns tile), and the
// borrow of C outlives the parallel loop that uses the pointer.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

thread_local! {
    /// Packed A block, packed B block and B's row offsets (in-place panels) of the task running
    /// on this thread.
    static PACK: RefCell<(Vec<f32>, Vec<f32>, Vec<usize>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// The row-major k-block `PackedA::from_blocks` interleaves into panels.
    static BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's grow-only scratch `slot`, taken out for the duration: a task that
/// rayon runs on the same thread while `f` waits (work stealing) finds the slot empty and
/// grows its own, so a buffer is never borrowed twice.
pub(super) fn with_scratch<T: Default, R>(
    slot: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut buf = slot.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let r = f(&mut buf);
    slot.with(|s| *s.borrow_mut() = buf);
    r
}

/// C = A B + beta C on `isa`, for m, n, k > 0. Panics if the CPU lacks `isa` or `c` does not
/// span the `m x n` extent at (`rs_c`, `cs_c`) (A and B are read with checked indexing).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_on(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    a: ASrc,
    b: &impl PackB,
    beta: f32,
    c: &mut [f32],
    rs_c: usize,
    cs_c: usize,
) {
    assert!(
        isa.supported(),
        "sgemm: {} is not supported here",
        isa.name()
    );
    assert!(
        m > 0 && n > 0 && (m - 1) * rs_c + (n - 1) * cs_c < c.len(),
        "sgemm: c too small"
    );
    if let ASrc::Packed(pk) = a {
        assert!(
            pk.isa == isa && pk.m == m && pk.k == k,
            "sgemm: A was packed for another product"
        );
    }
    let spec = isa.spec();
    let fmas = m.saturating_mul(n).saturating_mul(k);
    let threads = rayon::current_num_threads();
    let parallel = runs_parallel(fmas);
    let ncb = block_cols(isa, m, n, parallel, threads);
    let cp = CPtr(c.as_mut_ptr());
    let rows = task_rows(m, spec.0, parallel, threads);
    let (mt, nb) = (m.div_ceil(rows), n.div_ceil(ncb));
    let task = |t: usize| {
        let (it, jb) = (t / nb, t % nb);
        let (i0, j0) = (it * rows, jb * ncb);
        with_scratch(&PACK, |(pa, pb, offs)| {
            block_task(
                (spec, isa.rows_kernel()),
                (i0, rows.min(m - i0)),
                (j0, ncb.min(n - j0)),
                k,
                a,
                b,
                beta,
                (cp, rs_c, cs_c),
                (pa, pb, offs),
            );
        });
    };
    if mt * nb == 1 || !parallel {
        (0..mt * nb).for_each(task);
    } else {
        (0..mt * nb).into_par_iter().for_each(task);
    }
}

/// Whether a product of this many multiply-adds runs on more than one thread (callers match
/// the parallelism of their own stages to it).
pub fn runs_parallel(fmas: usize) -> bool {
    fmas >= PAR_MIN_FMAS && rayon::current_num_threads() > 1
}

/// Rows of C per task: all of them, or in a product worth running in parallel with more than
/// one MC-row block, an equal share for each thread (in whole MR-row panels). A task packs each
/// B k-block once for all its row blocks: one task per MC x NC block packed B six times over
/// on resnet18 layer4's 512-row products, and its 5 x 96 + 32 rows left one of two threads
/// idle for a fifth of a one-product conv. Which rows share a task changes no sum.
fn task_rows(m: usize, mr: usize, parallel: bool, threads: usize) -> usize {
    let groups = if parallel {
        threads.min(m.div_ceil(MC))
    } else {
        1
    };
    m.div_ceil(groups.max(1)).div_ceil(mr) * mr
}

/// Rows of C per block within a task's `m` rows: as many blocks as MC-row blocks would make, of
/// (nearly) equal height in whole MR-row panels.
fn row_block(m: usize, mr: usize) -> usize {
    m.div_ceil(m.div_ceil(MC)).div_ceil(mr) * mr
}

/// Columns of C per block: NC (NC_AVX2), or fewer, in whole `nr`-wide panels, when a product
/// worth running in parallel has fewer blocks than threads. ResNet-18's 2x2 planes at batch 64
/// are one 64 x 384 product per conv (all images on one grid), which ran on one thread. Each
/// element's sum runs over the same k-blocks in the same order however the columns are cut, so
/// the cut changes no bit.
fn block_cols(isa: Isa, m: usize, n: usize, parallel: bool, threads: usize) -> usize {
    let ncb = if isa == Isa::Avx2 { NC_AVX2 } else { NC };
    let blocks = m.div_ceil(MC) * n.div_ceil(ncb);
    if !parallel || threads <= 1 || blocks >= threads {
        return ncb;
    }
    let nr = isa.nr();
    let want = threads.div_ceil(m.div_ceil(MC));
    n.div_ceil(want).div_ceil(nr).max(1) * nr
}

/// One task: rows i0..i0 + rows of C (in `row_block`-high blocks) by columns j0..j0 + nc, over
/// all of k. Each k-block of B is packed at most once for all the task's row blocks.
#[allow(clippy::too_many_arguments)]
fn block_task(
    kern: ((usize, usize, KernelFn), Option<RowsKernelFn>),
    (i0, rows): (usize, usize),
    cols: (usize, usize),
    k: usize,
    a: ASrc,
    b: &impl PackB,
    beta: f32,
    out: (CPtr, usize, usize),
    (pa, pb, offs): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<usize>),
) {
    let mcb = row_block(rows, kern.0 .0);
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let beta = if p0 == 0 { beta } else { 1.0 };
        // Whether `pb` holds this k-block's B block, packed by an earlier row block.
        let mut packed = false;
        for s0 in (i0..i0 + rows).step_by(mcb) {
            let blk = Block {
                rows: (s0, mcb.min(i0 + rows - s0)),
                cols,
                ks: (p0, kc),
                beta,
            };
            block_step(kern, blk, a, b, out, (pa, pb, offs), &mut packed);
        }
    }
}

/// One MC x NC block of C and one k-block: rows (i0, mc), columns (j0, nc), k-steps (p0, kc),
/// and the beta its tiles store with.
#[derive(Clone, Copy)]
struct Block {
    rows: (usize, usize),
    cols: (usize, usize),
    ks: (usize, usize),
    beta: f32,
}

/// C[block] = A[rows, ks] B[ks, cols] + beta C[block]. B's k-block is packed into `pb` unless
/// `packed` says it already is, or the block reads it in place.
fn block_step(
    ((mr, nr, kernel), rows_kernel): ((usize, usize, KernelFn), Option<RowsKernelFn>),
    blk: Block,
    a: ASrc,
    b: &impl PackB,
    (cp, rs_c, cs_c): (CPtr, usize, usize),
    (pa, pb, offs): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<usize>),
    packed: &mut bool,
) {
    let Block {
        rows: (i0, mc),
        cols: (j0, nc),
        ks: (p0, kc),
        beta,
    } = blk;
    let (mp, np) = (mc.div_ceil(mr), nc.div_ceil(nr));
    let in_place = rows_kernel
        .filter(|_| b.in_place_pays(mc))
        .and_then(|rk| b.rows().map(|data| (rk, data)));
    // The 1 or 2 rows of a part-filled last A panel over in-place panels: the AVX2 wide kernel.
    #[cfg(target_arch = "x86_64")]
    let wide: Option<RowsKernelFn> = in_place
        .filter(|_| nr == kernels::avx2::NR && cs_c == 1 && matches!(mc % mr, 1 | 2))
        .map(|_| kernels::avx2::kernel_rows_wide as RowsKernelFn);
    #[cfg(not(target_arch = "x86_64"))]
    let wide: Option<RowsKernelFn> = None;
    let pa: &[f32] = match a {
        ASrc::Mat(a) => {
            pack_a(a, i0, mc, p0, kc, mr, pa);
            pa
        }
        ASrc::Packed(pk) => &pk.data[pk.offset(p0, kc, i0)..][..mp * kc * mr],
    };
    // Past this many floats from a row start, an in-place panel would read beyond `data`.
    let mut reach = usize::MAX;
    if let Some((_, data)) = in_place {
        b.row_offsets(p0, kc, offs);
        let last = offs.iter().copied().max().unwrap_or(0);
        reach = data.len().saturating_sub(last);
    } else if !*packed {
        pack_b(b, p0, kc, j0, nc, nr, pb);
        *packed = true;
    }
    let tile = |ip: usize, tj: usize, w: usize| {
        let ti = i0 + ip * mr;
        let o = TileOut {
            c: cp.0.wrapping_add(ti * rs_c + tj * cs_c),
            rs: rs_c,
            cs: cs_c,
            mr: mr.min(i0 + mc - ti),
            nr: w,
            beta,
        };
        (&pa[ip * kc * mr..(ip + 1) * kc * mr], o)
    };
    // Full-width panels that lie inside `data`: a prefix of the block's panels.
    let in_place_at = |tj: usize| nr.min(j0 + nc - tj) == nr && tj + nr <= reach;
    for jp in 0..np {
        let tj = j0 + jp * nr;
        let w = nr.min(j0 + nc - tj);
        let src = match in_place {
            // A short last panel too, where its full width lies inside `data`: the columns
            // past w are computed from whatever follows and never stored (packing it alone
            // cost as much as its FMAs when A has 1-4 rows).
            Some((rk, data)) if tj + nr <= reach => BPanel::InPlace(rk, data, tj),
            Some(_) => {
                // A panel whose full width would read past `data`: packed alone
                // (zero-padded past the edge), over the start of any packed B block.
                pack_b(b, p0, kc, tj, w, nr, pb);
                *packed = false;
                BPanel::Packed(&pb[..kc * nr])
            }
            None => BPanel::Packed(&pb[jp * kc * nr..(jp + 1) * kc * nr]),
        };
        // The part-filled last A panel of full in-place panels runs wide, after this loop.
        let skip = wide.is_some() && in_place_at(tj);
        for ip in 0..mp - usize::from(skip) {
            let (ap, o) = tile(ip, tj, w);
            match src {
                // SAFETY: `ap` holds kc*MR packed values; offs[p] + tj + NR <= data.len()
                // for every p < kc (`reach`), so each step's NR floats lie in `data`; the
                // tile (ti.., tj..) of o.mr x o.nr lies inside C's m x n extent, which the
                // caller proved `c` spans, and no other task writes it. The kernel is the
                // in-place twin of `isa`'s, which the caller checked is supported.
                BPanel::InPlace(rk, data, tj) => unsafe {
                    rk(kc, ap.as_ptr(), data.as_ptr().add(tj), offs.as_ptr(), o)
                },
                // SAFETY: `ap` and `bp` hold exactly kc*MR and kc*NR packed values; the
                // tile is C's and this task's alone, as above.
                BPanel::Packed(bp) => unsafe { kernel(kc, ap.as_ptr(), bp.as_ptr(), o) },
            }
        }
    }
    if let (Some(wk), Some((rk, data))) = (wide, in_place) {
        let n_in = (0..np).take_while(|&jp| in_place_at(j0 + jp * nr)).count();
        wide_tail(
            (wk, rk),
            data,
            offs,
            kc,
            (j0, nr, n_in),
            (mp - 1, mc % mr),
            &tile,
        );
    }
}

/// The part-filled last A panel (`tail` = 1 or 2 rows, panel `ip`) over the block's first
/// `n_in` panels, all full-width and in place: `WIDE_COLS[tail]` columns per call of `wide`,
/// and the panels left over one by one with the row kernel `rk`. `tile(ip, tj, w)` gives the
/// packed A panel and the output tile at column tj, w wide.
fn wide_tail<'a>(
    (wide, rk): (RowsKernelFn, RowsKernelFn),
    data: &[f32],
    offs: &[usize],
    kc: usize,
    (j0, nr, n_in): (usize, usize, usize),
    (ip, tail): (usize, usize),
    tile: &dyn Fn(usize, usize, usize) -> (&'a [f32], TileOut),
) {
    let g = kernels::WIDE_COLS[tail] / nr;
    let mut jp = 0;
    while jp < n_in {
        let tj = j0 + jp * nr;
        let run = if jp + g <= n_in { g } else { 1 };
        let (ap, o) = tile(ip, tj, run * nr);
        // SAFETY: as for `block_step`'s in-place tiles, over `run` panels that are each in
        // place (jp + run <= n_in), so every step's run * NR floats lie in `data`; with run == g
        // the tile is tail x WIDE_COLS[tail] with cs == 1, as `block_step` chose `wide` for.
        unsafe {
            let b = data.as_ptr().add(tj);
            if run == g {
                wide(kc, ap.as_ptr(), b, offs.as_ptr(), o)
            } else {
                rk(kc, ap.as_ptr(), b, offs.as_ptr(), o)
            }
        }
        jp += run;
    }
}

/// Where a micro-tile's B panel comes from: read in place from the operand's rows (by the
/// row kernel, at column tj), or packed.
#[derive(Clone, Copy)]
enum BPanel<'a> {
    InPlace(RowsKernelFn, &'a [f32], usize),
    Packed(&'a [f32]),
}

/// The A operand of a product: a matrix packed block by block as the tasks need it, or packed
/// once (`PackedA`) for many products with the same A (a conv's weights, image after image).
#[derive(Clone, Copy)]
pub enum ASrc<'a> {
    Mat(Mat<'a>),
    Packed(&'a PackedA),
}

/// All of A[m, k] in the panel layout of `isa`: k-block after k-block, each holding every MR-row
/// panel of that block (so the block of any MC rows is one contiguous run).
pub struct PackedA {
    isa: Isa,
    m: usize,
    k: usize,
    data: Vec<f32>,
}

/// Below this many elements a `PackedA` is packed on the calling thread.
const PAR_MIN_PACK: usize = 1 << 16;

impl PackedA {
    pub fn new(isa: Isa, m: usize, k: usize, a: Mat) -> PackedA {
        PackedA::from_blocks(isa, m, k, |p0, kc, out| {
            for (i, o) in out.chunks_exact_mut(kc).enumerate() {
                let row = &a.data[i * a.rs + p0 * a.cs..];
                if a.cs == 1 {
                    o.copy_from_slice(&row[..kc]);
                } else {
                    for (p, e) in o.iter_mut().enumerate() {
                        *e = row[p * a.cs];
                    }
                }
            }
        })
    }

    /// Pack A[m, k] k-block by k-block, in parallel: `block(p0, kc, out)` writes the block's
    /// columns row-major, out[i * kc + j] = A[i, p0 + j], into a per-thread buffer, from which
    /// it is interleaved into the block's panels. The caller reads its source in whatever order
    /// suits it: the flipped weights of the transposed conv, gathered element by element in
    /// panel order, took 23% of resnet18 layer4's backward-data (28 strided streams from memory).
    pub fn from_blocks(
        isa: Isa,
        m: usize,
        k: usize,
        block: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> PackedA {
        let mr = isa.spec().0;
        let rows = m.div_ceil(mr) * mr;
        let pack = |bi: usize, dst: &mut [MaybeUninit<f32>]| {
            let (p0, kc) = (bi * KC, KC.min(k - bi * KC));
            with_scratch(&BLOCK, |buf: &mut Vec<f32>| {
                if buf.len() < m * kc {
                    buf.resize(m * kc, 0.0);
                }
                block(p0, kc, &mut buf[..m * kc]);
                interleave(&buf[..m * kc], m, kc, mr, dst);
            })
        };
        let len = rows * k;
        let data = written(len, |d| {
            // Block bi starts at bi * KC * rows (`offset`); only the last one is shorter.
            for_each_chunk(d, rows * KC, len >= PAR_MIN_PACK, |(bi, c)| pack(bi, c));
        });
        PackedA { isa, m, k, data }
    }

    /// Start of the panels of rows i0.. (a multiple of MR) in k-block p0 (of depth kc).
    fn offset(&self, p0: usize, kc: usize, i0: usize) -> usize {
        let mr = self.isa.spec().0;
        p0 * self.m.div_ceil(mr) * mr + (i0 / mr) * kc * mr
    }
}

/// dst = the MR-row panels of src[m, kc] (row-major), zero rows past m: every element of dst
/// (whose length is m rounded up to MR, times kc) is written.
fn interleave(src: &[f32], m: usize, kc: usize, mr: usize, dst: &mut [MaybeUninit<f32>]) {
    for (ip, panel) in dst.chunks_exact_mut(kc * mr).enumerate() {
        let (i0, live) = (ip * mr, mr.min(m - ip * mr));
        match (mr, live) {
            (4, 4) => interleave_full::<4>(&src[i0 * kc..][..4 * kc], kc, panel),
            (12, 12) => interleave_full::<12>(&src[i0 * kc..][..12 * kc], kc, panel),
            _ => {
                for (p, g) in panel.chunks_exact_mut(mr).enumerate() {
                    for (i, e) in g.iter_mut().enumerate() {
                        e.write(if i < live {
                            src[(i0 + i) * kc + p]
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
    }
}

/// One full panel: panel[p * MR + i] = rows[i * kc + p]. Fixed-size groups so that the
/// compiler drops the bounds checks and the row test of `interleave`'s general case (that
/// loop cost 8% of resnet18 layer4's conv forward).
#[inline]
fn interleave_full<const MR: usize>(rows: &[f32], kc: usize, panel: &mut [MaybeUninit<f32>]) {
    let rows: [&[f32]; MR] = std::array::from_fn(|i| &rows[i * kc..][..kc]);
    for (p, g) in panel.chunks_exact_mut(MR).enumerate() {
        let g: &mut [MaybeUninit<f32>; MR] = g.try_into().expect("a panel step holds MR values");
        for (e, r) in g.iter_mut().zip(&rows) {
            e.write(r[p]);
        }
    }
}

/// Pack rows i0..i0+mc, k-steps p0..p0+kc of A into MR-row panels (zero rows past the edge).
/// The buffer is only grown, never cleared: every element of the packed extent is written.
fn pack_a(a: Mat, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut Vec<f32>) {
    let panels = mc.div_ceil(mr);
    if dst.len() < panels * kc * mr {
        dst.resize(panels * kc * mr, 0.0);
    }
    for ip in 0..panels {
        let panel = &mut dst[ip * kc * mr..(ip + 1) * kc * mr];
        let rows = mr.min(mc - ip * mr);
        let base = (i0 + ip * mr) * a.rs + p0 * a.cs;
        for (p, g) in panel.chunks_exact_mut(mr).enumerate() {
            let src = base + p * a.cs;
            for (i, e) in g[..rows].iter_mut().enumerate() {
                *e = a.data[src + i * a.rs];
            }
            g[rows..].fill(0.0);
        }
    }
}

/// Pack k-steps p0..p0+kc, columns j0..j0+nc of B into NR-column panels. The buffer is only
/// grown, never cleared: `PackB` writes every element of the packed extent.
fn pack_b(
    b: &impl PackB,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    nr: usize,
    dst: &mut Vec<f32>,
) {
    let panels = nc.div_ceil(nr);
    if dst.len() < panels * kc * nr {
        dst.resize(panels * kc * nr, 0.0);
    }
    for jp in 0..panels {
        let panel = &mut dst[jp * kc * nr..(jp + 1) * kc * nr];
        let (j, w) = (j0 + jp * nr, nr.min(nc - jp * nr));
        b.pack_panel(p0, j, w, nr, panel);
    }
}

/// dst[..src.len()] = src, zeros after. Full panel rows of 16 or 32 floats are copied by
/// `copy_fixed`, a few vector moves: a `memcpy` call per panel row (plus a `memset` call for an
/// empty tail) cost more than the copy itself.
#[inline]
pub fn copy_row(dst: &mut [f32], src: &[f32]) {
    let w = src.len();
    match (dst.len(), w) {
        (32, 32) => copy_fixed::<32>(dst, src),
        (24, 24) => copy_fixed::<24>(dst, src),
        (16, 16) => copy_fixed::<16>(dst, src),
        _ => {
            dst[..w].copy_from_slice(src);
            dst[w..].fill(0.0);
        }
    }
}

/// dst[..N] = src[..N] for N in {4, 8, 16, 24, 32}, as straight-line SSE moves (SSE is part
/// of the x86-64 baseline). Neither fixed-size array copies nor a loop of vector moves are
/// enough: LLVM turns the loop into a `memcpy` and merges the fixed-size arms of `copy_row` and
/// its general arm into one `memcpy` call of variable size, and that call was 16-18% of an
/// I-FGS step (small-alexnet w8, Zen 3). Loads come before stores in blocks of 16, 8 or 4
/// values, so there is no load/store loop to recognise. Panics if either slice is shorter
/// than N.
#[inline(always)]
pub fn copy_fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let (dst, src) = (&mut dst[..N], &src[..N]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_storeu_ps};
        const { assert!(matches!(N, 4 | 8 | 16 | 24 | 32)) };
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        // SAFETY: every offset below is < N, and both slices hold N values (cut above).
        unsafe {
            let mut at = 0;
            while at + 16 <= N {
                let v0 = _mm_loadu_ps(s.add(at));
                let v1 = _mm_loadu_ps(s.add(at + 4));
                let v2 = _mm_loadu_ps(s.add(at + 8));
                let v3 = _mm_loadu_ps(s.add(at + 12));
                _mm_storeu_ps(d.add(at), v0);
                _mm_storeu_ps(d.add(at + 4), v1);
                _mm_storeu_ps(d.add(at + 8), v2);
                _mm_storeu_ps(d.add(at + 12), v3);
                at += 16;
            }
            if N - at == 8 {
                let v0 = _mm_loadu_ps(s.add(at));
                let v1 = _mm_loadu_ps(s.add(at + 4));
                _mm_storeu_ps(d.add(at), v0);
                _mm_storeu_ps(d.add(at + 4), v1);
            } else if N - at == 4 {
                _mm_storeu_ps(d.add(at), _mm_loadu_ps(s.add(at)));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// A source of B panels: a plain matrix, or a matrix that is never materialised (the im2col
/// of an image, packed straight from the image by `conv`).
pub trait PackB: Sync {
    /// Write B[p0 + p, j0 + jj] to `dst[p * nr + jj]` for p < dst.len() / nr and jj < w, and
    /// zero for w <= jj < nr.
    fn pack_panel(&self, p0: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]);

    /// When each row of B is a contiguous run of one slice, B[p, j] = data[row_offset(p) + j]:
    /// that slice. A path with an in-place kernel then reads full-width panels straight from
    /// it instead of packing them (same values, same FMA order, so the same bits).
    fn rows(&self) -> Option<&[f32]> {
        None
    }

    /// Whether reading the panels in place beats packing them for a block of `mc` rows of C.
    fn in_place_pays(&self, _mc: usize) -> bool {
        true
    }

    /// Start of row p in `rows()` (only called when `rows()` is Some).
    fn row_offset(&self, _p: usize) -> usize {
        0
    }

    /// out = the starts of rows p0..p0 + kc (an implementation may step through them without
    /// `row_offset`'s divisions).
    fn row_offsets(&self, p0: usize, kc: usize, out: &mut Vec<usize>) {
        out.clear();
        out.extend((p0..p0 + kc).map(|p| self.row_offset(p)));
    }
}

impl PackB for Mat<'_> {
    fn rows(&self) -> Option<&[f32]> {
        (self.cs == 1).then_some(self.data)
    }

    /// A panel read in place from kc distinct rows spans two cache lines per row (32 KiB at
    /// kc = 256, all of L1), where a packed one takes 24 KiB: 1024^3 ran at 85 GFLOP/s in place
    /// and 115 packed (2 threads, AMD EPYC). Packing costs a copy per B element, which only
    /// short blocks do not earn back (m = 8-32 rows feed each packed value 8-32 FMAs).
    fn in_place_pays(&self, mc: usize) -> bool {
        mc <= IN_PLACE_MAX_ROWS
    }

    fn row_offset(&self, p: usize) -> usize {
        p * self.rs
    }

    fn pack_panel(&self, p0: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]) {
        for (p, g) in dst.chunks_exact_mut(nr).enumerate() {
            let src = (p0 + p) * self.rs + j0 * self.cs;
            if self.cs == 1 {
                copy_row(g, &self.data[src..src + w]);
            } else {
                for (jj, e) in g[..w].iter_mut().enumerate() {
                    *e = self.data[src + jj * self.cs];
                }
                g[w..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests;
