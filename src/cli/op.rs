//! `advlens op NAME --in IN --out OUT`: one primitive on named tensors (DESIGN section 5).
use std::collections::HashMap;
use std::path::PathBuf;

use super::{emit, Ctx};
use crate::backend::op_runner::{run_op, OpAttrs, KNOWN_OPS};
use crate::error::Result;
use crate::io::{save_safetensors, SafeFile};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Ops and tensor names (all f32, NCHW, unless stated):
  conv2d              x[N,C,H,W] w[K,C,R,R] b[K]          -> y           (--stride --pad)
  conv2d_backward     x w dy                               -> dx dw db    (--stride --pad)
  maxpool2d           x                                    -> y           (--kernel --stride --pad)
  maxpool2d_backward  x dy                                 -> dx          (--kernel --stride --pad)
  linear              x[N,I] w[O,I] b[O]                   -> y
  linear_backward     x w dy                               -> dx dw db
  softmax_xent        logits[N,K] labels[N] (integer)      -> loss[N] dlogits[N,K]
  fgs_step            x grad                               -> x_next      (--eps --lo --hi)
  quadform            p[N,K] c[K,K] q[N,K]                 -> pcq pcp qcq cos
  roc_auc             scores[N] labels[N] (0/1, u8 or i64) -> auc[1]

Example:
  advlens op conv2d --in case.safetensors --out y.safetensors --stride 2 --pad 1 --device cpu")]
pub struct OpArgs {
    /// Op name (conv2d, conv2d_backward, maxpool2d, maxpool2d_backward, linear, linear_backward,
    /// softmax_xent, fgs_step, quadform, roc_auc).
    pub name: String,
    /// Input safetensors file with the op's named tensors.
    #[arg(long = "in", value_name = "IN.safetensors")]
    pub input: PathBuf,
    /// Output safetensors file (written under a temporary name, then renamed).
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Convolution / pooling stride (conv default 1, pool default = kernel).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Zero padding (conv) or -inf padding (max-pool) on each side (default 0).
    #[arg(long)]
    pub pad: Option<usize>,
    /// Pooling window size (required by maxpool2d ops).
    #[arg(long)]
    pub kernel: Option<usize>,
    /// FGS step size (required by fgs_step).
    #[arg(long, allow_hyphen_values = true)]
    pub eps: Option<f32>,
    /// FGS lower clip bound (default -inf).
    #[arg(long, allow_hyphen_values = true)]
    pub lo: Option<f32>,
    /// FGS upper clip bound (default +inf).
    #[arg(long, allow_hyphen_values = true)]
    pub hi: Option<f32>,
}

#[derive(serde::Serialize)]
struct OpReport {
    op: String,
    backend: String,
    out: PathBuf,
    outputs: Vec<(String, Vec<usize>)>,
}

pub fn run(ctx: &Ctx, a: &OpArgs) -> Result<()> {
    // Reject a typo before opening files or a device.
    if !KNOWN_OPS.contains(&a.name.as_str()) {
        return Err(crate::error::Error::unknown("op", &a.name, KNOWN_OPS));
    }
    let attrs = OpAttrs {
        stride: a.stride,
        pad: a.pad,
        kernel: a.kernel,
        eps: a.eps,
        lo: a.lo,
        hi: a.hi,
    };
    super::guard_out(&a.out, &[("--in", &a.input)])?;
    let file = SafeFile::open(&a.input)?;
    let backend = ctx.backend()?;
    let outputs = run_op(backend.as_ref(), &a.name, &file, &attrs)?;
    let mut meta = HashMap::new();
    meta.insert("op".to_string(), a.name.clone());
    meta.insert("backend".to_string(), backend.name());
    meta.insert("attrs".to_string(), format!("{attrs:?}"));
    save_safetensors(&a.out, &outputs, Some(meta))?;
    let report = OpReport {
        op: a.name.clone(),
        backend: backend.name(),
        out: a.out.clone(),
        outputs: outputs
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone()))
            .collect(),
    };
    emit(ctx, &report, || {
        let list: Vec<String> = report
            .outputs
            .iter()
            .map(|(n, s)| format!("{n}{s:?}"))
            .collect();
        format!(
            "{} on {}: wrote {} to {}",
            report.op,
            report.backend,
            list.join(", "),
            report.out.display()
        )
    });
    Ok(())
}
