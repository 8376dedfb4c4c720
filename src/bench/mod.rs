//! Benchmarks usable from the binary (`advlens bench ...`) on GPU boxes, next to the criterion
//! benches of `benches/`. Every figure is printed with its shape, dtype, achieved FLOP/s and its
//! ratio to a baseline measured in the same run (DESIGN section 6).

pub mod conv;
pub mod cpu_peak;
pub mod model;

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};

/// Median wall time in seconds of `iters` runs of `f` after `warmup` unmeasured runs. `sync` is
/// called before starting and before reading the clock, so asynchronous devices are measured to
/// completion of the work, not to its submission.
pub fn median_time(
    warmup: usize,
    iters: usize,
    sync: &dyn Fn() -> Result<()>,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    if iters == 0 {
        return Err(Error::InvalidArg("--iters must be at least 1".into()));
    }
    for _ in 0..warmup {
        f()?;
    }
    sync()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        sync()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

/// Median of a non-empty slice (mean of the two middle values for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// The commit the binary was built from (build.rs, "-dirty" when tracked files differed from
/// it); without one (built outside a git checkout), `git rev-parse --short=12 HEAD` of the
/// checkout the running binary sits in (its directory, e.g. target/release inside the
/// checkout), else of the working directory, else "unknown" (no checkout, no git): figures and
/// reports must name the code that made them.
pub fn commit() -> String {
    if let Some(c) = option_env!("ADVLENS_BUILD_COMMIT") {
        return c.to_string();
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    exe_dir
        .iter()
        .map(|d| d.as_path())
        .chain(std::iter::once(Path::new(".")))
        .find_map(git_head)
        .unwrap_or_else(|| "unknown".into())
}

fn git_head(dir: &Path) -> Option<String> {
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The CPU's model name from /proc/cpuinfo (Linux), with the rayon thread count.
pub fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model} ({} threads)", rayon::current_num_threads())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    fn median_time_counts_runs() {
        let mut calls = 0;
        let t = median_time(2, 3, &|| Ok(()), &mut || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 5);
        assert!(t >= 0.0);
        assert!(median_time(0, 0, &|| Ok(()), &mut || Ok(())).is_err());
    }
}
