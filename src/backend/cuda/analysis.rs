//! Losses, heads and analysis reductions on the device: kernels/loss.cu, reduce.cu,
//! quadform.cu, topk.cu.
use cudarc::driver::{CudaSlice, LaunchConfig};

use super::kernel_table as kt;
use super::{as_i32, drv, grid_1d, grid_per_item, same_shape, CudaBackend};
use crate::backend::QuadForm;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Streaming per-channel top-k state on the device (see kernels/topk.cu): for each channel the
/// k largest values seen so far and the ids of their images, in rank order (value descending,
/// ties to the smaller id). Empty slots are (-inf, u32::MAX).
pub struct TopK {
    channels: usize,
    k: usize,
    vals: CudaSlice<f32>,
    ids: CudaSlice<u32>,
    spare_vals: CudaSlice<f32>,
    spare_ids: CudaSlice<u32>,
}

impl TopK {
    pub fn channels(&self) -> usize {
        self.channels
    }
    pub fn k(&self) -> usize {
        self.k
    }
}

/// Largest batch one top-k merge launch sorts in shared memory (TOPK_SORT in topk.cu).
const TOPK_MAX_BATCH: usize = 1024;

impl CudaBackend {
    fn channel_reduce(&self, x: &Tensor, max: bool) -> Result<Tensor> {
        let op = if max { "channel_max" } else { "channel_mean" };
        let (n, c, h, w) = x.dims4(op)?;
        if h * w == 0 {
            return Err(Error::shape(
                op,
                format!("empty spatial extent in {:?}", x.shape()),
            ));
        }
        let xs = self.dev_slice(x, op)?;
        let mut out = self.alloc(n * c, op)?;
        if n * c > 0 {
            let hw = (h * w) as i64;
            let k = if max {
                kt::CHANNEL_MAX
            } else {
                kt::CHANNEL_MEAN
            };
            // SAFETY: channel_max_f32_v1 / channel_mean_f32_v1(const float* x, float* out,
            // long long HW); x holds N*C*HW values, out N*C; one block of 256 per (n, c).
            unsafe {
                launch!(
                    self,
                    k,
                    grid_per_item(n * c, 256, op)?,
                    [xs, out.slice_mut(), &hw]
                )
            }?;
        }
        Ok(self.tensor(&[n, c], out))
    }

    pub(super) fn channel_max_impl(&self, x: &Tensor) -> Result<Tensor> {
        self.channel_reduce(x, true)
    }
    pub(super) fn channel_mean_impl(&self, x: &Tensor) -> Result<Tensor> {
        self.channel_reduce(x, false)
    }

    pub(super) fn quadform_impl(&self, p: &Tensor, c: &Tensor, q: &Tensor) -> Result<QuadForm> {
        const OP: &str = "quadform";
        let (n, k) = p.dims2(OP)?;
        same_shape(OP, p, q)?;
        if c.shape() != [k, k] {
            return Err(Error::shape(
                OP,
                format!("c {:?} must be [{k}, {k}]", c.shape()),
            ));
        }
        // p and q rows sit in shared memory: 2*K floats per block, within the 48 KB default.
        if 2 * k * 4 > 48 * 1024 - 512 {
            return Err(Error::shape(
                OP,
                format!("K = {k} classes exceeds the kernel's shared-memory limit (6000)"),
            ));
        }
        let (ps, cs, qs) = (
            self.dev_slice(p, OP)?,
            self.dev_slice(c, OP)?,
            self.dev_slice(q, OP)?,
        );
        let mut outs = [
            self.alloc(n, "quadform pcq")?,
            self.alloc(n, "quadform pcp")?,
            self.alloc(n, "quadform qcq")?,
            self.alloc(n, "quadform cos")?,
        ];
        if n > 0 {
            let ki = as_i32(k, OP, "K")?;
            let mut cfg = grid_per_item(n, 256, OP)?;
            cfg.shared_mem_bytes = (2 * k * 4) as u32;
            let [o0, o1, o2, o3] = &mut outs;
            // SAFETY: quadform_f32_v1(const float* p, const float* cm, const float* q,
            // float* pcq, float* pcp, float* qcq, float* cos, int K); p, q hold N*K values, cm
            // K*K, the outputs N; dynamic shared memory 2*K floats; one block of 256 per pair.
            unsafe {
                launch!(
                    self,
                    kt::QUADFORM,
                    cfg,
                    [
                        ps,
                        cs,
                        qs,
                        o0.slice_mut(),
                        o1.slice_mut(),
                        o2.slice_mut(),
                        o3.slice_mut(),
                        &ki
                    ]
                )
            }?;
        }
        let [pcq, pcp, qcq, cos] = outs;
        Ok(QuadForm {
            pcq: self.tensor(&[n], pcq),
            pcp: self.tensor(&[n], pcp),
            qcq: self.tensor(&[n], qcq),
            cos: self.tensor(&[n], cos),
        })
    }

