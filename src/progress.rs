//! Progress bars for long loops (training, attacks, mining): items/s throughput, hidden when
//! stderr is not a terminal or when `--json` asked for machine output.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` items labelled `what` ("train epoch 1", "attack"), unit `unit` ("img").
pub fn bar(total: u64, what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_prefix(what.to_string());
    if quiet() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Hide all progress bars (for `--json` and tests).
pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}
