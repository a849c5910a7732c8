//! [`EmaConfig`] and the small enums it is made of.

use burn::config::Config;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::error::EmaError;
use crate::path::PathPattern;
use crate::schedule::{DecaySchedule, Schedule, check_unit};

/// What happens to float buffers (tensors that are not trained, e.g. BatchNorm's running mean
/// and variance). Integer and boolean tensors are always copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BufferPolicy {
    /// Average buffers like parameters (timm's default).
    #[default]
    Average,
    /// Copy the live buffers into the shadow at each update (ema-pytorch's default).
    Copy,
}

/// Which weights Burn's Learner validates an average with (its `InferenceStep`, feature
/// `train`; [`MovingAverage::eval_model`](crate::MovingAverage::eval_model)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum EvalWeights {
    /// Validate with the shadow (averaged) weights.
    #[default]
    Shadow,
    /// Validate with the live (trained) weights.
    Live,
}

/// What an update does when a live value to be averaged is NaN or infinite (a diverged step, an
/// overflowing `f16` gradient). Averaging it would poison the shadow for good: every later
/// update keeps the NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NonFinite {
    /// Average it anyway: no check, no cost (TensorFlow's, timm's and PyTorch's behaviour).
    #[default]
    Propagate,
    /// Skip the whole update (every tensor keeps its shadow; the step still counts) and count
    /// it ([`EmaStats::non_finite_skips`](crate::EmaStats::non_finite_skips)).
    Skip,
    /// Refuse the update with [`EmaError::NonFinite`], naming the tensor; nothing changes.
    Error,
}

/// The element type the shadow weights are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ShadowDType {
    /// `f32` for `f16`/`bf16` parameters, the parameter's own type otherwise. A half-precision
    /// shadow stops moving at high decay: with decay 0.9999, `(1 - decay) * (param - shadow)` is
    /// below half an `f16` ulp for most weights, so the update rounds away.
    #[default]
    Auto,
    /// Always the parameter's own type.
    Param,
    /// Always `f32`.
    F32,
    /// Always `f64`.
    F64,
}

impl ShadowDType {
    /// The shadow's element type for a parameter of type `param`.
    pub fn resolve(self, param: DType) -> DType {
        match (self, param) {
            (Self::Auto, DType::F16 | DType::BF16) => DType::F32,
            (Self::Auto | Self::Param, other) => other,
            (Self::F32, _) => DType::F32,
            (Self::F64, _) => DType::F64,
        }
    }
}

/// The settings every average shares, declared once: [`EmaConfig`] and
/// [`PostHocConfig`](crate::PostHocConfig) each hold one (`options`), a
/// [`MultiEma`](crate::MultiEma) one per average through its `EmaConfig`s, and
/// [`validate`](Self::validate) checks them for all three.
///
/// Each field also has a builder on both configurations, so the usual way to set one is
/// `EmaConfig::new(0.999).with_buffers(BufferPolicy::Copy)`.
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn_ema::{AverageOptions, BufferPolicy, EmaConfig, PostHocConfig};
///
/// let ema = EmaConfig::new(0.999).with_buffers(BufferPolicy::Copy).with_update_every(2);
/// let posthoc = PostHocConfig::new().with_options(ema.options.clone());
/// assert_eq!(posthoc.options, AverageOptions::new().with_buffers(BufferPolicy::Copy).with_update_every(2));
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct AverageOptions {
    /// Average only when `step % update_every == 0`; other updates do nothing. Must be `>= 1`.
    #[config(default = 1)]
    pub update_every: u64,
    /// What happens to float buffers such as BatchNorm's running statistics.
    #[config(default = "BufferPolicy::Average")]
    pub buffers: BufferPolicy,
    /// Dotted parameter paths (`*` matches any run of characters, `?` one character) that are
    /// copied instead of averaged, e.g. `"head.*"` or `"*.running_var"`.
    #[config(default = "Vec::new()")]
    pub exclude: Vec<String>,
    /// The element type of the shadow weights.
    #[config(default = "ShadowDType::Auto")]
    pub shadow_dtype: ShadowDType,
    /// What an update does with NaN or infinite live values.
    #[config(default = "NonFinite::Propagate")]
    pub non_finite: NonFinite,
    /// Which weights the Learner validates with (feature `train`).
    #[config(default = "EvalWeights::Shadow")]
    pub eval_weights: EvalWeights,
}

impl AverageOptions {
    /// Checks every field; the first problem found is returned, naming the field.
    pub fn validate(&self) -> Result<(), EmaError> {
        if self.update_every == 0 {
            return Err(EmaError::invalid(
                "update_every",
                "must be at least 1, got 0",
            ));
        }
        for pattern in &self.exclude {
            PathPattern::parse(pattern)?;
        }
        Ok(())
    }
}

