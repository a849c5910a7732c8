//! Decay schedules: what one update does at a given step.
//!
//! Pure host-side arithmetic, shared by [`EmaModule`](crate::EmaModule) and
//! [`TensorEma`](crate::TensorEma), and tested against an `f64` reference.

use crate::config::{EmaConfig, Warmup};

/// What an update at a given step does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepAction {
    /// Nothing (the step is not a multiple of `update_every`).
    Skip,
    /// Copy the live weights into the shadow (`step <= update_after_step`).
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
    pub fn action(&self, step: u64) -> StepAction {
        if !step.is_multiple_of(self.update_every) {
            StepAction::Skip
        } else if step <= self.update_after_step {
            StepAction::Copy
        } else {
            StepAction::Average(self.decay_at(step - self.update_after_step))
        }
    }

    /// The decay of the `n`-th averaging update (`n >= 1`).
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
                let n = n.max(1) as f64;
                clamp((1.0 - 1.0 / n).powf(gamma + 1.0))
            }
        }
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
}
