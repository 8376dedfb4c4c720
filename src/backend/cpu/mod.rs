//! The CPU backend: the oracle every other backend is checked against.
//!
//! Plain loops over host slices, parallel with rayon over images, channels or rows; matrix
//! products through our packed f32 GEMM (`sgemm`; see `conv` for the im2col scheme). Reductions that feed
//! statistics (batch-norm moments, softmax normalisers, bias gradients, norms) accumulate in f64 so
//! that this backend stays a trustworthy reference for the f32 GPU kernels.

mod conv;
mod gemm;
mod pool;
#[cfg(target_arch = "x86_64")]
mod pool_stem;
pub mod sgemm;

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::*;
use crate::backend::precision::Precision;
use crate::error::Error;

pub use gemm::{dgemm, sgemm, sgemm_isa, Strides};

/// The instruction set the CPU GEMM runs on (reported beside every benchmark figure).
pub fn isa_name() -> String {
    sgemm::isa().name().into()
}

/// Elements per rayon task for pointwise ops: large enough that task overhead is negligible.
const CHUNK: usize = 1 << 14;

#[derive(Default, Debug, Clone)]
pub struct CpuBackend {
    /// Convolution input precision: tf32/bf16 round a copy of the GEMM inputs first (the CUDA
    /// tensor-core kernels' contract, see backend/precision.rs); f32 is the exact oracle.
    precision: Precision,
}

impl CpuBackend {
    /// conv(x, w) + b, then the ReLU when `relu`.
    fn conv_forward(
        &self,
        op: &'static str,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<Tensor> {
        let g = conv_geom(op, x, w, p)?;
        let bias = match b {
            Some(b) => {
                want_shape(op, "b", b, &[g.k])?;
                Some(b.cpu(op)?)
            }
            None => None,
        };
        let rnd = |v| self.precision.round_slice(v);
        let ep = conv::Epilogue {
            bias,
            relu,
            gate: None,
        };
        let y = conv::forward_with(&g, &rnd(x.cpu(op)?), &rnd(w.cpu(op)?), ep);
        Tensor::from_vec(&[g.n, g.k, g.p, g.q], y)
    }

    /// The per-channel (a, b) of an eval-mode batch norm over x (y = a x + b in f64), with every
    /// shape checked; and x's (channels, plane size).
    #[allow(clippy::too_many_arguments)]
    fn bn_eval_coef(
        &self,
        op: &'static str,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<(usize, usize, Vec<BnCoef>)> {
        let (_, c, hw) = bn_dims(op, x)?;
        for (name, t) in [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ] {
            want_shape(op, name, t, &[c])?;
        }
        let stats: Vec<(f64, f64)> = running_mean
            .cpu(op)?
            .iter()
            .zip(running_var.cpu(op)?)
            .map(|(&m, &v)| (m as f64, v as f64))
            .collect();
        Ok((c, hw, bn_coef(gamma.cpu(op)?, beta.cpu(op)?, &stats, eps)))
    }

    /// dw, db and (with `dx`: Some(gated)) dx of a conv; a gated dx is kept where x > 0 (the
    /// ReLU before the conv).
    fn conv_backward(
        &self,
        op: &'static str,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
        dx: Option<bool>,
    ) -> Result<Conv2dGrads> {
        let g = conv_geom(op, x, w, p)?;
        want_shape(op, "dy", dy, &[g.n, g.k, g.p, g.q])?;
        let rnd = |v| self.precision.round_slice(v);
        let (xs, ws, dys) = (rnd(x.cpu(op)?), rnd(w.cpu(op)?), rnd(dy.cpu(op)?));
        let (xs, ws, dys) = (&*xs, &*ws, &*dys);
        let dx = match dx {
            // The gate is x as given: relu_backward reads the ReLU's output unrounded.
            Some(gated) => {
                let gate = gated.then(|| x.cpu(op)).transpose()?;
                Some(Tensor::from_vec(
                    x.shape(),
                    conv::backward_data(&g, ws, dys, gate),
                )?)
            }
            None => None,
        };
        let dw = Tensor::from_vec(w.shape(), conv::backward_filter(&g, xs, dys))?;
        // The bias gradient is a plain f32 sum of dy at every precision (no GEMM input).
        let db = Tensor::from_vec(&[g.k], conv::backward_bias(&g, dy.cpu(op)?))?;
        Ok(Conv2dGrads { dx, dw, db })
    }
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
    /// The oracle with convolution inputs rounded to `precision` (f32: unchanged).
    pub fn with_precision(precision: Precision) -> CpuBackend {
        CpuBackend { precision }
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
}

fn same_shape(op: &'static str, an: &str, a: &Tensor, bn: &str, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!(
                "{an} has shape {:?} but {bn} has shape {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    Ok(())
}

fn want_shape(op: &'static str, name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape() != want {
        return Err(Error::shape(
            op,
            format!("{name} must have shape {want:?}, got {:?}", t.shape()),
        ));
    }
    Ok(())
}

fn nonzero(op: &'static str, what: &str, dims: &[usize]) -> Result<()> {
    if dims.contains(&0) {
        return Err(Error::shape(
            op,
            format!("{what} {dims:?} has a zero dimension"),
        ));
    }
    Ok(())
}

