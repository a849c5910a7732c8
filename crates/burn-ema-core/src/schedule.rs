//! The decay law of an average: [`Schedule`] (what the decay of the `n`-th update is), and
//! what one update does at a given step (`DecaySchedule`: copy, skip or average).
//!
//! **A new schedule is added here and nowhere else**: a variant of [`Schedule`], its check in
//! [`Schedule::validate`] and its decay in [`Schedule::decay`], the one function that evaluates
//! every schedule. Pure host-side arithmetic, tested against an `f64` reference and against
//! the published formulas (`tests/schedules.rs`).

use serde::{Deserialize, Serialize};

use crate::error::EmaError;

/// The decay law: the decay of each averaging update, from its count `n`.
///
/// `n` counts the updates since averaging began: `n = step - update_after_step`, so the first
/// averaging update has `n = 1`. Every schedule's result is clamped into
/// `[min_decay, decay]` (the configuration's), except where noted.
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn_ema::{EmaConfig, Schedule};
///
/// // timm's and diffusers' warmup: 0.999 after 10K steps, 0.9999 at most.
/// let config = EmaConfig::new(0.9999)
///     .with_schedule(Schedule::Warmup { inv_gamma: 1.0, power: 0.75 });
/// assert_eq!(config.decay_at_step(1), Some(0.0)); // the first update copies
/// assert!((config.decay_at_step(10_001).unwrap() - 0.999).abs() < 1e-6);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum Schedule {
    /// A constant decay: `decay`.
    #[default]
    #[serde(alias = "None")]
    Constant,
    /// TensorFlow's `ExponentialMovingAverage(num_updates=...)`:
    /// `min(decay, (1 + n) / (10 + n))`, computed in `f32` exactly as TensorFlow does.
    #[serde(alias = "NumUpdates")]
    TensorFlow,
    /// timm's and diffusers' warmup: `1 - (1 + t / inv_gamma)^(-power)` with `t = n - 1`;
    /// the first averaging update (`t = 0`) copies the weights (decay 0), as in both libraries.
    /// `inv_gamma = 1, power = 2/3` suits long runs (decay 0.999 at 31.6K steps, 0.9999 at
    /// 1M), `power = 3/4` shorter ones (0.999 at 10K steps, 0.9999 at 215K), as timm's
    /// docstring gives them.
    #[serde(alias = "Power")]
    Warmup {
        /// Scale of the step count (`> 0`).
        inv_gamma: f64,
        /// Exponent (`> 0`).
        power: f64,
    },
    /// The power-function EMA of Karras et al. 2023 ("Analyzing and Improving the Training
    /// Dynamics of Diffusion Models"): `(1 - 1/n)^(gamma + 1)`, and EDM2's exact
    /// `(1 - Δn/n)^(gamma + 1)` when updates are `Δn` steps apart (`update_every`, or steps
    /// given to `update_with_step`). Its relative width stays constant over training. Set
    /// `decay = 1.0` for the pure profile (no upper clamp).
    PowerFunction {
        /// Exponent (`>= 0`); e.g. 6.94 gives a relative standard deviation of 0.10.
        gamma: f64,
    },
    /// A cosine momentum schedule, as self-supervised teachers use (DINO, DINOv2/v3, BYOL,
    /// MoCo v3): over `steps` updates the decay goes from `start` to `end` along half a cosine,
    /// `end + (start − end)·(1 + cos(π·k/steps))/2` at the update with `k = n − 1` (the first
    /// update has `k = 0` and decay `start`), then stays at `end`. DINO's
    /// `cosine_scheduler(base, final, epochs, niter_per_ep)` is `start = base, end = final,
    /// steps = epochs·niter_per_ep` ([`EmaConfig::dino_teacher`](crate::EmaConfig::dino_teacher));
    /// BYOL's `τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2` is the same curve with `end = 1`
    /// ([`EmaConfig::byol_target`](crate::EmaConfig::byol_target)). Set `decay = 1.0` so that
    /// the clamp does not cut it.
    Cosine {
        /// The first update's decay, in `[0, 1]` (DINO 0.996, DINOv3 0.992, BYOL 0.996).
        start: f64,
        /// The decay from update `steps + 1` on, in `[0, 1]` (1 in DINO and BYOL).
        end: f64,
        /// The updates the curve spans (the run's length in updates, `>= 1`).
        steps: u64,
    },
    /// A half-life that is a fraction of the run so far: decay `2^(−1/(fraction·n))` at the
    /// `n`-th update, so the average always covers the last `fraction` of training (the
    /// "EMA length as a fraction of the run" of Karras et al. 2023 in its exponential form, and
    /// torchtitan's half-life option). The first update (`n = 1`) keeps `2^(−1/fraction)` of the
    /// shadow; at step 0 (`n = 0`) it copies.
    HalfLife {
        /// The half-life as a fraction of the updates so far (`> 0`, e.g. 0.1).
        fraction: f64,
    },
    /// The decays you give: `decays[n - 1]` at the `n`-th update, the last one from then on
    /// (step 0 of a schedule without a copying phase takes the first). For a law burn-ema does
    /// not have that is known before training; one driven by the loop is
    /// [`EmaModule::update_with_decay`](crate::EmaModule::update_with_decay).
    Explicit {
        /// Each in `[0, 1]`; at least one.
        decays: Vec<f64>,
    },
}

