//! The emulated CUDA driver's own semantics (tests/cuda-emu): barriers, shuffles, limits and
//! error codes, lazy streams, NaN-filled memory, bounds checks and PTX checks, on the
//! deliberately broken kernels of tests/cuda-emu/selftest/emu_selftest.cu. Runs only on the
//! emulated driver (`scripts/cuda-emu.sh` sets ADVLENS_CUDA_EMULATED=1): on a real GPU the broken
//! kernels would hang or kill the context. Scenarios that abort the process or leave the context
//! failed (sticky errors) run in a child process: this binary re-runs itself with EMU_SCENARIO.
#![cfg(feature = "cuda")]

use std::process::Command;
use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::{CUfunction_attribute_enum, CUresult};
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

const SRC: &str = include_str!("cuda-emu/selftest/emu_selftest.cu");

fn emulated() -> bool {
    std::env::var("ADVLENS_CUDA_EMULATED").is_ok_and(|v| v == "1")
}

fn ptx_text() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let opts = CompileOptions {
            options: vec!["--gpu-architecture=sm_90".into()],
            ..Default::default()
        };
        compile_ptx_with_opts(SRC, opts)
            .expect("NVRTC compiles the self-test kernels")
            .to_src()
            .trim_end_matches('\0')
            .to_string()
    })
}

struct Emu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
}

/// The device and the self-test module, or None (after saying why) off the emulator.
fn emu(test: &str) -> Option<Emu> {
    if !emulated() {
        println!("{test}: not on the emulated driver (scripts/cuda-emu.sh): nothing to test");
        return None;
    }
    let ctx = CudaContext::new(0).expect("emulated device opens");
    let stream = ctx.new_stream().expect("stream");
    let module = ctx
        .load_module(Ptx::from_src(ptx_text()))
        .expect("self-test module loads");
    Some(Emu {
        ctx,
        stream,
        module,
    })
}

impl Emu {
    fn f(&self, name: &str) -> CudaFunction {
        self.module.load_function(name).expect("function")
    }
}

fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn code(e: DriverError) -> CUresult {
    e.0
}

/// Runs scenario `name` in a child copy of this test binary; returns (exit ok, stderr).
fn child(name: &str) -> (bool, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "scenario_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("EMU_SCENARIO", name)
        .output()
        .expect("child runs");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    println!("scenario {name}: status {:?}\n{err}", out.status);
    (out.status.success(), err)
}

fn has(hay: &str, needles: &[&str]) {
    for n in needles {
        assert!(hay.contains(n), "expected {n:?} in:\n{hay}");
    }
}

#[test]
fn device_says_it_is_emulated() {
    let Some(e) = emu("device_says_it_is_emulated") else {
        return;
    };
    let name = e.ctx.name().expect("name");
    assert!(
        name.contains("emulated") && name.contains("not a GPU"),
        "{name}"
    );
    assert_eq!(e.ctx.compute_capability().expect("cc"), (9, 0));
}

#[test]
fn barriers_and_shuffles_compute_what_a_gpu_computes() {
    let Some(e) = emu("barriers_and_shuffles_compute_what_a_gpu_computes") else {
        return;
    };
    for block in [1u32, 31, 33, 257, 1024] {
        let mut out = e.stream.alloc_zeros::<i32>(3).expect("alloc");
        let f = e.f("emu_barrier_sum");
        let mut b = e.stream.launch_builder(&f);
        b.arg(&mut out);
        // SAFETY: emu_barrier_sum(int* out): one int per block, 3 blocks.
        unsafe { b.launch(cfg(3, block, 0)) }.expect("launch");
        let got = e.stream.clone_dtoh(&out).expect("copy back");
        let want = (block * (block - 1) / 2) as i32;
        assert_eq!(got, vec![want; 3], "block {block}");
    }
    let mut out = e.stream.alloc_zeros::<i32>(64).expect("alloc");
    let mut sum = e.stream.alloc_zeros::<f32>(2).expect("alloc");
    let f = e.f("emu_shuffle");
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut out).arg(&mut sum);
    // SAFETY: emu_shuffle(int* out, float* sum): 64 ints, 2 floats for 64 threads.
    unsafe { b.launch(cfg(1, 64, 0)) }.expect("launch");
    let got = e.stream.clone_dtoh(&out).expect("copy");
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v as usize, (i & !31) + ((i + 1) & 31), "lane {i}");
    }
    let s = e.stream.clone_dtoh(&sum).expect("copy");
    assert_eq!(
        s,
        vec![(0..32).sum::<i32>() as f32, (32..64).sum::<i32>() as f32]
    );
}

