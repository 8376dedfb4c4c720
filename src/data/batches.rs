//! Streaming batches over a [`Dataset`]: a deterministic order (identity, or a shuffle seeded by
//! `Rng::derive(seed, epoch)`), and a background thread that converts the next batches to f32
//! while the consumer computes on the current one.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// One batch: f32 images `[B, C, H, W]` on the 0..255 scale, their labels and dataset indices.
#[derive(Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub indices: Vec<usize>,
}

/// An epoch's worth of batches. Build with [`Batches::new`], adjust with the builder methods,
/// then iterate; the prefetch thread starts at the first `next()`.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use advlens::data::{Batches, Dataset};
/// # fn f() -> advlens::Result<()> {
/// let ds = Arc::new(Dataset::open("data/fmnist/train.safetensors".as_ref())?);
/// for epoch in 0..3 {
///     for batch in Batches::new(&ds, 128, Some(42), epoch)?.limit(10_000) {
///         let batch = batch?;
///         // forward / backward on batch.images, batch.labels
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Batches {
    dataset: Arc<Dataset>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    epoch: u64,
    limit: Option<usize>,
    drop_last: bool,
    prefetch: usize,
    order: Vec<usize>,
    /// Batches handed out so far.
    next: usize,
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
}

impl Batches {
    /// Batches of `batch_size` over the whole dataset, shuffled by `Rng::derive(seed, epoch)`
    /// when `shuffle_seed` is given (same seed and epoch, same order), in file order otherwise.
    /// Prefetches 2 batches ahead by default; the last partial batch is included.
    pub fn new(
        dataset: &Arc<Dataset>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        epoch: u64,
    ) -> Result<Batches> {
        if batch_size == 0 {
            return Err(Error::InvalidArg("batch size must be at least 1".into()));
        }
        let mut b = Batches {
            dataset: dataset.clone(),
            batch_size,
            shuffle_seed,
            epoch,
            limit: None,
            drop_last: false,
            prefetch: 2,
            order: Vec::new(),
            next: 0,
            rx: None,
            worker: None,
        };
        b.build_order();
        Ok(b)
    }

    fn build_order(&mut self) {
        let n = self
            .limit
            .map_or(self.dataset.len(), |l| l.min(self.dataset.len()));
        self.order = (0..n).collect();
        if let Some(seed) = self.shuffle_seed {
            Rng::derive(seed, self.epoch).shuffle(&mut self.order);
        }
    }

    /// Use only the first `n` images of the file (a fixed subset; shuffled within itself).
    pub fn limit(mut self, n: usize) -> Batches {
        self.limit = Some(n);
        self.build_order();
        self
    }

    /// Skip the last batch when it is smaller than `batch_size`.
    pub fn drop_last(mut self, yes: bool) -> Batches {
        self.drop_last = yes;
        self
    }

    /// How many batches the background thread may prepare ahead; 0 converts on the caller's
    /// thread instead (same batches, no thread).
    pub fn prefetch(mut self, depth: usize) -> Batches {
        self.prefetch = depth;
        self
    }

    /// The image order of this epoch (before batching and `drop_last`).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Number of batches this epoch yields.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.order.len() / self.batch_size
        } else {
            self.order.len().div_ceil(self.batch_size)
        }
    }

    fn batch_indices(&self, b: usize) -> Vec<usize> {
        let s = b * self.batch_size;
        let e = (s + self.batch_size).min(self.order.len());
        self.order[s..e].to_vec()
    }

    fn make(dataset: &Dataset, indices: Vec<usize>) -> Result<Batch> {
        let (images, labels) = dataset.batch_f32(&indices)?;
        Ok(Batch {
            images,
            labels,
            indices,
        })
    }

    fn start_worker(&mut self) -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Batch>>(self.prefetch);
        let jobs: Vec<Vec<usize>> = (self.next..self.num_batches())
            .map(|b| self.batch_indices(b))
            .collect();
        let ds = self.dataset.clone();
        let handle = std::thread::Builder::new()
            .name("advlens-prefetch".into())
            .spawn(move || {
                for idx in jobs {
                    let r = Batches::make(&ds, idx);
                    let failed = r.is_err();
                    // A closed channel means the consumer stopped early: just end.
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::InvalidArg(format!("cannot start the prefetch thread: {e}")))?;
        self.rx = Some(rx);
        self.worker = Some(handle);
        Ok(())
    }
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.num_batches() {
            return None;
        }
        if self.prefetch == 0 {
            let idx = self.batch_indices(self.next);
            self.next += 1;
            return Some(Batches::make(&self.dataset, idx));
        }
        if self.rx.is_none() {
            if let Err(e) = self.start_worker() {
                self.next = self.num_batches();
                return Some(Err(e));
            }
        }
        let got = self.rx.as_ref().map(|rx| rx.recv());
        match got {
            Some(Ok(r)) => {
                self.next += 1;
                if r.is_err() {
                    // The worker stopped after an error; so does the iteration.
                    self.next = self.num_batches();
                }
                Some(r)
            }
            _ => {
                // The worker ended before sending every batch: only a panic does that.
                self.next = self.num_batches();
                let why = match self.worker.take().map(|h| h.join()) {
                    Some(Err(_)) => "panicked",
                    _ => "stopped early",
                };
                Some(Err(Error::InvalidArg(format!(
                    "prefetch thread for {} {why}",
                    self.dataset.path().display()
                ))))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.num_batches().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        // Closing the channel first unblocks a worker waiting to send, so the join returns.
        self.rx = None;
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}