/// The deprecated name of [`Schedule`] (its variants were renamed too: `None` → `Constant`,
/// `NumUpdates` → `TensorFlow`, `Power` → `Warmup`).
#[deprecated(
    since = "1.0.0",
    note = "renamed `Schedule` (variants: None → Constant, NumUpdates → TensorFlow, Power → Warmup)"
)]
pub type Warmup = Schedule;

/// [`EmaError::InvalidConfig`] unless `value` lies in `[0, 1]`: the one check of a decay (or a
/// momentum, a blend) wherever one is given.
pub(crate) fn check_unit(field: &'static str, value: f64) -> Result<(), EmaError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(EmaError::invalid(
            field,
            format!("must lie in [0, 1], got {value}"),
        ))
    }
}

/// [`EmaError::InvalidConfig`] unless `value` is finite and above 0 (or 0, when `inclusive`).
fn check_positive(field: &'static str, value: f64, inclusive: bool) -> Result<(), EmaError> {
    let ok = value.is_finite() && (value > 0.0 || (inclusive && value == 0.0));
    if ok {
        Ok(())
    } else {
        let bound = if inclusive { ">= 0" } else { "> 0" };
        Err(EmaError::invalid(
            field,
            format!("must be finite and {bound}, got {value}"),
        ))
    }
}

impl Schedule {
    /// Checks the schedule's own parameters, naming the field (`schedule.gamma`, ...).
    pub fn validate(&self) -> Result<(), EmaError> {
        match self {
            Self::Constant | Self::TensorFlow => Ok(()),
            Self::Warmup { inv_gamma, power } => {
                check_positive("schedule.inv_gamma", *inv_gamma, false)?;
                check_positive("schedule.power", *power, false)
            }
            Self::PowerFunction { gamma } => check_positive("schedule.gamma", *gamma, true),
            Self::Cosine { start, end, steps } => {
                check_unit("schedule.start", *start)?;
                check_unit("schedule.end", *end)?;
                if *steps == 0 {
                    return Err(EmaError::invalid(
                        "schedule.steps",
                        "must be at least 1, got 0",
                    ));
                }
                Ok(())
            }
            Self::HalfLife { fraction } => check_positive("schedule.fraction", *fraction, false),
            Self::Explicit { decays } => {
                if decays.is_empty() {
                    return Err(EmaError::invalid(
                        "schedule.decays",
                        "is empty: give at least one decay",
                    ));
                }
                match decays.iter().position(|d| check_unit("", *d).is_err()) {
                    Some(i) => Err(EmaError::invalid(
                        "schedule.decays",
                        format!("must each lie in [0, 1], got {} at {i}", decays[i]),
                    )),
                    None => Ok(()),
                }
            }
        }
    }

