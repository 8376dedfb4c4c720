//! The 3x3 stride-2 pad-1 max pool (ResNet's stem pool) straight from the plane, eight outputs
//! at a time with AVX2. The generic row pass (`pool::RowPass`) was 13% of a small-resnet18 w16
//! I-FGS on Zen 3: its 28-column rows left 13-long interior runs whose scalar tails, phase split
//! and buffer round trips cost more than the compares.
//!
//! Geometry: output (oi, oj) reads input rows 2oi-1, 2oi, 2oi+1 and columns 2oj-1, 2oj, 2oj+1.
//! For one input row and outputs j0..j0+8, the even columns (M) and the odd ones (R) come from
//! two loads and a de-interleave; the left column L of output oj is R of output oj-1, so L is R
//! shifted up one lane, with the previous block's last R carried in.
//!
//! Padding never wins, without masks: a padded position takes the value and the index of its
//! neighbour in row-major order. Column -1 copies column 0, which comes right after it; column w
//! copies column w-1, right before it. Row -1 copies all of row 0 and row h all of row h-1. A
//! copy placed just before its original gives the original's value and index if it wins, and
//! the original then ties with it (strict `>`), so the scan ends as without the copy; a copy
//! placed just after ties with a best that already covers its original. So the result is the
//! contract's (`pool` module docs): the first maximum in row-major order, NaN first.
//!
//! The backward pass routes dy to the same index in the same (oi, oj) order as the row pass, so
//! the overlapping windows' sums are added in the same order and give the same bits.

use crate::backend::Pool2dParams;

/// The pool this module handles.
const STEM: Pool2dParams = Pool2dParams {
    kernel: 3,
    stride: 2,
    pad: 1,
};

/// Whether this module handles pool `p` on an h x w plane: the vector code keeps columns and
/// plane indices in signed 32-bit lanes.
pub(super) fn applies(p: Pool2dParams, h: usize, w: usize) -> bool {
    let fits = h.checked_mul(w).is_some_and(|n| n <= i32::MAX as usize);
    p == STEM && fits
}

/// Output plane size of the pool on an h x w plane.
fn out_size(h: usize, w: usize) -> (usize, usize) {
    super::pool::out_size(h, w, STEM)
}

