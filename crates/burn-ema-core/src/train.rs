//! Burn's Learner integration (feature `train`): every [`MovingAverage`] — [`EmaModule`],
//! [`MultiEma`], [`PostHocEma`] — trains and validates like the model it wraps.
//!
//! `Learner::new(EmaModule::new(model, config)?, optim, lr)` trains the live model, updates the
//! averages after every optimizer step ([`MovingAverage::update`]), validates with
//! [`MovingAverage::eval_model`] (the first average's weights, or the live ones as
//! [`EmaConfig::eval_weights`](crate::EmaConfig::eval_weights) says), and checkpoints the
//! averages with the model (they are part of the module's record). A `PostHocEma` also saves
//! its snapshots.

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::average::MovingAverage;
use crate::ema_module::EmaModule;
use crate::error::EmaError;
use crate::multi_ema::MultiEma;
use crate::posthoc::PostHocEma;

/// The averages must follow every optimizer step, and `TrainStep` cannot return an error: a
/// failed update stops training.
fn updated_or_stop(result: Result<(), EmaError>) {
    if let Err(err) = result {
        // What can fail here: a non-finite value under `NonFinite::Error` (that policy asks for
        // this stop), a power-function step going back, a failed post-hoc snapshot (a full
        // disk), a background update's error, a backend fault, or a model whose structure was
        // changed between steps.
        panic!("burn-ema: updating the averages after an optimizer step failed: {err}");
    }
}

/// `TrainStep` and `InferenceStep` for an average (a trait's blanket impl of a foreign trait is
/// not allowed, hence one per type): the live model steps, the averages follow, validation uses
/// [`MovingAverage::eval_model`].
macro_rules! learner_steps {
    ($($average:ident),+) => {$(
        impl<M> TrainStep for $average<M>
        where
            M: TrainStep + Module,
        {
            type Input = M::Input;
            type Output = M::Output;

            fn step(&self, item: Self::Input) -> TrainOutput<Self::Output> {
                self.model().step(item)
            }

            fn optimize(
                self,
                optim: &mut ModuleOptimizer,
                lr_module: ModuleLearningRate,
                grads: GradientsParams,
            ) -> Self {
                let mut average = self.map_model(|m| m.optimize(optim, lr_module, grads));
                updated_or_stop(average.update());
                average
            }

            fn optimize_multi(
                self,
                optim: &mut ModuleOptimizer,
                lr_module: ModuleLearningRate,
                grads: MultiGradientsParams,
            ) -> Self {
                let mut average = self.map_model(|m| m.optimize_multi(optim, lr_module, grads));
                updated_or_stop(average.update());
                average
            }
        }

        impl<M> InferenceStep for $average<M>
        where
            M: InferenceStep + Module,
        {
            type Input = M::Input;
            type Output = M::Output;

            fn step(&self, item: Self::Input) -> Self::Output {
                self.eval_model().step(item)
            }
        }
    )+};
}

learner_steps!(EmaModule, MultiEma, PostHocEma);
