//! Samples from a trained network: Heun's sampler through EDM's preconditioning, from noise
//! fixed by a seed, so that live, EMA and post-hoc weights draw from the same noise.

use burn::prelude::*;
use burn_ema_mnist::data::{PIXELS, SIDE};

use crate::precond::denoise;
use crate::rng::StepRng;
use crate::sampler::{HeunConfig, heun_sample};
use crate::unet::UNet;

/// Images per sampler call.
const CHUNK: usize = 250;

/// `labels.len()` samples of `net` (an inference model), `n × 784` values in `[-1, 1]`
/// (clamped), for the digit classes `labels` (ignored by an unconditional network). The noise of
/// chunk `k` is stream `k` of `seed`: the same for every set of weights.
pub fn generate(
    net: &UNet,
    labels: &[u8],
    seed: u64,
    heun: &HeunConfig,
    device: &Device,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(labels.len() * PIXELS);
    for (k, chunk) in labels.chunks(CHUNK).enumerate() {
        let n = chunk.len();
        let noise = StepRng::new(seed, u64::MAX, k as u64).normals(n * PIXELS);
        let noise = Tensor::<4>::from_data(TensorData::new(noise, [n, 1, SIDE, SIDE]), device);
        let classes = net.is_class_conditional().then(|| {
            let ids: Vec<i64> = chunk.iter().map(|&l| l as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), device)
        });
        let images = heun_sample(heun, noise, |x, sigma| {
            let sigmas = Tensor::<1>::full([n], sigma as f32, device);
            denoise(x, sigmas, |x, c_noise| {
                net.forward(x, c_noise, classes.clone())
            })
        });
        let values = images
            .clamp(-1.0, 1.0)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 images");
        out.extend(values);
    }
    out
}