/// (N, C, H*W) of a batch-norm input: rank 4, or rank 2 read as [N, C, 1, 1] (BatchNorm1d). The
/// CUDA backend accepts the same shapes through this function.
pub(crate) fn bn_dims(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    match x.shape() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        &[n, c] => Ok((n, c, 1)),
        s => Err(Error::shape(
            op,
            format!("expected x of rank 4 (NCHW) or 2 (NC), got shape {s:?}"),
        )),
    }
}

/// The clip range [lo, hi] of an FGS step: f32::clamp (the step's contract) needs lo <= hi and
/// neither NaN. Shared with the CUDA backend.
pub(crate) fn check_clip_bounds(op: &'static str, lo: f32, hi: f32) -> Result<()> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(Error::shape(
            op,
            format!("need lo <= hi, got lo {lo}, hi {hi}"),
        ));
    }
    Ok(())
}

/// y[i] = f(x[i]), written straight into fresh memory (no zero fill first: under `perf` the
/// zeroing of every pointwise output was a visible share of a training step).
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            yc.iter_mut().zip(xc).for_each(|(y, &x)| {
                y.write(f(x));
            })
        });
    // SAFETY: the chunks above pair every one of the x.len() slots with one x value (equal
    // lengths, same chunking), and each slot was written once; a panic in `f` leaves len 0.
    unsafe { y.set_len(x.len()) };
    y
}

/// y[i] = f(a[i], b[i]) for equal-length a and b, written as in `map1`.
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: callers check the shapes first");
    let mut y: Vec<f32> = Vec::with_capacity(a.len());
    y.spare_capacity_mut()[..a.len()]
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(yc, (ac, bc))| {
            yc.iter_mut()
                .zip(ac.iter().zip(bc))
                .for_each(|(y, (&a, &b))| {
                    y.write(f(a, b));
                })
        });
    // SAFETY: as in `map1`: a and b have a.len() values, each slot is written once.
    unsafe { y.set_len(a.len()) };
    y
}

fn adaptive_window(i: usize, len: usize, out: usize) -> (usize, usize) {
    ((i * len) / out, ((i + 1) * len).div_ceil(out))
}

/// Row-wise log-sum-exp in f64, shifted by the row max for stability.
fn logsumexp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln()
}

/// Validated geometry of a conv2d call.
/// Validated convolution geometry; the CUDA backend checks its inputs through this too, so both
/// backends refuse exactly the same shapes.
pub(crate) fn conv_geom(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
) -> Result<conv::Geom> {
    let (n, c, h, wd) = x.dims4(op)?;
    let (k, wc, r, s) = w.dims4(op)?;
    if wc != c {
        return Err(Error::shape(
            op,
            format!(
                "x {:?} has {c} channels but w {:?} expects {wc}",
                x.shape(),
                w.shape()
            ),
        ));
    }
    if r != s {
        return Err(Error::shape(
            op,
            format!(
                "only square kernels are supported, w has shape {:?}",
                w.shape()
            ),
        ));
    }
    nonzero(op, "x shape (C,H,W)", &[c, h, wd])?;
    nonzero(op, "w shape", w.shape())?;
    if p.stride == 0 {
        return Err(Error::shape(op, "stride must be >= 1"));
    }
    check_geom_bounds(op, &[("pad", p.pad), ("stride", p.stride)])?;
    let (Some(po), Some(qo)) = (
        out_dim(h, r, p.stride, p.pad),
        out_dim(wd, r, p.stride, p.pad),
    ) else {
        return Err(Error::shape(
            op,
            format!(
                "kernel {r}x{r} does not fit input {h}x{wd} with pad {}",
                p.pad
            ),
        ));
    };
    check_output_elems(op, &[n, k, po, qo])?;
    Ok(conv::Geom {
        n,
        c,
        h,
        w: wd,
        k,
        r,
        stride: p.stride,
        pad: p.pad,
        p: po,
        q: qo,
    })
}

/// Validated pooling geometry: (n, c, h, w, p, q). Shared with the CUDA backend, like
/// [`conv_geom`].
pub(crate) fn pool_geom(
    op: &'static str,
    x: &Tensor,
    p: Pool2dParams,
) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (n, c, h, w) = x.dims4(op)?;
    nonzero(op, "x shape (H,W)", &[h, w])?;
    if p.kernel == 0 || p.stride == 0 {
        return Err(Error::shape(op, "kernel and stride must be >= 1"));
    }
    check_geom_bounds(
        op,
        &[("kernel", p.kernel), ("pad", p.pad), ("stride", p.stride)],
    )?;
    // Like torch: a pad above half the kernel could make a window of padding only.
    if 2 * p.pad > p.kernel {
        return Err(Error::shape(
            op,
            format!("pad {} must be at most half the kernel {}", p.pad, p.kernel),
        ));
    }
    let (Some(po), Some(qo)) = (
        out_dim(h, p.kernel, p.stride, p.pad),
        out_dim(w, p.kernel, p.stride, p.pad),
    ) else {
        return Err(Error::shape(
            op,
            format!(
                "window {k}x{k} does not fit input {h}x{w} with pad {}",
                p.pad,
                k = p.kernel
            ),
        ));
    };
    check_output_elems(op, &[n, c, po, qo])?;
    Ok((n, c, h, w, po, qo))
}