    /// The decay of the `n`-th averaging update, `since` steps after the previous one (only
    /// the power-function EMA depends on it; `since = 0`, a repeated step, gives it decay 1),
    /// clamped into `[min_decay, decay]` as each variant's documentation says. The one place
    /// every schedule is evaluated.
    ///
    /// `n = 0` happens only at step 0 of a schedule without a copying phase: TensorFlow's ramp
    /// then gives `min(decay, 0.1)`, and the power schedules copy (decay 0), as they do at their
    /// first update.
    fn decay(&self, n: u64, since: u64, decay: f64, min_decay: f64) -> f64 {
        let clamp = |d: f64| d.min(decay).max(min_decay);
        match self {
            Self::Constant => decay,
            Self::TensorFlow => {
                // TensorFlow casts num_updates to f32 and computes in f32:
                // decay = minimum(decay, (1.0 + n) / (10.0 + n)).
                let n = n as f32;
                let ramp = (1.0f32 + n) / (10.0f32 + n);
                let d = (decay as f32).min(ramp);
                (d as f64).max(min_decay)
            }
            Self::Warmup { inv_gamma, power } => {
                let t = n.saturating_sub(1) as f64;
                if t <= 0.0 {
                    0.0
                } else {
                    clamp(1.0 - (1.0 + t / inv_gamma).powf(-power))
                }
            }
            Self::PowerFunction { gamma } => {
                if since == 0 {
                    1.0
                } else if n <= since {
                    0.0
                } else {
                    clamp((1.0 - since as f64 / n as f64).powf(gamma + 1.0))
                }
            }
            Self::Cosine { start, end, steps } => {
                // DINO's `final + 0.5·(base − final)·(1 + cos(π·i/len))` at iteration `i = k`.
                let k = n.saturating_sub(1);
                if k >= *steps {
                    clamp(*end)
                } else {
                    let phase = std::f64::consts::PI * k as f64 / *steps as f64;
                    clamp(end + 0.5 * (start - end) * (1.0 + phase.cos()))
                }
            }
            Self::HalfLife { fraction } => {
                if n == 0 {
                    0.0
                } else {
                    clamp(0.5f64.powf(1.0 / (fraction * n as f64)))
                }
            }
            Self::Explicit { decays } => {
                let i = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
                clamp(decays[i.min(decays.len() - 1)])
            }
        }
    }
}

/// What an update at a given step does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum StepAction {
    /// Nothing (the step is not a multiple of `update_every`).
    Skip,
    /// Copy the live weights into the shadow (`1 <= update_after_step` and
    /// `step <= update_after_step`).
    Copy,
    /// `shadow = decay * shadow + (1 - decay) * param` with this decay.
    Average(f64),
}

impl StepAction {
    /// The decay this action applies: 0 for a copy, `None` for a skip.
    pub(crate) fn decay(self) -> Option<f64> {
        match self {
            Self::Skip => None,
            Self::Copy => Some(0.0),
            Self::Average(d) => Some(d),
        }
    }
}

/// What the updates of one configuration do, step by step: its [`Schedule`] with the
/// configuration's clamps, copying phase and stride (`EmaConfig::decay_schedule`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DecaySchedule {
    pub(crate) schedule: Schedule,
    pub(crate) decay: f64,
    pub(crate) min_decay: f64,
    pub(crate) update_after_step: u64,
    /// `>= 1`.
    pub(crate) update_every: u64,
}

