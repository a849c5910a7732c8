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
use crate::multi_ema::MultiEma;

/// The shadow must follow every optimizer step; `TrainStep` cannot return an error.
fn updated_or_stop(result: Result<(), crate::EmaError>) {
    if let Err(err) = result {
        // The optimizer cannot change a module's structure, and a swapped `EmaModule` cannot
        // reach the Learner unless a `Swapped` guard was leaked: the remaining cause is a
        // non-finite value under `NonFinite::Error`, which asks for this stop.
        panic!("burn-ema: updating the shadow after an optimizer step failed: {err}");
    }
}

impl<M> EmaModule<M>
where
    M: Module,
{
    fn update_after_optimizer(mut self) -> Self {
        updated_or_stop(self.update());
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
        assert!(
            !self.is_swapped(),
            "burn-ema: the EmaModule handed to the Learner holds the shadow weights (a `Swapped` \
             guard was leaked with std::mem::forget); training them would turn the EMA into live \
             weights. Use `into_parts` or a fresh EmaModule."
        );
        self.model = self.model.optimize(optim, lr_module, grads);
        self.update_after_optimizer()
    }

    fn optimize_multi(
        mut self,
        optim: &mut ModuleOptimizer,
        lr_module: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        assert!(
            !self.is_swapped(),
            "burn-ema: the EmaModule handed to the Learner holds the shadow weights (a `Swapped` \
             guard was leaked with std::mem::forget)"
        );
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
        match self.config().eval_weights {
            EvalWeights::Shadow => self.shadow().step(item),
            EvalWeights::Live => self.model.step(item),
        }
    }
}

impl<M> TrainStep for MultiEma<M>
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
        updated_or_stop(self.update());
        self
    }

    fn optimize_multi(
        mut self,
        optim: &mut ModuleOptimizer,
        lr_module: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        self.model = self.model.optimize_multi(optim, lr_module, grads);
        updated_or_stop(self.update());
        self
    }
}

impl<M> InferenceStep for MultiEma<M>
where
    M: InferenceStep + Module,
{
    type Input = M::Input;
    type Output = M::Output;

    /// Validates with the first average (or the live weights when its configuration's
    /// `eval_weights` says so).
    fn step(&self, item: Self::Input) -> Self::Output {
        match self.averages[0].config().eval_weights {
            EvalWeights::Shadow => self.averages[0].module().step(item),
            EvalWeights::Live => self.model.step(item),
        }
    }
}
