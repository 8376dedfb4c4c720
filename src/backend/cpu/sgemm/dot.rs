//! C[m, n] += A[m, len] . B[n, len]^T with both operands read along their contiguous rows (the
//! backward-filter product dw += dy_n . col_n^T, whose reduction runs along pixels). A GEMM
//! would have to transpose B into panels element by element; here each C element is a dot
//! product of two contiguous rows, kept in vector lanes and reduced once at the end.
//!
//! Order of summation per C element (fixed for a given ISA, whatever the thread count): lane l
//! sums p = l, l + L, l + 2L, ... in order (L = 16 on AVX-512 and in the generic code, 8 on
//! AVX2), then the lanes are added in a fixed tree, then the result is added to C. AVX-512 and
//! AVX2 fuse each multiply-add; the generic code does not.

use super::Isa;

/// Checked entry: panics (an internal size bug) if a row of A, B or C lies outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn dot_nt_acc(
    isa: Isa,
    m: usize,
    n: usize,
    len: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    dot_nt_acc_rows(isa, m, n, len, a, lda, b, |j| j * ldb, c, ldc)
}

/// As `dot_nt_acc`, with row j of B starting at `brow(j)` (rows may overlap): the padded-grid
/// backward-filter reads its shifted windows of one padded image this way, with no im2col.
#[allow(clippy::too_many_arguments)]
pub fn dot_nt_acc_rows(
    isa: Isa,
    m: usize,
    n: usize,
    len: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    brow: impl Fn(usize) -> usize + Copy,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 || len == 0 {
        return;
    }
    // The row starts, once: the kernels ask for them per register tile, and the padded grid's
    // `row_base` (two divisions) was 11% of ResNet-18 layer4's backward-filter that way.
    let offs: Vec<usize> = (0..n).map(brow).collect();
    assert!((m - 1) * lda + len <= a.len(), "dot_nt: a too small");
    assert!(
        offs.iter()
            .all(|&o| o.checked_add(len).is_some_and(|e| e <= b.len())),
        "dot_nt: b too small"
    );
    assert!((m - 1) * ldc + n <= c.len(), "dot_nt: c too small");
    assert!(
        isa.supported(),
        "dot_nt: {} is not supported here",
        isa.name()
    );
    // B in blocks of rows that stay in L2 while every row of A passes over them: unblocked,
    // each 3 or 4 rows of A streamed all of B (a megabyte on ResNet-18's deep layers) from L3.
    // Each C element is still one dot product over the whole row, so the bits do not change.
    let nb = block_rows(len);
    for jb in (0..n).step_by(nb) {
        let (nj, c) = (nb.min(n - jb), &mut c[jb..]);
        let brow = |j: usize| offs[jb + j];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the asserts above bound every row read and written (block jb.. of B and
            // C, whose rows keep their strides); AVX-512F is present.
            Isa::Avx512 => unsafe { avx512::run(m, nj, len, a, lda, b, brow, c, ldc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; AVX2 and FMA are present.
            Isa::Avx2 => unsafe { avx2::run(m, nj, len, a, lda, b, brow, c, ldc) },
            _ => generic(m, nj, len, a, lda, b, brow, c, ldc),
        }
    }
}

/// Rows of B per block: about 192 KiB of B rows of `len` floats (L2 is 512 KiB on Zen 3 and
/// 1-2 MiB on recent Intel cores; A's rows stream past), a multiple of every kernel's tile
/// width (4, 6).
pub(super) fn block_rows(len: usize) -> usize {
    const BUDGET: usize = 192 << 10;
    let rows = BUDGET / (len * std::mem::size_of::<f32>()).max(1);
    (rows / 12).max(1) * 12
}

const LANES: usize = 16;

/// The portable code: 16 independent partial sums per element that the compiler vectorises.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn generic(
    m: usize,
    n: usize,
    len: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    brow: impl Fn(usize) -> usize,
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..m {
        let ar = &a[i * lda..i * lda + len];
        for j in 0..n {
            let br = &b[brow(j)..brow(j) + len];
            let mut acc = [0.0f32; LANES];
            let (ac, bc) = (ar.chunks_exact(LANES), br.chunks_exact(LANES));
            let (at, bt) = (ac.remainder(), bc.remainder());
            for (x, y) in ac.zip(bc) {
                for l in 0..LANES {
                    acc[l] += x[l] * y[l];
                }
            }
            for (l, (x, y)) in at.iter().zip(bt).enumerate() {
                acc[l] += x * y;
            }
            c[i * ldc + j] += tree(acc);
        }
    }
}

/// The fixed reduction tree of the lanes (pairs at distance 8, 4, 2, 1).
#[inline(always)]
fn tree(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    /// Rows of A and rows of B per register tile (RI x RJ accumulators of 16 lanes).
    const RI: usize = 4;
    const RJ: usize = 6;

    /// # Safety
    /// AVX-512F present; rows i < m of A (stride lda), j < n of B (at `brow(j)`) hold `len`
    /// values and rows of C (stride ldc) hold n values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn run(
        m: usize,
        n: usize,
        len: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        brow: impl Fn(usize) -> usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        let tail = len % 16;
        let mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
        for i0 in (0..m).step_by(RI) {
            // Rows past the edge re-read the last row; their sums are dropped.
            let ar: [*const f32; RI] =
                std::array::from_fn(|r| a.as_ptr().wrapping_add((i0 + r).min(m - 1) * lda));
            for j0 in (0..n).step_by(RJ) {
                let br: [*const f32; RJ] =
                    std::array::from_fn(|r| b.as_ptr().wrapping_add(brow((j0 + r).min(n - 1))));
                let mut acc = [[_mm512_setzero_ps(); RJ]; RI];
                let mut p = 0;
                while p + 16 <= len {
                    // SAFETY: p + 16 <= len and every row pointer starts a row of `len` values.
                    unsafe {
                        let bv: [__m512; RJ] =
                            std::array::from_fn(|r| _mm512_loadu_ps(br[r].add(p)));
                        for (ri, row) in acc.iter_mut().enumerate() {
                            let av = _mm512_loadu_ps(ar[ri].add(p));
                            for (cj, &bj) in row.iter_mut().zip(&bv) {
                                *cj = _mm512_fmadd_ps(av, bj, *cj);
                            }
                        }
                    }
                    p += 16;
                }
                if tail > 0 {
                    // SAFETY: the mask limits the loads to the `tail` values left in each row.
                    unsafe {
                        let bv: [__m512; RJ] =
                            std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, br[r].add(p)));
                        for (ri, row) in acc.iter_mut().enumerate() {
                            let av = _mm512_maskz_loadu_ps(mask, ar[ri].add(p));
                            for (cj, &bj) in row.iter_mut().zip(&bv) {
                                *cj = _mm512_fmadd_ps(av, bj, *cj);
                            }
                        }
                    }
                }
                for (ri, row) in acc.iter().enumerate().take(m - i0) {
                    for (cj, v) in row.iter().enumerate().take(n - j0) {
                        c[(i0 + ri) * ldc + j0 + cj] += _mm512_reduce_add_ps(*v);
                    }
                }
            }
        }
    }
}

