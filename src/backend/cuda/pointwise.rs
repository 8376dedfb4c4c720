//! Pointwise ops on the device: kernels/elementwise.cu, attack.cu, optim.cu, and the
//! sum-of-squares reduction (reduce.cu).
use super::kernel_table as kt;
use super::{as_i64, drv, grid_1d, same_shape, CudaBackend};
use crate::backend::{AdamParams, SgdParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    /// y = f(x) for the unary kernels with signature (const float* x, float* y, long long n).
    pub(super) fn relu_impl(&self, x: &Tensor) -> Result<Tensor> {
        let xs = self.dev_slice(x, "relu")?;
        let n = x.numel();
        let n64 = as_i64(n);
        let mut y = self.alloc(n, "relu output")?;
        if n > 0 {
            // SAFETY: relu_fwd_f32_v1(const float* x, float* y, long long n); both hold n values.
            unsafe { launch!(self, kt::RELU_FWD, grid_1d(n), [xs, y.slice_mut(), &n64]) }?;
        }
        Ok(self.tensor(x.shape(), y))
    }

    pub(super) fn relu_backward_impl(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        same_shape(OP, y, dy)?;
        let (ys, dys) = (self.dev_slice(y, OP)?, self.dev_slice(dy, OP)?);
        let n = y.numel();
        let n64 = as_i64(n);
        let mut dx = self.alloc(n, "relu dx")?;
        if n > 0 {
            // SAFETY: relu_bwd_f32_v1(const float* y, const float* dy, float* dx, long long n);
            // all hold n values.
            unsafe {
                launch!(
                    self,
                    kt::RELU_BWD,
                    grid_1d(n),
                    [ys, dys, dx.slice_mut(), &n64]
                )
            }?;
        }
        Ok(self.tensor(y.shape(), dx))
    }

    pub(super) fn dropout_impl(&self, x: &Tensor, p: f32, seed: u64) -> Result<(Tensor, Tensor)> {
        const OP: &str = "dropout";
        // Same range as the CPU oracle: p = 1 is valid (uniform01 < 1, so every element is
        // dropped and the mask is all zeros; the infinite scale is never selected).
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::shape(OP, format!("p must be in [0, 1], got {p}")));
        }
        let xs = self.dev_slice(x, OP)?;
        let n = x.numel();
        let n64 = as_i64(n);
        // Same expression as the CPU oracle's contract: kept values are scaled by 1/(1-p) in f32.
        let scale = 1.0f32 / (1.0f32 - p);
        let mut y = self.alloc(n, "dropout output")?;
        let mut mask = self.alloc(n, "dropout mask")?;
        if n > 0 {
            // SAFETY: dropout_fwd_f32_v1(const float* x, float* y, float* mask, long long n,
            // unsigned long long seed, float p, float scale); x, y, mask hold n values.
            unsafe {
                launch!(
                    self,
                    kt::DROPOUT_FWD,
                    grid_1d(n),
                    [xs, y.slice_mut(), mask.slice_mut(), &n64, &seed, &p, &scale]
                )
            }?;
        }
        Ok((self.tensor(x.shape(), y), self.tensor(x.shape(), mask)))
    }

    pub(super) fn binary_impl(&self, a: &Tensor, b: &Tensor, mul: bool) -> Result<Tensor> {
        let op = if mul { "mul" } else { "add" };
        same_shape(op, a, b)?;
        let (as_, bs) = (self.dev_slice(a, op)?, self.dev_slice(b, op)?);
        let n = a.numel();
        let n64 = as_i64(n);
        let mut y = self.alloc(n, op)?;
        if n > 0 {
            let k = if mul { kt::MUL } else { kt::ADD };
            // SAFETY: add_f32_v1 / mul_f32_v1(const float* a, const float* b, float* y,
            // long long n); all hold n values.
            unsafe { launch!(self, k, grid_1d(n), [as_, bs, y.slice_mut(), &n64]) }?;
        }
        Ok(self.tensor(a.shape(), y))
    }

    pub(super) fn scale_impl(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        let xs = self.dev_slice(x, "scale")?;
        let n = x.numel();
        let n64 = as_i64(n);
        let mut y = self.alloc(n, "scale output")?;
        if n > 0 {
            // SAFETY: scale_f32_v1(const float* x, float* y, float alpha, long long n); x and y
            // hold n values.
            unsafe {
                launch!(
                    self,
                    kt::SCALE,
                    grid_1d(n),
                    [xs, y.slice_mut(), &alpha, &n64]
                )
            }?;
        }
        Ok(self.tensor(x.shape(), y))
    }

    pub(super) fn axpy_impl(&self, acc: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
        const OP: &str = "axpy";
        same_shape(OP, acc, x)?;
        let n = x.numel();
        let n64 = as_i64(n);
        // x and acc may share a buffer (acc += a*acc): copy-on-write gives acc its own first.
        let accs = self.dev_slice_mut(acc, OP)?;
        let xs = self.dev_slice(x, OP)?;
        if n > 0 {
            // SAFETY: axpy_f32_v1(float* acc, const float* x, float alpha, long long n); both
            // hold n values (same shape checked).
            unsafe { launch!(self, kt::AXPY, grid_1d(n), [accs, xs, &alpha, &n64]) }?;
        }
        Ok(())
    }

    pub(super) fn sum_squares_impl(&self, x: &Tensor) -> Result<f64> {
        let xs = self.dev_slice(x, "sum_squares")?;
        let n = x.numel();
        if n == 0 {
            return Ok(0.0);
        }
        let n64 = as_i64(n);
        let g = n.div_ceil(1024).clamp(1, 1024);
        let gi = g as i32;
        // SAFETY (alloc): both buffers are fully written by the kernels below before the read.
        let mut partial = unsafe { self.alloc_raw::<f64>(g, "sum_squares partials") }?;
        let mut out = unsafe { self.alloc_raw::<f64>(1, "sum_squares result") }?;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (g as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sum_squares_partial_f32_v1(const float* x, long long n, double* partial);
        // x holds n values, partial holds gridDim.x = g values.
        unsafe { launch!(self, kt::SUM_SQUARES_PARTIAL, cfg, [xs, &n64, &mut partial]) }?;
        let one = cudarc::driver::LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sum_squares_final_f64_v1(const double* partial, int G, double* out); partial
        // holds G values, out one.
        unsafe { launch!(self, kt::SUM_SQUARES_FINAL, one, [&partial, &gi, &mut out]) }?;
        let v = self
            .stream()
            .clone_dtoh(&out)
            .map_err(drv("copy sum_squares result"))?;
        self.stream()
            .synchronize()
            .map_err(drv("synchronize sum_squares"))?;
        Ok(v[0])
    }

    pub(super) fn fgs_step_impl(
        &self,
        x: &Tensor,
        grad: &Tensor,
        eps: f32,
        lo: f32,
        hi: f32,
    ) -> Result<Tensor> {
        const OP: &str = "fgs_step";
        same_shape(OP, x, grad)?;
        crate::backend::cpu::check_clip_bounds(OP, lo, hi)?;
        let (xs, gs) = (self.dev_slice(x, OP)?, self.dev_slice(grad, OP)?);
        let n = x.numel();
        let n64 = as_i64(n);
        let mut y = self.alloc(n, "fgs_step output")?;
        if n > 0 {
            // SAFETY: fgs_step_f32_v1(const float* x, const float* grad, float* y, float eps,
            // float lo, float hi, long long n); x, grad, y hold n values.
            unsafe {
                launch!(
                    self,
                    kt::ATTACK_FGS_STEP,
                    grid_1d(n),
                    [xs, gs, y.slice_mut(), &eps, &lo, &hi, &n64]
                )
            }?;
        }
        Ok(self.tensor(x.shape(), y))
    }

    pub(super) fn l2_distance_grad_impl(
        &self,
        a: &Tensor,
        b: &Tensor,
        lambda: f32,
    ) -> Result<Tensor> {
        const OP: &str = "l2_distance_grad";
        same_shape(OP, a, b)?;
        let n = a.shape().first().copied().unwrap_or(1).max(1);
        let d = a.numel() / n;
        let (as_, bs) = (self.dev_slice(a, OP)?, self.dev_slice(b, OP)?);
        let mut g = self.alloc(a.numel(), "l2_distance_grad output")?;
        if d > 0 {
            let d64 = as_i64(d);
            // SAFETY: l2_grad_f32_v1(const float* a, const float* b, float* g, long long D,
            // float lambda); a, b, g hold N*D values; one block of 256 per row, grid N.
            unsafe {
                launch!(
                    self,
                    kt::ATTACK_L2_GRAD,
                    super::grid_per_item(n, 256, OP)?,
                    [as_, bs, g.slice_mut(), &d64, &lambda]
                )
            }?;
        }
        Ok(self.tensor(a.shape(), g))
    }

    /// Fused iterative-FGS step in place: x = clamp(x - eps*sign(grad), max(lo, x0 - radius),
    /// min(hi, x0 + radius)); `x0 = None` (or a negative radius) skips the L-inf projection.
    #[allow(clippy::too_many_arguments)]
    pub fn ifgs_step(
        &self,
        x: &mut Tensor,
        grad: &Tensor,
        x0: Option<&Tensor>,
        eps: f32,
        radius: f32,
        lo: f32,
        hi: f32,
    ) -> Result<()> {
        const OP: &str = "ifgs_step";
        same_shape(OP, x, grad)?;
        if let Some(x0) = x0 {
            same_shape(OP, x, x0)?;
        }
        let n = x.numel();
        let n64 = as_i64(n);
        let radius = if x0.is_some() { radius } else { -1.0 };
        let xs = self.dev_slice_mut(x, OP)?;
        let gs = self.dev_slice(grad, OP)?;
        // Without x0 the kernel never reads it (radius < 0); pass grad as a valid pointer.
        let x0s = match x0 {
            Some(t) => self.dev_slice(t, OP)?,
            None => gs,
        };
        if n > 0 {
            // SAFETY: ifgs_step_f32_v1(float* x, const float* grad, const float* x0, float eps,
            // float radius, float lo, float hi, long long n); x, grad, x0 hold n values (x0
            // unread when radius < 0).
            unsafe {
                launch!(
                    self,
                    kt::ATTACK_IFGS_STEP,
                    grid_1d(n),
                    [xs, gs, x0s, &eps, &radius, &lo, &hi, &n64]
                )
            }?;
        }
        Ok(())
    }

    pub(super) fn sgd_step_impl(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        buf: &mut Tensor,
        h: SgdParams,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        same_shape(OP, param, grad)?;
        same_shape(OP, param, buf)?;
        let n = param.numel();
        let n64 = as_i64(n);
        let ps = self.dev_slice_mut(param, OP)?;
        let bs = self.dev_slice_mut(buf, OP)?;
        let gs = self.dev_slice(grad, OP)?;
        if n > 0 {
            // SAFETY: sgd_step_f32_v1(float* p, const float* grad, float* buf, float lr,
            // float momentum, float wd, long long n); p, grad, buf hold n values.
            unsafe {
                launch!(
                    self,
                    kt::SGD_STEP,
                    grid_1d(n),
                    [ps, gs, bs, &h.lr, &h.momentum, &h.weight_decay, &n64]
                )
            }?;
        }
        Ok(())
    }

    pub(super) fn adam_step_impl(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: AdamParams,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        same_shape(OP, param, grad)?;
        same_shape(OP, param, m)?;
        same_shape(OP, param, v)?;
        if h.step == 0 {
            return Err(Error::InvalidArg(
                "adam_step: step is 1-based, got 0".into(),
            ));
        }
        let n = param.numel();
        let n64 = as_i64(n);
        let t = h.step.min(i32::MAX as u64) as i32;
        let bc1 = (1.0 - (h.beta1 as f64).powi(t)) as f32;
        let bc2_sqrt = (1.0 - (h.beta2 as f64).powi(t)).sqrt() as f32;
        let ps = self.dev_slice_mut(param, OP)?;
        let ms = self.dev_slice_mut(m, OP)?;
        let vs = self.dev_slice_mut(v, OP)?;
        let gs = self.dev_slice(grad, OP)?;
        if n > 0 {
            // SAFETY: adam_step_f32_v1(float* p, const float* grad, float* m, float* v, float lr,
            // float beta1, float beta2, float eps, float wd, float bc1, float bc2_sqrt,
            // long long n); p, grad, m, v hold n values.
            unsafe {
                launch!(
                    self,
                    kt::ADAM_STEP,
                    grid_1d(n),
                    [
                        ps,
                        gs,
                        ms,
                        vs,
                        &h.lr,
                        &h.beta1,
                        &h.beta2,
                        &h.eps,
                        &h.weight_decay,
                        &bc1,
                        &bc2_sqrt,
                        &n64
                    ]
                )
            }?;
        }
        Ok(())
    }
}
