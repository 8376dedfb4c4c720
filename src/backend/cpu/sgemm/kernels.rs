//! The micro-kernels: C[mr, nr] = beta * C + A_panel . B_panel over `kc` steps, one per ISA.
//!
//! Panels come from `pack`: A holds `kc` groups of MR values (row i of step p at `p*MR + i`),
//! B holds `kc` groups of NR values (column j of step p at `p*NR + j`), both zero-padded past
//! the matrix edge, so a kernel always reads full groups and only its stores are cut to
//! `mr x nr`. Every kernel sums its k steps in order, one fused multiply-add per step (the
//! portable one multiplies and adds separately), so for a fixed KC every C element sees the same
//! operation sequence whatever the thread count or the tiling of m and n.
//!
//! Register tiles: AVX-512 12x32 (24 zmm accumulators, 2 for B, 1 broadcast), AVX2 6x16 (12
//! ymm accumulators), portable 4x16 (plain arrays the compiler vectorises for the baseline ISA).

/// Where one micro-tile goes: `c` points at C[0, 0] of the tile, row stride `rs`, column
/// stride `cs` (elements), `mr x nr` of the kernel's MR x NR tile are stored.
#[derive(Clone, Copy)]
pub struct TileOut {
    pub c: *mut f32,
    pub rs: usize,
    pub cs: usize,
    pub mr: usize,
    pub nr: usize,
    pub beta: f32,
}

/// Store a finished tile `acc` (row-major MR x NR in a scratch array) into C, element by
/// element (edges and C with a column stride other than 1).
///
/// # Safety
/// `o` must describe `o.mr x o.nr` writable elements of C; `acc` holds at least `o.mr` rows of
/// `nr_full` values.
unsafe fn store_scalar(acc: &[f32], nr_full: usize, o: TileOut) {
    for i in 0..o.mr {
        for j in 0..o.nr {
            let v = acc[i * nr_full + j];
            // SAFETY: (i, j) lies inside the tile the caller vouched for.
            let e = unsafe { &mut *o.c.add(i * o.rs + j * o.cs) };
            *e = if o.beta == 0.0 { v } else { o.beta * *e + v };
        }
    }
}

pub mod portable {
    use super::{store_scalar, TileOut};
    pub const MR: usize = 4;
    pub const NR: usize = 16;

