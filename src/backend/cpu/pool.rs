//! Max pooling on one H x W plane: the generic clipped-window scan, and a straight-line path
//! for the 2x2 stride-2 unpadded pool that every small model uses.
//!
//! Contract (both paths): the output is the first maximum of each window in row-major order,
//! strict `>` (ties go to the earlier element), and a NaN wins once so that it propagates as in
//! torch. The backward pass routes dy to that same element. Under `perf` the generic scan, with
//! its per-element window bookkeeping, was about 15% of a small-vgg16 training step; the 2x2
//! path compares four values with no bookkeeping at all.

use crate::backend::Pool2dParams;

/// Whether `v` replaces the current best under the contract above.
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    v > best || (v.is_nan() && !best.is_nan())
}

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
    let mut best = f32::NEG_INFINITY;
    let mut arg = None;
    if jlo >= jhi {
        return None;
    }
    for ki in ilo..ihi {
        // First input column of the clipped window: j0 + jlo - pad >= 0 by the choice of jlo.
        let first = (i0 + ki - p.pad) * w + j0 + jlo - p.pad;
        for (t, &v) in plane[first..first + (jhi - jlo)].iter().enumerate() {
            if arg.is_none() || beats(v, best) {
                best = v;
                arg = Some(first + t);
            }
        }
    }
    arg
}

/// The 2x2 stride-2 unpadded pool, whose windows always lie inside the plane.
fn is_2x2(p: Pool2dParams) -> bool {
    p.kernel == 2 && p.stride == 2 && p.pad == 0
}

/// Index of the first maximum of the 2x2 window whose top-left element is `at`.
#[inline(always)]
fn argmax_2x2(plane: &[f32], w: usize, at: usize) -> usize {
    let mut arg = at;
    let mut best = plane[at];
    for i in [at + 1, at + w, at + w + 1] {
        if beats(plane[i], best) {
            best = plane[i];
            arg = i;
        }
    }
    arg
}

/// yp[po*qo] = the pooled plane.
pub(super) fn forward_plane(plane: &[f32], h: usize, w: usize, p: Pool2dParams, yp: &mut [f32]) {
    let (po, qo) = out_size(h, w, p);
    if is_2x2(p) {
        for (oi, row) in yp.chunks_exact_mut(qo).enumerate() {
            for (oj, y) in row.iter_mut().enumerate() {
                *y = plane[argmax_2x2(plane, w, 2 * oi * w + 2 * oj)];
            }
        }
        return;
    }
    for oi in 0..po {
        for oj in 0..qo {
            yp[oi * qo + oj] =
                argmax(plane, h, w, p, oi, oj).map_or(f32::NEG_INFINITY, |i| plane[i]);
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
            for (oj, &g) in row.iter().enumerate() {
                dxp[argmax_2x2(plane, w, 2 * oi * w + 2 * oj)] += g;
            }
        }
        return;
    }
    for oi in 0..po {
        for oj in 0..qo {
            if let Some(i) = argmax(plane, h, w, p, oi, oj) {
                dxp[i] += dyp[oi * qo + oj];
            }
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

    /// The 2x2 path against the generic scan, on odd plane sizes (the last row/column dropped),
    /// with ties, NaNs and infinities planted.
    #[test]
    fn fast_2x2_matches_the_generic_scan() {
        let p = Pool2dParams {
            kernel: 2,
            stride: 2,
            pad: 0,
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (h, w) in [(2, 2), (3, 5), (7, 7), (28, 28), (13, 2)] {
            let plane: Vec<f32> = (0..h * w)
                .map(|_| match next() % 11 {
                    0 => f32::NAN,
                    1 => 1.0, // ties
                    2 => f32::INFINITY,
                    3 => f32::NEG_INFINITY,
                    r => (r as f32 - 6.0) * 0.37,
                })
                .collect();
            let (po, qo) = out_size(h, w, p);
            let mut y = vec![0.0; po * qo];
            forward_plane(&plane, h, w, p, &mut y);
            let dy: Vec<f32> = (0..po * qo).map(|i| i as f32 + 1.0).collect();
            let mut dx = vec![0.0; h * w];
            backward_plane(&plane, h, w, p, &dy, &mut dx);
            let mut dx_ref = vec![0.0; h * w];
            for oi in 0..po {
                for oj in 0..qo {
                    let i = argmax(&plane, h, w, p, oi, oj).expect("window inside");
                    assert_eq!(
                        y[oi * qo + oj].to_bits(),
                        plane[i].to_bits(),
                        "{h}x{w} ({oi},{oj})"
                    );
                    dx_ref[i] += dy[oi * qo + oj];
                }
            }
            assert_eq!(dx, dx_ref, "{h}x{w} backward");
        }
    }
}
