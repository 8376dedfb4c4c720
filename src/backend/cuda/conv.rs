//! Convolutions on the device: kernels/conv.cu (v1 direct, v2 implicit GEMM, v3 implicit GEMM
//! on 128-column tiles with cp.async stages and split-K backward-filter, tensor-core
//! `_tf32_v1` / `_bf16_v1` implicit GEMM) and the bias gradient in kernels/reduce.cu.
use super::kernel_table::{self as kt, Kernel};
use super::{as_i32, grid_1d, ConvVersion, CudaBackend};
use crate::backend::precision::Precision;
use crate::backend::{Conv2dGrads, Conv2dParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Checked geometry of one convolution, as the kernels' ints.
#[derive(Clone, Copy)]
pub(super) struct Geom {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub k: i32,
    pub r: i32,
    pub p: i32,
    pub q: i32,
    pub stride: i32,
    pub pad: i32,
}

impl Geom {
    pub(super) fn new(op: &'static str, x: &Tensor, w: &Tensor, prm: Conv2dParams) -> Result<Geom> {
        // The CPU oracle's checks (channels, square kernel, no empty dimension, window fits).
        let g = crate::backend::cpu::conv_geom(op, x, w, prm)?;
        let (n, c, h, wd, k, r, p, q) = (g.n, g.c, g.h, g.w, g.k, g.r, g.p, g.q);
        // The implicit-GEMM indices are ints: N*P*Q, N*H*W, C*R*R and K*R*R (the reduction
        // length of backward-data v2) must fit.
        as_i32(n * p * q, op, "N*P*Q")?;
        as_i32(n * h * wd, op, "N*H*W")?;
        as_i32(c * r * r, op, "C*R*R")?;
        as_i32(k * r * r, op, "K*R*R")?;
        Ok(Geom {
            n: as_i32(n, op, "N")?,
            c: as_i32(c, op, "C")?,
            h: as_i32(h, op, "H")?,
            w: as_i32(wd, op, "W")?,
            k: as_i32(k, op, "K")?,
            r: as_i32(r, op, "R")?,
            p: as_i32(p, op, "P")?,
            q: as_i32(q, op, "Q")?,
            stride: as_i32(prm.stride, op, "stride")?,
            pad: as_i32(prm.pad, op, "pad")?,
        })
    }
    fn out_shape(&self) -> [usize; 4] {
        [
            self.n as usize,
            self.k as usize,
            self.p as usize,
            self.q as usize,
        ]
    }
}

/// The kernels of one conv pass, one per (precision, version); each set shares one signature
/// (backward-filter v3 takes a split-K `chunk` more).
struct ConvKernels {
    v1: Kernel,
    v2: Kernel,
    v3: Kernel,
    v3_m64: Kernel,
    tf32: Kernel,
    bf16: Kernel,
}

const FWD: ConvKernels = ConvKernels {
    v1: kt::CONV_FWD_V1,
    v2: kt::CONV_FWD_V2,
    v3: kt::CONV_FWD_V3,
    v3_m64: kt::CONV_FWD_V3_M64,
    tf32: kt::CONV_FWD_TF32,
    bf16: kt::CONV_FWD_BF16,
};
const BWD_DATA: ConvKernels = ConvKernels {
    v1: kt::CONV_BWD_DATA_V1,
    v2: kt::CONV_BWD_DATA_V2,
    v3: kt::CONV_BWD_DATA_V3,
    v3_m64: kt::CONV_BWD_DATA_V3_M64,
    tf32: kt::CONV_BWD_DATA_TF32,
    bf16: kt::CONV_BWD_DATA_BF16,
};
const BWD_FILTER: ConvKernels = ConvKernels {
    v1: kt::CONV_BWD_FILTER_V1,
    v2: kt::CONV_BWD_FILTER_V2,
    v3: kt::CONV_BWD_FILTER_V3,
    v3_m64: kt::CONV_BWD_FILTER_V3_M64,
    tf32: kt::CONV_BWD_FILTER_TF32,
    bf16: kt::CONV_BWD_FILTER_BF16,
};

/// Grid of the 64x64-tile GEMM kernels for an [m, n] output.
pub(super) fn gemm_grid(m: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(64).max(1) as u32,
            m.div_ceil(64).max(1) as u32,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows per block tile of the v3 kernels (the heuristic of kernels/conv.cu): 64 when the GEMM
/// has at most 64 rows, or when 128-row tiles would not fill one wave of an H100/H200's 132
/// SMs; 128 otherwise.
pub(super) fn v3_tile_rows(rows: usize, cols: usize) -> usize {
    const SMS: usize = 132;
    if rows <= 64 || rows.div_ceil(128) * cols.div_ceil(128) < SMS {
        64
    } else {
        128
    }
}

/// Grid of the v3 kernels for an [m, n] output in `splits` reduction slices on tiles of `bm`
/// rows (64 or 128), and the kernel of that tile height.
fn v3_launch(
    ks: &ConvKernels,
    bm: usize,
    m: usize,
    n: usize,
    splits: usize,
) -> (Kernel, LaunchConfig) {
    let kern = if bm == 64 { ks.v3_m64 } else { ks.v3 };
    let cfg = LaunchConfig {
        grid_dim: (
            n.div_ceil(128).max(1) as u32,
            m.div_ceil(bm).max(1) as u32,
            splits.max(1) as u32,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    (kern, cfg)
}

impl CudaBackend {
    pub(super) fn conv2d_impl(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        prm: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let g = Geom::new(OP, x, w, prm)?;
        let xs = self.dev_slice(x, OP)?;
        let ws = self.dev_slice(w, OP)?;
        if let Some(b) = b {
            if b.shape() != [g.k as usize] {
                return Err(Error::shape(
                    OP,
                    format!("bias {:?} must be [{}]", b.shape(), g.k),
                ));
            }
        }
        // Without a bias the kernel never reads `b`; pass the weights as a valid pointer.
        let bs = match b {
            Some(b) => self.dev_slice(b, OP)?,
            None => ws,
        };
        let has_bias: i32 = b.is_some() as i32;
        let shape = g.out_shape();
        let total = shape.iter().product::<usize>();
        let mut y = self.alloc(total, "conv2d output")?;
        if total > 0 {
            let (kern, cfg) = self.pick(&FWD, total, g.k);
            let Geom {
                n,
                c,
                h,
                w: wd,
                k,
                r,
                p,
                q,
                stride,
                pad,
            } = g;
            // SAFETY: conv2d_fwd_{f32_v1,f32_v2,f32_v3,m64_f32_v3,tf32_v1,bf16_v1}(const float* x, const float* w, const float* b,
            // float* y, int N, int C, int H, int W, int K, int R, int P, int Q, int stride,
            // int pad, int has_bias); x, w, b, y hold N*C*H*W, K*C*R*R, K, N*K*P*Q values
            // (checked by Geom::new and the bias check above); block size from pick.
            unsafe {
                launch!(
                    self,
                    kern,
                    cfg,
                    [
                        xs,
                        ws,
                        bs,
                        y.slice_mut(),
                        &n,
                        &c,
                        &h,
                        &wd,
                        &k,
                        &r,
                        &p,
                        &q,
                        &stride,
                        &pad,
                        &has_bias
                    ]
                )
            }?;
        }
        Ok(self.tensor(&shape, y))
    }

    pub(super) fn conv2d_backward_impl(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        prm: Conv2dParams,
        want_dx: bool,
    ) -> Result<Conv2dGrads> {
        const OP: &str = "conv2d_backward";
        let g = Geom::new(OP, x, w, prm)?;
        check_dy(OP, &g, dy)?;
        // Device placement of x and w is checked here too: the dx-only path never reads x.
        self.dev_slice(x, OP)?;
        self.dev_slice(w, OP)?;
        let dys = self.dev_slice(dy, OP)?;
        let Geom { n, k, p, q, .. } = g;

        let dx = if want_dx {
            Some(self.bwd_data_launch(x, w, dy, &g)?)
        } else {
            None
        };
        let dw = self.bwd_filter_launch(x, w, dy, &g)?;

        let mut db = self.alloc(k as usize, "conv2d db")?;
        if k > 0 {
            let pq: i64 = p as i64 * q as i64;
            let cfg = super::grid_per_item(k as usize, 256, OP)?;
            // SAFETY: bias_grad_nchw_f32_v1(const float* dy, float* db, int N, int K,
            // long long PQ); dy holds N*K*PQ values, db K; one block of 256 per k.
            unsafe {
                launch!(
                    self,
                    kt::BIAS_GRAD_NCHW,
                    cfg,
                    [dys, db.slice_mut(), &n, &k, &pq]
                )
            }?;
        }
        let db = self.tensor(&[k as usize], db);
        Ok(Conv2dGrads { dx, dw, db })
    }

    /// dx of a convolution alone (benchmarks time it apart from dw); `x` is read for its shape.
    pub fn conv2d_backward_data(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        prm: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_data";
        let g = Geom::new(OP, x, w, prm)?;
        check_dy(OP, &g, dy)?;
        self.bwd_data_launch(x, w, dy, &g)
    }

    /// dw of a convolution alone (summed over the batch).
    pub fn conv2d_backward_filter(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        prm: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_filter";
        let g = Geom::new(OP, x, w, prm)?;
        check_dy(OP, &g, dy)?;
        self.bwd_filter_launch(x, w, dy, &g)
    }

    /// Launch the backward-data kernel of the selected version; shapes checked by the caller.
    fn bwd_data_launch(&self, x: &Tensor, w: &Tensor, dy: &Tensor, g: &Geom) -> Result<Tensor> {
        const OP: &str = "conv2d_backward";
        let ws = self.dev_slice(w, OP)?;
        let dys = self.dev_slice(dy, OP)?;
        let total = x.numel();
        let mut dx = self.alloc(total, "conv2d dx")?;
        if total > 0 && dy.numel() > 0 {
            let (kern, cfg) = self.pick(&BWD_DATA, total, g.c);
            // SAFETY: conv2d_bwd_data_{f32_v1,f32_v2,f32_v3,m64_f32_v3,tf32_v1,bf16_v1}(const float* dy, const float* w, float* dx,
            // <geometry>); dy, w, dx hold N*K*P*Q, K*C*R*R, N*C*H*W values.
            unsafe { self.launch_bwd(kern, cfg, dys, ws, dx.slice_mut(), g) }?;
        } else if total > 0 {
            self.stream()
                .memset_zeros(dx.slice_mut())
                .map_err(super::drv("zero conv2d dx"))?;
        }
        Ok(self.tensor(x.shape(), dx))
    }

    /// Launch the backward-filter kernel of the selected version; shapes checked by the caller.
    fn bwd_filter_launch(&self, x: &Tensor, w: &Tensor, dy: &Tensor, g: &Geom) -> Result<Tensor> {
        const OP: &str = "conv2d_backward";
        let xs = self.dev_slice(x, OP)?;
        let dys = self.dev_slice(dy, OP)?;
        let wtotal = w.numel();
        let mut dw = self.alloc(wtotal, "conv2d dw")?;
        let v3 = (self.precision, self.conv_version) == (Precision::F32, ConvVersion::V3);
        if wtotal > 0 && v3 {
            self.bwd_filter_v3(xs, dys, &mut dw, g)?;
        } else if wtotal > 0 {
            let (kern, cfg) = self.pick(&BWD_FILTER, wtotal, g.k);
            // SAFETY: conv2d_bwd_filter_{f32_v1,f32_v2,tf32_v1,bf16_v1}(const float* x, const float* dy, float* dw,
            // <geometry>); x, dy, dw hold N*C*H*W, N*K*P*Q, K*C*R*R values.
            unsafe { self.launch_bwd(kern, cfg, xs, dys, dw.slice_mut(), g) }?;
        }
        Ok(self.tensor(w.shape(), dw))
    }

    /// v3 backward-filter: straight into dw when one slice of the reduction is enough, else
    /// split-K partials into a workspace and their fixed-order sum.
    fn bwd_filter_v3(
        &self,
        xs: &CudaSlice<f32>,
        dys: &CudaSlice<f32>,
        dw: &mut super::Block,
        g: &Geom,
    ) -> Result<()> {
        let crr = g.c as usize * (g.r * g.r) as usize;
        let wtotal = g.k as usize * crr;
        let red = g.n as usize * g.p as usize * g.q as usize;
        let bm = self.v3_rows(g.k as usize, crr);
        let plan = splitk_plan(g, bm).unwrap_or(SplitK {
            splits: 1,
            chunk: as_i32(red, "conv2d_backward", "N*P*Q")?,
        });
        let (kern, cfg) = v3_launch(&BWD_FILTER, bm, g.k as usize, crr, plan.splits);
        if plan.splits == 1 {
            // SAFETY: as in launch_filter_v3, with out = dw (K*C*R*R values) and one slice.
            return unsafe { self.launch_filter_v3(kern, cfg, xs, dys, dw.slice_mut(), g, plan) };
        }
        let mut ws = self.alloc(plan.splits * wtotal, "conv2d dw split-K workspace")?;
        // SAFETY: as in launch_filter_v3: ws holds splits * K*C*R*R values.
        unsafe { self.launch_filter_v3(kern, cfg, xs, dys, ws.slice_mut(), g, plan) }?;
        let (len, splits) = (wtotal as i64, plan.splits as i32);
        // SAFETY: conv2d_splitk_sum_f32_v1(const float* ws, float* out, long long n,
        // int splits); ws holds splits * n values, out n; grid-stride, any grid.
        unsafe {
            launch!(
                self,
                kt::CONV_SPLITK_SUM,
                grid_1d(wtotal),
                [ws.slice(), dw.slice_mut(), &len, &splits]
            )
        }
    }

    /// # Safety
    /// conv2d_bwd_filter{,_m64}_f32_v3(const float* x, const float* dy, float* out, int N,
    /// int C, int H, int W, int K, int R, int P, int Q, int stride, int pad, int chunk): `xs` and
    /// `dys` must hold N*C*H*W and N*K*P*Q values, `out` plan.splits * K*C*R*R, and `cfg` be
    /// v3_launch's grid for plan.splits with (splits - 1) * chunk < N*P*Q (splitk_plan).
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_filter_v3(
        &self,
        kern: Kernel,
        cfg: LaunchConfig,
        xs: &CudaSlice<f32>,
        dys: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        g: &Geom,
        plan: SplitK,
    ) -> Result<()> {
        let Geom {
            n,
            c,
            h,
            w,
            k,
            r,
            p,
            q,
            stride,
            pad,
        } = *g;
        let chunk = plan.chunk;
        // SAFETY: the caller's contract; the arguments follow the signature above.
        unsafe {
            launch!(
                self,
                kern,
                cfg,
                [xs, dys, out, &n, &c, &h, &w, &k, &r, &p, &q, &stride, &pad, &chunk]
            )
        }
    }

    /// The kernel and launch for this backend's precision and version: f32 v1 a grid-stride
    /// loop over `total` outputs; f32 v2 a 64x64-tiled GEMM of `rows` x (total / rows) outputs
    /// with 256 threads; f32 v3 BM x 128 tiles (v3_tile_rows) with 256 threads; tf32/bf16 the
    /// tensor-core GEMM on 64x64 tiles with 128 threads (the conv version does not apply to
    /// them). Backward-filter v3 goes through bwd_filter_v3 instead.
    fn pick(&self, ks: &ConvKernels, total: usize, rows: i32) -> (Kernel, LaunchConfig) {
        let rows = rows.max(1) as usize;
        let tc = |k: Kernel| {
            let mut cfg = gemm_grid(rows, total / rows);
            cfg.block_dim = (128, 1, 1);
            (k, cfg)
        };
        match (self.precision, self.conv_version) {
            (Precision::Tf32, _) => tc(ks.tf32),
            (Precision::Bf16, _) => tc(ks.bf16),
            (Precision::F32, ConvVersion::V1) => (ks.v1, grid_1d(total)),
            (Precision::F32, ConvVersion::V2) => (ks.v2, gemm_grid(rows, total / rows)),
            (Precision::F32, ConvVersion::V3) => {
                let cols = total / rows;
                v3_launch(ks, self.v3_rows(rows, cols), rows, cols, 1)
            }
        }
    }

    /// Rows per v3 block tile for a [rows, cols] GEMM: the forced size, else the heuristic.
    fn v3_rows(&self, rows: usize, cols: usize) -> usize {
        self.v3_rows.unwrap_or_else(|| v3_tile_rows(rows, cols))
    }

    /// Launch a backward kernel (data or filter, either version): all four take
    /// (const float* a, const float* b, float* out, int N, int C, int H, int W, int K, int R,
    /// int P, int Q, int stride, int pad).
    ///
    /// # Safety
    /// `a`, `b` and `out` must hold what the kernel reads and writes for geometry `g`.
    unsafe fn launch_bwd(
        &self,
        kern: Kernel,
        cfg: LaunchConfig,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        g: &Geom,
    ) -> Result<()> {
        let Geom {
            n,
            c,
            h,
            w,
            k,
            r,
            p,
            q,
            stride,
            pad,
        } = *g;
        // SAFETY: the caller's contract; the arguments follow the signature above.
        unsafe {
            launch!(
                self,
                kern,
                cfg,
                [a, b, out, &n, &c, &h, &w, &k, &r, &p, &q, &stride, &pad]
            )
        }
    }
}

fn check_dy(op: &'static str, g: &Geom, dy: &Tensor) -> Result<()> {
    if dy.shape() != g.out_shape() {
        return Err(Error::shape(
            op,
            format!("dy {:?} must be {:?}", dy.shape(), g.out_shape()),
        ));
    }
    Ok(())
}

/// A split of the backward-filter reduction: `splits` slices of `chunk` (a multiple of 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SplitK {
    pub splits: usize,
    pub chunk: i32,
}

/// The v3 heuristic of kernels/conv.cu: enough splits (over the v3 tiles) to fill two waves of
/// an H100's 132 SMs,
/// each split at least 4 K chunks (64) long, at most 64 splits and a 256 MiB workspace. None
/// when one split is enough (then v2 writes dw directly).
pub(super) fn splitk_plan(g: &Geom, bm: usize) -> Option<SplitK> {
    const TARGET_BLOCKS: usize = 2 * 132;
    const MAX_WS_BYTES: usize = 256 << 20;
    let crr = g.c as usize * (g.r * g.r) as usize;
    let tiles = (g.k as usize).div_ceil(bm) * crr.div_ceil(128);
    let red = g.n as usize * g.p as usize * g.q as usize;
    let by_ws = MAX_WS_BYTES / (4 * g.k as usize * crr).max(1);
    let want = TARGET_BLOCKS
        .div_ceil(tiles.max(1))
        .min(red / 64)
        .min(64)
        .min(by_ws);
    if want < 2 {
        return None;
    }
    let chunk = red.div_ceil(want).div_ceil(16) * 16;
    let splits = red.div_ceil(chunk);
    (splits >= 2).then_some(SplitK {
        splits,
        chunk: chunk as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(n: i32, c: i32, hw: i32, k: i32, r: i32) -> Geom {
        Geom {
            n,
            c,
            h: hw,
            w: hw,
            k,
            r,
            p: hw,
            q: hw,
            stride: 1,
            pad: r / 2,
        }
    }

    /// The plan at the tile height the heuristic picks for dw.
    fn plan(g: &Geom) -> Option<SplitK> {
        splitk_plan(g, v3_tile_rows(g.k as usize, (g.c * g.r * g.r) as usize))
    }

    #[test]
    fn v3_tiles_are_tall_only_for_tall_gemms_that_fill_a_wave() {
        assert_eq!(v3_tile_rows(64, 1 << 20), 64);
        assert_eq!(v3_tile_rows(65, 1 << 20), 128);
        // 2 row tiles x 65 column tiles = 130 blocks < 132 SMs: 64-row tiles double them.
        assert_eq!(v3_tile_rows(256, 65 * 128), 64);
        assert_eq!(v3_tile_rows(256, 66 * 128), 128);
        assert_eq!(v3_tile_rows(1, 1), 64);
    }

    #[test]
    fn splitk_plan_covers_the_reduction_with_no_empty_split() {
        // VGG conv1_2 at batch 32: 5 tiles of 64 x 128, N*P*Q 1.6M -> many splits.
        for g in [
            geom(32, 64, 224, 64, 3),
            geom(2, 3, 20, 5, 3),
            geom(1, 512, 7, 512, 3),
        ] {
            let red = (g.n * g.p * g.q) as usize;
            if let Some(s) = plan(&g) {
                assert!(s.splits >= 2 && s.splits <= 64);
                assert_eq!(s.chunk % 16, 0);
                let c = s.chunk as usize;
                assert!(
                    (s.splits - 1) * c < red && s.splits * c >= red,
                    "{s:?} {red}"
                );
            }
        }
        assert!(plan(&geom(32, 64, 224, 64, 3)).is_some());
        assert!(plan(&geom(2, 3, 20, 5, 3)).is_some_and(|s| s.splits == 10));
        // Wide and shallow: ResNet layer4 at batch 1 (N*P*Q 49) stays one split.
        assert_eq!(plan(&geom(1, 512, 7, 512, 3)), None);
    }
}