#[test]
fn launch_limits_return_the_driver_error_codes() {
    let Some(e) = emu("launch_limits_return_the_driver_error_codes") else {
        return;
    };
    let mut out = e.stream.alloc_zeros::<f32>(2048).expect("alloc");
    let n = 2048i32;
    let try_launch = |name: &str, c: LaunchConfig, out: &mut cudarc::driver::CudaSlice<f32>| {
        let f = e.f(name);
        let mut b = e.stream.launch_builder(&f);
        b.arg(out).arg(&n);
        // SAFETY: (float* out, int n) kernels of emu_selftest.cu; each launch below is either
        // refused by the driver or writes inside the 2048 floats.
        unsafe { b.launch(c) }.map(|_| ()).map_err(code)
    };
    assert_eq!(
        try_launch("emu_copy", cfg(1, 1025, 0), &mut out),
        Err(CUresult::CUDA_ERROR_INVALID_VALUE)
    );
    let mut c = cfg(1, 32, 0);
    c.grid_dim = (1, 65536, 1);
    assert_eq!(
        try_launch("emu_copy", c, &mut out),
        Err(CUresult::CUDA_ERROR_INVALID_VALUE)
    );
    assert_eq!(
        try_launch("emu_bounded", cfg(1, 256, 0), &mut out),
        Err(CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)
    );
    // 49 KiB of dynamic shared memory needs the opt-in attribute; 227 KiB is the most.
    assert_eq!(
        try_launch("emu_dyn_smem", cfg(1, 32, 49 * 1024), &mut out),
        Err(CUresult::CUDA_ERROR_INVALID_VALUE)
    );
    let f = e.f("emu_dyn_smem");
    let attr = CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    assert_eq!(
        f.set_attribute(attr, 228 * 1024).map_err(code),
        Err(CUresult::CUDA_ERROR_INVALID_VALUE)
    );
    f.set_attribute(attr, 100 * 1024)
        .expect("opt in to 100 KiB");
    let mut b = e.stream.launch_builder(&f);
    let m = 1000i32;
    b.arg(&mut out).arg(&m);
    // SAFETY: emu_dyn_smem(float* out, int n) writes n = 1000 floats (4000 B) into 100 KiB.
    unsafe { b.launch(cfg(1, 32, 100 * 1024)) }.expect("opted-in launch");
    assert_eq!(e.stream.clone_dtoh(&out).expect("copy")[0], 999.0);
}

