//! Max pooling on one H x W plane: a two-pass path (row winners, then rows in order; see
//! `RowPass`) for every pool, a straight-line path for the 2x2 stride-2 unpadded pool that
//! every small model uses, an AVX2 path for ResNet's 3x3 stride-2 pad-1 stem pool
//! (`pool_stem`), and the clipped per-window scan for planes too large for u32 indices.
//!
//! Contract (all paths): the output is the first maximum of each window in row-major order,
//! strict `>` (ties go to the earlier element), and a NaN wins once so that it propagates as in
//! torch. The backward pass routes dy to that same element. Under `perf` the per-window scan was
//! about 15% of a small-vgg16 step (before the 2x2 path) and of a small-resnet18 step (its 3x3/2
//! stem pool, before the two-pass path, now ~5%).

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use super::pool_stem;
use super::sgemm::Isa;
use crate::backend::Pool2dParams;

/// Flat index (within the H*W plane) of the first maximum of output cell (oi, oj), or None when
/// the window holds only padding (impossible once `pool_geom` accepted the geometry). The
/// window is clipped to the plane once (no test per element).
#[inline]
pub(super) fn argmax(
    plane: &[f32],
    h: usize,
    w: usize,
    p: Pool2dParams,
    oi: usize,
    oj: usize,
) -> Option<usize> {
    let (i0, j0) = (oi * p.stride, oj * p.stride);
    // Input rows/cols i0 - pad + ki for ki in [klo, khi) that lie inside [0, h) / [0, w).
    let (ilo, ihi) = (
        p.pad.saturating_sub(i0),
        (h + p.pad - i0.min(h + p.pad)).min(p.kernel),
    );
    let (jlo, jhi) = (
        p.pad.saturating_sub(j0),
        (w + p.pad - j0.min(w + p.pad)).min(p.kernel),
    );
    if jlo >= jhi || ilo >= ihi {
        return None;
    }
    // Plane index of window element (ki, kj), for ki in [ilo, ihi), kj in [jlo, jhi): both
    // i0 + ki - pad and j0 + kj - pad are >= 0 by the choice of ilo and jlo.
    let at = |ki: usize, kj: usize| (i0 + ki - p.pad) * w + j0 + kj - p.pad;
    let mut arg = at(ilo, jlo);
    let mut best = plane[arg];
    for ki in ilo..ihi {
        let first = at(ki, jlo);
        for (t, &v) in plane[first..first + (jhi - jlo)].iter().enumerate() {
            let take = beats_nb(v, best);
            best = if take { v } else { best };
            arg = if take { first + t } else { arg };
        }
    }
    Some(arg)
}

/// The 2x2 stride-2 unpadded pool, whose windows always lie inside the plane.
fn is_2x2(p: Pool2dParams) -> bool {
    p.kernel == 2 && p.stride == 2 && p.pad == 0
}

