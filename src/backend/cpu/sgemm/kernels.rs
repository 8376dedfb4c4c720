//! The micro-kernels: C[mr, nr] = beta * C + A_panel . B_panel over `kc` steps, one per ISA.
//!
//! Panels come from `pack`: A holds `kc` groups of MR values (row i of step p at `p*MR + i`),
//! B holds `kc` groups of NR values (column j of step p at `p*NR + j`), both zero-padded past
//! the matrix edge, so a kernel always reads full groups and only its stores are cut to
//! `mr x nr`. Every kernel sums its k steps in order, one fused multiply-add per step (the
//! portable one multiplies and adds separately), so for a fixed KC every C element sees the same
//! operation sequence whatever the thread count or the tiling of m and n.
//!
//! Register tiles: AVX-512 12x32 (24 zmm accumulators, 2 for B, 1 broadcast), AVX2 4x24 (12
//! ymm accumulators, 3 for B, 1 broadcast), portable 4x16 (plain arrays the compiler vectorises for the baseline ISA).

/// Columns of one `avx2::kernel_rows_wide` call for 1 and 2 rows of A (12 accumulators either
/// way).
pub const WIDE_COLS: [usize; 3] = [0, 96, 48];

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
    /// 4 x 24: 12 ymm accumulators, 3 for the B step and 1 broadcast fill all 16 registers.
    /// Per k step 3 B loads and 4 broadcasts feed 12 FMAs (6 x 16 made 8 loads for 12). Channel
    /// counts are multiples of 4 (the small models' 8, 16, 32, ...) where 6 rows left a 2-row
    /// tile of 4 FMA chains, too few to hide the FMA latency: m = 8 ran as 6 + 2.
    pub const MR: usize = 4;
    pub const NR: usize = 24;

    /// # Safety
    /// AVX2 and FMA present; `a` holds `kc * MR` values, `b` `kc * NR`, `o` a writable tile.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, o: TileOut) {
        let mut c = [[_mm256_setzero_ps(); 3]; MR];
        if o.mr == MR && kc > 0 {
            // SAFETY: kc > 0 and the caller's panels hold kc steps.
            unsafe { full_steps(kc, a, b, &mut c) };
        } else {
            // SAFETY: as above; step p of the packed panel is at b + p * NR.
            unsafe { steps(kc, a, |p| b.wrapping_add(p * NR), o.mr, &mut c) };
        }
        // SAFETY: the caller vouched for the tile.
        unsafe { store(&c, o) }
    }

    /// `kernel` with B read in place: step p's 24 floats are at `b + offs[p]`.
    /// # Safety
    /// AVX2 and FMA present; `a` holds `kc * MR` values; `offs` holds kc offsets and
    /// `b + offs[p]` 24 readable floats for each p < kc; `o` a writable tile.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_rows(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        o: TileOut,
    ) {
        let mut c = [[_mm256_setzero_ps(); 3]; MR];
        if o.mr == MR && kc > 0 {
            // SAFETY: kc > 0 and the caller vouches for the panel and the offsets.
            unsafe { full_steps_rows(kc, a, b, offs, &mut c) };
        } else {
            // SAFETY: p < kc, so offs[p] is one of the kc offsets the caller vouched for.
            let at = |p: usize| b.wrapping_add(unsafe { *offs.add(p) });
            // SAFETY: as above.
            unsafe { steps(kc, a, at, o.mr, &mut c) };
        }
        // SAFETY: the caller vouched for the tile.
        unsafe { store(&c, o) }
    }

    /// `kernel_rows` for the 1 or 2 rows (`o.mr`) of a part-filled A panel, over `super::WIDE_COLS`
    /// columns (4 or 2 in-place panels) at once. One row against one panel has 3 accumulator
    /// chains, fewer than the FMA latency times the pipes (4 x 2) needs, so it ran at about a
    /// quarter of the kernel's rate; a wider tile keeps 12 chains in flight. The first layer's
    /// backward-data (one input channel) is all such rows: 16% of peak on small-alexnet w16.
    /// Each element still gets one fused multiply-add per step in k order, and the same store.
    /// # Safety
    /// AVX2 and FMA present; `o.mr` is 1 or 2, `o.cs` is 1 and `o.nr` is `super::WIDE_COLS[o.mr]`,
    /// a writable tile; `a` holds `kc * MR` values; `offs` holds kc offsets and `b + offs[p]`
    /// `o.nr` readable floats for each p < kc.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_rows_wide(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        o: TileOut,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match o.mr {
                1 => wide::<1, 12>(kc, a, b, offs, o),
                _ => wide::<2, 6>(kc, a, b, offs, o),
            }
        }
    }

    /// R rows x V vectors of `kernel_rows_wide`.
    /// # Safety
    /// As `kernel_rows_wide`, with R = o.mr and 8 V = o.nr.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn wide<const R: usize, const V: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        o: TileOut,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for p in 0..kc {
            // SAFETY: p < kc: offs[p] and the 8 V floats at b + offs[p] and A's step p are
            // readable (the caller vouched).
            unsafe {
                let bp = b.add(*offs.add(p));
                // Each B vector is loaded once and used by every row: R broadcasts, one B vector
                // and 12 accumulators fit the 16 registers (B hoisted for both rows spilled).
                let ai: [__m256; R] =
                    std::array::from_fn(|i| _mm256_broadcast_ss(&*a.add(p * MR + i)));
                for v in 0..V {
                    let bv = _mm256_loadu_ps(bp.add(8 * v));
                    for (row, &a) in acc.iter_mut().zip(&ai) {
                        row[v] = _mm256_fmadd_ps(a, bv, row[v]);
                    }
                }
            }
        }
        let beta = _mm256_set1_ps(o.beta);
        for (i, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                // SAFETY: row i < o.mr, floats 8v..8v + 8 < o.nr of the tile are writable.
                unsafe {
                    let at = o.c.add(i * o.rs + 8 * v);
                    let x = if o.beta != 0.0 {
                        _mm256_fmadd_ps(_mm256_loadu_ps(at), beta, x)
                    } else {
                        x
                    };
                    _mm256_storeu_ps(at, x);
                }
            }
        }
    }

    /// c[i][h] += A[., i] (x) B[p, 8h..8h + 8] over kc steps for the first `rows` (< MR) rows,
    /// with step p of B at `b_at(p)`. The rows past `rows` stay zero and are never stored.
    /// # Safety
    /// AVX2 and FMA present; `a` holds kc * MR values; `b_at(p)` points at 24 readable floats
    /// for each p < kc.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn steps(
        kc: usize,
        a: *const f32,
        b_at: impl Fn(usize) -> *const f32,
        rows: usize,
        c: &mut [[__m256; 3]; MR],
    ) {
        match rows {
            3 => steps_r::<3>(kc, a, b_at, c),
            2 => steps_r::<2>(kc, a, b_at, c),
            1 => steps_r::<1>(kc, a, b_at, c),
            // A full tile only when kc is 0: nothing to add.
            _ => {}
        }
    }

    /// `steps` for R rows (few enough accumulators for the compiler to keep them all in
    /// registers).
    /// # Safety
    /// As `steps`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn steps_r<const R: usize>(
        kc: usize,
        a: *const f32,
        b_at: impl Fn(usize) -> *const f32,
        c: &mut [[__m256; 3]; MR],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 3]; R];
        for p in 0..kc {
            // SAFETY: step p of each panel lies inside what the caller vouched for.
            unsafe {
                let bp = b_at(p);
                let bv = [
                    _mm256_loadu_ps(bp),
                    _mm256_loadu_ps(bp.add(8)),
                    _mm256_loadu_ps(bp.add(16)),
                ];
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*a.add(p * MR + i));
                    for (v, &bj) in row.iter_mut().zip(&bv) {
                        *v = _mm256_fmadd_ps(ai, bj, *v);
                    }
                }
            }
        }
        c[..R].copy_from_slice(&acc);
    }

    /// The full 4 x 24 tile's k loop in assembly: 12 accumulators (ymm0-11), 3 B vectors
    /// (ymm12-14) and a broadcast (ymm15) need all 16 ymm registers, and LLVM, left to itself,
    /// kept one accumulator on the stack, so its FMA chain ran through a store and a reload
    /// every k step. `$load` puts step p's B[p, 0..24] into ymm12-14 and `$advance` moves to the
    /// next step; every element gets one fused multiply-add per step in k order, as in `steps`.
    macro_rules! k_loop_4x24 {
        ($c:expr, $load:literal, $advance:literal, $($operands:tt)*) => {{
            let [[c00, c01, c02], [c10, c11, c12], [c20, c21, c22], [c30, c31, c32]] = $c;
            std::arch::asm!(
                "2:",
                $load,
                "vbroadcastss ymm15, dword ptr [{a}]",
                "vfmadd231ps ymm0, ymm15, ymm12",
                "vfmadd231ps ymm1, ymm15, ymm13",
                "vfmadd231ps ymm2, ymm15, ymm14",
                "vbroadcastss ymm15, dword ptr [{a} + 4]",
                "vfmadd231ps ymm3, ymm15, ymm12",
                "vfmadd231ps ymm4, ymm15, ymm13",
                "vfmadd231ps ymm5, ymm15, ymm14",
                "vbroadcastss ymm15, dword ptr [{a} + 8]",
                "vfmadd231ps ymm6, ymm15, ymm12",
                "vfmadd231ps ymm7, ymm15, ymm13",
                "vfmadd231ps ymm8, ymm15, ymm14",
                "vbroadcastss ymm15, dword ptr [{a} + 12]",
                "vfmadd231ps ymm9, ymm15, ymm12",
                "vfmadd231ps ymm10, ymm15, ymm13",
                "vfmadd231ps ymm11, ymm15, ymm14",
                "add {a}, 16",
                $advance,
                "dec {k}",
                "jnz 2b",
                $($operands)*
                inout("ymm0") *c00,
                inout("ymm1") *c01,
                inout("ymm2") *c02,
                inout("ymm3") *c10,
                inout("ymm4") *c11,
                inout("ymm5") *c12,
                inout("ymm6") *c20,
                inout("ymm7") *c21,
                inout("ymm8") *c22,
                inout("ymm9") *c30,
                inout("ymm10") *c31,
                inout("ymm11") *c32,
                out("ymm12") _,
                out("ymm13") _,
                out("ymm14") _,
                out("ymm15") _,
                options(nostack, readonly),
            )
        }};
    }

    /// The k loop of a full tile over a packed B panel (step p at b + p * NR).
    /// # Safety
    /// AVX2 and FMA present; kc > 0; `a` holds kc * MR values and `b` kc * NR.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn full_steps(kc: usize, a: *const f32, b: *const f32, c: &mut [[__m256; 3]; MR]) {
        // SAFETY: the loop reads kc steps of 4 (A) and 24 (B) floats, inside the panels the
        // caller vouched for, and writes only the named registers.
        unsafe {
            k_loop_4x24!(
                c,
                "vmovups ymm12, ymmword ptr [{b}]\nvmovups ymm13, ymmword ptr [{b} + 32]\nvmovups ymm14, ymmword ptr [{b} + 64]",
                "add {b}, 96",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                k = inout(reg) kc => _,
            )
        }
    }

    /// The k loop of a full tile with step p's B at `b + offs[p]` (one more load per step, for
    /// the offset).
    /// # Safety
    /// AVX2 and FMA present; kc > 0; `a` holds kc * MR values; `b + offs[p]` holds 24 readable
    /// floats for each p < kc.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn full_steps_rows(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: &mut [[__m256; 3]; MR],
    ) {
        // SAFETY: the loop reads kc offsets, kc steps of 4 floats of A and 24 of B at the
        // offsets, all vouched for by the caller, and writes only the named registers.
        unsafe {
            k_loop_4x24!(
                c,
                "mov {t}, qword ptr [{offs}]\nvmovups ymm12, ymmword ptr [{b} + 4*{t}]\nvmovups ymm13, ymmword ptr [{b} + 4*{t} + 32]\nvmovups ymm14, ymmword ptr [{b} + 4*{t} + 64]",
                "add {offs}, 8",
                a = inout(reg) a => _,
                b = in(reg) b,
                offs = inout(reg) offs => _,
                k = inout(reg) kc => _,
                t = out(reg) _,
            )
        }
    }

    /// Store the first `o.mr` rows of the finished tile `c` into C (scaled by beta unless beta
    /// is 0).
    /// # Safety
    /// AVX2 and FMA present; `o` describes a writable tile of at most MR x NR.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(c: &[[__m256; 3]; MR], o: TileOut) {
        if o.cs == 1 && o.nr == NR {
            let beta = _mm256_set1_ps(o.beta);
            for (i, row) in c.iter().enumerate().take(o.mr) {
                for (h, &v) in row.iter().enumerate() {
                    // SAFETY: a full-width row i < o.mr of the tile is writable (cs == 1,
                    // nr == NR).
                    unsafe {
                        let at = o.c.add(i * o.rs + 8 * h);
                        let v = if o.beta != 0.0 {
                            _mm256_fmadd_ps(_mm256_loadu_ps(at), beta, v)
                        } else {
                            v
                        };
                        _mm256_storeu_ps(at, v);
                    }
                }
            }
        } else {
            let mut acc = [0.0f32; MR * NR];
            for (i, row) in c.iter().enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    // SAFETY: row i of `acc` has NR floats.
                    unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(i * NR + 8 * h), v) };
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
