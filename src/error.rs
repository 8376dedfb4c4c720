//! The one error type of advlens. Every variant carries enough context (file, tensor, kernel, op)
//! for a user to act on the message without a backtrace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what it must be (truncated, corrupt, wrong dtype/rank,
    /// missing tensor, labels out of range ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// Tensor shapes or dtypes passed to an op do not fit its contract.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A name the user gave (model, layer, op, tensor, dataset class ...) does not exist.
    #[error("unknown {kind} '{name}'{}", if known.is_empty() { String::new() } else { format!(" (known: {known})") })]
    Unknown {
        kind: &'static str,
        name: String,
        known: String,
    },

    /// An argument is out of range or inconsistent with another one.
    #[error("invalid argument: {0}")]
    InvalidArg(String),

    /// The requested device cannot be used (no libcuda, no NVRTC, no GPU, bad ordinal).
    #[error("device unavailable: {0}")]
    Device(String),

    /// A CUDA driver, NVRTC or kernel launch error, with the kernel or call it came from.
    #[error("cuda ({context}): {msg}")]
    Cuda { context: String, msg: String },

    /// The device could not allocate what was asked for.
    #[error("device out of memory: asked for {requested_bytes} bytes for {what}; {hint}")]
    OutOfMemory {
        requested_bytes: usize,
        what: String,
        hint: String,
    },

    /// A numeric problem a user must know about (NaN in weights, diverged training ...).
    #[error("numeric: {0}")]
    Numeric(String),

    #[error("json {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn unknown(kind: &'static str, name: impl Into<String>, known: &[&str]) -> Self {
        Error::Unknown {
            kind,
            name: name.into(),
            known: known.join(", "),
        }
    }
}
