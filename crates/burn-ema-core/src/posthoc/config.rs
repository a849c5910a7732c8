//! [`PostHocConfig`]: what a [`PostHocEma`](crate::PostHocEma) tracks and saves.

use burn::config::Config;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::config::{BufferPolicy, EmaConfig, EvalWeights, NonFinite, ShadowDType};
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
    /// The averages are updated every this many steps (the power-function decay is exact for
    /// any stride).
    #[config(default = 1)]
    pub update_every: u64,
    /// What happens to float buffers (see [`EmaConfig::buffers`]).
    #[config(default = "BufferPolicy::Average")]
    pub buffers: BufferPolicy,
    /// Paths left out of the averages (see [`EmaConfig::exclude`]).
    #[config(default = "Vec::new()")]
    pub exclude: Vec<String>,
    /// The element type of the averages in memory (see [`EmaConfig::shadow_dtype`]).
    #[config(default = "ShadowDType::Auto")]
    pub shadow_dtype: ShadowDType,
    /// What an update does with NaN or infinite live values (see [`EmaConfig::non_finite`]).
    #[config(default = "NonFinite::Propagate")]
    pub non_finite: NonFinite,
    /// Which weights the Learner validates with: the first profile's or the live ones (see
    /// [`EmaConfig::eval_weights`]).
    #[config(default = "EvalWeights::Shadow")]
    pub eval_weights: EvalWeights,
}

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
        if self.update_every == 0 {
            return Err(EmaError::invalid("update_every", "must be at least 1"));
        }
        if self.snapshot_every == 0 || !self.snapshot_every.is_multiple_of(self.update_every) {
            return Err(EmaError::invalid(
                "snapshot_every",
                format!(
                    "must be a positive multiple of update_every ({}), got {}",
                    self.update_every, self.snapshot_every
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
                    .with_update_every(self.update_every)
                    .with_buffers(self.buffers)
                    .with_exclude(self.exclude.clone())
                    .with_shadow_dtype(self.shadow_dtype)
                    .with_non_finite(self.non_finite)
                    .with_eval_weights(self.eval_weights)
            })
            .collect())
    }
}