/// Whether `v` replaces the current best under the contract above. No short-circuit, so that
/// the compiler emits selects rather than branches: on real activations the comparisons are
/// coin flips, and mispredicted branches cost more than the pool itself.
#[inline(always)]
fn beats_nb(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// The first maximum of the window [a0 a1; b0 b1] and its position 0..4 in row-major order,
/// with blends rather than selects so that a row of windows compiles to vector code.
#[inline(always)]
fn max_2x2(a: &[f32], b: &[f32]) -> (f32, u32) {
    let (mut best, mut arg) = (a[0], 0u32);
    for (v, i) in [(a[1], 1), (b[0], 2), (b[1], 3)] {
        let m = mask(beats_nb(v, best));
        best = blend_f32(m, v, best);
        arg = blend_u32(m, i, arg);
    }
    (best, arg)
}

/// The input row pair (2 oi, 2 oi + 1) under output row oi, cut to the 2 qo columns read.
#[inline(always)]
fn row_pair(plane: &[f32], w: usize, oi: usize, qo: usize) -> (&[f32], &[f32]) {
    let top = 2 * oi * w;
    (&plane[top..top + 2 * qo], &plane[top + w..top + w + 2 * qo])
}

/// dy of one output row routed into its two input rows (d0, d1: zero on entry). The windows do
/// not overlap, so every element of the pair is written once, g or 0, with no scatter: the
/// indexed `+=` was 8.7% of a small-alexnet w16 training step.
fn route_2x2(isa: Isa, r0: &[f32], r1: &[f32], dy: &[f32], d0: &mut [f32], d1: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F present (the caller's `Isa` is a supported one); the rows hold
        // 2 dy.len() values (row_pair and the caller's cuts), which route16 requires.
        return unsafe { avx512::route16(r0, r1, dy, d0, d1) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2 present (a supported `Isa`); the rows hold 2 dy.len() values, which
        // route8 requires.
        return unsafe { avx2::route8(r0, r1, dy, d0, d1) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    for ((((a, b), &g), e0), e1) in r0
        .chunks_exact(2)
        .zip(r1.chunks_exact(2))
        .zip(dy)
        .zip(d0.chunks_exact_mut(2))
        .zip(d1.chunks_exact_mut(2))
    {
        let (_, at) = max_2x2(a, b);
        let only = |i: u32| f32::from_bits(g.to_bits() & mask(at == i));
        e0[0] = only(0);
        e0[1] = only(1);
        e1[0] = only(2);
        e1[1] = only(3);
    }
}

/// y[j] = the maximum of window j of the row pair (r0, r1: 2 y.len() values each).
fn max_2x2_row(isa: Isa, r0: &[f32], r1: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F present; the rows hold 2 y.len() values (row_pair).
        return unsafe { avx512::max16(r0, r1, y) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2 present; the rows hold 2 y.len() values (row_pair).
        return unsafe { avx2::max8(r0, r1, y) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    for ((y, a), b) in y.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
        *y = max_2x2(a, b).0;
    }
}

/// yp[po*qo] = the pooled plane, on the vector path `isa` (callers pass `sgemm::isa()`; the
/// tests run each supported one).
pub(super) fn forward_plane(
    isa: Isa,
    plane: &[f32],
    h: usize,
    w: usize,
    p: Pool2dParams,
    yp: &mut [f32],
) {
    let (_, qo) = out_size(h, w, p);
    if is_2x2(p) {
        for (oi, row) in yp.chunks_exact_mut(qo).enumerate() {
            let (r0, r1) = row_pair(plane, w, oi, qo);
            max_2x2_row(isa, r0, r1, row);
        }
        return;
    }
    if !fits_u32(h, w) {
        return scan_forward(plane, h, w, p, yp);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && Isa::Avx2.supported() {
        if pool_stem::applies(p, h, w) {
            // SAFETY: AVX2 is present; the plane is h x w and yp po x qo (the caller's cuts).
            return unsafe { pool_stem::avx2::forward(plane, h, w, yp) };
        }
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { avx2::rows_forward(plane, h, w, p, yp) };
    }
    rows_forward(plane, h, w, p, yp);
}

/// `forward_plane` by the row and column passes (see `RowPass`). Inlined into a baseline and an
/// AVX2 copy: its compares and selects are 4 lanes wide in the first and 8 in the second, and
/// move values without arithmetic, so both give the same bits.
#[inline(always)]
fn rows_forward(plane: &[f32], h: usize, w: usize, p: Pool2dParams, yp: &mut [f32]) {
    let (po, qo) = out_size(h, w, p);
    with_row_pass(plane, h, w, p, qo, |rows| {
        for (oi, row) in yp.chunks_exact_mut(qo).enumerate().take(po) {
            rows.column_pass(oi, row, None);
        }
    });
}

/// Whether plane indices fit the row pass's u32 columns (planes of over 4G pixels take the
/// per-window scan).
fn fits_u32(h: usize, w: usize) -> bool {
    h.checked_mul(w).is_some_and(|n| n <= u32::MAX as usize)
}

/// `forward_plane` by the clipped per-window scan.
fn scan_forward(plane: &[f32], h: usize, w: usize, p: Pool2dParams, yp: &mut [f32]) {
    let (po, qo) = out_size(h, w, p);
    for (oi, row) in yp.chunks_exact_mut(qo).enumerate().take(po) {
        for (oj, y) in row.iter_mut().enumerate() {
            *y = argmax(plane, h, w, p, oi, oj).map_or(f32::NEG_INFINITY, |i| plane[i]);
        }
    }
}

/// `backward_plane` by the clipped per-window scan.
fn scan_backward(plane: &[f32], h: usize, w: usize, p: Pool2dParams, dyp: &[f32], dxp: &mut [f32]) {
    let (po, qo) = out_size(h, w, p);
    for (oi, row) in dyp.chunks_exact(qo).enumerate().take(po) {
        for (oj, &g) in row.iter().enumerate() {
            if let Some(i) = argmax(plane, h, w, p, oi, oj) {
                dxp[i] += g;
            }
        }
    }
}

/// dxp[h*w] += dy routed to each window's first maximum (dxp zeroed by the caller), on the
/// vector path `isa`.
pub(super) fn backward_plane(
    isa: Isa,
    plane: &[f32],
    h: usize,
    w: usize,
    p: Pool2dParams,
    dyp: &[f32],
    dxp: &mut [f32],
) {
    let (_, qo) = out_size(h, w, p);
    if is_2x2(p) {
        for (oi, row) in dyp.chunks_exact(qo).enumerate() {
            let (r0, r1) = row_pair(plane, w, oi, qo);
            let (d0, d1) = dxp[2 * oi * w..].split_at_mut(w);
            route_2x2(isa, r0, r1, row, &mut d0[..2 * qo], &mut d1[..2 * qo]);
        }
        return;
    }
    if !fits_u32(h, w) {
        return scan_backward(plane, h, w, p, dyp, dxp);
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && Isa::Avx2.supported() {
        if pool_stem::applies(p, h, w) {
            // SAFETY: AVX2 is present; plane and dxp are h x w, dyp po x qo.
            return unsafe { pool_stem::avx2::backward(plane, h, w, dyp, dxp) };
        }
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { avx2::rows_backward(plane, h, w, p, dyp, dxp) };
    }
    rows_backward(plane, h, w, p, dyp, dxp);
}

/// `backward_plane` by the row and column passes, inlined as `rows_forward` is.
#[inline(always)]
fn rows_backward(plane: &[f32], h: usize, w: usize, p: Pool2dParams, dyp: &[f32], dxp: &mut [f32]) {
    let (po, qo) = out_size(h, w, p);
    with_row_pass(plane, h, w, p, qo, |rows| {
        let (mut best, mut args) = (vec![0.0; qo], vec![0u32; qo]);
        for (oi, row) in dyp.chunks_exact(qo).enumerate().take(po) {
            rows.column_pass(oi, &mut best, Some(&mut args));
            for (&g, &a) in row.iter().zip(&args) {
                dxp[a as usize] += g;
            }
        }
    });
}

/// The row pass's buffers: winners' values, their columns, one input row split into its
/// stride phases, and the plan of the window columns.
type RowBufs = (Vec<f32>, Vec<u32>, Vec<f32>, Vec<(usize, u32)>);

thread_local! {
    /// The row pass buffers of this thread (grown and kept).
    static ROWS: RefCell<RowBufs> = const {
        RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new()))
    };
}

/// The first maximum of a window, found in two passes. The row pass finds, for every input row
/// i and output column oj, the row's first maximum over the window's columns; the column pass
/// then scans the window's rows in order and keeps the first row whose winner beats the ones
/// before it. Under the contract that is the window's first maximum in row-major order: the
/// first row holding the (NaN-first) maximum, and the first column in that row. Both passes
/// run over contiguous runs of outputs, so they compile to vector compares and selects; the
/// old per-window scan with its clipping bookkeeping was ~15% of a small-resnet18 step.
struct RowPass<'a> {
    h: usize,
    w: usize,
    p: Pool2dParams,
    qo: usize,
    /// val[i * qo + oj]: the winner of input row i under output column oj; col: its column.
    val: &'a [f32],
    col: &'a [u32],
}

/// Run `f` on the row pass of `plane`. The buffers are taken out of the thread-local slot for
/// the duration rather than used inside `LocalKey::with`: a closure run by `with` is compiled
/// apart from the AVX2 copy of its caller, and was scalar code (10% of a small-resnet18 w8
/// I-FGS step, Zen 3). A task that rayon runs on this thread meanwhile finds the slot empty and
/// grows its own buffers.
#[inline(always)]
fn with_row_pass<R>(
    plane: &[f32],
    h: usize,
    w: usize,
    p: Pool2dParams,
    qo: usize,
    f: impl FnOnce(&RowPass) -> R,
) -> R {
    let (mut val, mut col, mut phases, mut plan) =
        ROWS.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    val.resize(h * qo, 0.0);
    col.resize(h * qo, 0);
    let cols = WindowCols::new(w, p, qo, &mut plan);
    for ((r, v), c) in plane
        .chunks_exact(w)
        .zip(val.chunks_exact_mut(qo))
        .zip(col.chunks_exact_mut(qo))
    {
        row_winners(r, p, &cols, &mut phases, v, c);
    }
    let out = f(&RowPass {
        h,
        w,
        p,
        qo,
        val: &val,
        col: &col,
    });
    ROWS.with(|cell| *cell.borrow_mut() = (val, col, phases, plan));
    out
}

/// What every row of a plane shares: the interior output columns [jl, jr) (whose windows lie
/// inside the row), the phase length, and for each window column kj where its run starts in
/// the phases and the input column of its first interior output. Computed once a plane: the
/// divisions it takes, once per row, were a visible part of the row pass on small planes.
struct WindowCols<'a> {
    jl: usize,
    jr: usize,
    plen: usize,
    /// (start in `phases`, input column of output jl) for kj = 0..k.
    runs: &'a [(usize, u32)],
}

impl<'a> WindowCols<'a> {
    #[inline(always)]
    fn new(w: usize, p: Pool2dParams, qo: usize, runs: &'a mut Vec<(usize, u32)>) -> Self {
        let (jl, jr) = interior(w, p, qo);
        let (s, plen) = (p.stride, w.div_ceil(p.stride));
        runs.clear();
        for kj in 0..p.kernel {
            let d = kj as isize - p.pad as isize;
            let (ph, off) = (d.rem_euclid(s as isize) as usize, d.div_euclid(s as isize));
            // jl*s + d >= 0 for an interior column, so jl + off >= 0 (when jl < jr).
            let start = (ph * plen) as isize + jl as isize + off;
            let c0 = (jl * s) as isize + d;
            runs.push((start.max(0) as usize, c0.max(0) as u32));
        }
        WindowCols { jl, jr, plen, runs }
    }
}

/// Output columns [jl, jr) whose window lies inside a row of `w` columns.
#[inline(always)]
fn interior(w: usize, p: Pool2dParams, qo: usize) -> (usize, usize) {
    let jl = p.pad.div_ceil(p.stride).min(qo);
    let jr = if w + p.pad >= p.kernel {
        ((w + p.pad - p.kernel) / p.stride + 1).min(qo)
    } else {
        0
    };
    (jl, jr.max(jl))
}

/// val[oj], col[oj] = the first maximum of `row` over output column oj's window columns.
#[inline(always)]
fn row_winners(
    row: &[f32],
    p: Pool2dParams,
    cols: &WindowCols,
    phases: &mut Vec<f32>,
    val: &mut [f32],
    col: &mut [u32],
) {
    let (w, k, s, pad, qo) = (row.len(), p.kernel, p.stride, p.pad, val.len());
    let (jl, jr) = (cols.jl, cols.jr);
    for oj in (0..jl).chain(jr..qo) {
        // Clipped window: columns oj*s + kj - pad inside [0, w), at least one (pool_geom).
        let lo = (oj * s).max(pad) - pad;
        let hi = (oj * s + k).saturating_sub(pad).min(w).max(lo + 1);
        let (mut best, mut at) = (row[lo], lo);
        for (c, &v) in row.iter().enumerate().take(hi).skip(lo + 1) {
            let t = beats_nb(v, best);
            best = if t { v } else { best };
            at = if t { c } else { at };
        }
        val[oj] = best;
        col[oj] = at as u32;
    }
    if jl == jr {
        return;
    }
    // Phase ph holds row[ph], row[ph + s], ...: column oj*s + d is phase d mod s at oj + d / s,
    // so each window column is one contiguous, shifted run over the interior outputs.
    let plen = cols.plen;
    phases.resize(s * plen, 0.0);
    for (ph, dst) in phases.chunks_exact_mut(plen).enumerate() {
        for (d, &v) in dst.iter_mut().zip(row.iter().skip(ph).step_by(s)) {
            *d = v;
        }
    }
    let (val, col) = (&mut val[jl..jr], &mut col[jl..jr]);
    let s32 = s as u32;
    for (kj, &(start, c0)) in cols.runs.iter().enumerate() {
        let src = &phases[start..start + val.len()];
        if kj == 0 {
            val.copy_from_slice(src);
            let mut c = c0;
            for e in col.iter_mut() {
                *e = c;
                c = c.wrapping_add(s32);
            }
            continue;
        }
        let mut here = c0;
        for ((v, c), &x) in val.iter_mut().zip(col.iter_mut()).zip(src) {
            let m = mask(beats_nb(x, *v));
            *v = blend_f32(m, x, *v);
            *c = blend_u32(m, here, *c);
            here = here.wrapping_add(s32);
        }
    }
}

/// All ones when `t`, else zero. The passes below blend with it instead of `if t { new } else
/// { old }`: LLVM turns that select of an old value into a conditional store, which it can only
/// emit lane by lane with branches (the row pass was 10% of a resnet step that way).
#[inline(always)]
fn mask(t: bool) -> u32 {
    (t as u32).wrapping_neg()
}

#[inline(always)]
fn blend_u32(m: u32, new: u32, old: u32) -> u32 {
    (new & m) | (old & !m)
}

#[inline(always)]
fn blend_f32(m: u32, new: f32, old: f32) -> f32 {
    f32::from_bits(blend_u32(m, new.to_bits(), old.to_bits()))
}

impl RowPass<'_> {
    /// best[oj] = the window maximum of output cell (oi, oj); args[oj] = its plane index.
    #[inline(always)]
    fn column_pass(&self, oi: usize, best: &mut [f32], mut args: Option<&mut [u32]>) {
        let (p, qo) = (self.p, self.qo);
        let i0 = oi * p.stride;
        let lo = i0.max(p.pad) - p.pad;
        let hi = (i0 + p.kernel)
            .saturating_sub(p.pad)
            .min(self.h)
            .max(lo + 1);
        best.copy_from_slice(&self.val[lo * qo..(lo + 1) * qo]);
        if let Some(a) = args.as_deref_mut() {
            for (a, &c) in a.iter_mut().zip(&self.col[lo * qo..(lo + 1) * qo]) {
                *a = (lo * self.w) as u32 + c;
            }
        }
        for r in lo + 1..hi {
            let (val, col) = (
                &self.val[r * qo..(r + 1) * qo],
                &self.col[r * qo..(r + 1) * qo],
            );
            match args.as_deref_mut() {
                None => best.iter_mut().zip(val).for_each(|(b, &v)| {
                    *b = blend_f32(mask(beats_nb(v, *b)), v, *b);
                }),
                Some(a) => {
                    let base = (r * self.w) as u32;
                    for ((b, a), (&v, &c)) in
                        best.iter_mut().zip(a.iter_mut()).zip(val.iter().zip(col))
                    {
                        let m = mask(beats_nb(v, *b));
                        *b = blend_f32(m, v, *b);
                        *a = blend_u32(m, base + c, *a);
                    }
                }
            }
        }
    }
}

/// Output plane size (validated by `pool_geom` before any plane is visited).
pub(super) fn out_size(h: usize, w: usize, p: Pool2dParams) -> (usize, usize) {
    let o = |n: usize| crate::backend::out_dim(n, p.kernel, p.stride, p.pad).unwrap_or(0);
    (o(h), o(w))
}

/// The 2x2 pool sixteen windows at a time: de-interleave each row pair into the four window
/// positions, find the first maximum with mask compares in row-major order (the same NaN rule
/// as `beats_nb`), and for the backward pass interleave dy, masked by the winner, back into the
/// two input rows. A row's last windows (the small models' rows are 3 to 14 windows long) run
/// the same code under load and store masks. Bit-identical to the scalar code: the masked moves
/// copy dy's bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The first `n` (at most 16) lanes.
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// Load and store masks of the two 16-float halves covering `cnt` (1..=16) windows.
    fn halves(cnt: usize) -> (__mmask16, __mmask16) {
        (first(2 * cnt), first((2 * cnt).saturating_sub(16)))
    }

    /// (window maxima, masks of "position 1 / 2 / 3 beat the best so far") of `cnt` windows
    /// (lanes past `cnt` hold garbage that no caller stores).
    /// # Safety
    /// AVX-512F present; r0 and r1 each point at 2 cnt readable values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn windows(r0: *const f32, r1: *const f32, cnt: usize) -> (__m512, [__mmask16; 3]) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (ml, mh) = halves(cnt);
        // SAFETY: the masks keep the loads inside the 2 cnt values (masked lanes do not fault).
        let (a_lo, a_hi, b_lo, b_hi) = unsafe {
            (
                _mm512_maskz_loadu_ps(ml, r0),
                _mm512_maskz_loadu_ps(mh, r0.add(16)),
                _mm512_maskz_loadu_ps(ml, r1),
                _mm512_maskz_loadu_ps(mh, r1.add(16)),
            )
        };
        let pos = [
            _mm512_permutex2var_ps(a_lo, odd, a_hi),
            _mm512_permutex2var_ps(b_lo, even, b_hi),
            _mm512_permutex2var_ps(b_lo, odd, b_hi),
        ];
        let mut best = _mm512_permutex2var_ps(a_lo, even, a_hi);
        let mut beat = [0; 3];
        for (m, v) in beat.iter_mut().zip(pos) {
            let nan_beats = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v)
                & !_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(best, best);
            *m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best) | nan_beats;
            best = _mm512_mask_blend_ps(*m, best, v);
        }
        (best, beat)
    }

    /// y[j] = the maximum of window j, for every window.
    /// # Safety
    /// AVX-512F present; r0 and r1 hold at least 2 y.len() values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max16(r0: &[f32], r1: &[f32], y: &mut [f32]) {
        for j in (0..y.len()).step_by(16) {
            let cnt = (y.len() - j).min(16);
            // SAFETY: windows j..j + cnt read values 2j..2(j + cnt) of each row and write
            // y[j..j + cnt] (masked).
            unsafe {
                let (best, _) = windows(r0.as_ptr().add(2 * j), r1.as_ptr().add(2 * j), cnt);
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(j), first(cnt), best);
            }
        }
    }

    /// d0/d1 = dy routed to each window's winner, zero elsewhere, for every window.
    /// # Safety
    /// AVX-512F present; r0, r1, d0 and d1 hold at least 2 dy.len() values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn route16(r0: &[f32], r1: &[f32], dy: &[f32], d0: &mut [f32], d1: &mut [f32]) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for j in (0..dy.len()).step_by(16) {
            let cnt = (dy.len() - j).min(16);
            let (ml, mh) = halves(cnt);
            // SAFETY: windows j..j + cnt touch values 2j..2(j + cnt) of each row (masked).
            unsafe {
                let (_, [m1, m2, m3]) =
                    windows(r0.as_ptr().add(2 * j), r1.as_ptr().add(2 * j), cnt);
                let g = _mm512_maskz_loadu_ps(first(cnt), dy.as_ptr().add(j));
                // The winner is the last position that beat the best so far.
                let w3 = m3;
                let w2 = m2 & !m3;
                let w1 = m1 & !(m2 | m3);
                let w0 = !(m1 | m2 | m3);
                let at = |m: __mmask16| _mm512_maskz_mov_ps(m, g);
                let (o0, o1, o2, o3) = (at(w0), at(w1), at(w2), at(w3));
                let (p0, p1) = (d0.as_mut_ptr().add(2 * j), d1.as_mut_ptr().add(2 * j));
                _mm512_mask_storeu_ps(p0, ml, _mm512_permutex2var_ps(o0, lo, o1));
                _mm512_mask_storeu_ps(p0.add(16), mh, _mm512_permutex2var_ps(o0, hi, o1));
                _mm512_mask_storeu_ps(p1, ml, _mm512_permutex2var_ps(o2, lo, o3));
                _mm512_mask_storeu_ps(p1.add(16), mh, _mm512_permutex2var_ps(o2, hi, o3));
            }
        }
    }
}