    pub(super) fn softmax_impl(&self, logits: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax";
        let (n, k) = logits.dims2(OP)?;
        let zs = self.dev_slice(logits, OP)?;
        let mut prob = self.alloc(n * k, "softmax output")?;
        if n * k > 0 {
            let ki = as_i32(k, OP, "K")?;
            // SAFETY: softmax_f32_v1(const float* z, float* prob, int K); z and prob hold N*K
            // values; one block of 256 per row.
            unsafe {
                launch!(
                    self,
                    kt::SOFTMAX,
                    grid_per_item(n, 256, OP)?,
                    [zs, prob.slice_mut(), &ki]
                )
            }?;
        }
        Ok(self.tensor(&[n, k], prob))
    }

    pub(super) fn softmax_xent_impl(
        &self,
        logits: &Tensor,
        labels: &[u32],
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "softmax_xent";
        let (n, k) = logits.dims2(OP)?;
        if labels.len() != n {
            return Err(Error::shape(
                OP,
                format!("{} labels for {n} rows of logits", labels.len()),
            ));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= k) {
            return Err(Error::shape(
                OP,
                format!("label {l} at row {i} is out of range for {k} classes"),
            ));
        }
        let zs = self.dev_slice(logits, OP)?;
        let mut loss = self.alloc(n, "softmax_xent loss")?;
        let mut dz = self.alloc(n * k, "softmax_xent dlogits")?;
        if n > 0 {
            // SAFETY (alloc): fully written by the copy right below.
            let mut lab = unsafe { self.alloc_raw::<u32>(n, "softmax_xent labels") }?;
            self.stream()
                .memcpy_htod(labels, &mut lab)
                .map_err(drv("upload labels"))?;
            let ki = as_i32(k, OP, "K")?;
            // SAFETY: softmax_xent_f32_v1(const float* z, const unsigned int* labels,
            // float* loss, float* dz, int K); z and dz hold N*K values, labels and loss N;
            // labels < K checked above; one block of 256 per row.
            unsafe {
                launch!(
                    self,
                    kt::SOFTMAX_XENT,
                    grid_per_item(n, 256, OP)?,
                    [zs, &lab, loss.slice_mut(), dz.slice_mut(), &ki]
                )
            }?;
        }
        Ok((self.tensor(&[n], loss), self.tensor(&[n, k], dz)))
    }

    /// Consistency loss of adversarial training, per sample: loss[n] = ||a[n] - b[n]||^2 over
    /// all features of a, b [N, ...] (same shape).
    pub fn feature_match(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "feature_match";
        same_shape(OP, a, b)?;
        let n = *a
            .shape()
            .first()
            .ok_or_else(|| Error::shape(OP, "rank-0 features"))?;
        let d = a.numel().checked_div(n).unwrap_or(0);
        let (as_, bs) = (self.dev_slice(a, OP)?, self.dev_slice(b, OP)?);
        let mut loss = self.alloc(n, "feature_match loss")?;
        if n > 0 {
            let d64 = d as i64;
            // SAFETY: feature_match_fwd_f32_v1(const float* a, const float* b, float* loss,
            // long long D); a, b hold N*D values, loss N; one block of 256 per sample.
            unsafe {
                launch!(
                    self,
                    kt::FEATURE_MATCH_FWD,
                    grid_per_item(n, 256, OP)?,
                    [as_, bs, loss.slice_mut(), &d64]
                )
            }?;
        }
        Ok(self.tensor(&[n], loss))
    }

