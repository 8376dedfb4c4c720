//! Discrepancy maps by occlusion (the paper's "discrepancy map" of Zhou et al. [33]): a square
//! patch slides over the image; at each position the patch is replaced by a neutral value and the
//! drop of the neuron's activation (spatial max of its channel, as in E3) is measured. A pixel's
//! discrepancy is the mean drop over the patch positions that cover it, clipped at 0 (a patch that
//! raises the activation is not "important" for it) and normalised so the largest value is 1.
//!
//! Decisions, written down:
//! - Fill value: the model's input normalisation mean (x 255) per channel, i.e. the pixel that the
//!   network sees as 0 after normalisation; Zhou et al. used random patches, which makes the map
//!   depend on a seed.
//! - Patch and stride: `OcclusionConfig::for_size` = patch round(min(H, W) / 4) (7 px on 28x28,
//!   56 px on 224x224), stride patch / 2; the last row/column of positions is aligned to the image
//!   border so every pixel is covered. All positions of one image run as batches of occluded
//!   copies through `forward_with_activations`.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::tensor::Tensor;

/// Patch geometry of the occlusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OcclusionConfig {
    pub patch: usize,
    pub stride: usize,
}

impl OcclusionConfig {
    /// The documented default for an H x W image.
    pub fn for_size(h: usize, w: usize) -> OcclusionConfig {
        let patch = ((h.min(w) as f64 / 4.0).round() as usize).max(1);
        OcclusionConfig {
            patch,
            stride: (patch / 2).max(1),
        }
    }
}

/// Top-left corners along one axis of length `n`: 0, stride, 2 stride ... plus n - patch.
fn positions(n: usize, patch: usize, stride: usize) -> Vec<usize> {
    let last = n.saturating_sub(patch);
    let mut v: Vec<usize> = (0..=last).step_by(stride.max(1)).collect();
    if v.last() != Some(&last) {
        v.push(last);
    }
    v
}

/// Activation (spatial max) of `channel` of conv layer `layer` for each image of `x`.
fn channel_acts(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
    layer: &str,
    channel: usize,
) -> Result<Vec<f32>> {
    let (_, acts) = model.forward_with_activations(be, x, &[layer])?;
    let a = acts
        .into_iter()
        .next()
        .ok_or_else(|| Error::shape("discrepancy map", format!("{layer}: no activation")))?;
    let (n, c, _, _) = a.dims4("discrepancy map")?;
    if channel >= c {
        return Err(Error::InvalidArg(format!(
            "discrepancy map: channel {channel} of layer {layer}, which has {c} channels"
        )));
    }
    let m = be.channel_max(&a)?.to_vec()?;
    Ok((0..n).map(|i| m[i * c + channel]).collect())
}

/// The normalised discrepancy map (H x W, values in [0, 1]) of neuron (`layer`, `channel`) on one
/// image (`pixels`, C x H x W on the 0..255 scale). `batch` occluded copies run per forward pass.
pub fn discrepancy_map(
    be: &dyn Backend,
    model: &mut Model,
    pixels: &[f32],
    layer: &str,
    channel: usize,
    cfg: &OcclusionConfig,
    batch: usize,
) -> Result<Vec<f32>> {
    let (c, h, w) = model.in_shape();
    if pixels.len() != c * h * w {
        return Err(Error::shape(
            "discrepancy map",
            format!(
                "image has {} values, the model takes {c}x{h}x{w}",
                pixels.len()
            ),
        ));
    }
    if cfg.patch == 0 || cfg.stride == 0 || cfg.patch > h.min(w) {
        return Err(Error::InvalidArg(format!(
            "occlusion patch {} / stride {} does not fit a {h}x{w} image",
            cfg.patch, cfg.stride
        )));
    }
    let (mean, _) = crate::nn::model::normalisation(c)?;
    let fill: Vec<f32> = mean.iter().map(|m| m * 255.0).collect();
    let base = channel_acts(
        be,
        model,
        &Tensor::from_vec(&[1, c, h, w], pixels.to_vec())?,
        layer,
        channel,
    )?[0];
    let ys = positions(h, cfg.patch, cfg.stride);
    let xs = positions(w, cfg.patch, cfg.stride);
    let corners: Vec<(usize, usize)> = ys
        .iter()
        .flat_map(|&y| xs.iter().map(move |&x| (y, x)))
        .collect();
    let len = c * h * w;
    let mut sum = vec![0.0f64; h * w];
    let mut cover = vec![0u32; h * w];
    for chunk in corners.chunks(batch.max(1)) {
        let mut x = Vec::with_capacity(chunk.len() * len);
        for &(y0, x0) in chunk {
            let start = x.len();
            x.extend_from_slice(pixels);
            let img = &mut x[start..];
            for (ch, &f) in fill.iter().enumerate() {
                for y in y0..y0 + cfg.patch {
                    let row = ch * h * w + y * w;
                    img[row + x0..row + x0 + cfg.patch].fill(f);
                }
            }
        }
        let t = Tensor::from_vec(&[chunk.len(), c, h, w], x)?;
        let acts = channel_acts(be, model, &t, layer, channel)?;
        for (&(y0, x0), &a) in chunk.iter().zip(&acts) {
            let drop = (base - a).max(0.0) as f64;
            for y in y0..y0 + cfg.patch {
                for xx in x0..x0 + cfg.patch {
                    sum[y * w + xx] += drop;
                    cover[y * w + xx] += 1;
                }
            }
        }
    }
    let mut m: Vec<f32> = sum
        .iter()
        .zip(&cover)
        .map(|(&s, &n)| if n > 0 { (s / n as f64) as f32 } else { 0.0 })
        .collect();
    let top = m.iter().copied().fold(0.0f32, f32::max);
    if top > 0.0 {
        m.iter_mut().for_each(|v| *v /= top);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_the_axis() {
        assert_eq!(positions(28, 7, 3), vec![0, 3, 6, 9, 12, 15, 18, 21]);
        assert_eq!(positions(10, 4, 4), vec![0, 4, 6]);
        assert_eq!(positions(5, 5, 2), vec![0]);
        let c = OcclusionConfig::for_size(28, 28);
        assert_eq!((c.patch, c.stride), (7, 3));
        let c = OcclusionConfig::for_size(224, 224);
        assert_eq!((c.patch, c.stride), (56, 28));
    }
}
