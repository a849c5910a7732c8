//! Decay schedules: what one update does at a given step.
//!
//! Pure host-side arithmetic, shared by [`EmaModule`](crate::EmaModule) and
//! [`TensorEma`](crate::TensorEma), and tested against an `f64` reference.

use crate::config::{EmaConfig, Warmup};
use crate::error::EmaError;

/// What an update at a given step does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepAction {
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
    pub fn decay(self) -> Option<f64> {
        match self {
            Self::Skip => None,
            Self::Copy => Some(0.0),
            Self::Average(d) => Some(d),
        }
    }
}

/// The decay schedule of an [`EmaConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct DecaySchedule {
    decay: f64,
    min_decay: f64,
    warmup: Warmup,
    update_after_step: u64,
    update_every: u64,
}

impl DecaySchedule {
    /// The schedule of `config` (which should have been validated).
    pub fn new(config: &EmaConfig) -> Self {
        Self {
            decay: config.decay,
            min_decay: config.min_decay,
            warmup: config.warmup.clone(),
            update_after_step: config.update_after_step,
            update_every: config.update_every.max(1),
        }
    }

    /// What an update at global step `step` does (TensorFlow's `num_updates`), when updates
    /// come every `update_every` steps (see [`action_after`](Self::action_after)).
    ///
    /// With `update_after_step = k > 0`, steps `0..=k` copy the weights and step `k + n`
    /// averages with the schedule's `n`-th decay, as in ema-pytorch and diffusers. With the
    /// default `k = 0` nothing is copied and step `n` averages with the `n`-th decay, step 0
    /// included: `Warmup::NumUpdates` at step 0 applies `min(decay, 1/10)`, exactly as
    /// TensorFlow's `ExponentialMovingAverage.apply` with `num_updates = 0`.
    pub fn action(&self, step: u64) -> StepAction {
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
    pub fn action_after(&self, step: u64, previous: Option<u64>) -> StepAction {
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
    pub fn decay_at(&self, n: u64) -> f64 {
        self.decay_strided(n, 1)
    }

    /// Fails when an update at `step` cannot follow the last one, at `last`: only a
    /// power-function EMA going back in time (its profile is over the steps so far; an earlier
    /// step would undo time that was averaged). Every other schedule computes its decay from the
    /// step it is given, as TensorFlow does.
    pub(crate) fn check_order(&self, step: u64, last: Option<u64>) -> Result<(), EmaError> {
        match (&self.warmup, last) {
            (Warmup::PowerFunction { .. }, Some(last)) if step < last => {
                Err(EmaError::StepBackwards { step, last })
            }
            _ => Ok(()),
        }
    }

    /// [`decay_at`](Self::decay_at) for an update `since` steps after the previous one (only
    /// the power-function EMA depends on it; `since = 0`, a repeated step, gives it decay 1).
    fn decay_strided(&self, n: u64, since: u64) -> f64 {
        let clamp = |d: f64| d.min(self.decay).max(self.min_decay);
        match self.warmup {
            Warmup::None => self.decay,
            Warmup::NumUpdates => {
                // TensorFlow casts num_updates to f32 and computes in f32:
                // decay = minimum(decay, (1.0 + n) / (10.0 + n)).
                let n = n as f32;
                let ramp = (1.0f32 + n) / (10.0f32 + n);
                let d = (self.decay as f32).min(ramp);
                (d as f64).max(self.min_decay)
            }
            Warmup::Power { inv_gamma, power } => {
                let t = n.saturating_sub(1) as f64;
                if t <= 0.0 {
                    0.0
                } else {
                    clamp(1.0 - (1.0 + t / inv_gamma).powf(-power))
                }
            }
            Warmup::PowerFunction { gamma } => {
                if since == 0 {
                    1.0
                } else if n <= since {
                    0.0
                } else {
                    clamp((1.0 - since as f64 / n as f64).powf(gamma + 1.0))
                }
            }
            Warmup::Cosine { start, end, steps } => {
                // DINO's `final + 0.5·(base − final)·(1 + cos(π·i/len))` at iteration `i = k`.
                let k = n.saturating_sub(1);
                if k >= steps {
                    clamp(end)
                } else {
                    let phase = std::f64::consts::PI * k as f64 / steps as f64;
                    clamp(end + 0.5 * (start - end) * (1.0 + phase.cos()))
                }
            }
            Warmup::HalfLife { fraction } => {
                if n == 0 {
                    0.0
                } else {
                    clamp(0.5f64.powf(1.0 / (fraction * n as f64)))
                }
            }
        }
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

    fn schedule(config: EmaConfig) -> DecaySchedule {
        config.validate().unwrap();
        DecaySchedule::new(&config)
    }

    #[test]
    fn tensorflow_ramp_is_computed_in_f32() {
        let s = schedule(EmaConfig::new(0.999).with_warmup(Warmup::NumUpdates));
        assert_eq!(s.decay_at(1), (2.0f32 / 11.0f32) as f64);
        assert_eq!(s.decay_at(100), (101.0f32 / 110.0f32) as f64);
        assert_eq!(s.decay_at(1_000_000), 0.999f32 as f64);
    }

    #[test]
    fn power_warmup_copies_first_then_ramps() {
        let s = schedule(EmaConfig::new(0.9999).with_warmup(Warmup::Power {
            inv_gamma: 1.0,
            power: 0.75,
        }));
        assert_eq!(s.decay_at(1), 0.0);
        let d = s.decay_at(2);
        assert!((d - (1.0 - 2f64.powf(-0.75))).abs() < 1e-15);
    }

    #[test]
    fn update_after_step_and_every() {
        let s = schedule(
            EmaConfig::new(0.9)
                .with_update_after_step(3)
                .with_update_every(2),
        );
        assert_eq!(s.action(1), StepAction::Skip);
        assert_eq!(s.action(2), StepAction::Copy);
        assert_eq!(s.action(3), StepAction::Skip);
        assert_eq!(s.action(4), StepAction::Average(0.9));
    }

    #[test]
    fn power_function_beta_is_exact_when_strided() {
        // gamma = 1: beta = (1 - dt/t)^2, exact in binary.
        let pf = EmaConfig::new(1.0).with_warmup(Warmup::PowerFunction { gamma: 1.0 });
        let s = schedule(pf.clone().with_update_every(3));
        assert_eq!(s.action(3), StepAction::Average(0.0));
        assert_eq!(s.action(6), StepAction::Average(0.25)); // (1 - 3/6)^2
        assert_eq!(s.action(12), StepAction::Average(0.5625)); // (1 - 3/12)^2
        // Irregular updates: the steps since the previous one count.
        let s = schedule(pf.clone());
        assert_eq!(s.action_after(2, None), StepAction::Average(0.25)); // (1 - 1/2)^2
        assert_eq!(s.action_after(8, Some(2)), StepAction::Average(0.0625)); // (1 - 6/8)^2
        assert_eq!(s.action_after(8, Some(4)), StepAction::Average(0.25));
        // After a copying phase, t counts from its end.
        let s = schedule(pf.with_update_after_step(4));
        assert_eq!(s.action_after(6, Some(4)), StepAction::Average(0.0)); // t = 2, dt = 2
        assert_eq!(s.action_after(8, Some(6)), StepAction::Average(0.25)); // t = 4, dt = 2
    }

    #[test]
    fn step_zero_averages_without_a_copying_phase() {
        let s = schedule(EmaConfig::new(0.999).with_warmup(Warmup::NumUpdates));
        assert_eq!(s.action(0), StepAction::Average(0.1f32 as f64));
        let s = schedule(EmaConfig::new(0.9).with_update_after_step(1));
        assert_eq!(s.action(0), StepAction::Copy);
        assert_eq!(s.action(1), StepAction::Copy);
        assert_eq!(s.action(2), StepAction::Average(0.9));
    }
}
