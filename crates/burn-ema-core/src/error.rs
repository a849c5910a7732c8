//! The error type of burn-ema.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Everything that can go wrong in burn-ema.
///
/// User mistakes (a bad configuration, a model whose structure no longer matches its shadow,
/// a call that is not allowed in the current state) are reported through this type, never by a
/// panic. When an operation returns an error, nothing in memory has changed (a
/// [`PostHocEma`](crate::PostHocEma) update whose snapshot fails puts its averages back), so
/// the same call can be retried. Reading the shadow of a DDP secondary worker's replica, which
/// holds none, is [`EmaError::NotHeld`] (`MovingAverage::shadow`, which returns no `Result`,
/// panics with that message).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum EmaError {
    /// A configuration value is out of its valid range.
    #[error("invalid EMA configuration: `{field}` {problem}")]
    InvalidConfig {
        /// The offending field (e.g. `decay`).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// The model and its shadow no longer have the same structure: a parameter was added,
    /// removed, renamed or reshaped.
    #[error("model and shadow do not match at `{path}`: {problem}")]
    StructureMismatch {
        /// The dotted module path of the first parameter that does not match.
        path: String,
        /// What differs (shapes, kinds, a missing parameter).
        problem: String,
    },

    /// The model holds no parameter that the EMA could track.
    #[error("the model has no parameters to average")]
    EmptyModel,

    /// An exclusion pattern is malformed.
    #[error("invalid exclusion pattern `{pattern}`: {problem}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A tensor given to [`TensorEma`](crate::TensorEma) does not fit its average.
    #[error("tensor does not fit the moving average: {problem}")]
    TensorMismatch {
        /// What differs.
        problem: String,
    },

    /// Reading or writing a file failed at the operating-system level (missing file, no
    /// permission, full disk). A failed write leaves the previous file intact.
    #[error("cannot {operation} {}: {problem}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// `read` or `write`.
        operation: &'static str,
        /// The system's message.
        problem: String,
    },

    /// A file is not a readable model file: wrong format, truncated, or corrupted.
    #[error("{} is not a valid {format} file: {problem}", file.display())]
    CorruptFile {
        /// The file.
        file: PathBuf,
        /// The format expected (`burnpack`, `safetensors`).
        format: &'static str,
        /// What is wrong.
        problem: String,
    },

    /// A file does not fit the model: another architecture, a missing or extra tensor, a shape
    /// or an element type that differs.
    #[error("{} does not fit the model at `{tensor}`: {problem}", file.display())]
    FileMismatch {
        /// The file.
        file: PathBuf,
        /// The tensor's name inside the file (or the model path it should have).
        tensor: String,
        /// What differs.
        problem: String,
    },

    /// An average was asked for by an index it does not have
    /// ([`MovingAverage::shadow_of`](crate::MovingAverage::shadow_of) and the like).
    #[error("there is no average {index}: there are {len}")]
    NoSuchAverage {
        /// The index asked for.
        index: usize,
        /// The number of averages.
        len: usize,
    },

    /// `update_with_step` was given a step before the last update's, for a power-function EMA
    /// ([`Schedule::PowerFunction`](crate::Schedule::PowerFunction)): its profile spans the steps so
    /// far, and cannot go back in time. (Every other schedule takes any step, as TensorFlow does;
    /// a repeated step applies that step's decay again.)
    #[error(
        "step {step} comes before the last update's step {last}: a power-function EMA cannot go back in time"
    )]
    StepBackwards {
        /// The step given.
        step: u64,
        /// The last step applied.
        last: u64,
    },

    /// A live value to be averaged is NaN or infinite, and the configuration's
    /// [`NonFinite`](crate::NonFinite) policy is `Error`. Nothing was changed.
    #[error("`{path}` holds {count} non-finite value(s) (NaN or infinity); the update was refused")]
    NonFinite {
        /// The dotted path of the first tensor with a non-finite value.
        path: String,
        /// How many non-finite values it holds.
        count: usize,
    },

    /// BatchNorm statistics could not be recomputed ([`update_bn`](crate::update_bn)).
    #[error("cannot recompute the BatchNorm statistics: {problem}")]
    BatchNorm {
        /// What went wrong.
        problem: String,
    },

    /// A device the shadow cannot live on: it does not exist, cannot be reached from the
    /// model's, or is not a host device where one is needed.
    #[error("the shadow cannot live on {device}: {problem}")]
    Device {
        /// The device asked for.
        device: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A background update (see `ShadowPlacement::Offload`) panicked; the shadow started again from
    /// the live weights, keeping its counter.
    #[error("the background update at step {step} panicked: {message}")]
    BackgroundUpdate {
        /// The step it was applying.
        step: u64,
        /// The panic's message.
        message: String,
    },

    /// A file in a format this version of burn-ema does not read: written by a newer version
    /// (upgrade burn-ema to read it).
    #[error(
        "{} is in format `{found}`; this version of burn-ema reads `{supported}` (a newer version wrote it?)",
        file.display()
    )]
    UnsupportedFormat {
        /// The file.
        file: PathBuf,
        /// The format tag the file carries.
        found: String,
        /// The format this version reads.
        supported: &'static str,
    },

    /// A file holds no EMA state (e.g. a bare model file given where an EMA checkpoint was
    /// expected).
    #[error("{} holds no EMA state: {problem}", file.display())]
    NotAnEmaFile {
        /// The file.
        file: PathBuf,
        /// What is missing.
        problem: String,
    },

    /// Post-hoc EMA: the snapshot directory holds no snapshot a synthesis can use (none at
    /// all, or none at or before the step asked for).
    #[error("no post-hoc EMA snapshots in {}{problem}", dir.display())]
    NoSnapshots {
        /// The snapshot directory.
        dir: PathBuf,
        /// More about it (empty, or which step was asked for).
        problem: String,
    },

    /// Post-hoc EMA: a synthesis was asked for at a step that has no snapshot (EDM2
    /// reconstructs only at a snapshot's step: after it, the weights are unknown).
    #[error("post-hoc EMA: no snapshot at step {step}; the snapshots are at steps {available}")]
    NoSnapshotAtStep {
        /// The step asked for.
        step: u64,
        /// The steps that have snapshots (abbreviated when there are many).
        available: String,
    },

    /// The shadow was asked for on a replica that does not hold it: a secondary worker of a
    /// distributed (DDP) run, which drops its copy, because the main worker's average is the
    /// only one (updated there once per step). Read, save or swap it on the main worker (the
    /// one on the shadow's home device); `stats().holds_shadow` tells which replica holds it.
    #[error(
        "this replica holds no shadow: it is a secondary worker of a distributed (DDP) run, and \
         the main worker's average is the only one; read, save or swap it there \
         (stats().holds_shadow tells)"
    )]
    NotHeld,

    /// Post-hoc EMA: the least-squares system for the synthesis coefficients is too close to
    /// singular for its solution to mean anything (two snapshots of nearly the same profile at
    /// the same step, or a target far from every tracked profile).
    #[error(
        "post-hoc EMA: the synthesis is ill-conditioned ({}): {advice}",
        ill_conditioned(*.condition, *.abs_sum)
    )]
    IllConditioned {
        /// The 1-norm condition number of the snapshots' correlation matrix.
        condition: f64,
        /// `sum |coefficient|` of the solution (1 for a plain average; large values cancel);
        /// `None` when the system could not be solved.
        abs_sum: Option<f64>,
        /// What to do about it.
        advice: &'static str,
    },
}

impl EmaError {
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            problem: problem.into(),
        }
    }

    pub(crate) fn io(file: &Path, operation: &'static str, err: &std::io::Error) -> Self {
        Self::Io {
            file: file.to_path_buf(),
            operation,
            problem: err.to_string(),
        }
    }

    pub(crate) fn file_mismatch(
        file: &Path,
        tensor: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::FileMismatch {
            file: file.to_path_buf(),
            tensor: tensor.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn mismatch(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::StructureMismatch {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

fn ill_conditioned(condition: f64, abs_sum: Option<f64>) -> String {
    match abs_sum {
        Some(sum) => format!(
            "condition number {condition:.3e}; the coefficients sum to {sum:.3e} in absolute \
             value and cancel"
        ),
        None => format!("condition number {condition:.3e}"),
    }
}

/// The message a panic carried (`panic!` with a literal or a formatted string).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
