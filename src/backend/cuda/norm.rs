//! Batch normalisation on the device: kernels/bn.cu.
use super::kernel_table as kt;
use super::{as_i32, grid_1d, grid_per_item, CudaBackend};
use crate::backend::cpu::bn_dims;
use crate::backend::BatchNormTrain;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn check_channel(op: &'static str, name: &str, t: &Tensor, c: usize) -> Result<()> {
    if t.shape() != [c] {
        return Err(Error::shape(
            op,
            format!("{name} {:?} must be [{c}]", t.shape()),
        ));
    }
    Ok(())
}

impl CudaBackend {
    pub(super) fn bn_train_impl(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<BatchNormTrain> {
        const OP: &str = "batchnorm2d_train";
        let (n, c, hw) = bn_dims(OP, x)?;
        check_channel(OP, "gamma", gamma, c)?;
        check_channel(OP, "beta", beta, c)?;
        if n * hw == 0 {
            return Err(Error::shape(
                OP,
                format!("batch statistics of an empty batch {:?}", x.shape()),
            ));
        }
        let xs = self.dev_slice(x, OP)?;
        let (gs, bs) = (self.dev_slice(gamma, OP)?, self.dev_slice(beta, OP)?);
        let (ni, ci) = (as_i32(n, OP, "N")?, as_i32(c, OP, "C")?);
        let hw = hw as i64;
        let total = x.numel();
        let total64 = total as i64;
        let mut mean = self.alloc(c, "batchnorm mean")?;
        let mut var = self.alloc(c, "batchnorm var")?;
        let mut y = self.alloc(total, "batchnorm output")?;
        if c > 0 {
            // SAFETY: bn_stats_f32_v1(const float* x, float* mean, float* var, int N, int C,
            // long long HW); x holds N*C*HW values, mean and var C; one block of 256 per c.
            unsafe {
                launch!(
                    self,
                    kt::BN_STATS,
                    grid_per_item(c, 256, OP)?,
                    [xs, mean.slice_mut(), var.slice_mut(), &ni, &ci, &hw]
                )
            }?;
            // SAFETY: bn_apply_f32_v1(const float* x, const float* mean, const float* var,
            // const float* gamma, const float* beta, float eps, float* y, int C, long long HW,
            // long long total); x, y hold total = N*C*HW values, the others C.
            unsafe {
                launch!(
                    self,
                    kt::BN_APPLY,
                    grid_1d(total),
                    [
                        xs,
                        mean.slice(),
                        var.slice(),
                        gs,
                        bs,
                        &eps,
                        y.slice_mut(),
                        &ci,
                        &hw,
                        &total64
                    ]
                )
            }?;
        }
        Ok(BatchNormTrain {
            y: self.tensor(x.shape(), y),
            mean: self.tensor(&[c], mean),
            var: self.tensor(&[c], var),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_eval_impl(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        rmean: &Tensor,
        rvar: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "batchnorm2d_eval";
        let (_, c, hw) = bn_dims(OP, x)?;
        for (name, t) in [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", rmean),
            ("running_var", rvar),
        ] {
            check_channel(OP, name, t, c)?;
        }
        let xs = self.dev_slice(x, OP)?;
        let (gs, bs) = (self.dev_slice(gamma, OP)?, self.dev_slice(beta, OP)?);
        let (ms, vs) = (self.dev_slice(rmean, OP)?, self.dev_slice(rvar, OP)?);
        let ci = as_i32(c, OP, "C")?;
        let hw = hw as i64;
        let total = x.numel();
        let total64 = total as i64;
        let mut y = self.alloc(total, "batchnorm output")?;
        if total > 0 {
            // SAFETY: bn_apply_f32_v1(const float* x, const float* mean, const float* var,
            // const float* gamma, const float* beta, float eps, float* y, int C, long long HW,
            // long long total); x, y hold total values, the others C.
            unsafe {
                launch!(
                    self,
                    kt::BN_APPLY,
                    grid_1d(total),
                    [xs, ms, vs, gs, bs, &eps, y.slice_mut(), &ci, &hw, &total64]
                )
            }?;
        }
        Ok(self.tensor(x.shape(), y))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_backward_impl(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "batchnorm2d_backward";
        let (n, c, hw) = bn_dims(OP, x)?;
        super::same_shape(OP, x, dy)?;
        for (name, t) in [("gamma", gamma), ("mean", mean), ("var", var)] {
            check_channel(OP, name, t, c)?;
        }
        let xs = self.dev_slice(x, OP)?;
        let dys = self.dev_slice(dy, OP)?;
        let gs = self.dev_slice(gamma, OP)?;
        let (ms, vs) = (self.dev_slice(mean, OP)?, self.dev_slice(var, OP)?);
        let (ni, ci) = (as_i32(n, OP, "N")?, as_i32(c, OP, "C")?);
        let hw = hw as i64;
        let total = x.numel();
        let total64 = total as i64;
        let mut dgamma = self.alloc(c, "batchnorm dgamma")?;
        let mut dbeta = self.alloc(c, "batchnorm dbeta")?;
        let mut dx = self.alloc(total, "batchnorm dx")?;
        if c > 0 {
            // SAFETY: bn_bwd_reduce_f32_v1(const float* x, const float* dy, const float* mean,
            // const float* var, float eps, float* dgamma, float* dbeta, int N, int C,
            // long long HW); x, dy hold N*C*HW values, the others C; one block per channel.
            unsafe {
                launch!(
                    self,
                    kt::BN_BWD_REDUCE,
                    grid_per_item(c, 256, OP)?,
                    [
                        xs,
                        dys,
                        ms,
                        vs,
                        &eps,
                        dgamma.slice_mut(),
                        dbeta.slice_mut(),
                        &ni,
                        &ci,
                        &hw
                    ]
                )
            }?;
        }
        if total > 0 {
            // SAFETY: bn_bwd_dx_f32_v1(const float* x, const float* dy, const float* mean,
            // const float* var, const float* gamma, const float* dgamma, const float* dbeta,
            // float eps, float* dx, int C, long long HW, long long total); x, dy, dx hold total
            // values, the others C.
            unsafe {
                launch!(
                    self,
                    kt::BN_BWD_DX,
                    grid_1d(total),
                    [
                        xs,
                        dys,
                        ms,
                        vs,
                        gs,
                        dgamma.slice(),
                        dbeta.slice(),
                        &eps,
                        dx.slice_mut(),
                        &ci,
                        &hw,
                        &total64
                    ]
                )
            }?;
        }
        Ok((
            self.tensor(x.shape(), dx),
            self.tensor(&[c], dgamma),
            self.tensor(&[c], dbeta),
        ))
    }

    pub(super) fn bn_eval_backward_impl(
        &self,
        gamma: &Tensor,
        rvar: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "batchnorm2d_eval_backward";
        let (_, c, hw) = bn_dims(OP, dy)?;
        check_channel(OP, "gamma", gamma, c)?;
        check_channel(OP, "running_var", rvar, c)?;
        let dys = self.dev_slice(dy, OP)?;
        let (gs, vs) = (self.dev_slice(gamma, OP)?, self.dev_slice(rvar, OP)?);
        let ci = as_i32(c, OP, "C")?;
        let hw = hw as i64;
        let total = dy.numel();
        let total64 = total as i64;
        let mut dx = self.alloc(total, "batchnorm dx")?;
        if total > 0 {
            // SAFETY: bn_eval_bwd_f32_v1(const float* dy, const float* gamma, const float* rvar,
            // float eps, float* dx, int C, long long HW, long long total); dy, dx hold total
            // values, gamma and rvar C.
            unsafe {
                launch!(
                    self,
                    kt::BN_EVAL_BWD,
                    grid_1d(total),
                    [dys, gs, vs, &eps, dx.slice_mut(), &ci, &hw, &total64]
                )
            }?;
        }
        Ok(self.tensor(dy.shape(), dx))
    }
}
