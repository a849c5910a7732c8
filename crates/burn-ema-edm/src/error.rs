//! The trainer's errors.

use std::path::PathBuf;

/// What can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum EdmError {
    /// The digits could not be read.
    #[error(transparent)]
    Data(#[from] burn_ema_mnist::MnistError),
    /// The EMA library refused something.
    #[error(transparent)]
    Ema(#[from] burn_ema_core::EmaError),
    /// A file could not be read or written.
    #[error("{}: {problem}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The settings do not make a run.
    #[error("invalid settings: {0}")]
    Settings(String),
}

impl EdmError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.into(),
            problem: err.to_string(),
        }
    }
}
