//! Errors of the example trainers: each becomes one clear line and a non-zero exit.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong in the example trainers.
#[derive(Debug, Error)]
pub enum MnistError {
    /// A data file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A data file is not valid IDX (wrong magic number, truncated, inconsistent counts).
    #[error("{path} is not a valid MNIST IDX file: {problem}")]
    BadData {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The EMA configuration or update failed.
    #[error(transparent)]
    Ema(#[from] burn_ema_core::EmaError),
    /// A model file could not be loaded.
    #[error("cannot load model {path}: {problem}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The requested device is not compiled into this build.
    #[error("device not available: {0}")]
    Device(String),
    /// Writing results failed.
    #[error("cannot write {path}: {problem}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// Training stopped with an error.
    #[error("training failed: {0}")]
    Training(String),
}
