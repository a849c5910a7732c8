//! Burn's Learner integration (feature `train`): an [`EmaModule`] (or a [`MultiEma`]) trains
//! and validates like the model it wraps.
//!
//! `Learner::new(EmaModule::new(model, config)?, optim, lr)` trains the live model, updates the
//! shadow after every optimizer step, validates with the weights that
//! [`EmaConfig::eval_weights`](crate::EmaConfig::eval_weights) names, and checkpoints the EMA
//! with the model (it is part of the module's record). A `MultiEma` updates every average and
//! validates with the first; a `PostHocEma` also saves its snapshots.

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::config::EvalWeights;
use crate::ema_module::EmaModule;
use crate::multi_ema::MultiEma;
use crate::posthoc::PostHocEma;

/// The shadow must follow every optimizer step; `TrainStep` cannot return an error.
fn updated_or_stop(result: Result<(), crate::EmaError>) {
    if let Err(err) = result {
        // The optimizer cannot change a module's structure, and a swapped `EmaModule` cannot
        // reach the Learner unless a `Swapped` guard was leaked (refused before the step): the
        // remaining cause is a non-finite value under `NonFinite::Error`, which asks for this
        // stop.
        panic!("burn-ema: updating the shadow after an optimizer step failed: {err}");
    }
}

/// What the Learner needs of a model with averages (besides its live `model` field): the
/// weights it validates with, a check before the optimizer steps it, the averages' update after.
trait Averaged<M> {
    /// The weights the Learner validates with.
    fn eval(&self) -> &M;
    fn before_step(&self) {}
    fn update(&mut self) -> Result<(), crate::EmaError>;
}

impl<M: Module> Averaged<M> for EmaModule<M> {
    fn eval(&self) -> &M {
        match self.config().eval_weights {
            EvalWeights::Shadow => self.shadow(),
            EvalWeights::Live => &self.model,
        }
    }
    fn before_step(&self) {
        assert!(
            !self.is_swapped(),
            "burn-ema: the EmaModule handed to the Learner holds the shadow weights (a `Swapped` \
             guard was leaked with std::mem::forget); training them would turn the EMA into live \
             weights. Use `into_parts` or a fresh EmaModule."
        );
    }
    fn update(&mut self) -> Result<(), crate::EmaError> {
        EmaModule::update(self)
    }
}

impl<M: Module> Averaged<M> for MultiEma<M> {
    fn eval(&self) -> &M {
        match self.averages[0].config().eval_weights {
            EvalWeights::Shadow => self.averages[0].module(),
            EvalWeights::Live => &self.model,
        }
    }
    fn update(&mut self) -> Result<(), crate::EmaError> {
        MultiEma::update(self)
    }
}

/// `TrainStep` and `InferenceStep` for a model with averages: the live model steps, the
/// averages follow, validation uses [`Averaged::eval`].
macro_rules! learner_steps {
    ($wrapper:ident, $($live:ident).+) => {
        impl<M> TrainStep for $wrapper<M>
        where
            M: TrainStep + Module,
        {
            type Input = M::Input;
            type Output = M::Output;

            fn step(&self, item: Self::Input) -> TrainOutput<Self::Output> {
                self.$($live).+.step(item)
            }

            fn optimize(
                mut self,
                optim: &mut ModuleOptimizer,
                lr_module: ModuleLearningRate,
                grads: GradientsParams,
            ) -> Self {
                self.before_step();
                // Moved, not cloned: the optimizer may update uniquely held parameters in place.
                self.$($live).+ = self.$($live).+.optimize(optim, lr_module, grads);
                updated_or_stop(Averaged::update(&mut self));
                self
            }

            fn optimize_multi(
                mut self,
                optim: &mut ModuleOptimizer,
                lr_module: ModuleLearningRate,
                grads: MultiGradientsParams,
            ) -> Self {
                self.before_step();
                self.$($live).+ = self.$($live).+.optimize_multi(optim, lr_module, grads);
                updated_or_stop(Averaged::update(&mut self));
                self
            }
        }

        impl<M> InferenceStep for $wrapper<M>
        where
            M: InferenceStep + Module,
        {
            type Input = M::Input;
            type Output = M::Output;

            fn step(&self, item: Self::Input) -> Self::Output {
                self.eval().step(item)
            }
        }
    };
}

impl<M: Module> Averaged<M> for PostHocEma<M> {
    fn eval(&self) -> &M {
        self.emas.eval()
    }
    fn update(&mut self) -> Result<(), crate::EmaError> {
        // A failed snapshot (a full disk) stops training, as a failed update does.
        PostHocEma::update(self)
    }
}

learner_steps!(EmaModule, model);
learner_steps!(MultiEma, model);
learner_steps!(PostHocEma, emas.model);
