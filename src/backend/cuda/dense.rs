//! Linear layers on the device: kernels/gemm.cu (strided GEMM, v1 naive / v2 tiled) and the
//! bias gradient (column sums, kernels/reduce.cu).
use super::conv::gemm_grid;
use super::kernel_table as kt;
use super::{as_i32, grid_1d, Block, ConvVersion, CudaBackend};
use crate::backend::LinearGrads;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;

/// Strided operand: element (i, j) at `s0 * i + s1 * j`.
struct Operand<'a> {
    data: &'a CudaSlice<f32>,
    s0: i64,
    s1: i64,
}

impl CudaBackend {
    /// out[M, N] = A(m, k) B(k, n) (+ bias[n]).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        a: Operand<'_>,
        b: Operand<'_>,
        bias: Option<&CudaSlice<f32>>,
        m: usize,
        n: usize,
        k: usize,
        out: &mut Block,
    ) -> Result<()> {
        const OP: &str = "linear";
        if m * n == 0 {
            return Ok(());
        }
        let (mi, ni, ki) = (
            as_i32(m, OP, "rows")?,
            as_i32(n, OP, "cols")?,
            as_i32(k, OP, "inner")?,
        );
        let has_bias: i32 = bias.is_some() as i32;
        let bias = bias.unwrap_or(a.data);
        let (sam, sak, sbk, sbn) = (a.s0, a.s1, b.s0, b.s1);
        let cfg = match self.gemm_version {
            ConvVersion::V1 => grid_1d(m * n),
            ConvVersion::V2 | ConvVersion::V3 => gemm_grid(m, n),
        };
        let kern = match self.gemm_version {
            ConvVersion::V1 => kt::GEMM_V1,
            ConvVersion::V2 | ConvVersion::V3 => kt::GEMM_V2,
        };
        // SAFETY: gemm_f32_v1/_v2(const float* A, long long sam, long long sak, const float* B,
        // long long sbk, long long sbn, const float* bias, int has_bias, float* C, int M, int N,
        // int K); the callers' strides address only A's M x K and B's K x N elements, bias has
        // N values when has_bias = 1 (else unread), C has M*N values; v2 wants 256 threads.
        unsafe {
            launch!(
                self,
                kern,
                cfg,
                [
                    a.data,
                    &sam,
                    &sak,
                    b.data,
                    &sbk,
                    &sbn,
                    bias,
                    &has_bias,
                    out.slice_mut(),
                    &mi,
                    &ni,
                    &ki
                ]
            )
        }
    }

    pub(super) fn linear_impl(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear";
        let (n, i) = x.dims2(OP)?;
        let (o, iw) = w.dims2(OP)?;
        if iw != i || b.shape() != [o] {
            return Err(Error::shape(
                OP,
                format!(
                    "x {:?}, w {:?}, b {:?} do not fit (need w [O, {i}], b [O])",
                    x.shape(),
                    w.shape(),
                    b.shape()
                ),
            ));
        }
        let xs = self.dev_slice(x, OP)?;
        let ws = self.dev_slice(w, OP)?;
        let bs = self.dev_slice(b, OP)?;
        let mut y = self.alloc(n * o, "linear output")?;
        if i == 0 {
            // Empty inner dimension: y = bias broadcast. Zero then add the bias per column.
            self.stream()
                .memset_zeros(y.slice_mut())
                .map_err(super::drv("zero linear output"))?;
            self.bias_add(&mut y, bs, n * o, o, 1)?;
        } else {
            let ii = i as i64;
            // y = x w^T: A(m, k) = x[m*I + k], B(k, n) = w[n*I + k].
            self.gemm(
                Operand {
                    data: xs,
                    s0: ii,
                    s1: 1,
                },
                Operand {
                    data: ws,
                    s0: 1,
                    s1: ii,
                },
                Some(bs),
                n,
                o,
                i,
                &mut y,
            )?;
        }
        Ok(self.tensor(&[n, o], y))
    }

    pub(super) fn linear_backward_impl(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<LinearGrads> {
        const OP: &str = "linear_backward";
        let (n, i) = x.dims2(OP)?;
        let (o, iw) = w.dims2(OP)?;
        if iw != i || dy.shape() != [n, o] {
            return Err(Error::shape(
                OP,
                format!(
                    "x {:?}, w {:?}, dy {:?} do not fit (need w [O, {i}], dy [{n}, O])",
                    x.shape(),
                    w.shape(),
                    dy.shape()
                ),
            ));
        }
        let xs = self.dev_slice(x, OP)?;
        let ws = self.dev_slice(w, OP)?;
        let dys = self.dev_slice(dy, OP)?;
        let (ii, oo) = (i as i64, o as i64);

        let mut dx = self.alloc(n * i, "linear dx")?;
        if o == 0 {
            self.stream()
                .memset_zeros(dx.slice_mut())
                .map_err(super::drv("zero linear dx"))?;
        } else {
            // dx[N, I] = dy[N, O] w[O, I]: A(m, k) = dy[m*O + k], B(k, n) = w[k*I + n].
            self.gemm(
                Operand {
                    data: dys,
                    s0: oo,
                    s1: 1,
                },
                Operand {
                    data: ws,
                    s0: ii,
                    s1: 1,
                },
                None,
                n,
                i,
                o,
                &mut dx,
            )?;
        }
        let mut dw = self.alloc(o * i, "linear dw")?;
        if n == 0 {
            self.stream()
                .memset_zeros(dw.slice_mut())
                .map_err(super::drv("zero linear dw"))?;
        } else {
            // dw[O, I] = dy^T x: A(m, k) = dy[k*O + m], B(k, n) = x[k*I + n].
            self.gemm(
                Operand {
                    data: dys,
                    s0: 1,
                    s1: oo,
                },
                Operand {
                    data: xs,
                    s0: ii,
                    s1: 1,
                },
                None,
                o,
                i,
                n,
                &mut dw,
            )?;
        }
        let mut db = self.alloc(o, "linear db")?;
        if o > 0 {
            let rows = as_i32(n, OP, "N")?;
            let cols = as_i32(o, OP, "O")?;
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (o.div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: col_sum_f32_v1(const float* a, float* out, int rows, int cols); dy holds
            // rows*cols values, db cols; one thread per column.
            unsafe { launch!(self, kt::COL_SUM, cfg, [dys, db.slice_mut(), &rows, &cols]) }?;
        }
        Ok(LinearGrads {
            dx: self.tensor(&[n, i], dx),
            dw: self.tensor(&[o, i], dw),
            db: self.tensor(&[o], db),
        })
    }

    /// y[i] += b[(i / inner) % c] for the first `n` values of `y`.
    pub(super) fn bias_add(
        &self,
        y: &mut Block,
        b: &CudaSlice<f32>,
        n: usize,
        c: usize,
        inner: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (n64, inner64) = (n as i64, inner as i64);
        let ci = as_i32(c, "bias_add", "channels")?;
        // SAFETY: bias_add_nchw_f32_v1(float* y, const float* b, long long n, int C,
        // long long inner); y holds n values, b holds C.
        unsafe {
            launch!(
                self,
                kt::BIAS_ADD_NCHW,
                grid_1d(n),
                [y.slice_mut(), b, &n64, &ci, &inner64]
            )
        }
    }
}
