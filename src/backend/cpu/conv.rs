//! Convolution on host slices: im2col + GEMM per image, parallel over images with rayon.
//!
//! Per image n, with col[C*R*R, P*Q] the unfolded input:
//!   forward      y_n[K, PQ]    = w[K, CRR] . col, col packed straight from x_n into the GEMM's
//!                B panels (`Im2col`: no column matrix is written)
//!   backward dw  dw[K, CRR]   += dy_n[K, PQ] . col^T   (per-thread partials, reduced at the end)
//!   backward dx  stride 1: the forward convolution of dy with the flipped, transposed weights
//!                (`transposed`); otherwise dcol[CRR, PQ] = w^T . dy_n, then col2im scatters
//!                dcol into dx_n.
//! Planes under `GROUP_COLS` output pixels run a group of images per product, packed from the
//! group's zero-padded `Grid` (forward, and dw at stride 1) with no column matrix written.
//! Column buffers are per-thread and reused across calls (no allocation in steady state).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use super::{for_each_chunk, written, zeroed_par};
use std::sync::Mutex;

use rayon::prelude::*;

use super::gemm::{sgemm, Strides};
use super::sgemm::{
    copy_fixed, copy_row, dot_nt_acc, dot_nt_acc_rows, isa, runs_parallel, sgemm_on, with_scratch,
    ASrc, Mat, PackB, PackedA,
};

/// What each output value gets as it is written: the bias, then a ReLU (`conv2d_relu`); or, on
/// a backward-data, the gate of the ReLU before the conv (`conv2d_backward_data_relu`: keep dx
/// where the conv's input, the ReLU's output, is > 0). Applied on the same f32 values in the
/// same order as the separate ops, so the bits are theirs; the pass over y and its allocation
/// are saved.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    /// Laid out as the output; this struct's users slice it along with the output.
    pub gate: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    /// The same epilogue for the outputs `at..at + len`.
    fn part(self, at: usize, len: usize) -> Self {
        Epilogue {
            gate: self.gate.map(|g| &g[at..][..len]),
            ..self
        }
    }

    /// d = value, the ReLU and gate applied (the gate laid out as d).
    fn finish(&self, d: &mut [f32]) {
        if self.relu {
            d.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        if let Some(gt) = self.gate {
            d.iter_mut()
                .zip(gt)
                .for_each(|(v, &m)| *v = if m > 0.0 { *v } else { 0.0 });
        }
    }
}

/// Geometry of one convolution, validated by the caller.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub stride: usize,
    pub pad: usize,
    pub p: usize,
    pub q: usize,
}