    /// # Safety
    /// `a` holds `kc * MR` values, `b` holds `kc * NR`, `o` describes a writable tile.
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, o: TileOut) {
        // SAFETY: the caller guarantees the panel lengths.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * MR),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let mut acc = [[0.0f32; NR]; MR];
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
                for (c, &bj) in row.iter_mut().zip(bp) {
                    *c += ai * bj;
                }
            }
        }
        // SAFETY: as above.
        unsafe { store_scalar(acc.as_flattened(), NR, o) }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{store_scalar, TileOut};
    use std::arch::x86_64::*;
    pub const MR: usize = 6;
    pub const NR: usize = 16;

    /// # Safety
    /// AVX2 and FMA present; `a` holds `kc * MR` values, `b` `kc * NR`, `o` a writable tile.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, o: TileOut) {
        match o.mr {
            6 => tile::<6>(kc, a, b, o),
            5 => tile::<5>(kc, a, b, o),
            4 => tile::<4>(kc, a, b, o),
            3 => tile::<3>(kc, a, b, o),
            2 => tile::<2>(kc, a, b, o),
            _ => tile::<1>(kc, a, b, o),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(kc: usize, a: *const f32, b: *const f32, o: TileOut) {
        let mut c0 = [_mm256_setzero_ps(); R];
        let mut c1 = [_mm256_setzero_ps(); R];
        for p in 0..kc {
            // SAFETY: step p of each panel lies inside the lengths the caller vouched for.
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(p * NR));
                let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
                for i in 0..R {
                    let ai = _mm256_broadcast_ss(&*a.add(p * MR + i));
                    c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
                    c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
                }
            }
        }
        if o.cs == 1 && o.nr == NR {
            let beta = _mm256_set1_ps(o.beta);
            for i in 0..R {
                // SAFETY: a full-width row i of the tile is writable (cs == 1, nr == NR).
                unsafe {
                    let row = o.c.add(i * o.rs);
                    let (mut v0, mut v1) = (c0[i], c1[i]);
                    if o.beta != 0.0 {
                        v0 = _mm256_fmadd_ps(_mm256_loadu_ps(row), beta, v0);
                        v1 = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8)), beta, v1);
                    }
                    _mm256_storeu_ps(row, v0);
                    _mm256_storeu_ps(row.add(8), v1);
                }
            }
        } else {
            let mut acc = [0.0f32; MR * NR];
            for i in 0..R {
                // SAFETY: row i of `acc` has NR floats.
                unsafe {
                    _mm256_storeu_ps(acc.as_mut_ptr().add(i * NR), c0[i]);
                    _mm256_storeu_ps(acc.as_mut_ptr().add(i * NR + 8), c1[i]);
                }
            }
            // SAFETY: the caller vouched for the tile.
            unsafe { store_scalar(&acc, NR, o) }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::{store_scalar, TileOut};
    use std::arch::x86_64::*;
    pub const MR: usize = 12;
    pub const NR: usize = 32;

    /// # Safety
    /// AVX-512F present; `a` holds `kc * MR` values, `b` `kc * NR`, `o` a writable tile.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, o: TileOut) {
        match o.mr {
            12 => tile::<12>(kc, a, b, o),
            11 => tile::<11>(kc, a, b, o),
            10 => tile::<10>(kc, a, b, o),
            9 => tile::<9>(kc, a, b, o),
            8 => tile::<8>(kc, a, b, o),
            7 => tile::<7>(kc, a, b, o),
            6 => tile::<6>(kc, a, b, o),
            5 => tile::<5>(kc, a, b, o),
            4 => tile::<4>(kc, a, b, o),
            3 => tile::<3>(kc, a, b, o),
            2 => tile::<2>(kc, a, b, o),
            _ => tile::<1>(kc, a, b, o),
        }
    }

    /// Lane masks of the two 16-wide halves for `nr` valid columns.
    fn masks(nr: usize) -> (__mmask16, __mmask16) {
        let m = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        };
        (m(nr), m(nr.saturating_sub(16)))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize>(kc: usize, a: *const f32, b: *const f32, o: TileOut) {
        let mut c0 = [_mm512_setzero_ps(); R];
        let mut c1 = [_mm512_setzero_ps(); R];
        for p in 0..kc {
            // SAFETY: step p of each panel lies inside the lengths the caller vouched for.
            unsafe {
                let b0 = _mm512_loadu_ps(b.add(p * NR));
                let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
                for i in 0..R {
                    let ai = _mm512_set1_ps(*a.add(p * MR + i));
                    c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
                    c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
                }
            }
        }
        if o.cs == 1 {
            // Masked loads and stores cover the column edge with no scratch copy.
            let (m0, m1) = masks(o.nr);
            let beta = _mm512_set1_ps(o.beta);
            for i in 0..R {
                // SAFETY: the masks limit each row to its `nr` writable elements (cs == 1).
                unsafe {
                    let row = o.c.add(i * o.rs);
                    let (mut v0, mut v1) = (c0[i], c1[i]);
                    if o.beta != 0.0 {
                        v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, row), beta, v0);
                        v1 = _mm512_fmadd_ps(
                            _mm512_maskz_loadu_ps(m1, row.wrapping_add(16)),
                            beta,
                            v1,
                        );
                    }
                    _mm512_mask_storeu_ps(row, m0, v0);
                    _mm512_mask_storeu_ps(row.wrapping_add(16), m1, v1);
                }
            }
        } else {
            let mut acc = [0.0f32; MR * NR];
            for i in 0..R {
                // SAFETY: row i of `acc` has NR floats.
                unsafe {
                    _mm512_storeu_ps(acc.as_mut_ptr().add(i * NR), c0[i]);
                    _mm512_storeu_ps(acc.as_mut_ptr().add(i * NR + 16), c1[i]);
                }
            }
            // SAFETY: the caller vouched for the tile.
            unsafe { store_scalar(&acc, NR, o) }
        }
    }
}
