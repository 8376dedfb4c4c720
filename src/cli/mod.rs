//! Command-line interface: argument parsing, dispatch to the library, printing. No numerics here.

use std::sync::{Arc, OnceLock};

use clap::{Parser, Subcommand};

use crate::backend::{Backend, DeviceRequest, Precision};
use crate::error::Result;

pub mod advtrain;
pub mod analysis;
pub mod analyze;
pub mod attack;
pub mod bench;
pub mod data;
pub mod kernels;
pub mod misc;
pub mod op;
pub mod reproduce;
pub mod train;
pub mod weights;

#[derive(Parser, Debug)]
#[command(
    name = "advlens",
    version,
    about = "Adversarial examples as a lens on DNN interpretability (Dong et al.), CPU + CUDA",
    long_about = None,
    after_help = "Example:\n  advlens data import-idx --out data/fmnist\n  advlens train --model small-vgg16 --data data/fmnist/train.safetensors --epochs 3 --out runs/vgg"
)]
pub struct Cli {
    /// Compute device: auto (CUDA if usable, else CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceRequest,
    /// Convolution precision: f32 (exact, the default), tf32 or bf16 (inputs rounded, f32
    /// accumulation; tensor cores on CUDA, the same rounding emulated on the CPU). Applies to
    /// every convolution of the command (train, attack, advtrain, reproduce, op, bench conv ...).
    #[arg(long, global = true, default_value = "f32")]
    pub precision: Precision,
    /// Seed for every random choice (shuffles, init, dropout, targets). Reported in outputs.
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
    /// CPU worker threads (0 = all cores).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Print machine-readable JSON instead of text (and no progress bars).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import and inspect datasets (IDX, image folders, safetensors).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Train a model from scratch or resume from a checkpoint.
    Train(train::TrainArgs),
    /// Evaluate a model checkpoint: top-1 and top-5.
    Eval(train::EvalArgs),
    /// Adversarial attacks (FGS, iterative FGS, ensemble optimisation).
    #[command(subcommand)]
    Attack(attack::AttackCommand),
    /// Adversarial fine-tuning with the consistency loss (paper Eq. 8, experiment E6).
    Advtrain(advtrain::AdvTrainArgs),
    /// How large Eq. 8's consistency term is against its cross-entropies on given models, and
    /// the beta that balances them.
    ConsistencyScale(advtrain::ScaleArgs),
    /// Every experiment of the paper (E1-E8), one command, one report.
    Reproduce(reproduce::ReproduceArgs),
    /// Bring outside weights in: `weights import` turns a torchvision state_dict into a
    /// checkpoint.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Run one primitive op on named tensors from a safetensors file (golden-file interface).
    Op(op::OpArgs),
    /// Print the compiled kernel table and devices (diagnostics).
    Info(misc::InfoArgs),
    /// CUDA kernel table and offline NVRTC compile (CI checks kernels without a GPU).
    #[command(subcommand)]
    Kernels(kernels::KernelsCommand),
    /// WordNet class hierarchy: tree distances and the class correlation matrix C.
    #[command(subcommand)]
    Wordnet(analysis::WordnetCommand),
    /// E3: per-neuron top-1% real and adversarial images, LC/CS1/CS2, Fig. 4 curve, Fig. 2 grids.
    Neurons(analyze::NeuronsArgs),
    /// E4: distance ratios r1/r2 of adversarial representations (Fig. 5).
    Ratios(analyze::RatiosArgs),
    /// E5: class-conditional Gaussian detection of adversarial images, ROC and AUC (Fig. 6).
    Detect(analyze::DetectArgs),
    /// E8: prediction difference of each last-conv neuron for an image, top neurons (Fig. 10).
    Explain(analyze::ExplainArgs),
    /// Benchmarks: per-layer conv timings against cuDNN (CUDA) or sgemm (CPU).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// What every command gets: the global options and a lazily opened backend (commands that never
/// compute, like `data info`, do not touch a device).
pub struct Ctx {
    pub device: DeviceRequest,
    pub precision: Precision,
    pub seed: u64,
    pub json: bool,
    backend: OnceLock<Arc<dyn Backend>>,
}

impl Ctx {
    pub fn new(device: DeviceRequest, seed: u64, json: bool) -> Ctx {
        Ctx::with_precision(device, Precision::F32, seed, json)
    }