    /// Gradients of `sum_n gloss[n] * feature_match(a, b)[n]`: (da, db) = (2 (a-b) g, -da).
    pub fn feature_match_backward(
        &self,
        a: &Tensor,
        b: &Tensor,
        gloss: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "feature_match_backward";
        same_shape(OP, a, b)?;
        let n = *a
            .shape()
            .first()
            .ok_or_else(|| Error::shape(OP, "rank-0 features"))?;
        if gloss.shape() != [n] {
            return Err(Error::shape(
                OP,
                format!("gloss {:?} must be [{n}]", gloss.shape()),
            ));
        }
        let d = a.numel().checked_div(n).unwrap_or(0);
        let (as_, bs, gs) = (
            self.dev_slice(a, OP)?,
            self.dev_slice(b, OP)?,
            self.dev_slice(gloss, OP)?,
        );
        let total = a.numel();
        let mut da = self.alloc(total, "feature_match da")?;
        let mut db = self.alloc(total, "feature_match db")?;
        if total > 0 {
            let (n64, d64) = (n as i64, d as i64);
            // SAFETY: feature_match_bwd_f32_v1(const float* a, const float* b,
            // const float* gloss, float* da, float* db, long long N, long long D); a, b, da, db
            // hold N*D values, gloss N.
            unsafe {
                launch!(
                    self,
                    kt::FEATURE_MATCH_BWD,
                    grid_1d(total),
                    [as_, bs, gs, da.slice_mut(), db.slice_mut(), &n64, &d64]
                )
            }?;
        }
        Ok((self.tensor(a.shape(), da), self.tensor(a.shape(), db)))
    }

    /// Empty top-k state for `channels` channels keeping `k` entries each.
    pub fn topk_new(&self, channels: usize, k: usize) -> Result<TopK> {
        const OP: &str = "topk";
        if k == 0 || channels == 0 {
            return Err(Error::InvalidArg(format!(
                "topk: need k > 0 and channels > 0, got k = {k}, channels = {channels}"
            )));
        }
        as_i32(k, OP, "k")?;
        as_i32(channels, OP, "channels")?;
        let len = channels * k;
        let s = self.stream();
        // SAFETY (alloc): vals and ids are fully written by the copies right below; the spare
        // buffers are fully written by every merge before being read (every position < k
        // receives exactly one element).
        let mut vals = unsafe { self.alloc_raw::<f32>(len, "topk values") }?;
        let mut ids = unsafe { self.alloc_raw::<u32>(len, "topk ids") }?;
        s.memcpy_htod(&vec![f32::NEG_INFINITY; len], &mut vals)
            .map_err(drv("topk state init"))?;
        s.memcpy_htod(&vec![u32::MAX; len], &mut ids)
            .map_err(drv("topk state init"))?;
        let spare_vals = unsafe { self.alloc_raw::<f32>(len, "topk values") }?;
        let spare_ids = unsafe { self.alloc_raw::<u32>(len, "topk ids") }?;
        Ok(TopK {
            channels,
            k,
            vals,
            ids,
            spare_vals,
            spare_ids,
        })
    }