impl Geom {
    fn chw(&self) -> usize {
        self.c * self.h * self.w
    }
    fn crr(&self) -> usize {
        self.c * self.r * self.r
    }
    fn pq(&self) -> usize {
        self.p * self.q
    }
    /// A 1x1 stride-1 unpadded conv reads the image itself as its column matrix.
    fn direct(&self) -> bool {
        self.r == 1 && self.stride == 1 && self.pad == 0
    }
    /// Output columns oj whose input column `oj*stride + kj - pad` lies in [0, w).
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let (s, pad) = (self.stride, self.pad);
        let lo = if pad > kj { (pad - kj).div_ceil(s) } else { 0 };
        let hi = if self.w + pad > kj {
            ((self.w - 1 + pad - kj) / s + 1).min(self.q)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Output rows narrower than this are unfolded element by element: on ResNet-18's 4x4 and
/// 2x2 planes the per-row copies and fills below are calls of a few elements each, and under
/// `perf` they cost more than the products they feed.
const NARROW_Q: usize = 16;

/// Unfold one image x[C,H,W] into columns off..off+P*Q of col[C*R*R, ld] (zero padding).
fn im2col(g: &Geom, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    if g.q < NARROW_Q {
        return im2col_narrow(g, x, col, ld, off);
    }
    let (pq, q) = (g.pq(), g.q);
    for ci in 0..g.c {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.r {
            for kj in 0..g.r {
                let row = &mut col[((ci * g.r + ki) * g.r + kj) * ld + off..][..pq];
                let (lo, hi) = g.valid_cols(kj);
                for oi in 0..g.p {
                    let dst = &mut row[oi * q..(oi + 1) * q];
                    let ih = (oi * g.stride + ki) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * g.w..(ih as usize + 1) * g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if g.stride == 1 {
                        let s0 = lo + kj - g.pad;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (oj, d) in dst.iter_mut().enumerate().take(hi).skip(lo) {
                            *d = src[oj * g.stride + kj - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// `im2col` one element at a time, with no calls in the loop.
fn im2col_narrow(g: &Geom, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    let (h, w, pad) = (g.h as isize, g.w as isize, g.pad as isize);
    for ci in 0..g.c {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.r {
            for kj in 0..g.r {
                let row = &mut col[((ci * g.r + ki) * g.r + kj) * ld + off..][..g.pq()];
                for (oi, dst) in row.chunks_exact_mut(g.q).enumerate() {
                    let ih = (oi * g.stride + ki) as isize - pad;
                    let inside = ih >= 0 && ih < h;
                    for (oj, d) in dst.iter_mut().enumerate() {
                        let iw = (oj * g.stride + kj) as isize - pad;
                        *d = if inside && iw >= 0 && iw < w {
                            plane[ih as usize * g.w + iw as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Scatter-add columns off..off+P*Q of col[C*R*R, ld] back into dx[C,H,W] (the adjoint of
/// `im2col`); dx must be zeroed.
fn col2im(g: &Geom, col: &[f32], dx: &mut [f32], ld: usize, off: usize) {
    let (pq, q) = (g.pq(), g.q);
    for ci in 0..g.c {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..g.r {
            for kj in 0..g.r {
                let row = &col[((ci * g.r + ki) * g.r + kj) * ld + off..][..pq];
                let (lo, hi) = g.valid_cols(kj);
                for oi in 0..g.p {
                    let ih = (oi * g.stride + ki) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let src = &row[oi * q..(oi + 1) * q];
                    let dst = &mut plane[ih as usize * g.w..(ih as usize + 1) * g.w];
                    for (oj, &v) in src.iter().enumerate().take(hi).skip(lo) {
                        dst[oj * g.stride + kj - g.pad] += v;
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The unfolded image (im2col) or its gradient (dcol) of the task on this thread.
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's column buffer of at least `len` floats (grown, never shrunk).
fn with_col<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buf(&COL, len, f)
}

/// The im2col matrix col[C*R*R, P*Q] of one image as a GEMM B operand, packed straight from
/// the image: row (ci, ki, kj), column (oi, oj) is x[ci, oi*s + ki - pad, oj*s + kj - pad] (0
/// outside). No column matrix is written; each panel row is a few contiguous row copies.
struct Im2col<'a> {
    g: &'a Geom,
    x: &'a [f32],
}

impl PackB for Im2col<'_> {
    fn pack_panel(&self, p0: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]) {
        let g = self.g;
        for (p, grp) in dst.chunks_exact_mut(nr).enumerate() {
            let row = p0 + p;
            let (ci, ki, kj) = (row / (g.r * g.r), (row / g.r) % g.r, row % g.r);
            let plane = &self.x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            let (lo, hi) = g.valid_cols(kj);
            let (mut oi, mut oj, mut jj) = (j0 / g.q, j0 % g.q, 0);
            while jj < w {
                let len = (g.q - oj).min(w - jj);
                let seg = &mut grp[jj..jj + len];
                let ih = (oi * g.stride + ki) as isize - g.pad as isize;
                if ih < 0 || ih >= g.h as isize {
                    seg.fill(0.0);
                } else {
                    let src = &plane[ih as usize * g.w..(ih as usize + 1) * g.w];
                    // Valid output columns of this segment: [a, b) of oj..oj+len.
                    let (a, b) = (lo.clamp(oj, oj + len), hi.clamp(oj, oj + len));
                    seg[..a - oj].fill(0.0);
                    seg[b - oj..].fill(0.0);
                    if a < b {
                        if g.stride == 1 {
                            let s0 = a + kj - g.pad;
                            seg[a - oj..b - oj].copy_from_slice(&src[s0..s0 + (b - a)]);
                        } else {
                            for (o, d) in (a..b).zip(&mut seg[a - oj..b - oj]) {
                                *d = src[o * g.stride + kj - g.pad];
                            }
                        }
                    }
                }
                jj += len;
                oi += 1;
                oj = 0;
            }
            grp[w..].fill(0.0);
        }
    }
}

thread_local! {
    /// The zero-padded image of the stride-1 path.
    static XPAD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// dy spread onto the padded grid (the stride-1 backward-filter).
    static DYPAD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The stride-1 path's output on the padded grid, before the crop.
    static YPAD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Grow-only scratch from `slot`, at least `len` floats.
fn with_buf<R>(
    slot: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    with_scratch(slot, |v: &mut Vec<f32>| {
        if v.len() < len {
            v.resize(len, 0.0);
        }
        f(&mut v[..len])
    })
}

/// The im2col of a stride-1 conv computed on the padded grid: with xp the image zero-padded
/// to Hp x Wp, output pixel j = oi*Wp + oj (oj < Wp, the columns oj >= Q are computed and
/// dropped) reads xp[ci, oi + ki, oj + kj] = xp_flat[ci*Hp*Wp + ki*Wp + kj + j], so every row
/// of B is one contiguous run of xp and a panel row is one copy, with no bounds to test.
struct PaddedIm2col<'a> {
    xp: &'a [f32],
    hp: usize,
    wp: usize,
    r: usize,
}

impl PackB for PaddedIm2col<'_> {
    fn rows(&self) -> Option<&[f32]> {
        Some(self.xp)
    }

    fn row_offset(&self, p: usize) -> usize {
        let rr = self.r * self.r;
        let (ci, ki, kj) = (p / rr, (p / self.r) % self.r, p % self.r);
        (ci * self.hp + ki) * self.wp + kj
    }

    fn row_offsets(&self, p0: usize, kc: usize, out: &mut Vec<usize>) {
        out.clear();
        let (mut kj, mut row) = (p0 % self.r, self.row_offset(p0) - p0 % self.r);
        let mut ki = (p0 / self.r) % self.r;
        for _ in 0..kc {
            out.push(row + kj);
            kj += 1;
            if kj == self.r {
                kj = 0;
                ki += 1;
                // The next kernel row, or the first row of the next channel's plane.
                row += if ki == self.r {
                    ki = 0;
                    self.wp * (self.hp - self.r + 1)
                } else {
                    self.wp
                };
            }
        }
    }

    fn pack_panel(&self, p0: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]) {
        let rr = self.r * self.r;
        let (mut ci, mut ki, mut kj) = (p0 / rr, (p0 / self.r) % self.r, p0 % self.r);
        for grp in dst.chunks_exact_mut(nr) {
            let base = (ci * self.hp + ki) * self.wp + kj + j0;
            copy_row(grp, &self.xp[base..base + w]);
            kj += 1;
            if kj == self.r {
                kj = 0;
                ki += 1;
                if ki == self.r {
                    ki = 0;
                    ci += 1;
                }
            }
        }
    }
}

/// dst = src for the short row copies of small planes (2 to 32 values): two overlapping
/// fixed-size copies, which compile to a few vector moves, instead of a `memcpy` call, which
/// costs more than such a copy (AlexNet w16 training: `memmove` 5% of the step before the 7x7
/// grids, 11% with their 7-value rows filled by calls).
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    let dst = &mut dst[..n];
    match n {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[n - 1] = src[n - 1];
            dst[n / 2] = src[n / 2];
        }
        4..=8 => copy_ends::<4>(dst, src),
        9..=16 => copy_ends::<8>(dst, src),
        17..=32 => copy_ends::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// s = 0 for the pad columns (1 or 2 floats in every small model) without a call: `fill` became a
/// libc memset call per image row, which with the fill around it was 9% of small-vgg16 w8 I-FGS.
#[inline(always)]
fn zero_short(s: &mut [f32]) {
    match s.len() {
        0 => {}
        1 => s[0] = 0.0,
        2 => s.copy_from_slice(&[0.0; 2]),
        3 => s.copy_from_slice(&[0.0; 3]),
        _ => s.fill(0.0),
    }
}

/// dst = src for N <= len <= 2N: the first N and the last N values, as fixed-size copies.
#[inline(always)]
fn copy_ends<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    for at in [0, n - N] {
        copy_fixed::<N>(&mut dst[at..], &src[at..]);
    }
}

/// Copy x[C, H, W] into xp[C, H + 2 pad, W + 2 pad] with zero borders.
fn pad_image(g: &Geom, x: &[f32], xp: &mut [f32]) {
    let (hp, wp, pad) = (g.h + 2 * g.pad, g.w + 2 * g.pad, g.pad);
    for (plane, src) in xp.chunks_exact_mut(hp * wp).zip(x.chunks_exact(g.h * g.w)) {
        plane[..pad * wp].fill(0.0);
        plane[(pad + g.h) * wp..].fill(0.0);
        for (row, s) in plane[pad * wp..(pad + g.h) * wp]
            .chunks_exact_mut(wp)
            .zip(src.chunks_exact(g.w))
        {
            row[..pad].fill(0.0);
            copy_short(&mut row[pad..pad + g.w], s);
            row[pad + g.w..].fill(0.0);
        }
    }
}

/// y_n[K, PQ] = w[K, CRR] . im2col(x_n) (+ b), one image, on the calling thread's GEMM: the
/// convs that do not run on the padded grid (1x1 unpadded, and strides above 1 on large planes).
fn forward_image(g: &Geom, a: &PackedA, xn: &[f32], yn: &mut [f32], ep: Epilogue) {
    let (crr, pq, k) = (g.crr(), g.pq(), g.k);
    let a = ASrc::Packed(a);
    if g.direct() {
        let b = Mat {
            data: xn,
            rs: pq,
            cs: 1,
        };
        sgemm_on(isa(), k, crr, pq, a, &b, 0.0, yn, pq, 1);
    } else {
        let src = Im2col { g, x: xn };
        sgemm_on(isa(), k, crr, pq, a, &src, 0.0, yn, pq, 1);
    }
    if let Some(b) = ep.bias {
        for (row, &bk) in yn.chunks_exact_mut(pq).zip(b) {
            row.iter_mut().for_each(|v| *v += bk);
        }
    }
    ep.finish(yn);
}

/// Whether a stride-1 conv runs on the padded grid (`forward_group`, a group of one image on
/// planes too large to group): its product's rows are cropped into y, which writes every
/// element of y once.
fn padded(g: &Geom) -> bool {
    g.stride == 1 && !g.direct() && g.p > 0 && g.q > 0
}

/// y[N,K,P,Q] = conv(x, w) with the epilogue `ep` (the bias, a ReLU) applied as y is written.
pub fn forward_with(g: &Geom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let crr = g.crr();
    let wa = Mat {
        data: w,
        rs: crr,
        cs: 1,
    };
    forward_packed(g, x, || PackedA::new(isa(), g.k, crr, wa), ep)
}

/// `forward` with the weights packed by `pack` (once for all images, and only if there is work).
fn forward_packed(g: &Geom, x: &[f32], pack: impl FnOnce() -> PackedA, ep: Epilogue) -> Vec<f32> {
    let (chw, crr, pq, k) = (g.chw(), g.crr(), g.pq(), g.k);
    let len = g.n * k * pq;
    if len == 0 || crr == 0 {
        // Zeros, which the ReLU and the gate keep.
        return vec![0.0f32; len];
    }
    let a = pack();
    let gi = if g.stride == 1 && padded(g) {
        grid_group_of(g, isa().nr())
    } else {
        group_of(g)
    };
    let par = few_groups(g, gi);
    if gi > 1 || padded(g) {
        return written(len, |y| {
            y.par_chunks_mut(gi * k * pq)
                .zip(x.par_chunks(gi * chw))
                .enumerate()
                .for_each(|(i, (ys, xs))| {
                    let ep = ep.part(i * gi * k * pq, ys.len());
                    forward_group(g, &a, xs, ys, ep, par)
                })
        });
    }
    let mut y = vec![0.0f32; len];
    y.par_chunks_mut(k * pq)
        .zip(x.par_chunks(chw))
        .enumerate()
        .for_each(|(i, (yn, xn))| forward_image(g, &a, xn, yn, ep.part(i * k * pq, k * pq)));
    y
}

/// GEMM columns worth one product: below this many output pixels per image, images are
/// unfolded side by side into one column matrix so that the product has enough columns.
const GROUP_COLS: usize = 256;

/// Images per GEMM: 1 for planes of at least `GROUP_COLS` pixels, otherwise enough images to
/// reach it (at most the batch). The register tile is 32 columns wide on AVX-512, so a per-image
/// product on ResNet-18's 4x4 and 2x2 planes (16 and 4 columns) left 50% and 87.5% of every
/// tile empty; a group of images fills them. Fixed by the geometry alone, so the result does not
/// depend on the thread count.
fn group_of(g: &Geom) -> usize {
    let most = images_for(g, GROUP_COLS);
    // As many groups as `most` gives, of (nearly) equal size: batch 8 on 7x7 planes ran as
    // 5 + 3 images, one thread idle for the last 2/5 of the work.
    g.n.div_ceil(g.n.div_ceil(most).max(1)).max(1)
}

/// Images per product on a stride-1 `Grid`: of the balanced group sizes from `group_of`'s up to
/// twice it, the one that computes the fewest columns per output pixel. A product computes
/// every grid column of its span, pad columns included, rounded up to whole `nr`-wide tiles:
/// one 14x14 image spans 222 columns (240 computed for 196 pixels), two span 432 (432 for 392),
/// 10% less work. Planes of `GROUP_COLS` pixels or more stay one image per product. The
/// products' values do not depend on the grouping.
fn grid_group_of(g: &Geom, nr: usize) -> usize {
    let least = group_of(g);
    if g.pq() >= GROUP_COLS {
        // Planes this large waste at most a few percent, and a group would double the grid.
        return least;
    }
    let cost = |gi: usize| {
        let span = Grid::new(g, gi).span(g);
        // Computed columns per output pixel, compared as fractions: span' / (gi pq).
        (span.div_ceil(nr) * nr, gi * g.pq())
    };
    let mut best = least;
    for want in least + 1..=(2 * least).min(g.n) {
        let gi = g.n.div_ceil(g.n.div_ceil(want));
        let ((c, u), (cb, ub)) = (cost(gi), cost(best));
        if (c as u128) * (ub as u128) < (cb as u128) * (u as u128) {
            best = gi;
        }
    }
    best
}

/// Images whose output pixels together reach `cols`: 1 for planes of at least `cols` pixels,
/// otherwise enough to reach it, at most the batch.
fn images_for(g: &Geom, cols: usize) -> usize {
    if g.pq() == 0 || g.pq() >= cols {
        1
    } else {
        (cols / g.pq()).clamp(1, g.n.max(1))
    }
}

/// Pixels per backward-filter dot product: below this many output pixels per image, images are
/// grouped for dw (see `filter_run_grouped`). Longer than the forward's `GROUP_COLS` because each
/// dw element pays a lane reduction per group: at 256, small-alexnet w16's dw (batch 128) took
/// 14.0 ms, at 1024 7.0 ms; 2048 and 4096 were within the noise of 1024 (`advlens bench conv
/// --net small-alexnet --width 16 --batch 128`, AMD EPYC, 2 threads). 1024 keeps a group's grid
/// (C x Hp x Wg floats) within a core's L2 for the widths the default run trains.
const FILTER_GROUP_COLS: usize = 1024;

/// Images per backward-filter group: each dw element is a dot product over the group's pixels,
/// whose vector lanes are reduced once per group, so longer groups amortise that reduction.
fn filter_group_of(g: &Geom) -> usize {
    images_for(g, FILTER_GROUP_COLS)
}

/// Unfold the images of `xs` side by side: col[C*R*R, G*P*Q], image i in columns i*PQ...
fn im2col_group(g: &Geom, xs: &[f32], col: &mut [f32]) -> usize {
    let imgs = xs.len() / g.chw();
    let ld = imgs * g.pq();
    for (i, xn) in xs.chunks_exact(g.chw()).enumerate() {
        im2col(g, xn, col, ld, i * g.pq());
    }
    ld
}

/// The images of a group side by side on one zero-padded grid per channel, xp[C, Hp, Wg] with
/// Hp = H + 2 pad and Wg = G (W + pad) + pad: pixel (h, w) of image i lies at row pad + h,
/// column i (W + pad) + pad + w, and neighbours share the pad columns between them. Every window
/// of image i (rows oi*s + ki, columns i (W + pad) + oj*s + kj) lies inside the grid and reads
/// zeros where the conv reads padding, so packing from it needs no bounds tests, and the copy
/// is about 1/(R*R) of the column matrix it replaces.
#[derive(Clone, Copy)]
struct Grid {
    imgs: usize,
    hp: usize,
    wg: usize,
    /// Columns from one image to the next: W + pad.
    step: usize,
}

impl Grid {
    fn new(g: &Geom, imgs: usize) -> Grid {
        let step = g.w + g.pad;
        Grid {
            imgs,
            hp: g.h + 2 * g.pad,
            wg: imgs * step + g.pad,
            step,
        }
    }

    fn len(&self, g: &Geom) -> usize {
        g.c * self.hp * self.wg
    }

    /// Offset of B row (ci, ki, kj): where its pixel (0, 0) of image 0 reads.
    fn row_base(&self, r: usize, row: usize) -> usize {
        let (ci, ki, kj) = (row / (r * r), (row / r) % r, row % r);
        (ci * self.hp + ki) * self.wg + kj
    }

    /// Offset of output row oi of image i from a row base, at stride s.
    fn pixel(&self, s: usize, i: usize, oi: usize) -> usize {
        oi * s * self.wg + i * self.step
    }

    /// Stride 1: B columns j = `pixel(1, i, oi) + oj` read row_base + j, one contiguous run per
    /// B row; this many columns span every output pixel (the others, Wg - G*Q per output row,
    /// are computed and dropped).
    fn span(&self, g: &Geom) -> usize {
        self.pixel(1, self.imgs - 1, g.p - 1) + g.q
    }

    /// Write the padded planes of the images xs[G, C, H, W], the channels in parallel if `par`.
    fn fill(&self, g: &Geom, xs: &[f32], xp: &mut [f32], par: bool) {
        // The small models' widths as constants, so that each image row is a fixed-size copy
        // (as in `crop_group`: Grid::fill was 6% of a small-resnet18 fine-tune under `perf`).
        match g.w {
            2 => self.fill_rows::<2>(g, xs, xp, par),
            4 => self.fill_rows::<4>(g, xs, xp, par),
            7 => self.fill_rows::<7>(g, xs, xp, par),
            14 => self.fill_rows::<14>(g, xs, xp, par),
            28 => self.fill_rows::<28>(g, xs, xp, par),
            _ => self.fill_rows::<0>(g, xs, xp, par),
        }
    }

    /// `fill` for image rows of W values (W = 0: g.w, not known at compile time).
    #[inline(always)]
    fn fill_rows<const W: usize>(&self, g: &Geom, xs: &[f32], xp: &mut [f32], par: bool) {
        let w = if W == 0 { g.w } else { W };
        let (hw, pad, wg) = (g.h * w, g.pad, self.wg);
        let plane_of = |(ci, plane): (usize, &mut [f32])| {
            plane[..pad * wg].fill(0.0);
            plane[(pad + g.h) * wg..].fill(0.0);
            let body = &mut plane[pad * wg..(pad + g.h) * wg];
            for (h, row) in body.chunks_exact_mut(wg).enumerate() {
                for (i, seg) in row.chunks_exact_mut(self.step).enumerate() {
                    zero_short(&mut seg[..pad]);
                    let src = &xs[i * g.chw() + ci * hw + h * w..][..w];
                    if W == 0 {
                        copy_short(&mut seg[pad..], src);
                    } else {
                        seg[pad..pad + W].copy_from_slice(&src[..W]);
                    }
                }
                zero_short(&mut row[self.imgs * self.step..]);
            }
        };
        for_each_chunk(xp, self.hp * wg, par, plane_of);
    }
}

/// The grouped im2col as a B operand gathered from a `Grid`: column j (image i, pixel oi, oj)
/// of row (ci, ki, kj) is xp[row_base + offs[j]], offs[j] = pixel(s, i, oi) + oj*s. For
/// strides other than 1, whose B rows are not contiguous runs of the grid.
struct GridGather<'a> {
    xp: &'a [f32],
    offs: &'a [usize],
    grid: Grid,
    r: usize,
}

impl PackB for GridGather<'_> {
    fn pack_panel(&self, p0: usize, j0: usize, w: usize, nr: usize, dst: &mut [f32]) {
        let offs = &self.offs[j0..j0 + w];
        for (p, grp) in dst.chunks_exact_mut(nr).enumerate() {
            let src = &self.xp[self.grid.row_base(self.r, p0 + p)..];
            for (d, &o) in grp.iter_mut().zip(offs) {
                *d = src[o];
            }
            grp[w..].fill(0.0);
        }
    }
}

thread_local! {
    /// The column offsets of `GridGather`.
    static OFFS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// y_i[K, PQ] = w . im2col(x_i) (+ b) for a group of images, as one product whose B panels are
/// packed from the group's `Grid` (no column matrix is written), then split back into the
/// images' output planes.
/// `par`: the group's fill and crop run in parallel (`few_groups`); its product runs in
/// parallel whenever it is large enough.
fn forward_group(
    g: &Geom,
    a: &PackedA,
    xs: &[f32],
    ys: &mut [MaybeUninit<f32>],
    ep: Epilogue,
    par: bool,
) {
    let (crr, pq, k) = (g.crr(), g.pq(), g.k);
    let grid = Grid::new(g, xs.len() / g.chw());
    let a = ASrc::Packed(a);
    with_buf(&XPAD, grid.len(g), |xp| {
        grid.fill(g, xs, xp, par);
        if g.stride == 1 {
            let ld = grid.span(g);
            let src = PaddedIm2col {
                xp,
                hp: grid.hp,
                wp: grid.wg,
                r: g.r,
            };
            with_buf(&YPAD, k * ld, |yp| {
                sgemm_on(isa(), k, crr, ld, a, &src, 0.0, yp, ld, 1);
                crop_group(g, yp, ld, |i, oi| grid.pixel(1, i, oi), ys, ep, par);
            })
        } else {
            let ld = grid.imgs * pq;
            with_scratch(&OFFS, |offs: &mut Vec<usize>| {
                offs.clear();
                for (i, oi, oj) in pixels(g, grid.imgs) {
                    offs.push(grid.pixel(g.stride, i, oi) + oj * g.stride);
                }
                let src = GridGather {
                    xp,
                    offs,
                    grid,
                    r: g.r,
                };
                with_buf(&YPAD, k * ld, |yp| {
                    sgemm_on(isa(), k, crr, ld, a, &src, 0.0, yp, ld, 1);
                    crop_group(g, yp, ld, |i, oi| i * pq + oi * g.q, ys, ep, par);
                })
            })
        }
    })
}

/// The output pixels (image, row, column) of a group of `imgs` images, in order.
fn pixels(g: &Geom, imgs: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..imgs).flat_map(move |i| (0..g.p).flat_map(move |oi| (0..g.q).map(move |oj| (i, oi, oj))))
}

/// ys[i, k, oi, ..Q] = yp[k, col(i, oi)..][..Q] + b[k], then the epilogue's ReLU or gate: the
/// group's product, whose output row oi of image i starts at column col(i, oi), split into the
/// images' output planes.
fn crop_group(
    g: &Geom,
    yp: &[f32],
    ld: usize,
    col: impl Fn(usize, usize) -> usize + Sync,
    ys: &mut [MaybeUninit<f32>],
    ep: Epilogue,
    par: bool,
) {
    // The small models' row lengths as constants, so that a row's copy is unrolled: rows of 2
    // and 4 spent more in the loop around the copy than in the copy (under `perf`, the crop was
    // 7.5% of a small-resnet18 fine-tune).
    match g.q {
        2 => crop_rows::<2>(g, yp, ld, col, ys, ep, par),
        4 => crop_rows::<4>(g, yp, ld, col, ys, ep, par),
        7 => crop_rows::<7>(g, yp, ld, col, ys, ep, par),
        14 => crop_rows::<14>(g, yp, ld, col, ys, ep, par),
        28 => crop_rows::<28>(g, yp, ld, col, ys, ep, par),
        _ => crop_rows::<0>(g, yp, ld, col, ys, ep, par),
    }
}

/// `crop_group` for rows of Q values (Q = 0: g.q, not known at compile time).
#[inline(always)]
fn crop_rows<const Q: usize>(
    g: &Geom,
    yp: &[f32],
    ld: usize,
    col: impl Fn(usize, usize) -> usize + Sync,
    ys: &mut [MaybeUninit<f32>],
    ep: Epilogue,
    par: bool,
) {
    let q = if Q == 0 { g.q } else { Q };
    let image = |(i, yn): (usize, &mut [MaybeUninit<f32>])| {
        for (ki, plane) in yn.chunks_exact_mut(g.pq()).enumerate() {
            let bk = ep.bias.map_or(0.0, |b| b[ki]);
            let at = (i * g.k + ki) * g.pq();
            for (oi, d) in plane.chunks_exact_mut(q).enumerate() {
                let s = &yp[ki * ld + col(i, oi)..][..q];
                match (ep.relu, ep.gate) {
                    (false, None) => d.iter_mut().zip(s).for_each(|(d, &s)| {
                        d.write(s + bk);
                    }),
                    (true, None) => d.iter_mut().zip(s).for_each(|(d, &s)| {
                        d.write((s + bk).max(0.0));
                    }),
                    _ => {
                        // SAFETY: MaybeUninit<f32> has f32's layout; every element is written
                        // just below before `finish` reads it.
                        let d = unsafe { &mut *(d as *mut [MaybeUninit<f32>] as *mut [f32]) };
                        d.iter_mut().zip(s).for_each(|(d, &s)| *d = s + bk);
                        ep.part(at + oi * q, q).finish(d);
                    }
                }
            }
        }
    };
    for_each_chunk(ys, g.k * g.pq(), par, image);
}

/// Whether the conv's groups of `gi` images are fewer than the threads and each group's product
/// runs in parallel: the group's own copies (fill, crop, col2im) then run in parallel too. On
/// small-resnet18's 2x2 planes at batch 64 the whole batch is one group, and its serial copies
/// left the other thread idle: in parallel, its forward and backward-data took 9-12% less time,
/// and the stride-2 backward-data before them (one group, its col2im serial) 17-22% less.
/// Where the product is too small to run in parallel (the 1x1 stride-2 shortcut's), the
/// fork-join cost more than the copies (20-40% slower). The copies write disjoint parts in the
/// same order either way, so the bits do not change.
fn few_groups(g: &Geom, gi: usize) -> bool {
    let fmas = (g.k * g.crr()).saturating_mul(gi * g.pq());
    g.n.div_ceil(gi.max(1)) < rayon::current_num_threads() && runs_parallel(fmas)
}

/// Scratch buffers that outlive one task (the per-run dw partials), kept for the next call:
/// fresh multi-MiB allocations cost more in page faults than the GEMMs that fill them.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A zeroed buffer of `len` floats from the pool.
fn pooled(len: usize) -> Vec<f32> {
    let mut v = POOL
        .lock()
        .map(|mut p| p.pop().unwrap_or_default())
        .unwrap_or_default();
    v.clear();
    v.resize(len, 0.0);
    v
}

fn unpool(v: Vec<f32>) {
    if let Ok(mut p) = POOL.lock() {
        if p.len() < 64 {
            p.push(v);
        }
    }
}

/// Whether dw += dy_n . col^T runs as row dot products (`dot_nt_acc`) rather than a GEMM.
/// The GEMM must transpose col into panels element by element, a cost that only many output
/// channels amortise; the dot products read both rows as they lie but reduce their vector
/// lanes once per output element and image, a cost that only many pixels amortise.
fn use_dot(g: &Geom) -> bool {
    g.pq() >= 128 || g.k <= 16
}

/// dw[K, C*R*R], summed over the batch.
///
/// The images are split into one contiguous run per rayon thread; the first run accumulates
/// straight into the output and the others into partials (from `POOL`) added at the end in run
/// order, so the sum is the same for a given thread count. Where each run would be one group
/// at most, `filter_split_k` splits dw's rows among the threads instead. (A rayon fold/reduce allocated two
/// extra K*C*R*R buffers per call: for ResNet-18's 512x4608 layers at batch 1 the fresh 9 MiB
/// allocations and their page faults cost 14x the GEMM itself, measured with `advlens bench
/// conv`.)
pub fn backward_filter(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (chw, crr, pq, k) = (g.chw(), g.crr(), g.pq(), g.k);
    let mut dw = vec![0.0f32; k * crr];
    if g.n == 0 || pq == 0 || crr == 0 {
        return dw;
    }
    let dot = use_dot(g);
    let runs = rayon::current_num_threads().clamp(1, g.n);
    let per = g.n.div_ceil(runs);
    let gi = filter_group_of(g);
    if g.stride == 1 && gi > 1 && per <= gi {
        filter_split_k(g, x, dy, &mut dw);
        return dw;
    }
    let mut partials: Vec<Vec<f32>> = (1..g.n.div_ceil(per)).map(|_| pooled(k * crr)).collect();
    let bufs: Vec<&mut Vec<f32>> = std::iter::once(&mut dw)
        .chain(partials.iter_mut())
        .collect();
    bufs.into_par_iter()
        .zip(x.par_chunks(per * chw))
        .zip(dy.par_chunks(per * k * pq))
        .for_each(|((acc, xs), dys)| {
            if gi > 1 {
                let groups = xs.chunks(gi * chw).zip(dys.chunks(gi * k * pq));
                filter_run_grouped(g, groups, acc);
                return;
            }
            let pairs = xs.chunks(chw).zip(dys.chunks(k * pq));
            if dot && g.stride == 1 && !g.direct() {
                filter_run_padded(g, pairs, acc);
            } else {
                filter_run_col(g, pairs, acc, dot);
            }
        });
    for p in partials {
        dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        unpool(p);
    }
    dw
}

/// dw by output channels instead of by runs of images, for a stride-1 conv whose per-thread
/// runs would each be at most one group (a small batch of small planes: ResNet-18's layer3 and
/// layer4 at batch 8). Each thread reduces every image into its own rows of dw, so no partial
/// dw is zero-filled and added: on layer4 those partials were as large as dw (9.4 MB) against
/// 196 pixels of work per element. Each group's grid and spread dy are built once and shared.
/// A dw element sums the groups in order, whatever the thread count.
fn filter_split_k(g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (chw, crr, pq, k) = (g.chw(), g.crr(), g.pq(), g.k);
    let gi = filter_group_of(g);
    let rows = k.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let groups = x.chunks(gi * chw).zip(dy.chunks(gi * k * pq));
    // Every group's dot products run in parallel, so its fill and spread do too: 7-11% less
    // time on small-resnet18's 2x2 and 4x4 planes at batch 64 and 128.
    let par = runs_parallel((k * crr).saturating_mul(gi * pq));
    on_grids(g, gi, groups, par, |grid, xp, dyp, len| {
        dw.par_chunks_mut(rows * crr)
            .enumerate()
            .for_each(|(t, acc)| {
                let dyr = &dyp[t * rows * len..];
                let brow = |row: usize| grid.row_base(g.r, row);
                dot_nt_acc_rows(
                    isa(),
                    acc.len() / crr,
                    crr,
                    len,
                    dyr,
                    len,
                    xp,
                    brow,
                    acc,
                    crr,
                );
            });
    })
}

/// For each group of images (at most `most` of them) of a stride-1 conv: fill the group's
/// `Grid` and spread its dy onto the grid's columns (`spread_group`), then
/// `f(grid, xp, dyp, span)`, with dyp's rows `span` apart. The buffers are the thread's.
fn on_grids<'a>(
    g: &Geom,
    most: usize,
    groups: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    par: bool,
    mut f: impl FnMut(&Grid, &[f32], &[f32], usize),
) {
    let full = Grid::new(g, most);
    with_buf(&XPAD, full.len(g), |xp| {
        with_buf(&DYPAD, g.k * full.span(g), |dyp| {
            for (xs, dys) in groups {
                let grid = Grid::new(g, xs.len() / g.chw());
                let (xp, len) = (&mut xp[..grid.len(g)], grid.span(g));
                grid.fill(g, xs, xp, par);
                spread_group(g, &grid, dys, &mut dyp[..g.k * len], par);
                f(&grid, xp, &dyp[..g.k * len], len);
            }
        })
    })
}

/// acc += dy_n . col_n^T over one run of images, through an im2col buffer (or the image itself
/// for a direct 1x1 conv), as row dot products or as a GEMM.
fn filter_run_col<'a>(
    g: &Geom,
    pairs: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    acc: &mut [f32],
    dot: bool,
) {
    let (crr, pq, k) = (g.crr(), g.pq(), g.k);
    let direct = g.direct();
    with_col(if direct { 0 } else { crr * pq }, |col| {
        for (xn, dyn_) in pairs {
            let cols: &[f32] = if direct {
                xn
            } else {
                im2col(g, xn, col, pq, 0);
                col
            };
            if dot {
                dot_nt_acc(isa(), k, crr, pq, dyn_, pq, cols, pq, acc, crr);
            } else {
                sgemm(
                    k,
                    pq,
                    crr,
                    dyn_,
                    Strides::row(pq),
                    cols,
                    Strides::trans(pq),
                    1.0,
                    acc,
                    Strides::row(crr),
                );
            }
        }
    })
}

/// acc += dy_G . col_G^T over one run, a group of images at a time (`group_of`): the images'
/// columns and their dy rows side by side, so the reduction runs over G*P*Q pixels at once
/// instead of P*Q per image (ResNet-18's 2x2 planes: 4 pixels per dot product). Stride 1 reads
/// col^T as shifted windows of the group's `Grid` (`filter_run_padded` over a group); other
/// strides unfold into a column matrix.
fn filter_run_grouped<'a>(
    g: &Geom,
    groups: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    acc: &mut [f32],
) {
    let (crr, pq, k) = (g.crr(), g.pq(), g.k);
    let most = filter_group_of(g);
    if g.stride == 1 {
        return on_grids(g, most, groups, false, |grid, xp, dyp, len| {
            let brow = |row: usize| grid.row_base(g.r, row);
            dot_nt_acc_rows(isa(), k, crr, len, dyp, len, xp, brow, acc, crr);
        });
    }
    with_col(crr * most * pq, |col| {
        with_buf(&DYPAD, k * most * pq, |dyg| {
            for (xs, dys) in groups {
                let ld = im2col_group(g, xs, col);
                gather_rows(g, dys, ld, dyg);
                dot_nt_acc(isa(), k, crr, ld, dyg, ld, col, ld, acc, crr);
            }
        })
    })
}

/// dyp[k, pixel(1, i, oi) + oj] = dy_i[k, oi, oj] on a stride-1 `Grid`'s columns (`span` of
/// them per row of dyp), zero in the columns no output pixel lands on.
fn spread_group(g: &Geom, grid: &Grid, dys: &[f32], dyp: &mut [f32], par: bool) {
    let (len, pq) = (dyp.len() / g.k, g.pq());
    let channel = |(ki, out): (usize, &mut [f32])| {
        out.fill(0.0);
        for i in 0..grid.imgs {
            let plane = &dys[(i * g.k + ki) * pq..][..pq];
            for (oi, row) in plane.chunks_exact(g.q).enumerate() {
                copy_short(&mut out[grid.pixel(1, i, oi)..], row);
            }
        }
    };
    for_each_chunk(dyp, len, par, channel);
}

/// acc += dy_n . col_n^T for a stride-1 conv with no column matrix, on the padded grid of
/// `PaddedIm2col`: with xp the image padded to Hp x Wp and dy_n spread onto the same grid
/// (dyp[k, oi*Wp + oj] = dy[k, oi, oj], zero for oj >= Q),
///   dw[k, (ci, ki, kj)] += sum_j dyp[k, j] * xp_flat[ci*Hp*Wp + ki*Wp + kj + j],
/// so each row of col^T is a shifted window of xp, read in place. The copies are the image
/// and dy (about 1/(R*R) of an im2col); the dot products run (Wp - Q) / Q longer over the
/// zero gaps, which is cheaper than writing and re-reading the R*R-fold column matrix.
fn filter_run_padded<'a>(
    g: &Geom,
    pairs: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    acc: &mut [f32],
) {
    let (crr, k, r) = (g.crr(), g.k, g.r);
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    let len = (g.p - 1) * wp + g.q;
    let rr = r * r;
    let brow = move |row: usize| {
        let (ci, ki, kj) = (row / rr, (row / r) % r, row % r);
        (ci * hp + ki) * wp + kj
    };
    with_buf(&XPAD, g.c * hp * wp, |xp| {
        with_buf(&DYPAD, k * len, |dyp| {
            for (xn, dyn_) in pairs {
                pad_image(g, xn, xp);
                spread_rows(g, wp, len, dyn_, dyp);
                dot_nt_acc_rows(isa(), k, crr, len, dyp, len, xp, brow, acc, crr);
            }
        })
    })
}

/// dyp[k, oi*Wp + oj] = dy[k, oi*Q + oj] for oj < Q, zero in the Wp - Q gap columns.
fn spread_rows(g: &Geom, wp: usize, len: usize, dy: &[f32], dyp: &mut [f32]) {
    for (dst, src) in dyp.chunks_exact_mut(len).zip(dy.chunks_exact(g.pq())) {
        for (oi, row) in src.chunks_exact(g.q).enumerate() {
            let d = &mut dst[oi * wp..];
            copy_short(d, row);
            if oi + 1 < g.p {
                d[g.q..wp].fill(0.0);
            }
        }
    }
}

/// The geometry of dx as a forward convolution, for stride 1: dx = conv(dy, w') with
/// w'[c, k, r, s] = w[k, c, R-1-r, R-1-s] and pad R-1-pad (the transposed convolution), which
/// needs no column buffer and no scatter. None when that does not apply.
fn transposed(g: &Geom) -> Option<Geom> {
    if g.stride != 1 || g.pad + 1 > g.r {
        return None;
    }
    let t = Geom {
        n: g.n,
        c: g.k,
        h: g.p,
        w: g.q,
        k: g.c,
        r: g.r,
        stride: 1,
        pad: g.r - 1 - g.pad,
        p: g.h,
        q: g.w,
    };
    // Stride 1 always gives back H x W; checked so a geometry bug can never index out of range.
    let out = |len: usize| (len + 2 * t.pad + 1).checked_sub(t.r);
    (out(t.h) == Some(t.p) && out(t.w) == Some(t.q)).then_some(t)
}

/// w' of `transposed` packed straight from w: row ci, column (ki, t) of w' is
/// w[ki, ci, R*R-1-t] (no flipped copy of the weights is written). Each k-block reads the w
/// rows of its filters front to back, one contiguous run of w.
fn pack_transposed(g: &Geom, w: &[f32]) -> PackedA {
    let rr = g.r * g.r;
    PackedA::from_blocks(isa(), g.c, g.k * rr, |p0, kc, out| {
        for ki in p0 / rr..(p0 + kc).div_ceil(rr) {
            // Columns ki*rr + t of w' for t in t0..t1: the block may cut its first and last
            // filters.
            let t0 = p0.saturating_sub(ki * rr);
            let t1 = (p0 + kc - ki * rr).min(rr);
            let j0 = ki * rr + t0 - p0;
            let filters = &w[ki * g.c * rr..][..g.c * rr];
            for (ci, src) in filters.chunks_exact(rr).enumerate() {
                let dst = &mut out[ci * kc + j0..][..t1 - t0];
                for (d, &v) in dst.iter_mut().zip(src[rr - t1..rr - t0].iter().rev()) {
                    *d = v;
                }
            }
        }
    })
}

/// dx[N,C,H,W], kept only where `gate` (laid out as dx: the conv's input, a ReLU's output) is
/// > 0 when given.
pub fn backward_data(g: &Geom, w: &[f32], dy: &[f32], gate: Option<&[f32]>) -> Vec<f32> {
    let (chw, pq, k) = (g.chw(), g.pq(), g.k);
    let ep = Epilogue {
        gate,
        ..Default::default()
    };
    if let Some(t) = transposed(g) {
        return forward_packed(&t, dy, || pack_transposed(g, w), ep);
    }
    if g.n * chw == 0 || pq == 0 {
        return vec![0.0f32; g.n * chw];
    }
    // The convs `transposed` does not take (stride > 1, or pad >= R; the 1x1 unpadded conv does
    // take it): dcol = w^T . dy scattered by col2im, a group of images per product (a group of
    // one on large planes).
    let gi = group_of(g);
    let par = few_groups(g, gi);
    zeroed_par(g.n * chw, gi * chw, |i, dxs| {
        let images = dxs.len() / chw;
        let ep = ep.part(i * gi * chw, dxs.len());
        data_group(
            g,
            w,
            dxs,
            &dy[i * gi * k * pq..][..images * k * pq],
            ep,
            par,
        );
    })
}

/// dx_i = col2im(w^T . dy_i) for a group of images, as one product over the images' dy rows
/// side by side, then scattered image by image.
/// The epilogue `ep` (laid out as dxs) is applied image by image; with `par`, the images'
/// scatters run in parallel.
fn data_group(g: &Geom, w: &[f32], dxs: &mut [f32], dys: &[f32], ep: Epilogue, par: bool) {
    let (crr, pq, k) = (g.crr(), g.pq(), g.k);
    let ld = (dys.len() / (k * pq)) * pq;
    with_buf(&DYPAD, k * ld, |dyg| {
        gather_rows(g, dys, ld, dyg);
        with_col(crr * ld, |dcol| {
            sgemm(
                crr,
                k,
                ld,
                w,
                Strides::trans(crr),
                dyg,
                Strides::row(ld),
                0.0,
                dcol,
                Strides::row(ld),
            );
            let chw = g.chw();
            let image = |(i, dxn): (usize, &mut [f32])| {
                col2im(g, dcol, dxn, ld, i * pq);
                ep.part(i * chw, chw).finish(dxn);
            };
            for_each_chunk(dxs, chw, par, image);
        })
    })
}

/// dyg[K, ld] = the images of dys[G, K, P*Q] side by side (image i in columns i*PQ...).
fn gather_rows(g: &Geom, dys: &[f32], ld: usize, dyg: &mut [f32]) {
    let pq = g.pq();
    for (i, dyn_) in dys.chunks_exact(g.k * pq).enumerate() {
        for (ki, row) in dyn_.chunks_exact(pq).enumerate() {
            dyg[ki * ld + i * pq..][..pq].copy_from_slice(row);
        }
    }
}

/// db[K] = sum of dy over N, P, Q (f64 accumulation).
pub fn backward_bias(g: &Geom, dy: &[f32]) -> Vec<f32> {
    let (pq, k) = (g.pq(), g.k);
    (0..k)
        .into_par_iter()
        .map(|ki| {
            (0..g.n)
                .map(|ni| {
                    dy[(ni * k + ki) * pq..(ni * k + ki + 1) * pq]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect()
}

/// The direct seven-loop convolution in f64: the test oracle for the GEMM path.
#[cfg(test)]
pub fn naive_forward(g: &Geom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f64> {
    let mut y = vec![0.0f64; g.n * g.k * g.pq()];
    for ni in 0..g.n {
        for ki in 0..g.k {
            for oi in 0..g.p {
                for oj in 0..g.q {
                    let mut s = b.map_or(0.0, |b| b[ki] as f64);
                    for ci in 0..g.c {
                        for a in 0..g.r {
                            for bb in 0..g.r {
                                let ih = (oi * g.stride + a) as isize - g.pad as isize;
                                let iw = (oj * g.stride + bb) as isize - g.pad as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                s += x[((ni * g.c + ci) * g.h + ih as usize) * g.w + iw as usize]
                                    as f64
                                    * w[((ki * g.c + ci) * g.r + a) * g.r + bb] as f64;
                            }
                        }
                    }
                    y[((ni * g.k + ki) * g.p + oi) * g.q + oj] = s;
                }
            }
        }
    }
    y
}

/// The two backward paths of a convolution one at a time, for benchmarks that time backward-data
/// and backward-filter separately (`Backend::conv2d_backward` always computes dw and db).
impl super::CpuBackend {
    /// dx[N,C,H,W] of `conv2d` given dy; `x` is read for its shape only.
    pub fn conv2d_backward_data(
        &self,
        x: &crate::tensor::Tensor,
        w: &crate::tensor::Tensor,
        dy: &crate::tensor::Tensor,
        p: crate::backend::Conv2dParams,
    ) -> crate::error::Result<crate::tensor::Tensor> {
        self.backward_data_op("conv2d_backward_data", x, w, dy, p, false)
    }

    /// dx of `conv2d` given dy; with `gated`, kept only where x (a ReLU's output) is > 0.
    pub(super) fn backward_data_op(
        &self,
        op: &'static str,
        x: &crate::tensor::Tensor,
        w: &crate::tensor::Tensor,
        dy: &crate::tensor::Tensor,
        p: crate::backend::Conv2dParams,
        gated: bool,
    ) -> crate::error::Result<crate::tensor::Tensor> {
        let g = super::conv_geom(op, x, w, p)?;
        super::want_shape(op, "dy", dy, &[g.n, g.k, g.p, g.q])?;
        let rnd = |v| self.precision().round_slice(v);
        // The gate is x as given: relu_backward reads the ReLU's output unrounded.
        let gate = gated.then(|| x.cpu(op)).transpose()?;
        let dx = backward_data(&g, &rnd(w.cpu(op)?), &rnd(dy.cpu(op)?), gate);
        crate::tensor::Tensor::from_vec(x.shape(), dx)
    }

    /// dw[K,C,R,R] of `conv2d` given dy, summed over the batch.
    pub fn conv2d_backward_filter(
        &self,
        x: &crate::tensor::Tensor,
        w: &crate::tensor::Tensor,
        dy: &crate::tensor::Tensor,
        p: crate::backend::Conv2dParams,
    ) -> crate::error::Result<crate::tensor::Tensor> {
        const OP: &str = "conv2d_backward_filter";
        let g = super::conv_geom(OP, x, w, p)?;
        super::want_shape(OP, "dy", dy, &[g.n, g.k, g.p, g.q])?;
        crate::tensor::Tensor::from_vec(
            w.shape(),
            backward_filter(
                &g,
                &self.precision().round_slice(x.cpu(OP)?),
                &self.precision().round_slice(dy.cpu(OP)?),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    /// The stride-1 grid groups that compute the fewest columns per pixel on AVX2's 24-wide
    /// tiles: two 14x14 images (432 for 392 pixels, not 240 for 196), all eight 7x7 images of a
    /// batch (456 for 392, not 240 for 196 in groups of four), and unchanged groups where no
    /// larger one computes less.
    #[test]
    fn grid_groups_waste_the_fewest_columns() {
        let geom = |n, hw| super::Geom {
            n,
            c: 4,
            h: hw,
            w: hw,
            k: 4,
            r: 3,
            stride: 1,
            pad: 1,
            p: hw,
            q: hw,
        };
        for (n, hw, want) in [(8, 14, 2), (8, 7, 8), (8, 56, 1), (1, 14, 1), (7, 14, 2)] {
            let g = geom(n, hw);
            assert_eq!(super::grid_group_of(&g, 24), want, "batch {n}, {hw}x{hw}");
        }
        // 8x8 planes at batch 128: from groups of 4 (312 columns for 256) to 8 (600 for 512).
        assert_eq!(super::grid_group_of(&geom(128, 8), 24), 8);
    }

    /// The stepped row starts of the in-place GEMM path agree with `row_offset`'s divisions, from
    /// any first row and across channel boundaries.
    #[test]
    fn padded_rows_step_like_the_divisions() {
        use super::super::sgemm::PackB;
        let xp = vec![0.0f32; 3 * 9 * 11];
        for r in [1, 2, 3, 5] {
            let src = super::PaddedIm2col {
                xp: &xp,
                hp: 9,
                wp: 11,
                r,
            };
            for p0 in [0, 1, r, r * r - 1, r * r + 2] {
                let mut got = Vec::new();
                src.row_offsets(p0, 2 * r * r + 1, &mut got);
                let want: Vec<usize> = (p0..p0 + 2 * r * r + 1)
                    .map(|p| src.row_offset(p))
                    .collect();
                assert_eq!(got, want, "r {r} p0 {p0}");
            }
        }
    }

    /// Every length `copy_short` special-cases, at unaligned offsets, leaves the rest alone.
    #[test]
    fn conv_copy_short_copies_every_length() {
        let src: Vec<f32> = (0..40).map(|v| v as f32 + 0.5).collect();
        for n in 0..=40 {
            let mut dst = [-1.0f32; 44];
            super::copy_short(&mut dst[3..], &src[..n]);
            assert_eq!(&dst[3..3 + n], &src[..n], "len {n}");
            assert!(
                dst[..3].iter().chain(&dst[3 + n..]).all(|&v| v == -1.0),
                "len {n}"
            );
        }
    }
}
