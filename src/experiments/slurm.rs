//! `advlens reproduce --emit slurm DIR`: the stage table (`super::stages`) as a Slurm job graph.
//! One sbatch script per stage, each running `advlens reproduce ... --stage NAME` into the shared
//! output directory; E2 as a job array of `--shard K/N` parts (N = `--shards`) and one joining
//! job; `--dependency=afterok:` edges along the stages' inputs; and `submit.sh`, which submits
//! them in order and prints the job ids. Nothing is submitted here.
//!
//! A re-submitted graph redoes only unfinished work: every job's stage is cached by key in the
//! output directory (a finished job exits at once), and an E2 part reuses the shards it finds.

use std::path::{Path, PathBuf};

use super::stages::{table, Stage};
use crate::error::{Error, Result};

/// Resources of every job (and the E2 split), from `reproduce --emit slurm` flags.
#[derive(Clone, Debug)]
pub struct SlurmOptions {
    pub cpus_per_task: usize,
    /// `--time` of each job, e.g. `24:00:00`.
    pub time: String,
    pub partition: Option<String>,
    /// `--gres` of the compute jobs (e.g. `gpu:1`); `prepare` and `report` never get one.
    pub gres: Option<String>,
    pub mem: Option<String>,
    /// Further `#SBATCH` arguments for every job (e.g. `--account=proj`).
    pub extra: Vec<String>,
    /// E2 array size: parts `--shard K/N`, K = 1..N.
    pub shards: usize,
}

impl SlurmOptions {
    fn validate(&self) -> Result<()> {
        if self.cpus_per_task == 0 || self.shards == 0 {
            return Err(Error::InvalidArg(
                "--cpus-per-task and --shards must be at least 1".into(),
            ));
        }
        let mut words = vec![("--time", &self.time)];
        for (flag, v) in [
            ("--partition", &self.partition),
            ("--gres", &self.gres),
            ("--mem", &self.mem),
        ] {
            if let Some(v) = v {
                words.push((flag, v));
            }
        }
        words.extend(self.extra.iter().map(|e| ("--sbatch-arg", e)));
        for (flag, v) in words {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidArg(format!(
                    "{flag} '{v}': expected one word without spaces"
                )));
            }
        }
        Ok(())
    }
}

/// One sbatch script of the graph.
struct Job {
    file: String,
    stage: String,
    /// Job-array size (the E2 parts).
    array: Option<usize>,
    /// Indices of the jobs this one waits for (afterok).
    deps: Vec<usize>,
    gpu: bool,
}