/// The AVX2 twin of `avx512`: eight windows at a time. A row pair's 16 values per row are
/// de-interleaved with in-lane shuffles and a 64-bit permute, compared in row-major order with
/// the same NaN rule, and for the backward pass dy is masked by the winner and interleaved back
/// (unpack, then a 128-bit permute). A row's last block runs under load and store masks. On Zen 3
/// (AVX2 only) the generic 2x2 backward was 8% of a small-alexnet w8 training step.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::Pool2dParams;
    use std::arch::x86_64::*;

    /// `super::rows_forward` compiled for AVX2.
    /// # Safety
    /// AVX2 present.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows_forward(plane: &[f32], h: usize, w: usize, p: Pool2dParams, yp: &mut [f32]) {
        super::rows_forward(plane, h, w, p, yp)
    }

    /// `super::rows_backward` compiled for AVX2.
    /// # Safety
    /// AVX2 present.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows_backward(
        plane: &[f32],
        h: usize,
        w: usize,
        p: Pool2dParams,
        dyp: &[f32],
        dxp: &mut [f32],
    ) {
        super::rows_backward(plane, h, w, p, dyp, dxp)
    }

    /// The lane mask (all ones in lanes < n, n clamped to 0..=8).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::backend::cpu) fn first(n: usize) -> __m256i {
        let n = n.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The even and the odd values of x[0..8] ++ y[0..8], in order: shuffle_ps picks within
    /// 128-bit lanes ([x0 x2 y0 y2 | x4 x6 y4 y6] for the even ones), and the 64-bit permute
    /// (0, 2, 1, 3) puts the pairs in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::backend::cpu) fn split(x: __m256, y: __m256) -> (__m256, __m256) {
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (
            order(_mm256_shuffle_ps::<0b10_00_10_00>(x, y)),
            order(_mm256_shuffle_ps::<0b11_01_11_01>(x, y)),
        )
    }

    /// (window maxima, "position 1 / 2 / 3 beat the best so far" masks) of `cnt` (1..=8)
    /// windows; lanes past `cnt` hold zeros that no caller stores.
    /// # Safety
    /// AVX2 present; r0 and r1 each point at 2 cnt readable values.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn windows(r0: *const f32, r1: *const f32, cnt: usize) -> (__m256, [__m256; 3]) {
        let (ml, mh) = (first(2 * cnt), first((2 * cnt).saturating_sub(8)));
        // SAFETY: the masks keep the loads inside the 2 cnt values (masked lanes do not fault).
        let (a_lo, a_hi, b_lo, b_hi) = unsafe {
            (
                _mm256_maskload_ps(r0, ml),
                _mm256_maskload_ps(r0.wrapping_add(8), mh),
                _mm256_maskload_ps(r1, ml),
                _mm256_maskload_ps(r1.wrapping_add(8), mh),
            )
        };
        let ((a0, a1), (b0, b1)) = (split(a_lo, a_hi), split(b_lo, b_hi));
        let mut best = a0;
        let mut beat = [_mm256_setzero_ps(); 3];
        for (m, v) in beat.iter_mut().zip([a1, b0, b1]) {
            *m = beats(v, best);
            best = _mm256_blendv_ps(best, v, *m);
        }
        (best, beat)
    }

    /// The lanes where v replaces best: v > best, or v is the first NaN (`super::beats_nb`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::backend::cpu) fn beats(v: __m256, best: __m256) -> __m256 {
        let nan_beats = _mm256_andnot_ps(
            _mm256_cmp_ps::<_CMP_UNORD_Q>(best, best),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
        );
        _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, best), nan_beats)
    }

    /// y[j] = the maximum of window j, for every window.
    /// # Safety
    /// AVX2 present; r0 and r1 hold at least 2 y.len() values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max8(r0: &[f32], r1: &[f32], y: &mut [f32]) {
        for j in (0..y.len()).step_by(8) {
            let cnt = (y.len() - j).min(8);
            // SAFETY: windows j..j + cnt read values 2j..2(j + cnt) of each row and write
            // y[j..j + cnt] (masked).
            unsafe {
                let (best, _) = windows(r0.as_ptr().add(2 * j), r1.as_ptr().add(2 * j), cnt);
                _mm256_maskstore_ps(y.as_mut_ptr().add(j), first(cnt), best);
            }
        }
    }

    /// [x0 y0 x1 y1 .. x3 y3] and [x4 y4 .. x7 y7]: unpacklo/hi interleave within 128-bit
    /// lanes, and the lane permute puts them in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn zip(x: __m256, y: __m256) -> (__m256, __m256) {
        let (lo, hi) = (_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
        (
            _mm256_permute2f128_ps::<0x20>(lo, hi),
            _mm256_permute2f128_ps::<0x31>(lo, hi),
        )
    }

    /// d0/d1 = dy routed to each window's winner, zero elsewhere, for every window.
    /// # Safety
    /// AVX2 present; r0, r1, d0 and d1 hold at least 2 dy.len() values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn route8(r0: &[f32], r1: &[f32], dy: &[f32], d0: &mut [f32], d1: &mut [f32]) {
        for j in (0..dy.len()).step_by(8) {
            let cnt = (dy.len() - j).min(8);
            let (ml, mh) = (first(2 * cnt), first((2 * cnt).saturating_sub(8)));
            // SAFETY: windows j..j + cnt touch values 2j..2(j + cnt) of each row (masked).
            unsafe {
                let (_, [m1, m2, m3]) =
                    windows(r0.as_ptr().add(2 * j), r1.as_ptr().add(2 * j), cnt);
                let g = _mm256_maskload_ps(dy.as_ptr().add(j), first(cnt));
                // The winner is the last position that beat the best so far; andnot keeps
                // dy's bits exactly where the mask is set and +0 elsewhere.
                let o3 = _mm256_and_ps(m3, g);
                let o2 = _mm256_and_ps(_mm256_andnot_ps(m3, m2), g);
                let o1 = _mm256_and_ps(_mm256_andnot_ps(_mm256_or_ps(m2, m3), m1), g);
                let o0 = _mm256_andnot_ps(_mm256_or_ps(m1, _mm256_or_ps(m2, m3)), g);
                let ((t0, t1), (u0, u1)) = (zip(o0, o1), zip(o2, o3));
                let (p0, p1) = (d0.as_mut_ptr().add(2 * j), d1.as_mut_ptr().add(2 * j));
                _mm256_maskstore_ps(p0, ml, t0);
                _mm256_maskstore_ps(p0.wrapping_add(8), mh, t1);
                _mm256_maskstore_ps(p1, ml, u0);
                _mm256_maskstore_ps(p1.wrapping_add(8), mh, u1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract written as plainly as possible: scan the window in row-major order, skip
    /// padding, keep the first strict maximum, let the first NaN win.
    fn naive_argmax(
        plane: &[f32],
        h: usize,
        w: usize,
        p: Pool2dParams,
        oi: usize,
        oj: usize,
    ) -> Option<usize> {
        let mut arg: Option<usize> = None;
        for ki in 0..p.kernel {
            for kj in 0..p.kernel {
                let (i, j) = (
                    (oi * p.stride + ki) as isize - p.pad as isize,
                    (oj * p.stride + kj) as isize - p.pad as isize,
                );
                if i < 0 || j < 0 || i >= h as isize || j >= w as isize {
                    continue;
                }
                let at = i as usize * w + j as usize;
                let take = match arg {
                    None => true,
                    Some(b) => plane[at] > plane[b] || (plane[at].is_nan() && !plane[b].is_nan()),
                };
                if take {
                    arg = Some(at);
                }
            }
        }
        arg
    }

    fn planted(next: &mut impl FnMut() -> u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| match next() % 11 {
                0 => f32::NAN,
                1 => 1.0, // ties
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                4 => -0.0,
                5 => 0.0,
                r => (r as f32 - 8.0) * 0.37,
            })
            .collect()
    }

    fn xorshift() -> impl FnMut() -> u64 {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// `forward_plane` gives, bit for bit, the value at `oracle`'s index for every output cell,
    /// and `backward_plane` routes each cell's dy to that index.
    fn planes_follow(
        plane: &[f32],
        h: usize,
        w: usize,
        p: Pool2dParams,
        oracle: impl Fn(usize, usize) -> Option<usize>,
    ) {
        let (po, qo) = out_size(h, w, p);
        for isa in crate::backend::cpu::sgemm::supported_isas() {
            let mut y = vec![0.0; po * qo];
            forward_plane(isa, plane, h, w, p, &mut y);
            // dy of both signs and never zero, so a routed value cannot pass for the zero fill.
            let dy: Vec<f32> = (0..po * qo).map(|i| i as f32 - 7.5).collect();
            let mut dx = vec![0.0; h * w];
            backward_plane(isa, plane, h, w, p, &dy, &mut dx);
            let mut dx_ref = vec![0.0f32; h * w];
            for oi in 0..po {
                for oj in 0..qo {
                    let case = format!("{} {p:?} {h}x{w} ({oi},{oj})", isa.name());
                    let i = oracle(oi, oj).expect("pool_geom admits no all-padding window");
                    assert_eq!(y[oi * qo + oj].to_bits(), plane[i].to_bits(), "{case}");
                    dx_ref[i] += dy[oi * qo + oj];
                }
            }
            assert_eq!(dx, dx_ref, "{} {p:?} {h}x{w} backward", isa.name());
        }
    }

    #[test]
    fn generic_scan_follows_the_contract() {
        let mut next = xorshift();
        for (k, st, pad) in [
            (3, 2, 1),
            (2, 2, 0),
            (3, 1, 1),
            (2, 1, 0),
            (5, 3, 2),
            (1, 1, 0),
        ] {
            let p = Pool2dParams {
                kernel: k,
                stride: st,
                pad,
            };
            for (h, w) in [(5, 5), (7, 4), (9, 11), (6, 6), (28, 28), (3, 80)] {
                let plane = planted(&mut next, h * w);
                let (po, qo) = out_size(h, w, p);
                for oi in 0..po {
                    for oj in 0..qo {
                        let want = naive_argmax(&plane, h, w, p, oi, oj);
                        let case = format!("{p:?} {h}x{w} ({oi},{oj})");
                        assert_eq!(argmax(&plane, h, w, p, oi, oj), want, "{case}");
                    }
                }
                planes_follow(&plane, h, w, p, |oi, oj| {
                    naive_argmax(&plane, h, w, p, oi, oj)
                });
            }
        }
    }

    /// The per-window scan of planes too large for the row pass, on the same cases.
    #[test]
    fn scan_fallback_follows_the_contract() {
        let mut next = xorshift();
        for (k, st, pad) in [(3, 2, 1), (5, 3, 2), (2, 1, 0)] {
            let p = Pool2dParams {
                kernel: k,
                stride: st,
                pad,
            };
            for (h, w) in [(5, 5), (9, 11), (3, 80)] {
                let plane = planted(&mut next, h * w);
                let (po, qo) = out_size(h, w, p);
                let mut y = vec![0.0; po * qo];
                scan_forward(&plane, h, w, p, &mut y);
                let dy: Vec<f32> = (0..po * qo).map(|i| i as f32 + 1.0).collect();
                let mut dx = vec![0.0; h * w];
                scan_backward(&plane, h, w, p, &dy, &mut dx);
                let mut dx_ref = vec![0.0; h * w];
                for (o, &g) in dy.iter().enumerate() {
                    let i = naive_argmax(&plane, h, w, p, o / qo, o % qo).expect("admitted");
                    assert_eq!(y[o].to_bits(), plane[i].to_bits(), "{p:?} {h}x{w} cell {o}");
                    dx_ref[i] += g;
                }
                assert_eq!(dx, dx_ref, "{p:?} {h}x{w} backward");
            }
        }
        assert!(fits_u32(65_536, 65_535) && !fits_u32(65_536, 65_536) && !fits_u32(usize::MAX, 2));
    }

    /// The 3x3/2 pad-1 stem pool (its own AVX2 path) against the contract on planes of 1 to 4
    /// vector blocks per row, odd and even sides (padding on the right / bottom or not), ties,
    /// NaNs and infinities planted; the output plane sits in a larger buffer whose tail must
    /// keep its sentinel.
    #[test]
    fn stem_pool_follows_the_contract() {
        let p = Pool2dParams {
            kernel: 3,
            stride: 2,
            pad: 1,
        };
        let mut next = xorshift();
        for (h, w) in [
            (1, 1),
            (2, 3),
            (1, 17),
            (14, 14),
            (28, 28),
            (28, 17),
            (5, 33),
            (11, 64),
        ] {
            #[cfg(target_arch = "x86_64")]
            assert!(pool_stem::applies(p, h, w));
            let plane = planted(&mut next, h * w);
            planes_follow(&plane, h, w, p, |oi, oj| {
                naive_argmax(&plane, h, w, p, oi, oj)
            });
            let (po, qo) = out_size(h, w, p);
            for isa in crate::backend::cpu::sgemm::supported_isas() {
                let mut y = vec![777.0; po * qo + 9];
                forward_plane(isa, &plane, h, w, p, &mut y[..po * qo]);
                let tail = &y[po * qo..];
                assert!(
                    tail.iter().all(|&v| v == 777.0),
                    "{} {h}x{w}: y overrun",
                    isa.name()
                );
            }
        }
    }

    /// The vector 2x2 rows store nothing past their cut: each output slice sits at the start
    /// of a larger buffer whose tail holds a sentinel (a masked store with the wrong mask
    /// writes past the row and into the next one).
    #[test]
    fn rows_2x2_stay_inside_their_slices() {
        let mut next = xorshift();
        for isa in crate::backend::cpu::sgemm::supported_isas() {
            for n in 1..=35 {
                let (r0, r1) = (planted(&mut next, 2 * n), planted(&mut next, 2 * n));
                let dy: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
                let (mut y, mut d0, mut d1) = (
                    vec![777.0; n + 16],
                    vec![777.0; 2 * n + 16],
                    vec![777.0; 2 * n + 16],
                );
                max_2x2_row(isa, &r0, &r1, &mut y[..n]);
                route_2x2(isa, &r0, &r1, &dy, &mut d0[..2 * n], &mut d1[..2 * n]);
                let case = format!("{} {n} windows", isa.name());
                assert!(
                    y[n..].iter().all(|&v| v == 777.0),
                    "{case}: y written past its end"
                );
                assert!(
                    d0[2 * n..].iter().all(|&v| v == 777.0),
                    "{case}: d0 written past its end"
                );
                assert!(
                    d1[2 * n..].iter().all(|&v| v == 777.0),
                    "{case}: d1 written past its end"
                );
                assert!(y[..n].iter().all(|&v| v != 777.0), "{case}: y not written");
            }
        }
    }

    /// The 2x2 path against the generic scan, on odd plane sizes (the last row/column dropped),
    /// with ties, NaNs and infinities planted.
    #[test]
    fn fast_2x2_matches_the_generic_scan() {
        let p = Pool2dParams {
            kernel: 2,
            stride: 2,
            pad: 0,
        };
        let mut next = xorshift();
        // Rows of 1 to 35 windows: the vector path's full and masked blocks.
        for (h, w) in [
            (2, 2),
            (3, 5),
            (7, 7),
            (28, 28),
            (13, 2),
            (4, 32),
            (5, 70),
            (3, 65),
        ] {
            let plane = planted(&mut next, h * w);
            planes_follow(&plane, h, w, p, |oi, oj| argmax(&plane, h, w, p, oi, oj));
        }
    }
}
