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

    /// What an update at global step `step` does (TensorFlow's `num_updates`).
    ///
    /// With `update_after_step = k > 0`, steps `0..=k` copy the weights and step `k + n`
    /// averages with the schedule's `n`-th decay, as in ema-pytorch and diffusers. With the
    /// default `k = 0` nothing is copied and step `n` averages with the `n`-th decay, step 0
    /// included: `Warmup::NumUpdates` at step 0 applies `min(decay, 1/10)`, exactly as
    /// TensorFlow's `ExponentialMovingAverage.apply` with `num_updates = 0`.
    pub fn action(&self, step: u64) -> StepAction {
        if !step.is_multiple_of(self.update_every) {
            StepAction::Skip
        } else if self.update_after_step > 0 && step <= self.update_after_step {
            StepAction::Copy
        } else {
            StepAction::Average(self.decay_at(step - self.update_after_step))
        }
    }

    /// The decay of an averaging update with schedule count `n` (`n = step -
    /// update_after_step`). `n = 0` happens only at step 0 of a schedule without a copying
    /// phase: TensorFlow's ramp then gives `min(decay, 0.1)`, and the power schedules copy
    /// (decay 0), as they do at their first update.
    pub fn decay_at(&self, n: u64) -> f64 {
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
                if n <= 1 {
                    0.0
                } else {
                    clamp((1.0 - 1.0 / n as f64).powf(gamma + 1.0))
                }
            }
        }
    }
}

/// The last step an average was updated at. Steps must increase: applying one step twice (a
/// resumed run replaying steps, a loop calling `update_with_step` with a stale step) would
/// average the same weights twice.
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

    /// The step [`EmaModule::update`](crate::EmaModule::update) uses: one past the last, and 1
    /// for the first update (TensorFlow's recipe, where the optimizer increments the global step
    /// before the EMA applies).
    pub(crate) fn next(self) -> u64 {
        self.last.map_or(1, |s| s + 1)
    }

    /// The last step, `0` before the first update.
    pub(crate) fn get(self) -> u64 {
        self.last.unwrap_or(0)
    }

    /// Fails unless `step` comes after the last step.
    pub(crate) fn check(self, step: u64) -> Result<(), EmaError> {
        match self.last {
            Some(last) if step <= last => Err(EmaError::StepNotIncreasing { step, last }),
            _ => Ok(()),
        }
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
    fn step_zero_averages_without_a_copying_phase() {
        let s = schedule(EmaConfig::new(0.999).with_warmup(Warmup::NumUpdates));
        assert_eq!(s.action(0), StepAction::Average(0.1f32 as f64));
        let s = schedule(EmaConfig::new(0.9).with_update_after_step(1));
        assert_eq!(s.action(0), StepAction::Copy);
        assert_eq!(s.action(1), StepAction::Copy);
        assert_eq!(s.action(2), StepAction::Average(0.9));
    }
}