/// Pad, stride and window above [`crate::backend::MAX_GEOM`] are refused.
fn check_geom_bounds(op: &'static str, values: &[(&str, usize)]) -> Result<()> {
    for &(what, v) in values {
        if v > crate::backend::MAX_GEOM {
            return Err(Error::shape(
                op,
                format!(
                    "{what} {v} is above the limit of {}",
                    crate::backend::MAX_GEOM
                ),
            ));
        }
    }
    Ok(())
}

/// An output shape whose element count overflows or exceeds
/// [`crate::backend::MAX_OUTPUT_ELEMS`] is refused before anything is allocated.
fn check_output_elems(op: &'static str, dims: &[usize]) -> Result<()> {
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n <= crate::backend::MAX_OUTPUT_ELEMS => Ok(()),
        _ => Err(Error::shape(
            op,
            format!(
                "the output would have shape {dims:?}, above the limit of {} elements",
                crate::backend::MAX_OUTPUT_ELEMS
            ),
        )),
    }
}

/// The fewest rows `batch_parts` gives a part.
const MIN_PART_ROWS: usize = 16;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    /// One part per worker thread, of at least `MIN_PART_ROWS` rows each. The per-op fork-join
    /// of a width-8 model at batch 64 left the second of two threads idle in a fifth of its
    /// samples; a whole part per thread has no join until the part is done.
    fn batch_parts(&self, rows: usize) -> usize {
        rayon::current_num_threads()
            .min(rows / MIN_PART_ROWS)
            .max(1)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(t.shape(), t.to_vec()?)
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::zeros(shape))
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        self.conv_forward("conv2d", x, w, b, p, false)
    }

    fn conv2d_backward_data(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        // The inherent method (also timed alone by `bench conv`) does the work.
        CpuBackend::conv2d_backward_data(self, x, w, dy, p)
    }

    fn conv2d_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        self.conv_forward("conv2d_relu", x, w, b, p, true)
    }

    fn conv2d_backward_data_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        self.backward_data_op("conv2d_backward_data_relu", x, w, dy, p, true)
    }

    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
        want_dx: bool,
    ) -> Result<Conv2dGrads> {
        self.conv_backward("conv2d_backward", x, w, dy, p, want_dx.then_some(false))
    }

    fn conv2d_backward_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
    ) -> Result<Conv2dGrads> {
        self.conv_backward("conv2d_backward_relu", x, w, dy, p, Some(true))
    }

    fn maxpool2d(&self, x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        const OP: &str = "maxpool2d";
        let (n, c, h, w, po, qo) = pool_geom(OP, x, p)?;
        let xs = x.cpu(OP)?;
        let isa = sgemm::isa();
        // Zeroed in the loop (`zeroed_par`), though every path writes the whole plane: the
        // plane paths take initialised floats.
        let y = zeroed_par(n * c * po * qo, po * qo, |i, yp| {
            let plane = &xs[i * h * w..][..h * w];
            pool::forward_plane(isa, plane, h, w, p, yp)
        });
        Tensor::from_vec(&[n, c, po, qo], y)
    }

    fn maxpool2d_backward(&self, x: &Tensor, dy: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        maxpool_backward("maxpool2d_backward", x, dy, p, false)
    }

    fn maxpool2d_relu_backward(&self, x: &Tensor, dy: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        maxpool_backward("maxpool2d_relu_backward", x, dy, p, true)
    }

    fn adaptive_avgpool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
        const OP: &str = "adaptive_avgpool2d";
        let (n, c, h, w) = x.dims4(OP)?;
        nonzero(OP, "x shape (H,W) and output size", &[h, w, oh, ow])?;
        let xs = x.cpu(OP)?;
        let mut y = vec![0.0f32; n * c * oh * ow];
        if !y.is_empty() {
            y.par_chunks_mut(oh * ow)
                .zip(xs.par_chunks(h * w))
                .for_each(|(yp, plane)| {
                    for i in 0..oh {
                        let (h0, h1) = adaptive_window(i, h, oh);
                        for j in 0..ow {
                            let (w0, w1) = adaptive_window(j, w, ow);
                            let mut s = 0.0f64;
                            for ih in h0..h1 {
                                s += plane[ih * w + w0..ih * w + w1]
                                    .iter()
                                    .map(|&v| v as f64)
                                    .sum::<f64>();
                            }
                            yp[i * ow + j] = (s / ((h1 - h0) * (w1 - w0)) as f64) as f32;
                        }
                    }
                });
        }
        Tensor::from_vec(&[n, c, oh, ow], y)
    }

    fn adaptive_avgpool2d_backward(&self, dy: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        const OP: &str = "adaptive_avgpool2d_backward";
        let (n, c, oh, ow) = dy.dims4(OP)?;
        nonzero(OP, "input size (H,W) and dy shape (OH,OW)", &[h, w, oh, ow])?;
        let dys = dy.cpu(OP)?;
        let mut dx = vec![0.0f32; n * c * h * w];
        if !dx.is_empty() {
            dx.par_chunks_mut(h * w)
                .zip(dys.par_chunks(oh * ow))
                .for_each(|(dxp, dyp)| {
                    for i in 0..oh {
                        let (h0, h1) = adaptive_window(i, h, oh);
                        for j in 0..ow {
                            let (w0, w1) = adaptive_window(j, w, ow);
                            let g = dyp[i * ow + j] / ((h1 - h0) * (w1 - w0)) as f32;
                            for ih in h0..h1 {
                                dxp[ih * w + w0..ih * w + w1]
                                    .iter_mut()
                                    .for_each(|v| *v += g);
                            }
                        }
                    }
                });
        }
        Tensor::from_vec(&[n, c, h, w], dx)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::from_vec(x.shape(), map1(x.cpu("relu")?, |v| v.max(0.0)))
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        same_shape(OP, "y", y, "dy", dy)?;
        Tensor::from_vec(
            y.shape(),
            map2(
                y.cpu(OP)?,
                dy.cpu(OP)?,
                |y, g| if y > 0.0 { g } else { 0.0 },
            ),
        )
    }

    fn dropout(&self, x: &Tensor, p: f32, seed: u64) -> Result<(Tensor, Tensor)> {
        const OP: &str = "dropout";
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::shape(OP, format!("p must be in [0, 1], got {p}")));
        }
        let xs = x.cpu(OP)?;
        let keep = 1.0 / (1.0 - p);
        let mut mask = vec![0.0f32; xs.len()];
        mask.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, mc)| {
            for (j, m) in mc.iter_mut().enumerate() {
                let i = (ci * CHUNK + j) as u64;
                *m = if crate::rng::uniform01(seed, i) >= p {
                    keep
                } else {
                    0.0
                };
            }
        });
        let y = map2(xs, &mask, |x, m| x * m);
        Ok((
            Tensor::from_vec(x.shape(), y)?,
            Tensor::from_vec(x.shape(), mask)?,
        ))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_shape("add", "a", a, "b", b)?;
        Tensor::from_vec(a.shape(), map2(a.cpu("add")?, b.cpu("add")?, |a, b| a + b))
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_shape("mul", "a", a, "b", b)?;
        Tensor::from_vec(a.shape(), map2(a.cpu("mul")?, b.cpu("mul")?, |a, b| a * b))
    }

    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        Tensor::from_vec(x.shape(), map1(x.cpu("scale")?, |v| alpha * v))
    }

    fn axpy(&self, acc: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
        same_shape("axpy", "acc", acc, "x", x)?;
        let xs = x.cpu("axpy")?;
        acc.cpu_mut("axpy")?
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(ac, xc)| ac.iter_mut().zip(xc).for_each(|(a, &x)| *a += alpha * x));
        Ok(())
    }

    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        Ok(x.cpu("sum_squares")?
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum())
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear";
        let (n, i) = x.dims2(OP)?;
        let (o, wi) = w.dims2(OP)?;
        if wi != i {
            return Err(Error::shape(
                OP,
                format!(
                    "x {:?} and w {:?}: inner sizes differ",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        want_shape(OP, "b", b, &[o])?;
        let bs = b.cpu(OP)?;
        let mut y = vec![0.0f32; n * o];
        sgemm(
            n,
            i,
            o,
            x.cpu(OP)?,
            Strides::row(i),
            w.cpu(OP)?,
            Strides::trans(i),
            0.0,
            &mut y,
            Strides::row(o),
        );
        if o > 0 {
            y.chunks_exact_mut(o)
                .for_each(|row| row.iter_mut().zip(bs).for_each(|(v, &bb)| *v += bb));
        }
        Tensor::from_vec(&[n, o], y)
    }

    fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LinearGrads> {
        const OP: &str = "linear_backward";
        let (n, i) = x.dims2(OP)?;
        let (o, wi) = w.dims2(OP)?;
        if wi != i {
            return Err(Error::shape(
                OP,
                format!(
                    "x {:?} and w {:?}: inner sizes differ",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        want_shape(OP, "dy", dy, &[n, o])?;
        let (xs, ws, dys) = (x.cpu(OP)?, w.cpu(OP)?, dy.cpu(OP)?);
        let mut dx = vec![0.0f32; n * i];
        sgemm(
            n,
            o,
            i,
            dys,
            Strides::row(o),
            ws,
            Strides::row(i),
            0.0,
            &mut dx,
            Strides::row(i),
        );
        let mut dw = vec![0.0f32; o * i];
        sgemm(
            o,
            n,
            i,
            dys,
            Strides::trans(o),
            xs,
            Strides::row(i),
            0.0,
            &mut dw,
            Strides::row(i),
        );
        let db: Vec<f32> = (0..o)
            .map(|j| (0..n).map(|r| dys[r * o + j] as f64).sum::<f64>() as f32)
            .collect();
        Ok(LinearGrads {
            dx: Tensor::from_vec(&[n, i], dx)?,
            dw: Tensor::from_vec(&[o, i], dw)?,
            db: Tensor::from_vec(&[o], db)?,
        })
    }

    fn batchnorm2d_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<BatchNormTrain> {
        const OP: &str = "batchnorm2d_train";
        let (n, c, hw) = bn_dims(OP, x)?;
        want_shape(OP, "gamma", gamma, &[c])?;
        want_shape(OP, "beta", beta, &[c])?;
        if n * hw == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "batch statistics need at least one value per channel, x is {:?}",
                    x.shape()
                ),
            ));
        }
        let xs = x.cpu(OP)?;
        let m = (n * hw) as f64;
        // Two passes in f64: the mean, then the biased variance around it.
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let plane = |ni: usize| &xs[(ni * c + ci) * hw..(ni * c + ci + 1) * hw];
                let mean = (0..n)
                    .map(|ni| plane(ni).iter().map(|&v| v as f64).sum::<f64>())
                    .sum::<f64>()
                    / m;
                let var = (0..n)
                    .map(|ni| {
                        plane(ni)
                            .iter()
                            .map(|&v| (v as f64 - mean).powi(2))
                            .sum::<f64>()
                    })
                    .sum::<f64>()
                    / m;
                (mean, var)
            })
            .collect();
        let coef = bn_coef(gamma.cpu(OP)?, beta.cpu(OP)?, &stats, eps);
        let y = bn_apply(xs, c, hw, &coef, BnTail::None);
        Ok(BatchNormTrain {
            y: Tensor::from_vec(x.shape(), y)?,
            mean: Tensor::from_vec(&[c], stats.iter().map(|s| s.0 as f32).collect())?,
            var: Tensor::from_vec(&[c], stats.iter().map(|s| s.1 as f32).collect())?,
        })
    }

    fn batchnorm2d_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "batchnorm2d_eval";
        let (c, hw, coef) =
            self.bn_eval_coef(OP, x, gamma, beta, running_mean, running_var, eps)?;
        Tensor::from_vec(x.shape(), bn_apply(x.cpu(OP)?, c, hw, &coef, BnTail::None))
    }

    fn batchnorm2d_eval_relu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        skip: Option<&Tensor>,
    ) -> Result<Tensor> {
        const OP: &str = "batchnorm2d_eval_relu";
        let (c, hw, coef) =
            self.bn_eval_coef(OP, x, gamma, beta, running_mean, running_var, eps)?;
        if let Some(s) = skip {
            same_shape(OP, "x", x, "skip", s)?;
        }
        let skip = skip.map(|s| s.cpu(OP)).transpose()?;
        let y = bn_apply(x.cpu(OP)?, c, hw, &coef, BnTail::Relu(skip));
        Tensor::from_vec(x.shape(), y)
    }

    fn batchnorm2d_eval_relu_backward(
        &self,
        y: &Tensor,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let op = "batchnorm2d_eval_relu_backward";
        bn_eval_backward(op, gamma, running_var, eps, dy, Some(y))
    }

    fn batchnorm2d_backward(
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
        same_shape(OP, "x", x, "dy", dy)?;
        for (name, t) in [("gamma", gamma), ("mean", mean), ("var", var)] {
            want_shape(OP, name, t, &[c])?;
        }
        let (xs, dys, gs, ms, vs) = (
            x.cpu(OP)?,
            dy.cpu(OP)?,
            gamma.cpu(OP)?,
            mean.cpu(OP)?,
            var.cpu(OP)?,
        );
        let invstd: Vec<f64> = vs
            .iter()
            .map(|&v| 1.0 / (v as f64 + eps as f64).sqrt())
            .collect();
        // Per channel: dbeta = sum dy, dgamma = sum dy * xhat.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (mu, is) = (ms[ci] as f64, invstd[ci]);
                let mut sb = 0.0f64;
                let mut sg = 0.0f64;
                for ni in 0..n {
                    let o = (ni * c + ci) * hw;
                    for (&xv, &g) in xs[o..o + hw].iter().zip(&dys[o..o + hw]) {
                        sb += g as f64;
                        sg += g as f64 * (xv as f64 - mu) * is;
                    }
                }
                (sg, sb)
            })
            .collect();
        let m = (n * hw) as f64;
        let mut dx = vec![0.0f32; xs.len()];
        if !dx.is_empty() {
            dx.par_chunks_mut(hw)
                .zip(xs.par_chunks(hw).zip(dys.par_chunks(hw)))
                .enumerate()
                .for_each(|(plane, (dxp, (xp, dyp)))| {
                    let ci = plane % c;
                    let (mu, is, (sg, sb)) = (ms[ci] as f64, invstd[ci], sums[ci]);
                    let k = gs[ci] as f64 * is / m;
                    for ((d, &xv), &g) in dxp.iter_mut().zip(xp).zip(dyp) {
                        let xhat = (xv as f64 - mu) * is;
                        *d = (k * (m * g as f64 - sb - xhat * sg)) as f32;
                    }
                });
        }
        Ok((
            Tensor::from_vec(x.shape(), dx)?,
            Tensor::from_vec(&[c], sums.iter().map(|s| s.0 as f32).collect())?,
            Tensor::from_vec(&[c], sums.iter().map(|s| s.1 as f32).collect())?,
        ))
    }

    fn batchnorm2d_eval_backward(
        &self,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<Tensor> {
        bn_eval_backward(
            "batchnorm2d_eval_backward",
            gamma,
            running_var,
            eps,
            dy,
            None,
        )
    }

    fn softmax_xent(&self, logits: &Tensor, labels: &[u32]) -> Result<(Tensor, Tensor)> {
        const OP: &str = "softmax_xent";
        let (n, k) = logits.dims2(OP)?;
        if labels.len() != n {
            return Err(Error::shape(
                OP,
                format!(
                    "logits {:?} has {n} rows but {} labels were given",
                    logits.shape(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= k) {
            return Err(Error::shape(
                OP,
                format!("label {l} at index {i} is out of range for {k} classes"),
            ));
        }
        let zs = logits.cpu(OP)?;
        let mut loss = vec![0.0f32; n];
        let mut d = vec![0.0f32; n * k];
        if k > 0 {
            d.par_chunks_mut(k)
                .zip(loss.par_iter_mut())
                .enumerate()
                .for_each(|(r, (dr, lr))| {
                    let row = &zs[r * k..(r + 1) * k];
                    let lse = logsumexp(row);
                    let label = labels[r] as usize;
                    *lr = (lse - row[label] as f64) as f32;
                    for (j, (dv, &z)) in dr.iter_mut().zip(row).enumerate() {
                        let pj = (z as f64 - lse).exp();
                        *dv = (pj - if j == label { 1.0 } else { 0.0 }) as f32;
                    }
                });
        }
        Ok((Tensor::from_vec(&[n], loss)?, Tensor::from_vec(&[n, k], d)?))
    }

    fn softmax(&self, logits: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax";
        let (n, k) = logits.dims2(OP)?;
        let zs = logits.cpu(OP)?;
        let mut y = vec![0.0f32; n * k];
        if k > 0 {
            y.par_chunks_mut(k).enumerate().for_each(|(r, yr)| {
                let row = &zs[r * k..(r + 1) * k];
                let lse = logsumexp(row);
                yr.iter_mut()
                    .zip(row)
                    .for_each(|(y, &z)| *y = (z as f64 - lse).exp() as f32);
            });
        }
        Tensor::from_vec(&[n, k], y)
    }

    fn sgd_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        buf: &mut Tensor,
        h: SgdParams,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        same_shape(OP, "param", param, "grad", grad)?;
        same_shape(OP, "param", param, "buf", buf)?;
        let gs = grad.cpu(OP)?;
        let bs = buf.cpu_mut(OP)?;
        let ps = param.cpu_mut(OP)?;
        ps.par_chunks_mut(CHUNK)
            .zip(bs.par_chunks_mut(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|(pc, (bc, gc))| {
                for ((p, b), &g) in pc.iter_mut().zip(bc.iter_mut()).zip(gc) {
                    let g = g + h.weight_decay * *p;
                    *b = h.momentum * *b + g;
                    *p -= h.lr * *b;
                }
            });
        Ok(())
    }

    fn adam_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: AdamParams,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        if h.step == 0 {
            return Err(Error::shape(OP, "step is 1-based; got step 0"));
        }
        same_shape(OP, "param", param, "grad", grad)?;
        same_shape(OP, "param", param, "m", m)?;
        same_shape(OP, "param", param, "v", v)?;
        let t = h.step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (h.beta1 as f64).powi(t);
        let bc2 = 1.0 - (h.beta2 as f64).powi(t);
        // torch: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
        let step_size = (h.lr as f64 / bc1) as f32;
        let sqrt_bc2 = bc2.sqrt() as f32;
        let gs = grad.cpu(OP)?;
        let ms = m.cpu_mut(OP)?;
        let vs = v.cpu_mut(OP)?;
        let ps = param.cpu_mut(OP)?;
        ps.par_chunks_mut(CHUNK)
            .zip(ms.par_chunks_mut(CHUNK))
            .zip(vs.par_chunks_mut(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|((pc, mc), (vc, gc))| {
                for (((p, m), v), &g) in pc.iter_mut().zip(mc.iter_mut()).zip(vc.iter_mut()).zip(gc)
                {
                    let g = g + h.weight_decay * *p;
                    *m = h.beta1 * *m + (1.0 - h.beta1) * g;
                    *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
                    let denom = v.sqrt() / sqrt_bc2 + h.eps;
                    *p -= step_size * *m / denom;
                }
            });
        Ok(())
    }

    fn fgs_step(&self, x: &Tensor, grad: &Tensor, eps: f32, lo: f32, hi: f32) -> Result<Tensor> {
        const OP: &str = "fgs_step";
        same_shape(OP, "x", x, "grad", grad)?;
        check_clip_bounds(OP, lo, hi)?;
        let y = map2(x.cpu(OP)?, grad.cpu(OP)?, |x, g| {
            let s = if g > 0.0 {
                1.0
            } else if g < 0.0 {
                -1.0
            } else {
                0.0
            };
            (x - eps * s).clamp(lo, hi)
        });
        Tensor::from_vec(x.shape(), y)
    }

    fn l2_distance_grad(&self, a: &Tensor, b: &Tensor, lambda: f32) -> Result<Tensor> {
        const OP: &str = "l2_distance_grad";
        same_shape(OP, "a", a, "b", b)?;
        let n = a.shape().first().copied().unwrap_or(1).max(1);
        let per_row = a.numel() / n;
        let (av, bv) = (a.cpu(OP)?, b.cpu(OP)?);
        let mut g = vec![0f32; av.len()];
        if per_row > 0 {
            g.par_chunks_mut(per_row)
                .zip(av.par_chunks(per_row).zip(bv.par_chunks(per_row)))
                .for_each(|(gi, (ar, br))| {
                    let norm = ar
                        .iter()
                        .zip(br)
                        .map(|(p, q)| ((p - q) as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    if norm > 0.0 {
                        let s = (lambda as f64 / norm) as f32;
                        for ((o, p), q) in gi.iter_mut().zip(ar).zip(br) {
                            *o = s * (p - q);
                        }
                    }
                });
        }
        Tensor::from_vec(a.shape(), g)
    }

    fn channel_max(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "channel_max";
        let (n, c, h, w) = x.dims4(OP)?;
        nonzero(OP, "x shape (H,W)", &[h, w])?;
        let y: Vec<f32> = x
            .cpu(OP)?
            .par_chunks(h * w)
            .map(|p| p.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)))
            .collect();
        Tensor::from_vec(&[n, c], y)
    }

    fn channel_mean(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "channel_mean";
        let (n, c, h, w) = x.dims4(OP)?;
        nonzero(OP, "x shape (H,W)", &[h, w])?;
        let y: Vec<f32> = x
            .cpu(OP)?
            .par_chunks(h * w)
            .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64) as f32)
            .collect();
        Tensor::from_vec(&[n, c], y)
    }

    fn quadform(&self, p: &Tensor, c: &Tensor, q: &Tensor) -> Result<QuadForm> {
        const OP: &str = "quadform";
        let (n, k) = p.dims2(OP)?;
        same_shape(OP, "p", p, "q", q)?;
        want_shape(OP, "c", c, &[k, k])?;
        let f64v =
            |t: &Tensor| -> Result<Vec<f64>> { Ok(t.cpu(OP)?.iter().map(|&v| v as f64).collect()) };
        let (pd, cd, qd) = (f64v(p)?, f64v(c)?, f64v(q)?);
        // (C p_n)_i = sum_j C[i,j] p_n[j], so all rows at once are Cp[N,K] = P . C^T; in f64
        // because similarity-weighted sums feed cosines that are compared at 1e-4.
        let mut cp = vec![0.0f64; n * k];
        let mut cq = vec![0.0f64; n * k];
        dgemm(
            n,
            k,
            k,
            &pd,
            Strides::row(k),
            &cd,
            Strides::trans(k),
            &mut cp,
            Strides::row(k),
        );
        dgemm(
            n,
            k,
            k,
            &qd,
            Strides::row(k),
            &cd,
            Strides::trans(k),
            &mut cq,
            Strides::row(k),
        );
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let rows: Vec<[f32; 4]> = (0..n)
            .map(|r| {
                let s = r * k..(r + 1) * k;
                let pcq = dot(&pd[s.clone()], &cq[s.clone()]);
                let pcp = dot(&pd[s.clone()], &cp[s.clone()]);
                let qcq = dot(&qd[s.clone()], &cq[s]);
                // A zero (or, for a C that is not positive semi-definite, negative) norm has no
                // direction: the cosine is defined as 0 there.
                let cos = if pcp > 0.0 && qcq > 0.0 {
                    pcq / (pcp * qcq).sqrt()
                } else {
                    0.0
                };
                [pcq as f32, pcp as f32, qcq as f32, cos as f32]
            })
            .collect();
        let col = |j: usize| rows.iter().map(|r| r[j]).collect::<Vec<f32>>();
        let (pcq, pcp, qcq, cos) = (col(0), col(1), col(2), col(3));
        Ok(QuadForm {
            pcq: Tensor::from_vec(&[n], pcq)?,
            pcp: Tensor::from_vec(&[n], pcp)?,
            qcq: Tensor::from_vec(&[n], qcq)?,
            cos: Tensor::from_vec(&[n], cos)?,
        })
    }
}

/// dx = dy * gamma / sqrt(running_var + eps) per channel: the eval-mode BN's backward scale.
fn bn_eval_scale(gamma: &[f32], running_var: &[f32], eps: f32) -> Vec<f32> {
    gamma
        .iter()
        .zip(running_var)
        .map(|(&g, &v)| (g as f64 / (v as f64 + eps as f64).sqrt()) as f32)
        .collect()
}

/// (a, b) of one channel's y = a x + b, in f64.
type BnCoef = (f64, f64);

/// y = a x + b per channel, in f64: (a, b) from gamma, beta and the (mean, var) statistics.
fn bn_coef(gamma: &[f32], beta: &[f32], stats: &[(f64, f64)], eps: f32) -> Vec<BnCoef> {
    stats
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(m, v), (&g, &b))| {
            let a = g as f64 / (v + eps as f64).sqrt();
            (a, b as f64 - a * m)
        })
        .collect()
}

