//! A one-parameter regression model for Burn's Learner (feature `train`): the weight `w` (two
//! values, from 0) is fitted to ones, so one SGD step with learning rate `lr` gives
//! `w − lr·(w − 1)` exactly.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder, batcher::Batcher};
use burn::data::dataset::InMemDataset;
use burn::module::{Module, Param, ParamId};
use burn::optim::SgdConfig;
use burn::prelude::*;
use burn::train::metric::LossMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput,
    TrainStep,
};
use burn_ema::EmaModule;

#[derive(Module, Debug)]
pub struct Toy {
    pub weight: Param<Tensor<2>>,
}

impl Toy {
    pub fn new(device: &Device) -> Self {
        Self {
            weight: Param::from_data(TensorData::new(vec![0.0f32, 0.0], [1, 2]), device),
        }
    }

    pub fn regression(&self, target: Tensor<2>) -> RegressionOutput {
        let output = self.weight.val();
        let loss = output.clone().sub(target.clone()).powi_scalar(2).mean();
        RegressionOutput::new(loss, output, target)
    }
}

/// Two parameters `a` and `b` (two values each, from 0) whose sum is fitted to ones, with fixed
/// ids 2 and 3: Burn's `OptimSharded` steps a parameter on device `id % devices`, so on two
/// devices `a` is stepped on the first and `b` on the second.
#[derive(Module, Debug)]
pub struct Pair {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
}

impl Pair {
    pub fn new(device: &Device) -> Self {
        let zeros = || Tensor::from_data(TensorData::new(vec![0.0f32, 0.0], [1, 2]), device);
        Self {
            a: Param::initialized(ParamId::from(2), zeros()).set_require_grad(true),
            b: Param::initialized(ParamId::from(3), zeros()).set_require_grad(true),
        }
    }

    pub fn regression(&self, target: Tensor<2>) -> RegressionOutput {
        let output = self.a.val() + self.b.val();
        let loss = output.clone().sub(target.clone()).powi_scalar(2).mean();
        RegressionOutput::new(loss, output, target)
    }
}

impl TrainStep for Pair {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, item: Batch) -> TrainOutput<RegressionOutput> {
        let out = self.regression(item.target);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Pair {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, item: Batch) -> RegressionOutput {
        self.regression(item.target)
    }
}

#[derive(Clone, Debug)]
pub struct Batch {
    pub target: Tensor<2>,
}

/// Batches whose target is ones.
pub struct Ones;

impl Batcher<(), Batch> for Ones {
    fn batch(&self, _items: Vec<()>, device: &Device) -> Batch {
        Batch {
            target: Tensor::ones([1, 2], device),
        }
    }
}

impl TrainStep for Toy {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, item: Batch) -> TrainOutput<RegressionOutput> {
        let out = self.regression(item.target);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Toy {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, item: Batch) -> RegressionOutput {
        self.regression(item.target)
    }
}

pub type Loader = Arc<dyn DataLoader<Batch>>;

/// `items` items in batches of 2.
pub fn loader(items: usize) -> Loader {
    DataLoaderBuilder::new(Ones)
        .batch_size(2)
        .build(InMemDataset::new(vec![(); items]))
}

/// A model these helpers train: `Toy`, `Pair`.
pub trait ToyModel:
    TrainStep<Input = Batch, Output = RegressionOutput>
    + InferenceStep<Input = Batch, Output = RegressionOutput>
    + Module
    + std::fmt::Display
    + 'static
{
}

impl ToyModel for Toy {}
impl ToyModel for Pair {}

/// Trains `ema` with Burn's Learner and SGD at `lr` for `epochs` epochs over `items` training
/// items (batches of 2, validation on 4 items), under `strategy` (`None`: the model's device).
pub fn train<T: ToyModel>(
    name: &str,
    ema: EmaModule<T>,
    strategy: Option<ExecutionStrategy>,
    lr: f64,
    epochs: usize,
    items: usize,
) -> EmaModule<T> {
    let dir = crate::common::Scratch::new(name);
    let mut training = SupervisedTraining::new(&dir, loader(items), loader(4))
        .num_epochs(epochs)
        .metric_train_numeric(LossMetric::new())
        .with_application_logger(None);
    if let Some(strategy) = strategy {
        training = training.with_training_strategy(strategy.into());
    }
    let result = training.launch(Learner::new(ema, SgdConfig::new().init(), lr));
    assert!(result.error.is_none(), "{:?}", result.error);
    let _ = std::fs::remove_dir_all(&dir);
    result.model
}
