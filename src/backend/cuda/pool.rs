//! Pooling on the device: kernels/pool.cu.
use super::kernel_table::{self as kt, Kernel};
use super::{as_i32, grid_1d, CudaBackend};
use crate::backend::cpu::pool_geom;
use crate::backend::Pool2dParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::CudaSlice;

impl CudaBackend {
    pub(super) fn maxpool2d_impl(&self, x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        const OP: &str = "maxpool2d";
        let (n, c, h, w, oh, ow) = pool_geom(OP, x, p)?;
        let xs = self.dev_slice(x, OP)?;
        let total = n * c * oh * ow;
        let mut y = self.alloc(total, "maxpool2d output")?;
        if total > 0 {
            let (nc, hi, wi, ohi, owi) = (
                as_i32(n * c, OP, "N*C")?,
                h as i32,
                w as i32,
                oh as i32,
                ow as i32,
            );
            let (k, s, pd) = (
                as_i32(p.kernel, OP, "kernel")?,
                as_i32(p.stride, OP, "stride")?,
                as_i32(p.pad, OP, "pad")?,
            );
            // SAFETY: maxpool2d_fwd_f32_v1(const float* x, float* y, int NC, int H, int W, int P,
            // int Q, int k, int stride, int pad); x holds NC*H*W values, y NC*P*Q.
            unsafe {
                launch!(
                    self,
                    kt::MAXPOOL_FWD,
                    grid_1d(total),
                    [xs, y.slice_mut(), &nc, &hi, &wi, &ohi, &owi, &k, &s, &pd]
                )
            }?;
        }
        Ok(self.tensor(&[n, c, oh, ow], y))
    }

    pub(super) fn maxpool2d_backward_impl(
        &self,
        x: &Tensor,
        dy: &Tensor,
        p: Pool2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "maxpool2d_backward";
        let (n, c, h, w, oh, ow) = pool_geom(OP, x, p)?;
        if dy.shape() != [n, c, oh, ow] {
            return Err(Error::shape(
                OP,
                format!("dy {:?} must be {:?}", dy.shape(), [n, c, oh, ow]),
            ));
        }
        let xs = self.dev_slice(x, OP)?;
        let dys = self.dev_slice(dy, OP)?;
        let total = x.numel();
        let mut dx = self.alloc(total, "maxpool2d dx")?;
        if total > 0 {
            let (nc, hi, wi, ohi, owi) = (
                as_i32(n * c, OP, "N*C")?,
                h as i32,
                w as i32,
                oh as i32,
                ow as i32,
            );
            let (k, s, pd) = (
                as_i32(p.kernel, OP, "kernel")?,
                as_i32(p.stride, OP, "stride")?,
                as_i32(p.pad, OP, "pad")?,
            );
            // SAFETY: maxpool2d_bwd_f32_v1(const float* x, const float* dy, float* dx, int NC,
            // int H, int W, int P, int Q, int k, int stride, int pad); x and dx hold NC*H*W
            // values, dy NC*P*Q.
            unsafe {
                launch!(
                    self,
                    kt::MAXPOOL_BWD,
                    grid_1d(total),
                    [
                        xs,
                        dys,
                        dx.slice_mut(),
                        &nc,
                        &hi,
                        &wi,
                        &ohi,
                        &owi,
                        &k,
                        &s,
                        &pd
                    ]
                )
            }?;
        }
        Ok(self.tensor(x.shape(), dx))
    }

    pub(super) fn adaptive_avgpool2d_impl(
        &self,
        x: &Tensor,
        oh: usize,
        ow: usize,
    ) -> Result<Tensor> {
        const OP: &str = "adaptive_avgpool2d";
        let (n, c, h, w) = x.dims4(OP)?;
        if oh == 0 || ow == 0 || h == 0 || w == 0 {
            return Err(Error::shape(
                OP,
                format!("output {oh}x{ow} from input {h}x{w}: sizes must be > 0"),
            ));
        }
        let xs = self.dev_slice(x, OP)?;
        let mut y = self.alloc(n * c * oh * ow, "adaptive_avgpool2d output")?;
        // SAFETY: adaptive_avgpool2d_fwd_f32_v1(const float* x, float* y, <dims>); x holds
        // NC*H*W values, y NC*OH*OW.
        unsafe {
            self.avgpool_launch(
                OP,
                kt::AVGPOOL_FWD,
                xs,
                y.slice_mut(),
                [n * c, h, w, oh, ow],
            )
        }?;
        Ok(self.tensor(&[n, c, oh, ow], y))
    }

    pub(super) fn adaptive_avgpool2d_backward_impl(
        &self,
        dy: &Tensor,
        h: usize,
        w: usize,
    ) -> Result<Tensor> {
        const OP: &str = "adaptive_avgpool2d_backward";
        let (n, c, oh, ow) = dy.dims4(OP)?;
        if oh == 0 || ow == 0 || h == 0 || w == 0 {
            return Err(Error::shape(
                OP,
                format!("input {h}x{w} from output {oh}x{ow}: sizes must be > 0"),
            ));
        }
        let dys = self.dev_slice(dy, OP)?;
        let mut dx = self.alloc(n * c * h * w, "adaptive_avgpool2d dx")?;
        // SAFETY: adaptive_avgpool2d_bwd_f32_v1(const float* dy, float* dx, <dims>); dy holds
        // NC*OH*OW values, dx NC*H*W.
        unsafe {
            self.avgpool_launch(
                OP,
                kt::AVGPOOL_BWD,
                dys,
                dx.slice_mut(),
                [n * c, h, w, oh, ow],
            )
        }?;
        Ok(self.tensor(&[n, c, h, w], dx))
    }

    /// Launch an adaptive-average-pool kernel: both take (const float* src, float* dst, int NC,
    /// int H, int W, int OH, int OW) and grid-stride over the larger side (dst).
    ///
    /// # Safety
    /// `src` and `dst` must hold what the kernel reads and writes for `dims` = [NC, H, W, OH, OW].
    unsafe fn avgpool_launch(
        &self,
        op: &'static str,
        kern: Kernel,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        dims: [usize; 5],
    ) -> Result<()> {
        let [nc, h, w, oh, ow] = dims;
        let total = if kern == kt::AVGPOOL_FWD {
            nc * oh * ow
        } else {
            nc * h * w
        };
        if total == 0 {
            return Ok(());
        }
        let (nc, hi, wi, ohi, owi) = (
            as_i32(nc, op, "N*C")?,
            as_i32(h, op, "H")?,
            as_i32(w, op, "W")?,
            as_i32(oh, op, "OH")?,
            as_i32(ow, op, "OW")?,
        );
        // SAFETY: the caller's contract; the arguments follow the signature above.
        unsafe {
            launch!(
                self,
                kern,
                grid_1d(total),
                [src, dst, &nc, &hi, &wi, &ohi, &owi]
            )
        }
    }
}