/// What follows the batch norm in `bn_apply`.
#[derive(Clone, Copy)]
enum BnTail<'a> {
    None,
    /// relu(bn(x) + skip), with `axpy`'s add and `relu`'s max.
    Relu(Option<&'a [f32]>),
}

/// y = a x + b per channel (`bn_coef`), in f64, rounded once; then the tail.
fn bn_apply(xs: &[f32], c: usize, hw: usize, coef: &[BnCoef], tail: BnTail) -> Vec<f32> {
    if xs.is_empty() || hw == 0 {
        return vec![0.0f32; xs.len()];
    }
    written(xs.len(), |y| {
        y.par_chunks_mut(hw)
            .zip(xs.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let (a, b) = coef[plane % c];
                let bn = |x: f32| (a * x as f64 + b) as f32;
                match tail {
                    BnTail::None => yp.iter_mut().zip(xp).for_each(|(y, &x)| {
                        y.write(bn(x));
                    }),
                    BnTail::Relu(None) => yp.iter_mut().zip(xp).for_each(|(y, &x)| {
                        y.write(bn(x).max(0.0));
                    }),
                    BnTail::Relu(Some(s)) => {
                        let sp = &s[plane * hw..][..hw];
                        yp.iter_mut()
                            .zip(xp.iter().zip(sp))
                            .for_each(|(y, (&x, &s))| {
                                y.write((bn(x) + 1.0 * s).max(0.0));
                            })
                    }
                }
            });
    })
}