    /// Merge one batch `acts` [B, C] (e.g. channel_max of a layer) whose row n is dataset image
    /// `first_id + n` into the state.
    pub fn topk_update(&self, st: &mut TopK, acts: &Tensor, first_id: u32) -> Result<()> {
        const OP: &str = "topk_update";
        let (b, c) = acts.dims2(OP)?;
        if c != st.channels {
            return Err(Error::shape(
                OP,
                format!("acts has {c} channels, the state {}", st.channels),
            ));
        }
        if (first_id as u64) + (b as u64) > u32::MAX as u64 {
            return Err(Error::InvalidArg(format!(
                "topk_update: image ids up to {} exceed u32",
                first_id as u64 + b as u64
            )));
        }
        let xs = self.dev_slice(acts, OP)?;
        let (ci, ki) = (as_i32(c, OP, "C")?, as_i32(st.k, OP, "k")?);
        let mut start = 0usize;
        while start < b {
            let rows = (b - start).min(TOPK_MAX_BATCH);
            let bi = rows as i32;
            let id0 = first_id + start as u32;
            let view = xs.slice(start * c..(start + rows) * c);
            let cfg = LaunchConfig {
                grid_dim: (c as u32, 1, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: topk_merge_f32_v1(const float* acts, int B, int C, unsigned first_id,
            // const float* vin, const unsigned* iin, float* vout, unsigned* iout, int k); acts
            // view holds B*C values (B <= 1024), the four state buffers C*k each, in and out
            // distinct; 512 threads per block (its __launch_bounds__), one block per channel.
            unsafe {
                launch!(
                    self,
                    kt::TOPK_MERGE,
                    cfg,
                    [
                        &view,
                        &bi,
                        &ci,
                        &id0,
                        &st.vals,
                        &st.ids,
                        &mut st.spare_vals,
                        &mut st.spare_ids,
                        &ki
                    ]
                )
            }?;
            std::mem::swap(&mut st.vals, &mut st.spare_vals);
            std::mem::swap(&mut st.ids, &mut st.spare_ids);
            start += rows;
        }
        Ok(())
    }

    /// The state on the host: (values [C*k], ids [C*k]) in rank order per channel.
    pub fn topk_read(&self, st: &TopK) -> Result<(Vec<f32>, Vec<u32>)> {
        let v = self
            .stream()
            .clone_dtoh(&st.vals)
            .map_err(drv("copy topk values"))?;
        let i = self
            .stream()
            .clone_dtoh(&st.ids)
            .map_err(drv("copy topk ids"))?;
        self.stream()
            .synchronize()
            .map_err(drv("synchronize topk read"))?;
        Ok((v, i))
    }
}

/// [`TopK`] behind the backend's streaming top-k seam: each batch's channel maxima stay on the
/// device and are merged there; only the final state is downloaded.
pub(super) struct DeviceTopK<'a> {
    pub(super) be: &'a CudaBackend,
    pub(super) st: TopK,
}

impl crate::backend::TopKStream for DeviceTopK<'_> {
    fn push(&mut self, acts: &Tensor, ids: &[u32]) -> Result<()> {
        let Some(&first) = ids.first() else {
            return Ok(());
        };
        // The kernel numbers rows first_id + b, so the ids must be consecutive.
        if ids
            .iter()
            .enumerate()
            .any(|(b, &id)| id as u64 != first as u64 + b as u64)
        {
            return Err(Error::InvalidArg(
                "top-k on the device needs consecutive image ids within a batch".into(),
            ));
        }
        // The host heaps reject NaN; the kernel would rank it as -inf. One reduction keeps the
        // contract: the sum of squares is NaN exactly when some value is.
        if self.be.sum_squares_impl(acts)?.is_nan() {
            return Err(Error::Numeric(format!(
                "top-k: NaN activation in images {first}..{}",
                first as u64 + ids.len() as u64
            )));
        }
        self.be.topk_update(&mut self.st, acts, first)
    }

    fn finish(self: Box<Self>) -> Result<Vec<Vec<crate::analysis::topk::Hit>>> {
        let (vals, ids) = self.be.topk_read(&self.st)?;
        let k = self.st.k;
        Ok(vals
            .chunks(k)
            .zip(ids.chunks(k))
            .map(|(v, i)| {
                v.iter()
                    .zip(i)
                    .filter(|(_, &id)| id != u32::MAX)
                    .map(|(&value, &id)| crate::analysis::topk::Hit { value, id })
                    .collect()
            })
            .collect())
    }
}