impl DecaySchedule {
    /// What an update at global step `step` does (TensorFlow's `num_updates`), when updates
    /// come every `update_every` steps (see [`action_after`](Self::action_after)).
    ///
    /// With `update_after_step = k > 0`, steps `0..=k` copy the weights and step `k + n`
    /// averages with the schedule's `n`-th decay, as in ema-pytorch and diffusers. With the
    /// default `k = 0` nothing is copied and step `n` averages with the `n`-th decay, step 0
    /// included: `Schedule::TensorFlow` at step 0 applies `min(decay, 1/10)`, exactly as
    /// TensorFlow's `ExponentialMovingAverage.apply` with `num_updates = 0`.
    pub(crate) fn action(&self, step: u64) -> StepAction {
        self.action_after(step, None)
    }

    /// What an update at global step `step` does when the previous averaging (or copying)
    /// update was at step `previous` (`None`: unknown, taken as `step - update_every`).
    ///
    /// Only the power-function EMA depends on it: its decay is EDM2's exact
    /// `(1 - Δt/t)^(gamma + 1)` (`power_function_beta`, Eq. 127), `t = step -
    /// update_after_step` the steps so far and `Δt` the steps since the previous update, so
    /// the profile stays exact when updates are strided or irregular. (With an update every
    /// step, `Δt = 1`: `(1 - 1/t)^(gamma + 1)`.)
    ///
    /// An update at the previous update's own step (`previous == Some(step)`) applies the
    /// schedule's decay at that step again, as TensorFlow's `apply` does; for the power-function
    /// EMA it adds no time (`Δt = 0`), so its decay is 1 and nothing changes.
    pub(crate) fn action_after(&self, step: u64, previous: Option<u64>) -> StepAction {
        if !step.is_multiple_of(self.update_every) {
            StepAction::Skip
        } else if self.update_after_step > 0 && step <= self.update_after_step {
            StepAction::Copy
        } else {
            let since = match previous {
                Some(p) if p <= step => step - p.max(self.update_after_step),
                _ => self.update_every,
            };
            let n = step - self.update_after_step;
            StepAction::Average(self.decay_strided(n, since))
        }
    }

    /// The decay of an averaging update with schedule count `n` (`n = step -
    /// update_after_step`), one step after the previous one. `n = 0` happens only at step 0 of
    /// a schedule without a copying phase: TensorFlow's ramp then gives `min(decay, 0.1)`, and
    /// the power schedules copy (decay 0), as they do at their first update.
    #[cfg(test)]
    pub(crate) fn decay_at(&self, n: u64) -> f64 {
        self.decay_strided(n, 1)
    }

    /// Fails when an update at `step` cannot follow the last one, at `last`: only a
    /// power-function EMA going back in time (its profile is over the steps so far; an earlier
    /// step would undo time that was averaged). Every other schedule computes its decay from the
    /// step it is given, as TensorFlow does.
    pub(crate) fn check_order(&self, step: u64, last: Option<u64>) -> Result<(), EmaError> {
        match (&self.schedule, last) {
            (Schedule::PowerFunction { .. }, Some(last)) if step < last => {
                Err(EmaError::StepBackwards { step, last })
            }
            _ => Ok(()),
        }
    }

    /// [`decay_at`](Self::decay_at) for an update `since` steps after the previous one.
    fn decay_strided(&self, n: u64, since: u64) -> f64 {
        self.schedule.decay(n, since, self.decay, self.min_decay)
    }
}

/// The last step an average was updated at (TensorFlow's `num_updates` of the last `apply`).
///
/// Steps need not increase: TensorFlow computes the decay from whatever step it is given, and
/// its documented recipe applies twice at one step. Only the power-function EMA refuses a step
/// before the last (see [`DecaySchedule::check_order`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StepCounter {
    last: Option<u64>,
}

impl StepCounter {
    /// A counter resumed from a record or file, which stores the last step (`0` for none).
    pub(crate) fn resumed(num_updates: u64) -> Self {
        Self {
            last: (num_updates > 0).then_some(num_updates),
        }
    }