/// Register-tiled dot products on AVX2: RI = 3 rows of A against RJ = 4 rows of B, each C
/// element in one ymm accumulator (8 lanes), so that every load of A or B feeds 4 or 3
/// multiply-adds. 12 accumulators, 3 A vectors and 1 B vector fill the 16 ymm registers; per 8
/// values of p the tile makes 7 loads for 12 FMAs. (Two ymm per element, to keep the generic
/// code's 16 lanes, allowed only a 2 x 3 tile: 10 loads for 12 FMAs. One element at a time made
/// 2 loads per FMA: the generic code was 58% of a small-alexnet w8 training step on Zen 3.)
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    const RI: usize = 3;
    const RJ: usize = 4;

    /// # Safety
    /// AVX2 and FMA present; rows i < m of A (stride lda), j < n of B (at `brow(j)`) hold
    /// `len` values and rows of C (stride ldc) hold n values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run(
        m: usize,
        n: usize,
        len: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        brow: impl Fn(usize) -> usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        let tail = len % 8;
        let m8: [i32; 8] = std::array::from_fn(|l| if l < tail { -1 } else { 0 });
        // SAFETY: an 8-lane array read whole.
        let mask = unsafe { _mm256_loadu_si256(m8.as_ptr().cast()) };
        for i0 in (0..m).step_by(RI) {
            // Rows past the edge re-read the last row; their sums are dropped.
            let ar: [*const f32; RI] =
                std::array::from_fn(|r| a.as_ptr().wrapping_add((i0 + r).min(m - 1) * lda));
            for j0 in (0..n).step_by(RJ) {
                let br: [*const f32; RJ] =
                    std::array::from_fn(|r| b.as_ptr().wrapping_add(brow((j0 + r).min(n - 1))));
                let mut acc = [[_mm256_setzero_ps(); RJ]; RI];
                let mut p = 0;
                while p + 8 <= len {
                    // SAFETY: p + 8 <= len and every row pointer starts a row of `len` values.
                    unsafe { step(&mut acc, &ar, &br, p, None) };
                    p += 8;
                }
                if tail > 0 {
                    // SAFETY: the mask limits the loads to the `tail` values left in each row
                    // (masked lanes do not fault).
                    unsafe { step(&mut acc, &ar, &br, p, Some(mask)) };
                }
                for (ri, row) in acc.iter().enumerate().take(m - i0) {
                    for (cj, v) in row.iter().enumerate().take(n - j0) {
                        c[(i0 + ri) * ldc + j0 + cj] += reduce(*v);
                    }
                }
            }
        }
    }

    /// acc[ri][rj] += A row ri . B row rj over the 8 values at `at` (masked if `mask`).
    /// # Safety
    /// AVX2 and FMA present; 8 values (or the masked ones) at `at` of every row are readable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step(
        acc: &mut [[__m256; RJ]; RI],
        ar: &[*const f32; RI],
        br: &[*const f32; RJ],
        at: usize,
        mask: Option<__m256i>,
    ) {
        // SAFETY: the caller vouches for the 8 (or masked) values at `at` of each row.
        let load = |p: *const f32| unsafe {
            match mask {
                Some(m) => _mm256_maskload_ps(p.wrapping_add(at), m),
                None => _mm256_loadu_ps(p.add(at)),
            }
        };
        let av: [__m256; RI] = std::array::from_fn(|r| load(ar[r]));
        for (rj, &bp) in br.iter().enumerate() {
            let bv = load(bp);
            for (ri, &a) in av.iter().enumerate() {
                acc[ri][rj] = _mm256_fmadd_ps(a, bv, acc[ri][rj]);
            }
        }
    }

    /// The 8 lanes added in a fixed tree: pairs at distance 4, then 2, 1.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
        _mm_cvtss_f32(s1)
    }
}