#[test]
fn memory_is_nan_filled_bounded_and_streams_are_lazy() {
    let Some(e) = emu("memory_is_nan_filled_bounded_and_streams_are_lazy") else {
        return;
    };
    // SAFETY: read back below only to see the fill pattern of fresh device memory.
    let fresh = unsafe { e.stream.alloc::<f32>(1000) }.expect("alloc");
    assert!(e
        .stream
        .clone_dtoh(&fresh)
        .expect("copy")
        .iter()
        .all(|v| v.is_nan()));
    // Running out of (emulated) device memory is CUDA_ERROR_OUT_OF_MEMORY.
    // SAFETY: the allocation is expected to fail; nothing is read.
    let huge = unsafe { e.stream.alloc::<f32>(1 << 40) };
    assert_eq!(
        huge.err().map(code),
        Some(CUresult::CUDA_ERROR_OUT_OF_MEMORY)
    );
    // A device -> pinned copy stays queued until the host waits: reading the pinned buffer
    // without a synchronize sees the old contents.
    let vals: Vec<f32> = (0..4096).map(|i| i as f32).collect();
    let d = e.stream.clone_htod(&vals).expect("upload");
    // SAFETY: fully written by the copy below before it is compared.
    let mut pinned = unsafe { e.ctx.alloc_pinned_with_flags::<f32>(4096, 0) }.expect("pinned");
    {
        let (dptr, _g) = d.device_ptr(&e.stream);
        let dst = pinned.as_mut_slice().expect("pinned slice");
        // SAFETY: dptr holds 4096 floats; dst is 4096 pinned floats that stay alive until the
        // synchronize below.
        unsafe { result::memcpy_dtoh_async(dst, dptr, e.stream.cu_stream()) }.expect("queue");
    }
    let before: Vec<f32> = {
        let p = pinned.as_ptr().expect("ptr");
        // SAFETY: 4096 floats of the pinned allocation; the copy into them has not run.
        unsafe { std::slice::from_raw_parts(p, 4096) }.to_vec()
    };
    assert!(
        before.iter().all(|v| v.is_nan()),
        "the copy ran before any wait"
    );
    e.stream.synchronize().expect("sync");
    let p = pinned.as_ptr().expect("ptr");
    // SAFETY: as above, after the synchronize.
    let after = unsafe { std::slice::from_raw_parts(p, 4096) };
    assert_eq!(after, &vals[..]);
}

#[test]
fn calls_without_a_current_context_fail() {
    let Some(e) = emu("calls_without_a_current_context_fail") else {
        return;
    };
    let m = e.module.clone();
    // A fresh thread has no current context; cudarc's load_function does not bind one.
    let r = std::thread::spawn(move || m.load_function("emu_copy").map(|_| ()).map_err(code))
        .join()
        .expect("thread");
    assert_eq!(r, Err(CUresult::CUDA_ERROR_INVALID_CONTEXT));
}

#[test]
fn module_load_checks_version_target_and_twins() {
    let Some(e) = emu("module_load_checks_version_target_and_twins") else {
        return;
    };
    let ptx = ptx_text();
    let load = |text: String| {
        e.ctx
            .load_module(Ptx::from_src(text))
            .map(|_| ())
            .map_err(code)
    };
    let v = ptx
        .lines()
        .find(|l| l.starts_with(".version"))
        .expect(".version");
    assert_eq!(
        load(ptx.replace(v, ".version 9.9")),
        Err(CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION)
    );
    assert_eq!(
        load(ptx.replace(".target sm_90", ".target sm_100")),
        Err(CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU)
    );
    assert_eq!(
        load(ptx.replace("emu_copy", "emu_no_such_twin")),
        Err(CUresult::CUDA_ERROR_INVALID_PTX)
    );
    // emu_copy(const float*, float*, int): its last parameter made 8 bytes wide.
    let wide = ptx.replace(
        ".param .u32 emu_copy_param_2",
        ".param .u64 emu_copy_param_2",
    );
    assert_ne!(wide, ptx, "the PTX declares emu_copy_param_2 as .u32");
    assert_eq!(load(wide), Err(CUresult::CUDA_ERROR_INVALID_PTX));
}

#[test]
fn barrier_divergence_is_an_error_naming_the_kernel() {
    if !emulated() {
        return;
    }
    let (ok, err) = child("divergent_barrier");
    assert!(ok, "the child reports the error code itself");
    has(
        &err,
        &[
            "emu_divergent_barrier",
            "block (0,0,0)",
            "barrier divergence",
            "255 of 256",
        ],
    );
}

#[test]
fn shuffle_deadlock_is_an_error_not_a_hang() {
    if !emulated() {
        return;
    }
    let (ok, err) = child("shuffle_deadlock");
    assert!(ok);
    has(
        &err,
        &["emu_shuffle_deadlock", "deadlock", "waits at __syncthreads"],
    );
}