/// Quote a word for sh when it needs it.
pub fn sh_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The jobs of the table in submission order; a splitting stage becomes an array job (its
/// parts) followed by the stage's own job, which joins them.
fn jobs(t: &[Stage], shards: usize) -> Result<Vec<Job>> {
    let mut jobs: Vec<Job> = Vec::new();
    let job_of = |jobs: &[Job], name: &str| -> Result<usize> {
        jobs.iter().rposition(|j| j.stage == name).ok_or_else(|| {
            Error::InvalidArg(format!(
                "internal: stage input '{name}' comes after its user"
            ))
        })
    };
    for st in t {
        let mut deps = st
            .inputs
            .iter()
            .map(|n| job_of(&jobs, n))
            .collect::<Result<Vec<_>>>()?;
        deps.sort_unstable();
        deps.dedup();
        let split = st.part.is_some() && shards > 1;
        if split {
            jobs.push(Job {
                file: format!("{:02}-{}-parts.sbatch", jobs.len(), st.name),
                stage: st.name.clone(),
                array: Some(shards),
                deps,
                gpu: true,
            });
            deps = vec![jobs.len() - 1];
        }
        jobs.push(Job {
            file: format!("{:02}-{}.sbatch", jobs.len(), st.name),
            stage: st.name.clone(),
            array: None,
            deps,
            // Joining the parts of a split stage only copies files.
            gpu: st.cached && !split,
        });
    }
    Ok(jobs)
}

/// The text of one sbatch script. `cmd` is the reproduce command line up to `--stage`.
fn script(job: &Job, cmd: &str, opts: &SlurmOptions, logs: &Path) -> String {
    let mut h = vec![format!("--job-name=advlens-{}", job.stage)];
    let log = if job.array.is_some() {
        "%x-%A_%a.out"
    } else {
        "%x-%j.out"
    };
    h.push(format!(
        "--output={}",
        sh_quote(&logs.join(log).display().to_string())
    ));
    h.push(format!("--cpus-per-task={}", opts.cpus_per_task));
    h.push(format!("--time={}", opts.time));
    if let Some(p) = &opts.partition {
        h.push(format!("--partition={p}"));
    }
    if let (Some(g), true) = (&opts.gres, job.gpu) {
        h.push(format!("--gres={g}"));
    }
    if let Some(m) = &opts.mem {
        h.push(format!("--mem={m}"));
    }
    h.extend(opts.extra.iter().cloned());
    let mut stage_args = format!("--stage {}", sh_quote(&job.stage));
    if let Some(n) = job.array {
        h.push(format!("--array=1-{n}"));
        stage_args.push_str(&format!(" --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\""));
    }
    let header: String = h.iter().map(|l| format!("#SBATCH {l}\n")).collect();
    format!(
        "#!/bin/bash\n{header}# advlens reproduce, stage {} (written by `advlens reproduce --emit slurm`)\n\
         set -euo pipefail\nexec {cmd} {stage_args}\n",
        job.stage
    )
}

/// `submit.sh`: submit every job in order with its afterok edges; print `STAGE JOBID` lines.
fn submit_script(jobs: &[Job], logs: &Path) -> String {
    let mut s = String::from(
        "#!/usr/bin/env bash\n# Submits the advlens reproduce job graph written beside this file \
         and prints one `STAGE JOBID` line per job.\n# Re-running it re-submits the graph: \
         finished stages are cached in the output directory and their jobs exit at once.\n\
         set -euo pipefail\nhere=\"$(cd \"$(dirname \"${BASH_SOURCE[0]}\")\" && pwd)\"\n",
    );
    s.push_str(&format!(
        "mkdir -p {}\n",
        sh_quote(&logs.display().to_string())
    ));
    s.push_str("sub() { local id; id=\"$(\"${SBATCH:-sbatch}\" --parsable \"$@\")\"; echo \"${id%%;*}\"; }\n");
    for (i, j) in jobs.iter().enumerate() {
        let dep = if j.deps.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = j.deps.iter().map(|d| format!("$j{d}")).collect();
            format!("--dependency=afterok:{} ", ids.join(":"))
        };
        let what = if j.array.is_some() {
            format!("{}-parts", j.stage)
        } else {
            j.stage.clone()
        };
        s.push_str(&format!(
            "j{i}=$(sub {dep}\"$here/{}\")\necho \"{what} $j{i}\"\n",
            j.file
        ));
    }
    s
}

/// Write the job graph of `models` into `dir`. `cmd` is the reproduce command every job runs
/// (binary, global options, `reproduce` and its settings), already quoted for sh. Returns the
/// files written, `submit.sh` last.
pub fn emit_slurm(
    profile: &super::reproduce::Profile,
    cmd: &str,
    opts: &SlurmOptions,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    opts.validate()?;
    let dir = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    let jobs = jobs(&table(profile), opts.shards)?;
    let mut written = Vec::new();
    for j in &jobs {
        written.push(write_script(
            &dir.join(&j.file),
            &script(j, cmd, opts, &logs),
        )?);
    }
    written.push(write_script(
        &dir.join("submit.sh"),
        &submit_script(&jobs, &logs),
    )?);
    Ok(written)
}

fn write_script(path: &Path, text: &str) -> Result<PathBuf> {
    use std::io::Write;
    crate::io::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(path.to_path_buf())
}
