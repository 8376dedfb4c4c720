//! The tensor-core MMA device functions of kernels/common.cuh, one product at a time
//! (kernels/mma.cu): what tests/cuda_mma.rs checks against a host reference of the same rounding.
use super::kernel_table as kt;
use super::CudaBackend;
use crate::backend::precision::Precision;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::LaunchConfig;

impl CudaBackend {
    /// D = A B + C for one MMA tile: tf32 m16n8k8 (A [16, 8], B [8, 8]) or bf16 m16n8k16
    /// (A [16, 16], B [16, 8]); C and D [16, 8], all row-major f32 host tensors. `portable`
    /// runs the CUDA-C twin even where the inline PTX is compiled (a GPU cross-check).
    pub fn mma_tile(
        &self,
        precision: Precision,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        portable: bool,
    ) -> Result<Tensor> {
        const OP: &str = "mma_tile";
        let (kern, kd) = match precision {
            Precision::Tf32 => (kt::MMA_TF32, 8),
            Precision::Bf16 => (kt::MMA_BF16, 16),
            Precision::F32 => {
                return Err(Error::InvalidArg(
                    "mma_tile: the MMA shapes are tf32 and bf16, not f32".into(),
                ))
            }
        };
        for (name, t, want) in [("A", a, [16, kd]), ("B", b, [kd, 8]), ("C", c, [16, 8])] {
            if t.shape() != want {
                return Err(Error::shape(
                    OP,
                    format!("{name} {:?} must be {want:?}", t.shape()),
                ));
            }
        }
        let (ad, bd, cd) = (self.upload(a)?, self.upload(b)?, self.upload(c)?);
        let (asl, bsl, csl) = (
            self.dev_slice(&ad, OP)?,
            self.dev_slice(&bd, OP)?,
            self.dev_slice(&cd, OP)?,
        );
        let mut d = self.alloc(16 * 8, "mma D")?;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        let portable = portable as i32;
        // SAFETY: mma_m16n8k8_tf32_v1 / mma_m16n8k16_bf16_v1(const float* A, const float* B,
        // const float* C, float* D, int portable); A, B, C hold the shapes checked above, D 128
        // values; one warp, as the kernels require.
        unsafe { launch!(self, kern, cfg, [asl, bsl, csl, d.slice_mut(), &portable]) }?;
        Ok(self.tensor(&[16, 8], d))
    }
}