/// One builder per [`AverageOptions`] field on a configuration that holds them in `options`.
macro_rules! average_option_builders {
    ($config:ty) => {
        impl $config {
            /// Sets [`AverageOptions::update_every`](crate::AverageOptions::update_every).
            pub fn with_update_every(mut self, update_every: u64) -> Self {
                self.options.update_every = update_every;
                self
            }
            /// Sets [`AverageOptions::buffers`](crate::AverageOptions::buffers).
            pub fn with_buffers(mut self, buffers: $crate::BufferPolicy) -> Self {
                self.options.buffers = buffers;
                self
            }
            /// Sets [`AverageOptions::exclude`](crate::AverageOptions::exclude).
            pub fn with_exclude(mut self, exclude: Vec<String>) -> Self {
                self.options.exclude = exclude;
                self
            }
            /// Sets [`AverageOptions::shadow_dtype`](crate::AverageOptions::shadow_dtype).
            pub fn with_shadow_dtype(mut self, shadow_dtype: $crate::ShadowDType) -> Self {
                self.options.shadow_dtype = shadow_dtype;
                self
            }
            /// Sets [`AverageOptions::non_finite`](crate::AverageOptions::non_finite).
            pub fn with_non_finite(mut self, non_finite: $crate::NonFinite) -> Self {
                self.options.non_finite = non_finite;
                self
            }
            /// Sets [`AverageOptions::eval_weights`](crate::AverageOptions::eval_weights).
            pub fn with_eval_weights(mut self, eval_weights: $crate::EvalWeights) -> Self {
                self.options.eval_weights = eval_weights;
                self
            }
        }
    };
}
pub(crate) use average_option_builders;

average_option_builders!(EmaConfig);

/// Configuration of an exponential moving average of a model's weights.
///
/// The update after each optimizer step is
/// `shadow = decay * shadow + (1 - decay) * param`, with `decay` given by the [`Schedule`].
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn_ema::{EmaConfig, Schedule, BufferPolicy};
///
/// let config = EmaConfig::new(0.9999)
///     .with_schedule(Schedule::Warmup { inv_gamma: 1.0, power: 0.75 })
///     .with_buffers(BufferPolicy::Copy)
///     .with_exclude(vec!["head.*".into()]);
/// assert!(config.validate().is_ok());
/// assert!(EmaConfig::new(1.5).validate().is_err());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct EmaConfig {
    /// The decay once warmup is over (the upper clamp of every schedule), in `[0, 1]`.
    pub decay: f64,
    /// The decay law (constant by default).
    #[config(default = "Schedule::Constant")]
    pub schedule: Schedule,
    /// The lower clamp of the decay, in `[0, decay]`.
    #[config(default = 0.0)]
    pub min_decay: f64,
    /// With `k = update_after_step > 0`, updates at steps `0..=k` copy the weights instead of
    /// averaging them (ema-pytorch's and diffusers' `update_after_step`: early weights are poor
    /// and averaging them only slows the shadow down), and the schedule counts from step `k`.
    /// `0`, the default, copies nothing: every step averages, step 0 included, as TensorFlow's
    /// `apply` does.
    #[config(default = 0)]
    pub update_after_step: u64,
    /// What every average shares: which tensors it averages and in what type, how often,
    /// what a non-finite value does, which weights validation uses. Each has a builder of its
    /// own here too (`with_buffers`, `with_exclude`, ...).
    #[config(default = "AverageOptions::new()")]
    pub options: AverageOptions,
}

impl EmaConfig {
    /// A DINO teacher: momentum from `base` (DINO 0.996, DINOv3 0.992) to 1 along DINO's
    /// `cosine_scheduler` over `total_updates` updates (its `epochs · niter_per_ep`), one update
    /// per training iteration. Floats are averaged like weights (DINO's teacher averages its
    /// parameters; its BatchNorm-free ViT has no buffers).
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn_ema::{EmaConfig, Schedule};
    /// let config = EmaConfig::dino_teacher(0.996, 100 * 1250);
    /// assert_eq!(config.schedule, Schedule::Cosine { start: 0.996, end: 1.0, steps: 125_000 });
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn dino_teacher(base: f64, total_updates: u64) -> Self {
        Self::new(1.0).with_schedule(Schedule::Cosine {
            start: base,
            end: 1.0,
            steps: total_updates,
        })
    }

    /// A BYOL target network: `τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2` at training step `k`
    /// (from 0) of `K = max_steps`, BYOL's schedule (τ_base 0.996 in the paper). The same curve
    /// as [`dino_teacher`](Self::dino_teacher), named for the users who know it this way.
    pub fn byol_target(tau_base: f64, max_steps: u64) -> Self {
        Self::dino_teacher(tau_base, max_steps)
    }

