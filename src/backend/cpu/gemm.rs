//! Safe wrappers over the strided GEMMs (f32: our packed kernels in `super::sgemm`; f64:
//! `matrixmultiply`). Every call checks that the strided
//! extents fit the slices, so the `unsafe` blocks below rest on a proven bound.

/// A strided row-major view description: element (i, j) lives at `i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub rs: usize,
    pub cs: usize,
}

impl Strides {
    /// Plain row-major with `cols` columns.
    pub fn row(cols: usize) -> Strides {
        Strides { rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns (read as column-major).
    pub fn trans(cols: usize) -> Strides {
        Strides { rs: 1, cs: cols }
    }
    fn extent(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.rs + (cols - 1) * self.cs + 1
    }
}

/// c[m,n] = a[m,k] b[k,n] + beta * c[m,n] in f32, on the ISA `super::sgemm::isa()` chose.
/// Panics only on an internal size bug (the callers validate user shapes before they get here).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    beta: f32,
    c: &mut [f32],
    sc: Strides,
) {
    sgemm_isa(super::sgemm::isa(), m, k, n, a, sa, b, sb, beta, c, sc)
}

/// [`sgemm`] on a given ISA (tests run every supported one). Panics if the CPU lacks `isa`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_isa(
    isa: super::sgemm::Isa,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    beta: f32,
    c: &mut [f32],
    sc: Strides,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(sc.extent(m, n) <= c.len(), "sgemm: c too small");
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let e = &mut c[i * sc.rs + j * sc.cs];
                *e = if beta == 0.0 { 0.0 } else { *e * beta };
            }
        }
        return;
    }
    assert!(sa.extent(m, k) <= a.len(), "sgemm: a too small");
    assert!(sb.extent(k, n) <= b.len(), "sgemm: b too small");
    assert!(
        isa.supported(),
        "sgemm: {} is not supported here",
        isa.name()
    );
    // The extents proven above are what `sgemm_on` relies on for its unchecked tile stores.
    use super::sgemm::{ASrc, Mat};
    let ma = Mat {
        data: a,
        rs: sa.rs,
        cs: sa.cs,
    };
    let mb = Mat {
        data: b,
        rs: sb.rs,
        cs: sb.cs,
    };
    super::sgemm::sgemm_on(isa, m, k, n, ASrc::Mat(ma), &mb, beta, c, sc.rs, sc.cs);
}

/// The f64 twin of [`sgemm`] (used where f32 accumulation is not accurate enough).
#[allow(clippy::too_many_arguments)]
pub fn dgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f64],
    sa: Strides,
    b: &[f64],
    sb: Strides,
    c: &mut [f64],
    sc: Strides,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(sc.extent(m, n) <= c.len(), "dgemm: c too small");
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                c[i * sc.rs + j * sc.cs] = 0.0;
            }
        }
        return;
    }
    assert!(sa.extent(m, k) <= a.len(), "dgemm: a too small");
    assert!(sb.extent(k, n) <= b.len(), "dgemm: b too small");
    // SAFETY: as in `sgemm`.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            sa.rs as isize,
            sa.cs as isize,
            b.as_ptr(),
            sb.rs as isize,
            sb.cs as isize,
            0.0,
            c.as_mut_ptr(),
            sc.rs as isize,
            sc.cs as isize,
        );
    }
}