#[test]
fn out_of_bounds_global_write_is_caught_with_kernel_block_thread() {
    if !emulated() {
        return;
    }
    let (ok, err) = child("unguarded_write");
    assert!(!ok, "an out-of-bounds write aborts");
    has(
        &err,
        &[
            "emu_unguarded_write",
            "block (0,0,0) thread (",
            "out-of-bounds write",
            "past the end of a 400-byte",
        ],
    );
    // Round-robin runs threads in order, so the first to fault is the first past the end.
    if std::env::var("ADVLENS_EMU_SCHEDULE").map_or(true, |s| s == "rr") {
        has(&err, &["thread (100,0,0)", "0 bytes past the end"]);
    }
}

#[test]
fn shared_memory_overruns_are_caught() {
    if !emulated() {
        return;
    }
    let (ok, err) = child("shared_overrun");
    assert!(!ok);
    has(&err, &["index 64 out of bounds", "emu_shared_overrun"]);
    let (ok, err) = child("dyn_smem_overrun");
    assert!(ok);
    has(
        &err,
        &[
            "emu_dyn_smem",
            "past the end of its dynamic shared memory (64 bytes",
        ],
    );
}

#[test]
fn cp_async_lands_late_under_round_robin_and_early_under_random() {
    let Some(e) = emu("cp_async_lands_late_under_round_robin_and_early_under_random") else {
        return;
    };
    let src: Vec<f32> = (0..32).map(|i| i as f32 + 0.5).collect();
    let input = e.stream.clone_htod(&src).expect("upload");
    let mut out = e.stream.alloc_zeros::<f32>(64).expect("alloc");
    let f = e.f("emu_cp_async_timing");
    let mut b = e.stream.launch_builder(&f);
    b.arg(&input).arg(&mut out);
    // SAFETY: emu_cp_async_timing(const float* in, float* out): 32 inputs, 64 outputs, block 32.
    unsafe { b.launch(cfg(1, 32, 0)) }.expect("launch");
    let got = e.stream.clone_dtoh(&out).expect("copy back");
    let random = std::env::var("ADVLENS_EMU_SCHEDULE").is_ok_and(|s| s.starts_with("random"));
    let before: Vec<f32> = if random { src.clone() } else { vec![-1.0; 32] };
    assert_eq!(
        got[..32],
        before[..],
        "before the wait (random schedule: {random})"
    );
    assert_eq!(got[32..], src[..], "after the wait");
    let (ok, err) = child("cp_async_unwaited");
    assert!(ok, "the child reports the error code itself");
    has(
        &err,
        &["emu_cp_async_unwaited", "cp.async copies never waited for"],
    );
}

/// The child side of the scenarios above (does nothing unless EMU_SCENARIO is set).
#[test]
fn scenario_child() {
    let Ok(which) = std::env::var("EMU_SCENARIO") else {
        return;
    };
    let e = emu("scenario_child").expect("the scenarios run on the emulated driver");
    let mut out = e.stream.alloc_zeros::<f32>(100).expect("alloc");
    let (name, c, n): (&str, LaunchConfig, i32) = match which.as_str() {
        "divergent_barrier" => ("emu_divergent_barrier", cfg(1, 256, 0), 0),
        "shuffle_deadlock" => ("emu_shuffle_deadlock", cfg(1, 32, 0), 0),
        "unguarded_write" => ("emu_unguarded_write", cfg(1, 128, 0), 100),
        "shared_overrun" => ("emu_shared_overrun", cfg(1, 64, 0), 64),
        "dyn_smem_overrun" => ("emu_dyn_smem", cfg(1, 32, 64), 32),
        "cp_async_unwaited" => ("emu_cp_async_unwaited", cfg(1, 32, 0), 0),
        other => panic!("unknown scenario {other}"),
    };
    let f = e.f(name);
    let mut b = e.stream.launch_builder(&f);
    b.arg(&mut out);
    if n != 0 || name == "emu_unguarded_write" {
        b.arg(&n);
    }
    // SAFETY: deliberately broken kernels of emu_selftest.cu; the emulator contains the damage.
    unsafe { b.launch(c) }.expect("the launch is queued");
    let r = e.stream.synchronize().map_err(code);
    assert_eq!(r, Err(CUresult::CUDA_ERROR_LAUNCH_FAILED), "{name}");
}
