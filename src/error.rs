//! One error type for the runtime. Every variant names the thing a user can act on
//! (the op and its shapes, the file and tensor, the missing field) and, where it helps, what to do.

#![warn(missing_docs)]

use std::path::PathBuf;

/// `Result` with Fado's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by layer; each variant's message names what to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable GPU adapter (or none matching `--adapter`).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// The GPU refused an operation (validation, device lost, …).
    #[error("GPU error while {what}: {msg}")]
    Gpu {
        /// What Fado was doing.
        what: String,
        /// wgpu's message.
        msg: String,
    },

    /// The GPU device was lost (driver reset, removal): nothing more can run on it; the
    /// process must open the device again.
    #[error("GPU device lost while {what}: {why}; restart the process to open it again")]
    DeviceLost {
        /// What Fado was doing.
        what: String,
        /// The driver's reason.
        why: String,
    },

    /// An allocation the device cannot satisfy.
    #[error("GPU out of memory while {what}: needed {needed} bytes, the device allows {available} bytes{hint}")]
    OutOfMemory {
        /// What was being allocated or bound.
        what: String,
        /// Bytes asked for.
        needed: u64,
        /// Bytes the device allows for it.
        available: u64,
        /// What to do about it (starts with a separator, may be empty).
        hint: String,
    },

    /// An op was given tensors it cannot work on.
    #[error("op `{op}`: {msg}")]
    Op {
        /// The op's name.
        op: &'static str,
        /// The shapes given and what was expected.
        msg: String,
    },

    /// A model file (or folder) is malformed, truncated or inconsistent.
    #[error("{}: {msg}", path.display())]
    Model {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong (tensor or field) and what to do.
        msg: String,
    },

    /// A configuration value is missing or not supported.
    #[error("{0}")]
    Config(String),

    /// Tokenizer or chat template problem.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A generation request that cannot be served as asked (prompt too long, …).
    #[error("{0}")]
    Request(String),

    /// Reading a file failed (missing, unreadable, …).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// [`Error::Op`] for `op`.
    pub fn op(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Op {
            op,
            msg: msg.into(),
        }
    }
    /// [`Error::Model`] about the file or folder `path`.
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// [`Error::Gpu`] while doing `what`.
    pub fn gpu(what: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Error::Gpu {
            what: what.into(),
            msg: msg.to_string(),
        }
    }
    /// [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
