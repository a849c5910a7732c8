//! FID's feature extractor: burn-ema-mnist's classifier (`Cnn`), trained once on the 8,000
//! training digits and committed (`data/fid-classifier.bpk`), its 64 features under the logits.
//! FID usually uses ImageNet's Inception network; for digits a digit classifier is the
//! meaningful feature space (as in the MNIST diffusion literature's "FID with a LeNet").

use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn_ema_mnist::data::{MnistBatcher, MnistItem, PIXELS, SIDE};
use burn_ema_mnist::model::Cnn;

use crate::data::Digits;
use crate::error::EdmError;
use crate::fid::Gaussian;
use crate::rng::StepRng;

/// The committed classifier.
pub fn default_classifier_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fid-classifier.bpk")
}

/// The features of one classifier.
#[derive(Clone, Debug)]
pub struct FeatureExtractor {
    cnn: Cnn,
}

/// Features per image.
pub const FEATURES: usize = 64;

impl FeatureExtractor {
    /// The classifier at `path`, trained on `train` first (and saved there) when the file is
    /// missing.
    pub fn load_or_train(path: &Path, train: &Digits, device: &Device) -> Result<Self, EdmError> {
        if !path.exists() {
            let cnn = train_classifier(train, 3, device);
            cnn.clone()
                .valid()
                .save_into(&mut BurnpackStore::from_file(path).overwrite(true))
                .map_err(|e| EdmError::io(path, e))?;
        }
        let mut cnn = Cnn::new(device);
        cnn.load_from(&mut BurnpackStore::from_file(path))
            .map_err(|e| EdmError::io(path, e))?;
        Ok(Self { cnn })
    }

    /// The features `[n × 64]` of images in `[-1, 1]` (`n × 784` values), in batches of 500.
    pub fn features(&self, images: &[f32], device: &Device) -> Vec<f32> {
        images
            .chunks(500 * PIXELS)
            .flat_map(|chunk| {
                let n = chunk.len() / PIXELS;
                // The classifier's input: pixels in [0, 1], normalised as its batcher does.
                let pixels: Vec<f32> = chunk
                    .iter()
                    .map(|&v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) - 0.1307) / 0.3081)
                    .collect();
                let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 1, SIDE, SIDE]), device);
                self.cnn
                    .features(x)
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 features")
            })
            .collect()
    }

    /// The classifier's accuracy on `digits` (a check that its features mean something).
    pub fn accuracy(&self, digits: &Digits, device: &Device) -> f64 {
        let batch = MnistBatcher.batch(to_items(digits), device);
        let predicted = self.cnn.forward(batch.images).argmax(1).flatten::<1>(0, 1);
        let correct: i64 = predicted.equal(batch.targets).int().sum().into_scalar();
        correct as f64 / digits.len() as f64
    }

    /// The mean and covariance of the features of `images`.
    pub fn statistics(&self, images: &[f32], device: &Device) -> Gaussian {
        Gaussian::of(&self.features(images, device), FEATURES).expect("two images or more")
    }
}

fn to_items(digits: &Digits) -> Vec<MnistItem> {
    (0..digits.len())
        .map(|i| MnistItem {
            pixels: digits.images[i * PIXELS..(i + 1) * PIXELS]
                .iter()
                .map(|&v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
                .collect(),
            label: digits.labels[i],
        })
        .collect()
}

/// Trains the classifier for `epochs` passes over `train` (Adam, batches of 64), seeded.
fn train_classifier(train: &Digits, epochs: usize, device: &Device) -> Cnn {
    let device = device.clone().autodiff();
    device.seed(0);
    let mut cnn = Cnn::new(&device);
    let mut optim = AdamConfig::new().init();
    let items = to_items(train);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..items.len()).collect();
        let mut rng = StepRng::new(0, epoch as u64, 7);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for chunk in order.chunks(64) {
            let batch =
                MnistBatcher.batch(chunk.iter().map(|&i| items[i].clone()).collect(), &device);
            let loss = loss_fn.forward(cnn.forward(batch.images), batch.targets);
            let grads = GradientsParams::from_grads(loss.backward(), &cnn);
            cnn = optim.step(1e-3, cnn, grads);
        }
    }
    cnn
}