    /// The last step, `0` before the first update.
    pub(crate) fn get(self) -> u64 {
        self.last.unwrap_or(0)
    }

    /// The last step, `None` before the first update.
    pub(crate) fn last(self) -> Option<u64> {
        self.last
    }

    pub(crate) fn set(&mut self, step: u64) {
        self.last = Some(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule of `schedule` with an upper clamp `decay`, copying through step `after`,
    /// an update every `every` steps (what `EmaConfig::decay_schedule` builds).
    fn with(schedule: Schedule, decay: f64, after: u64, every: u64) -> DecaySchedule {
        schedule.validate().unwrap();
        DecaySchedule {
            schedule,
            decay,
            min_decay: 0.0,
            update_after_step: after,
            update_every: every,
        }
    }

    #[test]
    fn tensorflow_ramp_is_computed_in_f32() {
        let s = with(Schedule::TensorFlow, 0.999, 0, 1);
        assert_eq!(s.decay_at(1), (2.0f32 / 11.0f32) as f64);
        assert_eq!(s.decay_at(100), (101.0f32 / 110.0f32) as f64);
        assert_eq!(s.decay_at(1_000_000), 0.999f32 as f64);
    }

    #[test]
    fn power_warmup_copies_first_then_ramps() {
        let s = with(
            Schedule::Warmup {
                inv_gamma: 1.0,
                power: 0.75,
            },
            0.9999,
            0,
            1,
        );
        assert_eq!(s.decay_at(1), 0.0);
        let d = s.decay_at(2);
        assert!((d - (1.0 - 2f64.powf(-0.75))).abs() < 1e-15);
    }

    #[test]
    fn update_after_step_and_every() {
        let s = with(Schedule::Constant, 0.9, 3, 2);
        assert_eq!(s.action(1), StepAction::Skip);
        assert_eq!(s.action(2), StepAction::Copy);
        assert_eq!(s.action(3), StepAction::Skip);
        assert_eq!(s.action(4), StepAction::Average(0.9));
    }

    #[test]
    fn power_function_beta_is_exact_when_strided() {
        // gamma = 1: beta = (1 - dt/t)^2, exact in binary.
        let pf = Schedule::PowerFunction { gamma: 1.0 };
        let s = with(pf.clone(), 1.0, 0, 3);
        assert_eq!(s.action(3), StepAction::Average(0.0));
        assert_eq!(s.action(6), StepAction::Average(0.25)); // (1 - 3/6)^2
        assert_eq!(s.action(12), StepAction::Average(0.5625)); // (1 - 3/12)^2
        // Irregular updates: the steps since the previous one count.
        let s = with(pf.clone(), 1.0, 0, 1);
        assert_eq!(s.action_after(2, None), StepAction::Average(0.25)); // (1 - 1/2)^2
        assert_eq!(s.action_after(8, Some(2)), StepAction::Average(0.0625)); // (1 - 6/8)^2
        assert_eq!(s.action_after(8, Some(4)), StepAction::Average(0.25));
        // After a copying phase, t counts from its end.
        let s = with(pf, 1.0, 4, 1);
        assert_eq!(s.action_after(6, Some(4)), StepAction::Average(0.0)); // t = 2, dt = 2
        assert_eq!(s.action_after(8, Some(6)), StepAction::Average(0.25)); // t = 4, dt = 2
    }

    #[test]
    fn step_zero_averages_without_a_copying_phase() {
        let s = with(Schedule::TensorFlow, 0.999, 0, 1);
        assert_eq!(s.action(0), StepAction::Average(0.1f32 as f64));
        let s = with(Schedule::Constant, 0.9, 1, 1);
        assert_eq!(s.action(0), StepAction::Copy);
        assert_eq!(s.action(1), StepAction::Copy);
        assert_eq!(s.action(2), StepAction::Average(0.9));
    }
}