    /// A reinforcement-learning target network with Polyak (soft) updates:
    /// `target ← τ·online + (1 − τ)·target` at every update, Stable-Baselines3's
    /// `polyak_update(params, target_params, tau)`, TorchRL's `SoftUpdate(tau=τ)` and CleanRL's
    /// `--tau` (DQN 1.0 with a hard interval, SAC/TD3/DDPG 0.005). `τ` in `[0, 1]`: the decay is
    /// `1 − τ`. Buffers (BatchNorm's running statistics) are averaged like weights, as SB3 does
    /// for parameters; copy them with `with_buffers(BufferPolicy::Copy)` if your agent does.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn_ema::EmaConfig;
    /// assert_eq!(EmaConfig::soft_target(0.005).decay, 1.0 - 0.005);
    /// assert!(EmaConfig::soft_target(1.5).validate().is_err());
    /// ```
    pub fn soft_target(tau: f64) -> Self {
        Self::new(1.0 - tau)
    }

    /// A reinforcement-learning target network with hard updates: a copy of the online network
    /// every `every` updates and nothing in between (Stable-Baselines3's DQN
    /// `target_update_interval`, TorchRL's `HardUpdate(value_network_update_interval=every)`).
    /// With one `update()` per training step the copies come at steps `every`, `2·every`, …
    /// (`every >= 1`).
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn_ema::EmaConfig;
    /// let config = EmaConfig::hard_target(1000);
    /// assert_eq!((config.decay, config.options.update_every), (0.0, 1000));
    /// ```
    pub fn hard_target(every: u64) -> Self {
        Self::new(0.0).with_update_every(every)
    }

    /// Stochastic Weight Averaging (Izmailov et al. 2018; PyTorch's `AveragedModel` with its
    /// default averaging): the uniform average of the weights after updates `start + 1`,
    /// `start + 2`, … (the power-function EMA with γ = 0), the shadow a copy of the weights
    /// until then. Call `update()` where SWA would call `update_parameters` (every epoch from
    /// `swa_start` on: give `start` in updates), then recompute BatchNorm's statistics for the
    /// averaged weights with [`update_bn`](crate::update_bn).
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn_ema::{EmaConfig, Schedule};
    /// let config = EmaConfig::swa(75);
    /// assert_eq!(config.schedule, Schedule::PowerFunction { gamma: 0.0 });
    /// assert_eq!(config.update_after_step, 75);
    /// ```
    pub fn swa(start: u64) -> Self {
        Self::new(1.0)
            .with_schedule(Schedule::PowerFunction { gamma: 0.0 })
            .with_update_after_step(start)
    }

    /// An average over the last `fraction` of the run so far: [`Schedule::HalfLife`].
    pub fn half_life(fraction: f64) -> Self {
        Self::new(1.0).with_schedule(Schedule::HalfLife { fraction })
    }

    /// The old name of [`with_schedule`](Self::with_schedule).
    #[deprecated(since = "1.0.0", note = "use `with_schedule`")]
    pub fn with_warmup(self, schedule: Schedule) -> Self {
        self.with_schedule(schedule)
    }

    /// The decay an update at global step `step` applies, `None` for a step that
    /// `update_every` skips (0 for a copy), with updates `update_every` steps apart.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn_ema::{EmaConfig, Schedule};
    /// let tf = EmaConfig::new(0.999).with_schedule(Schedule::TensorFlow);
    /// assert_eq!(tf.decay_at_step(8), Some((9.0f32 / 18.0) as f64));
    /// assert_eq!(EmaConfig::new(0.9).with_update_every(2).decay_at_step(3), None);
    /// ```
    pub fn decay_at_step(&self, step: u64) -> Option<f64> {
        self.decay_schedule().action(step).decay()
    }

    /// What this configuration's updates do, step by step.
    pub(crate) fn decay_schedule(&self) -> DecaySchedule {
        DecaySchedule {
            schedule: self.schedule.clone(),
            decay: self.decay,
            min_decay: self.min_decay,
            update_after_step: self.update_after_step,
            update_every: self.options.update_every.max(1),
        }
    }

    /// Checks every field; the first problem found is returned, naming the field.
    pub fn validate(&self) -> Result<(), EmaError> {
        check_unit("decay", self.decay)?;
        check_unit("min_decay", self.min_decay)?;
        if self.min_decay > self.decay {
            return Err(EmaError::invalid(
                "min_decay",
                format!(
                    "must not exceed decay ({}), got {}",
                    self.decay, self.min_decay
                ),
            ));
        }
        self.schedule.validate()?;
        self.options.validate()
    }
}
