//! Host<->device copies through page-locked (pinned) staging buffers.
//!
//! A copy from pageable memory makes the driver stage it through its own small pinned buffers,
//! synchronously; DMA from pinned memory runs at full link speed and asynchronously. Tensors
//! live in ordinary `Vec`s, so large copies go through two pinned buffers of the device used in
//! turn: the host memcpy of chunk i+1 into one overlaps the DMA of chunk i out of the other.
//! Small copies (below [`STAGING_MIN`]) stay on the plain path, where setup costs dominate.
//! If pinned memory cannot be had (locked-memory limits), copies fall back to the plain path:
//! pinning is a speed-up, never a requirement.

use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result as drv_result, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    PinnedHostSlice,
};

use super::drv;
use crate::error::Result;

/// f32 values per staging buffer (16 MiB each, two per device).
pub(crate) const STAGING_CHUNK: usize = 4 << 20;
/// Copies of fewer f32 values (256 KiB) take the plain pageable path.
pub(crate) const STAGING_MIN: usize = 1 << 16;

pub(crate) struct Staging {
    bufs: [PinnedHostSlice<f32>; 2],
    /// Recorded on the stream after the last DMA that used `bufs[i]`.
    done: [CudaEvent; 2],
}

impl Staging {
    fn new(ctx: &Arc<CudaContext>) -> Option<Staging> {
        // Plain page-locked memory (flags 0), not cudarc's `alloc_pinned` default of
        // CU_MEMHOSTALLOC_WRITECOMBINED: write-combined memory is uncached for host reads, and
        // `dtoh` reads every staged value back on the host.
        // SAFETY: the buffers are only read after being fully written for the copied range.
        let a = unsafe { ctx.alloc_pinned_with_flags::<f32>(STAGING_CHUNK, 0) }.ok()?;
        // SAFETY: as above.
        let b = unsafe { ctx.alloc_pinned_with_flags::<f32>(STAGING_CHUNK, 0) }.ok()?;
        let ea = ctx.new_event(None).ok()?;
        let eb = ctx.new_event(None).ok()?;
        Some(Staging {
            bufs: [a, b],
            done: [ea, eb],
        })
    }
}

/// The device's staging buffers, allocated on first use (None when pinning failed: the caller
/// then copies directly).
pub(crate) fn lock_staging<'a>(
    slot: &'a Mutex<Option<Option<Staging>>>,
    ctx: &Arc<CudaContext>,
) -> Option<std::sync::MutexGuard<'a, Option<Option<Staging>>>> {
    let mut g = slot.lock().ok()?;
    if g.is_none() {
        *g = Some(Staging::new(ctx));
    }
    matches!(&*g, Some(Some(_))).then_some(g)
}

/// Copy `src` into the first `src.len()` values of `dst` (queued on `stream`; `src` may be
/// dropped when this returns: its data is already in the staging buffers or on the device).
pub(crate) fn htod(
    staging: &mut Staging,
    stream: &Arc<CudaStream>,
    src: &[f32],
    dst: &mut CudaSlice<f32>,
    what: &str,
) -> Result<()> {
    debug_assert!(dst.len() >= src.len());
    let (base, _guard) = dst.device_ptr_mut(stream);
    for (i, chunk) in src.chunks(STAGING_CHUNK).enumerate() {
        let j = i % 2;
        // The previous DMA out of this buffer must be done before it is overwritten.
        staging.done[j]
            .synchronize()
            .map_err(drv(format!("wait for staging buffer ({what})")))?;
        let buf = staging.bufs[j]
            .as_mut_slice()
            .map_err(drv(format!("staging buffer ({what})")))?;
        buf[..chunk.len()].copy_from_slice(chunk);
        let dptr = base + (i * STAGING_CHUNK * 4) as u64;
        // SAFETY: dptr..dptr+4*chunk.len() lies inside `dst` (dst.len() >= src.len()); the
        // pinned source range stays valid and unmodified until `done[j]` (recorded right after)
        // has completed, which every writer of bufs[j] waits for above.
        unsafe { drv_result::memcpy_htod_async(dptr, &buf[..chunk.len()], stream.cu_stream()) }
            .map_err(drv(format!("copy host -> device ({what})")))?;
        staging.done[j]
            .record(stream)
            .map_err(drv(format!("record staging event ({what})")))?;
    }
    Ok(())
}

/// Copy the first `dst.len()` values of `src` to `dst`; returns when `dst` is filled.
pub(crate) fn dtoh(
    staging: &mut Staging,
    stream: &Arc<CudaStream>,
    src: &CudaSlice<f32>,
    dst: &mut [f32],
    what: &str,
) -> Result<()> {
    debug_assert!(src.len() >= dst.len());
    let (base, _guard) = src.device_ptr(stream);
    let n = dst.len().div_ceil(STAGING_CHUNK);
    // Chunk i lands in bufs[i % 2]; it is copied out while chunk i+1 is in flight.
    let mut pending: Option<usize> = None;
    for i in 0..=n {
        if i < n {
            let j = i % 2;
            let len = (dst.len() - i * STAGING_CHUNK).min(STAGING_CHUNK);
            staging.done[j]
                .synchronize()
                .map_err(drv(format!("wait for staging buffer ({what})")))?;
            let buf = staging.bufs[j]
                .as_mut_slice()
                .map_err(drv(format!("staging buffer ({what})")))?;
            let sptr = base + (i * STAGING_CHUNK * 4) as u64;
            // SAFETY: the source range lies inside `src`; bufs[j] is not read until `done[j]`
            // (recorded right after) has completed.
            unsafe { drv_result::memcpy_dtoh_async(&mut buf[..len], sptr, stream.cu_stream()) }
                .map_err(drv(format!("copy device -> host ({what})")))?;
            staging.done[j]
                .record(stream)
                .map_err(drv(format!("record staging event ({what})")))?;
        }
        if let Some(p) = pending.take() {
            let j = p % 2;
            staging.done[j]
                .synchronize()
                .map_err(drv(format!("wait for device -> host copy ({what})")))?;
            let len = (dst.len() - p * STAGING_CHUNK).min(STAGING_CHUNK);
            let buf = staging.bufs[j]
                .as_mut_slice()
                .map_err(drv(format!("staging buffer ({what})")))?;
            dst[p * STAGING_CHUNK..p * STAGING_CHUNK + len].copy_from_slice(&buf[..len]);
        }
        if i < n {
            pending = Some(i);
        }
    }
    Ok(())
}