/// dx = dy * gamma / sqrt(running_var + eps) per channel; with `gate`, dy is first kept only
/// where the ReLU output `gate` is > 0 (relu_backward's value, then the scale, as the separate
/// ops round).
fn bn_eval_backward(
    op: &'static str,
    gamma: &Tensor,
    running_var: &Tensor,
    eps: f32,
    dy: &Tensor,
    gate: Option<&Tensor>,
) -> Result<Tensor> {
    if let Some(y) = gate {
        same_shape(op, "y", y, "dy", dy)?;
    }
    let (_, c, hw) = bn_dims(op, dy)?;
    want_shape(op, "gamma", gamma, &[c])?;
    want_shape(op, "running_var", running_var, &[c])?;
    let scale = bn_eval_scale(gamma.cpu(op)?, running_var.cpu(op)?, eps);
    let dys = dy.cpu(op)?;
    let gate = gate.map(|y| y.cpu(op)).transpose()?;
    if dys.is_empty() || hw == 0 {
        return Tensor::from_vec(dy.shape(), vec![0.0f32; dys.len()]);
    }
    let dx = written(dys.len(), |dx| {
        dx.par_chunks_mut(hw)
            .zip(dys.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (dxp, dyp))| {
                let s = scale[plane % c];
                match gate {
                    None => dxp.iter_mut().zip(dyp).for_each(|(d, &g)| {
                        d.write(g * s);
                    }),
                    Some(ys) => {
                        let yp = &ys[plane * hw..][..hw];
                        dxp.iter_mut()
                            .zip(dyp.iter().zip(yp))
                            .for_each(|(d, (&g, &y))| {
                                d.write(if y > 0.0 { g } else { 0.0 } * s);
                            })
                    }
                }
            });
    });
    Tensor::from_vec(dy.shape(), dx)
}