    pub fn with_precision(
        device: DeviceRequest,
        precision: Precision,
        seed: u64,
        json: bool,
    ) -> Ctx {
        Ctx {
            device,
            precision,
            seed,
            json,
            backend: OnceLock::new(),
        }
    }

    /// The backend, opened on first use (`--device auto` says once if it falls back to the CPU).
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        if let Some(b) = self.backend.get() {
            return Ok(b.clone());
        }
        let b = crate::backend::open_with(self.device, self.precision)?;
        Ok(self.backend.get_or_init(|| b).clone())
    }
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    crate::alloc::keep_freed_memory();
    let cli = Cli::parse();
    // --threads 0 lets rayon choose. The stack is the main thread's usual 8 MiB, since the
    // command itself runs on a worker (below).
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads)
        .stack_size(8 << 20)
        .build_global()
    {
        eprintln!("advlens: error: cannot set --threads {}: {e}", cli.threads);
        return 2;
    }
    crate::progress::set_quiet(cli.json);
    let ctx = Ctx::with_precision(cli.device, cli.precision, cli.seed, cli.json);
    // The command runs on a worker of the pool, not on the main thread. From outside the pool
    // every parallel loop is injected, and the main thread sleeps until a worker wakes it: two
    // futex round trips per loop, thousands per second in training. From a worker, a parallel
    // loop is a local split that this thread works on too.
    // The pool's other workers spin while the command runs (crate::spin).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let r = rayon::scope(|s| {
        let _spin = crate::spin::keep_awake(s, &stop);
        run_command(&ctx, &cli.command)
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("advlens: error: {e}");
            1
        }
    }
}

fn run_command(ctx: &Ctx, command: &Command) -> Result<()> {
    match command {
        Command::Data(c) => data::run(ctx, c),
        Command::Train(a) => train::run_train(ctx, a),
        Command::Eval(a) => train::run_eval(ctx, a),
        Command::Attack(c) => attack::run(ctx, c),
        Command::Advtrain(a) => advtrain::run(ctx, a),
        Command::ConsistencyScale(a) => advtrain::run_scale(ctx, a),
        Command::Reproduce(a) => reproduce::run(ctx, a),
        Command::Op(a) => op::run(ctx, a),
        Command::Weights(c) => weights::run(ctx, c),
        Command::Info(a) => misc::run_info(ctx, a),
        Command::Kernels(c) => kernels::run(ctx, c),
        Command::Wordnet(c) => analysis::run(ctx, c),
        Command::Neurons(a) => analyze::run_neurons(ctx, a),
        Command::Ratios(a) => analyze::run_ratios(ctx, a),
        Command::Detect(a) => analyze::run_detect(ctx, a),
        Command::Explain(a) => analyze::run_explain(ctx, a),
        Command::Bench(c) => bench::run(ctx, c),
    }
}

/// Refuse an `--out` that is, contains or lies inside one of `inputs` (flag, path), before any work.
pub fn guard_out(out: &std::path::Path, inputs: &[(&str, &std::path::Path)]) -> Result<()> {
    crate::io::refuse_overwrite(("--out", out), inputs)
}

/// [`guard_out`], then take the exclusive lock on the output directory `out` (created if
/// missing); the lock is held until the returned guard is dropped.
pub fn claim_out_dir(
    out: &std::path::Path,
    inputs: &[(&str, &std::path::Path)],
) -> Result<crate::io::RunLock> {
    guard_out(out, inputs)?;
    crate::io::RunLock::acquire(out)
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Print one line on stdout. A closed stdout (`advlens train ... | head -1`) is not an error of
/// the run: the first failed write is reported once on stderr and printing stops, while the work
/// and its `--out` files go on. (`println!` would panic on EPIPE.)
pub fn say(line: &str) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let r = out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = r {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(
                std::io::stderr(),
                "advlens: warning: cannot write to stdout ({e}); output continues in files only"
            );
        }
    }
}

/// Print a serialisable value as JSON, or the text form, depending on `--json`.
pub fn emit<T: serde::Serialize>(ctx: &Ctx, value: &T, text: impl FnOnce() -> String) {
    if ctx.json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => say(&s),
            Err(e) => eprintln!("advlens: cannot serialise output: {e}"),
        }
    } else {
        say(&text());
    }
}
