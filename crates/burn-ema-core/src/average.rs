//! [`MovingAverage`]: what every moving average of a model shares.

use burn::module::Module;

use crate::config::EmaConfig;
use crate::error::EmaError;

/// What every moving average of a model shares — [`EmaModule`](crate::EmaModule) (one
/// average), [`MultiEma`](crate::MultiEma) (several, updated together) and
/// [`PostHocEma`](crate::PostHocEma) (EDM2's profiles and their snapshots) — as Burn's
/// `Optimizer` is for optimizers: the update after an optimizer step or at a given step, the
/// update counter, the live model, and each average's weights, configuration and last decay.
///
/// Burn's Learner drives every implementor through it (feature `train`), and so can a custom
/// loop or any code generic over the kind of average:
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_ema::{EmaConfig, EmaModule, MovingAverage, MultiEma};
///
/// /// A few training steps with whatever average the caller chose.
/// fn train<A: MovingAverage>(average: &mut A) -> Result<(), burn_ema::EmaError> {
///     for _ in 0..3 {
///         // ... an optimizer step on `average.model_mut()`, then:
///         average.update()?;
///     }
///     Ok(())
/// }
///
/// let device = Device::flex();
/// let model: Linear = LinearConfig::new(4, 2).init(&device);
/// let mut one = EmaModule::new(model.clone(), EmaConfig::new(0.9))?;
/// let mut two = MultiEma::new(model, vec![EmaConfig::new(0.9), EmaConfig::new(0.99)])?;
/// train(&mut one)?;
/// train(&mut two)?;
/// assert_eq!(one.num_updates(), 3);
/// assert_eq!(two.last_decay_of(1)?, Some(0.99));
/// assert!(two.shadow_of(2).is_err()); // no average 2
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
pub trait MovingAverage: Module {
    /// The model whose weights are averaged.
    type Model: Module;

    /// Updates every average after an optimizer step, at the step after the last one
    /// (`num_updates() + 1`).
    ///
    /// The counter plays the role of TensorFlow's `num_updates` in its usual recipe, where the
    /// optimizer increments the global step before the EMA applies: the first `update()` sees
    /// step 1. Use [`update_with_step`](Self::update_with_step) to pass a global step instead.
    fn update(&mut self) -> Result<(), EmaError> {
        self.update_with_step(self.num_updates() + 1)
    }

    /// Updates every average as of global step `step` (TensorFlow's `num_updates`, which may
    /// start at 0) and sets the update counter to `step`. Any step is taken, as TensorFlow's
    /// `apply` takes it: a repeated step applies that step's decay again (the weights may have
    /// changed in between). Only a power-function average refuses a step before the last
    /// ([`EmaError::StepBackwards`]). On error nothing changes (see each type for its
    /// exceptions).
    fn update_with_step(&mut self, step: u64) -> Result<(), EmaError>;

    /// The update counter: the last step applied (the number of `update()` calls when only
    /// those are used), `0` before the first update.
    fn num_updates(&self) -> u64;

    /// The live (trained) model.
    fn model(&self) -> &Self::Model;

    /// The live model, mutably, e.g. to step it with an optimizer. Its structure must stay the
    /// same: the next update checks it.
    fn model_mut(&mut self) -> &mut Self::Model;

    /// The number of averages (at least 1).
    fn num_averages(&self) -> usize;

    /// The weights of average `k` (in the order of the configurations), a plain module in
    /// evaluation mode; [`EmaError::NoSuchAverage`] when there is no average `k`, and
    /// [`EmaError::NotHeld`] on a DDP secondary worker, which holds no shadow.
    fn shadow_of(&self, k: usize) -> Result<&Self::Model, EmaError>;

    /// The weights of the first average (the only one of an [`EmaModule`](crate::EmaModule)):
    /// [`shadow_of(0)`](Self::shadow_of).
    ///
    /// # Panics
    ///
    /// On a secondary worker of a distributed (DDP) run, which holds no shadow (the main
    /// worker's is the only one): code that may run there calls `shadow_of(0)`, which returns
    /// [`EmaError::NotHeld`].
    fn shadow(&self) -> &Self::Model {
        match self.shadow_of(0) {
            Ok(shadow) => shadow,
            Err(e) => panic!("burn-ema: shadow(): {e}"),
        }
    }

    /// The configuration of the first average: [`config_of(0)`](Self::config_of).
    fn config(&self) -> &EmaConfig {
        self.config_of(0).expect("every average has an average 0")
    }

    /// The decay the most recent update applied to the first average (0 for a copy), `None`
    /// before the first update: [`last_decay_of(0)`](Self::last_decay_of).
    fn last_decay(&self) -> Option<f64> {
        self.last_decay_of(0)
            .expect("every average has an average 0")
    }

    /// The configuration of average `k`; [`EmaError::NoSuchAverage`] when there is none.
    fn config_of(&self, k: usize) -> Result<&EmaConfig, EmaError>;

    /// The decay the most recent update applied to average `k` (0 for a copy), `None` before
    /// the first; [`EmaError::NoSuchAverage`] when there is no average `k`.
    fn last_decay_of(&self, k: usize) -> Result<Option<f64>, EmaError>;

    /// The weights Burn's Learner validates with: the first average's, or the live model's
    /// when its configuration says [`EvalWeights::Live`](crate::EvalWeights::Live).
    fn eval_model(&self) -> &Self::Model;
}
