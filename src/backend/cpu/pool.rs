//! Max pooling on one H x W plane: the generic clipped-window scan, and a straight-line path
//! for the 2x2 stride-2 unpadded pool that every small model uses.
//!
//! Contract (both paths): the output is the first maximum of each window in row-major order,
//! strict `>` (ties go to the earlier element), and a NaN wins once so that it propagates as in
//! torch. The backward pass routes dy to that same element. Under `perf` the generic scan, with
//! its per-element window bookkeeping, was about 15% of a small-vgg16 training step; the 2x2
//! path compares four values with no bookkeeping at all.

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

/// The first maximum of the window [a0 a1; b0 b1] and its position 0..4 in row-major order.
#[inline(always)]
fn max_2x2(a: &[f32], b: &[f32]) -> (f32, usize) {
    let (mut best, mut arg) = (a[0], 0);
    for (v, i) in [(a[1], 1), (b[0], 2), (b[1], 3)] {
        let t = beats_nb(v, best);
        best = if t { v } else { best };
        arg = if t { i } else { arg };
    }
    (best, arg)
}

/// The input row pair (2 oi, 2 oi + 1) under output row oi, cut to the 2 qo columns read.
#[inline(always)]
fn row_pair(plane: &[f32], w: usize, oi: usize, qo: usize) -> (&[f32], &[f32]) {
    let top = 2 * oi * w;
    (&plane[top..top + 2 * qo], &plane[top + w..top + w + 2 * qo])
}

/// yp[po*qo] = the pooled plane.
pub(super) fn forward_plane(plane: &[f32], h: usize, w: usize, p: Pool2dParams, yp: &mut [f32]) {
    let (po, qo) = out_size(h, w, p);
    if is_2x2(p) {
        for (oi, row) in yp.chunks_exact_mut(qo).enumerate() {
            let (r0, r1) = row_pair(plane, w, oi, qo);
            for ((y, a), b) in row
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                *y = max_2x2(a, b).0;
            }
        }
        return;
    }
    let mut args = vec![None; qo];
    for (oi, row) in yp.chunks_exact_mut(qo).enumerate().take(po) {
        row_argmax(plane, h, w, p, oi, &mut args);
        for (y, a) in row.iter_mut().zip(&args) {
            *y = a.map_or(f32::NEG_INFINITY, |i| plane[i]);
        }
    }
}

/// dxp[h*w] += dy routed to each window's first maximum (dxp zeroed by the caller).
pub(super) fn backward_plane(
    plane: &[f32],
    h: usize,
    w: usize,
    p: Pool2dParams,
    dyp: &[f32],
    dxp: &mut [f32],
) {
    let (po, qo) = out_size(h, w, p);
    if is_2x2(p) {
        for (oi, row) in dyp.chunks_exact(qo).enumerate() {
            let (r0, r1) = row_pair(plane, w, oi, qo);
            let top = 2 * oi * w;
            for (oj, &g) in row.iter().enumerate() {
                let (_, at) = max_2x2(&r0[2 * oj..], &r1[2 * oj..]);
                // at 0..4 -> (row at / 2, column at % 2) of the window.
                dxp[top + (at >> 1) * w + 2 * oj + (at & 1)] += g;
            }
        }
        return;
    }
    let mut args = vec![None; qo];
    for (oi, row) in dyp.chunks_exact(qo).enumerate().take(po) {
        row_argmax(plane, h, w, p, oi, &mut args);
        for (&g, a) in row.iter().zip(&args) {
            if let Some(i) = *a {
                dxp[i] += g;
            }
        }
    }
}

/// Outputs per block of the interior scan: independent comparison chains the CPU can overlap.
const BLOCK: usize = 32;

/// args[oj] = `argmax(.., oi, oj)` for a whole output row. The columns whose window lies inside
/// the plane horizontally are scanned a block at a time, window element by window element
/// across the block, so that the block's comparisons do not wait on each other; the border
/// columns (at most pad / stride on each side) take the clipped scan.
fn row_argmax(
    plane: &[f32],
    h: usize,
    w: usize,
    p: Pool2dParams,
    oi: usize,
    args: &mut [Option<usize>],
) {
    let (k, s, pad) = (p.kernel, p.stride, p.pad);
    let qo = args.len();
    let i0 = oi * s;
    let (ilo, ihi) = (pad.saturating_sub(i0), (h + pad - i0.min(h + pad)).min(k));
    // Interior columns: oj*s >= pad and oj*s - pad + k <= w.
    let jl = pad.div_ceil(s).min(qo);
    let jr = if w + pad >= k {
        ((w + pad - k) / s + 1).min(qo)
    } else {
        0
    }
    .max(jl);
    for oj in (0..jl).chain(jr..qo) {
        args[oj] = argmax(plane, h, w, p, oi, oj);
    }
    if ilo >= ihi {
        args[jl..jr].fill(None);
        return;
    }
    let (mut best, mut arg) = ([0.0f32; BLOCK], [0usize; BLOCK]);
    for b0 in (jl..jr).step_by(BLOCK) {
        let n = BLOCK.min(jr - b0);
        // Column of window element kj for output b0 + t: (b0 + t) * s + kj - pad >= 0.
        let top = (i0 + ilo - pad) * w + b0 * s - pad;
        for t in 0..n {
            arg[t] = top + t * s;
            best[t] = plane[arg[t]];
        }
        for ki in ilo..ihi {
            let row0 = (i0 + ki - pad) * w + b0 * s - pad;
            for kj in 0..k {
                for t in 0..n {
                    let at = row0 + t * s + kj;
                    let v = plane[at];
                    let take = beats_nb(v, best[t]);
                    best[t] = if take { v } else { best[t] };
                    arg[t] = if take { at } else { arg[t] };
                }
            }
        }
        for t in 0..n {
            args[b0 + t] = Some(arg[t]);
        }
    }
}

/// Output plane size (validated by `pool_geom` before any plane is visited).
fn out_size(h: usize, w: usize, p: Pool2dParams) -> (usize, usize) {
    let o = |n: usize| crate::backend::out_dim(n, p.kernel, p.stride, p.pad).unwrap_or(0);
    (o(h), o(w))
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
        let mut y = vec![0.0; po * qo];
        forward_plane(plane, h, w, p, &mut y);
        let dy: Vec<f32> = (0..po * qo).map(|i| i as f32 + 1.0).collect();
        let mut dx = vec![0.0; h * w];
        backward_plane(plane, h, w, p, &dy, &mut dx);
        let mut dx_ref = vec![0.0; h * w];
        for oi in 0..po {
            for oj in 0..qo {
                let case = format!("{p:?} {h}x{w} ({oi},{oj})");
                let i = oracle(oi, oj).expect("pool_geom admits no all-padding window");
                assert_eq!(y[oi * qo + oj].to_bits(), plane[i].to_bits(), "{case}");
                dx_ref[i] += dy[oi * qo + oj];
            }
        }
        assert_eq!(dx, dx_ref, "{p:?} {h}x{w} backward");
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
        for (h, w) in [(2, 2), (3, 5), (7, 7), (28, 28), (13, 2)] {
            let plane = planted(&mut next, h * w);
            planes_follow(&plane, h, w, p, |oi, oj| argmax(&plane, h, w, p, oi, oj));
        }
    }
}