/// dx of a max pool; with `gated`, kept only where x (a ReLU's output) is > 0, each plane
/// while it is still in L1, where relu_backward's separate pass read x and dx and wrote a
/// third tensor.
fn maxpool_backward(
    op: &'static str,
    x: &Tensor,
    dy: &Tensor,
    p: Pool2dParams,
    gated: bool,
) -> Result<Tensor> {
    let (n, c, h, w, po, qo) = pool_geom(op, x, p)?;
    want_shape(op, "dy", dy, &[n, c, po, qo])?;
    let (xs, dys) = (x.cpu(op)?, dy.cpu(op)?);
    let isa = sgemm::isa();
    let dx = zeroed_par(xs.len(), h * w, |i, dxp| {
        let (plane, dyp) = (&xs[i * h * w..][..h * w], &dys[i * po * qo..][..po * qo]);
        pool::backward_plane(isa, plane, h, w, p, dyp, dxp);
        if gated {
            dxp.iter_mut()
                .zip(plane)
                .for_each(|(d, &y)| *d = if y > 0.0 { *d } else { 0.0 });
        }
    });
    Tensor::from_vec(x.shape(), dx)
}

/// A vector of `len` floats written by `fill`, which must write every element: outputs that
/// are written in full skip the zero fill (a memset that was 3-5% of a width-16 attack under
/// `perf` for the conv outputs, and 5% again for the batchnorm and pool ones).
pub(super) fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is at least len, and `fill` wrote every one of the first len
    // elements (its callers write each output element exactly once; tests/ops, the conv and
    // the pool tests compare every element against a reference on reused, non-zero heap memory).
    unsafe { v.set_len(len) };
    v
}

/// A vector of `len` zeros, zeroed chunk by chunk (`chunk` > 0) inside the parallel loop that
/// then works on each chunk: `f(i, chunk i)`. A `vec![0.0; len]` is one memset on the calling
/// thread while the other workers wait, and the pool and strided-conv backward passes, which
/// add into their dx, spent 3.5% of a small-resnet18 w16 I-FGS step in it.
pub(super) fn zeroed_par(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    written(len, |v| {
        v.par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| f(i, zero(c)))
    })
}

/// `f((i, chunk i))` over the `chunk`-long pieces of `s` (`chunk` > 0; the last may be
/// shorter), on rayon's workers if `par`, else in order on this thread: for stages that run in
/// parallel only when the work around them does.
pub(super) fn for_each_chunk<T: Send>(
    s: &mut [T],
    chunk: usize,
    par: bool,
    f: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    if par {
        s.par_chunks_mut(chunk).enumerate().for_each(f);
    } else {
        s.chunks_mut(chunk).enumerate().for_each(f);
    }
}

/// Write zeros over `s` and return it as initialised floats.
fn zero(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
mod tests;
