//! One error type for the runtime. Every variant names the thing a user can act on
//! (the op and its shapes, the file and tensor, the missing field) and, where it helps, what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable GPU adapter (or none matching `--adapter`).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// The GPU refused an operation (validation, device lost, …).
    #[error("GPU error while {what}: {msg}")]
    Gpu { what: String, msg: String },

    /// An allocation the device cannot satisfy.
    #[error("GPU out of memory while {what}: needed {needed} bytes, the device allows {available} bytes{hint}")]
    OutOfMemory {
        what: String,
        needed: u64,
        available: u64,
        hint: String,
    },

    /// An op was given tensors it cannot work on.
    #[error("op `{op}`: {msg}")]
    Op { op: &'static str, msg: String },

    /// A model file (or folder) is malformed, truncated or inconsistent.
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },

    /// A configuration value is missing or not supported.
    #[error("{0}")]
    Config(String),

    /// Tokenizer or chat template problem.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A generation request that cannot be served as asked (prompt too long, …).
    #[error("{0}")]
    Request(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn op(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Op {
            op,
            msg: msg.into(),
        }
    }
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn gpu(what: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Error::Gpu {
            what: what.into(),
            msg: msg.to_string(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
