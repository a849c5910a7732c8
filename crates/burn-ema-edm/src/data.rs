//! The shipped digits as diffusion data: images in `[-1, 1]` (EDM's range for σ_data = 0.5),
//! labels, and batches drawn by step, so a resumed run sees the same batches.

use std::path::Path;

use burn::prelude::*;
use burn_ema_mnist::data::{MnistItem, PIXELS, SIDE, load_split};

use crate::error::EdmError;
use crate::rng::StepRng;

/// The split of the 10,000 digits is fixed, whatever the run's seed: 8,000 to train on (the
/// diffusion model and the FID classifier), 2,000 held out as FID's reference set.
pub const SPLIT_SEED: u64 = 0;

/// Digits as floats.
#[derive(Clone, Debug)]
pub struct Digits {
    /// `len × 784` values in `[-1, 1]`, image after image.
    pub images: Vec<f32>,
    /// The digits, 0 to 9.
    pub labels: Vec<u8>,
}

impl Digits {
    /// From MNIST items: pixel `p` becomes `p/127.5 − 1`.
    pub fn from_items(items: &[MnistItem]) -> Self {
        Self {
            images: items
                .iter()
                .flat_map(|i| i.pixels.iter().map(|&p| p as f32 / 127.5 - 1.0))
                .collect(),
            labels: items.iter().map(|i| i.label).collect(),
        }
    }

    /// How many digits.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The digits at `indices` as `[n, 1, 28, 28]` images and `[n]` labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = indices.len();
        let images: Vec<f32> = indices
            .iter()
            .flat_map(|&i| self.images[i * PIXELS..(i + 1) * PIXELS].iter().copied())
            .collect();
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        (
            Tensor::from_data(TensorData::new(images, [n, 1, SIDE, SIDE]), device),
            Tensor::from_data(TensorData::new(labels, [n]), device),
        )
    }

    /// The batch of training step `step`: `size` digits drawn with replacement by the step's
    /// own random stream.
    pub fn batch_of_step(
        &self,
        seed: u64,
        step: u64,
        size: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let mut rng = StepRng::new(seed, step, 0);
        let indices: Vec<usize> = (0..size).map(|_| rng.below(self.len())).collect();
        self.batch(&indices, device)
    }
}

/// The training digits and the held-out ones, from the shipped data in `dir`.
pub fn load(dir: &Path) -> Result<(Digits, Digits), EdmError> {
    let (train, held_out) = load_split(dir, SPLIT_SEED)?;
    Ok((Digits::from_items(&train), Digits::from_items(&held_out)))
}