/// The three input rows under output row oi, with the padded ones replaced by their neighbour.
fn rows_of(oi: usize, h: usize) -> [usize; 3] {
    [(2 * oi).max(1) - 1, 2 * oi, (2 * oi + 1).min(h - 1)]
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::pool::avx2::{beats, first, split};
    use super::{out_size, rows_of};

    /// The columns of outputs j0..j0+8 (lanes past the row's last output hold garbage that no
    /// caller uses): L (2oj-1, or 0 for oj = 0), M (2oj) and R (2oj+1, or 2oj where that is w),
    /// and the mask of the lanes whose R is inside the row.
    #[derive(Clone, Copy)]
    struct Cols {
        l: __m256i,
        m: __m256i,
        r: __m256i,
        r_in: __m256,
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn cols(w: usize, j0: usize) -> Cols {
        let m = _mm256_add_epi32(
            _mm256_set1_epi32(2 * j0 as i32),
            _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
        );
        let one = _mm256_set1_epi32(1);
        let r = _mm256_add_epi32(m, one);
        let r_in = _mm256_cmpgt_epi32(_mm256_set1_epi32(w as i32), r);
        Cols {
            l: _mm256_max_epi32(_mm256_sub_epi32(m, one), _mm256_setzero_si256()),
            m,
            r: _mm256_blendv_epi8(m, r, r_in),
            r_in: _mm256_castsi256_ps(r_in),
        }
    }

    /// The L, M, R values of outputs j0..j0+8 on one row, and the carry for the next block (R
    /// of lane 7 in every lane). `carry` is the previous block's, or None for j0 = 0.
    /// # Safety
    /// `row` points at a row of w values and j0 < the row's output count.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn values(
        row: *const f32,
        w: usize,
        j0: usize,
        c: &Cols,
        carry: Option<__m256>,
    ) -> ([__m256; 3], __m256) {
        let n = w - 2 * j0;
        // SAFETY: the masks keep both loads inside the row's w - 2 j0 values from 2 j0 on.
        let (lo, hi) = unsafe {
            let at = row.add(2 * j0);
            (
                _mm256_maskload_ps(at, first(n)),
                _mm256_maskload_ps(at.wrapping_add(8), first(n.saturating_sub(8))),
            )
        };
        let (m, odd) = split(lo, hi);
        let r = _mm256_blendv_ps(m, odd, c.r_in);
        let up = _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6));
        let lane0 = carry.unwrap_or_else(|| _mm256_permutevar8x32_ps(m, _mm256_setzero_si256()));
        let l = _mm256_blend_ps::<1>(up, lane0);
        let next = _mm256_permutevar8x32_ps(r, _mm256_set1_epi32(7));
        ([l, m, r], next)
    }

    /// The window maxima (and with `ARGS`, their plane indices) of outputs j0..j0+8 of output
    /// row oi. `carry` holds each of the three rows' carries, updated for the next block.
    /// # Safety
    /// `plane` holds h x w values (`applies`), j0 < qo.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block<const ARGS: bool>(
        plane: &[f32],
        w: usize,
        rows: [usize; 3],
        j0: usize,
        carry: &mut [Option<__m256>; 3],
    ) -> (__m256, __m256i) {
        let c = cols(w, j0);
        let (mut best, mut arg) = (_mm256_setzero_ps(), _mm256_setzero_si256());
        for (k, (&r, carry)) in rows.iter().zip(carry.iter_mut()).enumerate() {
            // SAFETY: row r < h starts at r w, and j0 < qo (the caller).
            let (vals, next) = unsafe { values(plane.as_ptr().add(r * w), w, j0, &c, *carry) };
            *carry = Some(next);
            let base = _mm256_set1_epi32((r * w) as i32);
            for (t, (v, col)) in vals.into_iter().zip([c.l, c.m, c.r]).enumerate() {
                let at = _mm256_add_epi32(base, col);
                if k == 0 && t == 0 {
                    (best, arg) = (v, at);
                    continue;
                }
                let m = beats(v, best);
                best = _mm256_blendv_ps(best, v, m);
                if ARGS {
                    arg = _mm256_blendv_epi8(arg, at, _mm256_castps_si256(m));
                }
            }
        }
        (best, arg)
    }

    /// yp[po*qo] = the pooled plane.
    /// # Safety
    /// AVX2 present; plane holds h x w values (h, w >= 1, `applies`), yp holds po x qo.
    #[target_feature(enable = "avx2")]
    pub unsafe fn forward(plane: &[f32], h: usize, w: usize, yp: &mut [f32]) {
        let (po, qo) = out_size(h, w);
        for (oi, row) in yp.chunks_exact_mut(qo).enumerate().take(po) {
            let mut carry = [None; 3];
            for j0 in (0..qo).step_by(8) {
                // SAFETY: j0 < qo; the store is masked to the row's qo - j0 outputs.
                unsafe {
                    let (best, _) = block::<false>(plane, w, rows_of(oi, h), j0, &mut carry);
                    _mm256_maskstore_ps(row.as_mut_ptr().add(j0), first(qo - j0), best);
                }
            }
        }
    }

    /// dxp[h*w] += dy routed to each window's first maximum (dxp zeroed by the caller).
    /// # Safety
    /// As `forward`; dyp holds po x qo values and dxp h x w.
    #[target_feature(enable = "avx2")]
    pub unsafe fn backward(plane: &[f32], h: usize, w: usize, dyp: &[f32], dxp: &mut [f32]) {
        let (po, qo) = out_size(h, w);
        let mut args = [0u32; 8];
        for (oi, dy) in dyp.chunks_exact(qo).enumerate().take(po) {
            let mut carry = [None; 3];
            for j0 in (0..qo).step_by(8) {
                // SAFETY: j0 < qo; args holds 8 u32.
                unsafe {
                    let (_, arg) = block::<true>(plane, w, rows_of(oi, h), j0, &mut carry);
                    _mm256_storeu_si256(args.as_mut_ptr().cast(), arg);
                }
                for (&g, &a) in dy[j0..].iter().zip(&args) {
                    dxp[a as usize] += g;
                }
            }
        }
    }
}
