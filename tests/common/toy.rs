//! A one-parameter regression model for Burn's Learner (feature `train`): the weight `w` (two
//! values, from 0) is fitted to ones, so one SGD step with learning rate `lr` gives
//! `w − lr·(w − 1)` exactly.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder, batcher::Batcher};
use burn::data::dataset::InMemDataset;
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::train::{InferenceStep, RegressionOutput, TrainOutput, TrainStep};

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
