//! [`PostHocConfig`]: what a [`PostHocEma`](crate::PostHocEma) tracks and saves.

use burn::config::Config;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::config::{AverageOptions, EmaConfig, average_option_builders};
use crate::error::EmaError;
use crate::power_profile::sigma_rel_to_gamma;
use crate::schedule::Schedule;

/// The element type of post-hoc EMA snapshots on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SnapshotDType {
    /// `f32` (the default): what EDM2 synthesizes from. A synthesis is a weighted sum whose
    /// coefficients can exceed 1 in size and cancel (narrow targets): full precision keeps its
    /// rounding at `f32`'s.
    #[default]
    F32,
    /// `f16`: half the disk of `f32`. Each snapshot is rounded to about 3 decimal digits
    /// (`2^-11` relative), and a synthesis adds those errors up weighted by its coefficients.
    F16,
    /// `bf16`: half the disk, `f32`'s range, `2^-8` relative rounding.
    BF16,
    /// The shadow's own element type.
    Shadow,
}

impl SnapshotDType {
    /// The type a float tensor of type `shadow` is saved as.
    pub(crate) fn resolve(self, shadow: DType) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::Shadow => shadow,
        }
    }
}

/// Configuration of post-hoc EMA (Karras et al. 2024, EDM2): the power-function profiles
/// tracked during training and how often their snapshots are saved.
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn_ema::{PostHocConfig, SnapshotDType};
/// // EDM2's setup: profiles of relative width 0.05 and 0.10; a snapshot every 1000 steps here.
/// let config = PostHocConfig::new()
///     .with_snapshot_every(1000)
///     .with_snapshot_dtype(SnapshotDType::F16);
/// assert_eq!(config.sigma_rels, vec![0.05, 0.10]);
/// config.validate()?;
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct PostHocConfig {
    /// The relative widths of the profiles tracked (EDM2's `sigma_rel`; each in
    /// `(0, 1/sqrt(12)]`, all different). Two suffice to synthesize any width in between and
    /// well beyond.
    #[config(default = "vec![0.05, 0.10]")]
    pub sigma_rels: Vec<f64>,
    /// A snapshot of every profile is saved every this many steps (a multiple of
    /// `update_every`). EDM2 saves one per 8M training images.
    #[config(default = 1000)]
    pub snapshot_every: u64,
    /// The element type of the snapshot files.
    #[config(default = "SnapshotDType::F32")]
    pub snapshot_dtype: SnapshotDType,
    /// What every average shares (see [`AverageOptions`]); each has a builder here too.
    /// `update_every`: the power-function decay is exact for any stride. `eval_weights`: the
    /// Learner validates with the first profile's weights or the live ones.
    #[config(default = "AverageOptions::new()")]
    pub options: AverageOptions,
}

average_option_builders!(PostHocConfig);

impl PostHocConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), EmaError> {
        self.gammas().map(|_| ())
    }

    /// The exponent of each profile, checked.
    pub(crate) fn gammas(&self) -> Result<Vec<f64>, EmaError> {
        if self.sigma_rels.is_empty() {
            return Err(EmaError::invalid(
                "sigma_rels",
                "is empty: track at least one profile (EDM2 tracks 0.05 and 0.10)",
            ));
        }
        for (i, a) in self.sigma_rels.iter().enumerate() {
            if self.sigma_rels[..i].contains(a) {
                return Err(EmaError::invalid(
                    "sigma_rels",
                    format!("lists {a} twice: its snapshots would make the synthesis singular"),
                ));
            }
        }
        self.options.validate()?;
        let update_every = self.options.update_every;
        if self.snapshot_every == 0 || !self.snapshot_every.is_multiple_of(update_every) {
            return Err(EmaError::invalid(
                "snapshot_every",
                format!(
                    "must be a positive multiple of update_every ({}), got {}",
                    update_every, self.snapshot_every
                ),
            ));
        }
        self.sigma_rels
            .iter()
            .map(|&s| sigma_rel_to_gamma(s))
            .collect()
    }

    /// The [`EmaConfig`] of each profile: a pure power-function EMA (no upper clamp), e.g. to
    /// track the same profiles with a [`MultiEma`](crate::MultiEma).
    pub fn ema_configs(&self) -> Result<Vec<EmaConfig>, EmaError> {
        Ok(self
            .gammas()?
            .into_iter()
            .map(|gamma| {
                EmaConfig::new(1.0)
                    .with_schedule(Schedule::PowerFunction { gamma })
                    .with_options(self.options.clone())
            })
            .collect())
    }
}
