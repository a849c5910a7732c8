//! Burn's Learner integration (feature `train`): an [`EmaModule`] trains and validates like the
//! model it wraps.
//!
//! `Learner::new(EmaModule::new(model, config)?, optim, lr)` trains the live model, updates the
//! shadow after every optimizer step, validates with the weights that
//! [`EmaConfig::eval_weights`](crate::EmaConfig::eval_weights) names, and checkpoints the EMA
//! with the model (it is part of the module's record).

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::config::EvalWeights;
use crate::ema_module::EmaModule;

impl<M> EmaModule<M>
where
    M: Module,
{
    fn update_after_optimizer(mut self) -> Self {
        if let Err(err) = self.update() {
            // The optimizer cannot change a module's structure and the Learner never swaps, so
            // this is a broken invariant, not a user mistake.
            panic!("burn-ema: updating the shadow after an optimizer step failed: {err}");
        }
        self
    }
}

impl<M> TrainStep for EmaModule<M>
where
    M: TrainStep + Module,
{
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: Self::Input) -> TrainOutput<Self::Output> {
        self.model.step(item)
    }

    fn optimize(
        mut self,
        optim: &mut ModuleOptimizer,
        lr_module: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        self.model = self.model.optimize(optim, lr_module, grads);
        self.update_after_optimizer()
    }

    fn optimize_multi(
        mut self,
        optim: &mut ModuleOptimizer,
        lr_module: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        self.model = self.model.optimize_multi(optim, lr_module, grads);
        self.update_after_optimizer()
    }
}

impl<M> InferenceStep for EmaModule<M>
where
    M: InferenceStep + Module,
{
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: Self::Input) -> Self::Output {
        match self.config.eval_weights {
            EvalWeights::Shadow => self.shadow().step(item),
            EvalWeights::Live => self.model.step(item),
        }
    }
}
