//! Streaming per-channel top-k (neuron mining, E3): every channel keeps the k images with the
//! largest activation seen so far, in a bounded min-heap, so memory is channels x k entries
//! whatever the size of the set.
//!
//! Order: an entry ranks above another if its value is larger, or the values are equal and its
//! image id is smaller ("equal values keep the smaller image id"). The kept set is therefore the
//! exact top k of that total order, independent of batch boundaries, the order in which images
//! arrive and how a run is sharded: `merge` of two partial states equals one stream over both.
//! NaN activations are rejected (an error naming channel and image) since they have no rank.
//! Image ids are u32 (4e9 images), which halves the entry size against u64.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

/// One kept (activation, image id) pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub value: f32,
    pub id: u32,
}

impl Hit {
    /// The ranking: Greater means `self` ranks higher (larger value, then smaller id).
    fn rank_cmp(&self, o: &Hit) -> Ordering {
        self.value
            .total_cmp(&o.value)
            .then_with(|| o.id.cmp(&self.id))
    }
}

/// Heap element ordered so that BinaryHeap (a max-heap) pops the lowest-ranked hit first.
#[derive(Clone, Copy, Debug)]
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Worst {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.rank_cmp(&self.0)
    }
}

/// k for "the top `fraction` of a set of `n`": ceil(n * fraction), at least 1 and at most
/// max(n, 1). A product within 1e-9 (relative) of an integer counts as that integer, so that
/// 1% of 50 000 is 500 and not 501 through float rounding.
pub fn top_fraction_k(n: usize, fraction: f64) -> usize {
    if !(fraction.is_finite() && fraction > 0.0) || n == 0 {
        return 1;
    }
    let x = n as f64 * fraction.min(1.0);
    let r = x.round();
    let k = if (x - r).abs() <= 1e-9 * x.max(1.0) {
        r
    } else {
        x.ceil()
    };
    (k as usize).clamp(1, n)
}

/// Top-k state of many channels.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    heaps: Vec<BinaryHeap<Worst>>,
}

impl TopK {
    pub fn new(channels: usize, k: usize) -> Result<TopK> {
        if k == 0 {
            return Err(Error::InvalidArg("top-k: k must be at least 1".into()));
        }
        Ok(TopK {
            k,
            heaps: (0..channels).map(|_| BinaryHeap::new()).collect(),
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn channels(&self) -> usize {
        self.heaps.len()
    }

    /// Offer one value to one channel.
    #[inline]
    pub fn push(&mut self, channel: usize, value: f32, id: u32) -> Result<()> {
        if value.is_nan() {
            return Err(Error::Numeric(format!(
                "top-k: NaN activation in channel {channel} for image {id}"
            )));
        }
        let k = self.k;
        let nch = self.heaps.len();
        let heap = self
            .heaps
            .get_mut(channel)
            .ok_or_else(|| Error::InvalidArg(format!("top-k: channel {channel} of {nch}")))?;
        let hit = Hit { value, id };
        if heap.len() < k {
            heap.push(Worst(hit));
        } else if let Some(mut top) = heap.peek_mut() {
            // Replace the current worst only if the newcomer outranks it (cheap reject otherwise).
            if hit.rank_cmp(&top.0) == Ordering::Greater {
                *top = Worst(hit);
            }
        }
        Ok(())
    }

    /// Offer a batch: `acts` is [B, C] row-major (one value per image per channel, e.g. the
    /// spatial max), `ids[b]` the image id of row b.
    pub fn push_batch(&mut self, acts: &[f32], ids: &[u32]) -> Result<()> {
        let c = self.heaps.len();
        if acts.len() != ids.len() * c {
            return Err(Error::shape(
                "top-k",
                format!(
                    "activations have {} values, expected {} images x {c} channels",
                    acts.len(),
                    ids.len()
                ),
            ));
        }
        if c == 0 || ids.is_empty() {
            return Ok(());
        }
        let k = self.k;
        // Parallel over blocks of channels; inside a block, row by row over a contiguous slice,
        // with each channel's current worst kept hit (its floor) in a small local array. The
        // common case (a value below the floor) is one compare and touches no heap.
        const CH_BLOCK: usize = 128;
        self.heaps
            .par_chunks_mut(CH_BLOCK)
            .enumerate()
            .try_for_each(|(blk, heaps)| -> Result<()> {
                let c0 = blk * CH_BLOCK;
                let mut floors: Vec<Option<Hit>> = heaps
                    .iter()
                    .map(|h| {
                        if h.len() >= k {
                            h.peek().map(|w| w.0)
                        } else {
                            None
                        }
                    })
                    .collect();
                for (b, &id) in ids.iter().enumerate() {
                    let row = &acts[b * c + c0..b * c + c0 + heaps.len()];
                    for (j, &value) in row.iter().enumerate() {
                        if value.is_nan() {
                            return Err(Error::Numeric(format!(
                                "top-k: NaN activation in channel {} for image {id}",
                                c0 + j
                            )));
                        }
                        let hit = Hit { value, id };
                        match floors[j] {
                            // Plain float compare first (NaN is excluded above); the total
                            // order only decides exact ties (and -0.0 vs 0.0).
                            Some(f)
                                if value < f.value
                                    || (value == f.value
                                        && hit.rank_cmp(&f) != Ordering::Greater) => {}
                            Some(_) => {
                                let heap = &mut heaps[j];
                                if let Some(mut top) = heap.peek_mut() {
                                    *top = Worst(hit);
                                }
                                floors[j] = heap.peek().map(|w| w.0);
                            }
                            None => {
                                let heap = &mut heaps[j];
                                heap.push(Worst(hit));
                                if heap.len() >= k {
                                    floors[j] = heap.peek().map(|w| w.0);
                                }
                            }
                        }
                    }
                }
                Ok(())
            })
    }

    /// Fold another partial state (same channels and k) into this one.
    pub fn merge(&mut self, other: TopK) -> Result<()> {
        if other.k != self.k || other.heaps.len() != self.heaps.len() {
            return Err(Error::InvalidArg(format!(
                "top-k merge: states differ (k {} vs {}, channels {} vs {})",
                self.k,
                other.k,
                self.heaps.len(),
                other.heaps.len()
            )));
        }
        for (ch, h) in other.heaps.into_iter().enumerate() {
            for w in h {
                self.push(ch, w.0.value, w.0.id)?;
            }
        }
        Ok(())
    }

    /// The kept hits of one channel, best first (not consuming).
    pub fn sorted(&self, channel: usize) -> Vec<Hit> {
        let mut v: Vec<Hit> = self
            .heaps
            .get(channel)
            .map(|h| h.iter().map(|w| w.0).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.rank_cmp(a));
        v
    }

    /// Every channel's hits, best first.
    pub fn finish(self) -> Vec<Vec<Hit>> {
        self.heaps
            .into_iter()
            .map(|h| {
                // into_sorted_vec is ascending by Worst, i.e. best hit first.
                h.into_sorted_vec().into_iter().map(|w| w.0).collect()
            })
            .collect()
    }
}

impl crate::backend::TopKStream for TopK {
    fn push(&mut self, acts: &crate::tensor::Tensor, ids: &[u32]) -> Result<()> {
        self.push_batch(&acts.to_vec()?, ids)
    }
    fn finish(self: Box<Self>) -> Result<Vec<Vec<Hit>>> {
        Ok(TopK::finish(*self))
    }
}
