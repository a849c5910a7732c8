//! EDM's preconditioning and training noise (Karras et al. 2022, "Elucidating the Design Space
//! of Diffusion-Based Generative Models", table 1, column "EDM").
//!
//! The network `F` is wrapped so that it always sees unit-variance inputs and predicts a
//! unit-variance target: `D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ))`, trained
//! with the loss weight `λ(σ)` at noise levels `ln σ ~ N(P_mean, P_std²)`.

use burn::prelude::*;

/// The data's standard deviation σ_data the paper uses for images in `[-1, 1]`.
pub const SIGMA_DATA: f64 = 0.5;
/// The mean of the training noise's log-normal, `P_mean`.
pub const P_MEAN: f64 = -1.2;
/// The standard deviation of the training noise's log-normal, `P_std`.
pub const P_STD: f64 = 1.2;

/// The four scalings of table 1 at one noise level, and the loss weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Precond {
    /// `σd² / (σ² + σd²)`: how much of the noisy input passes through.
    pub c_skip: f64,
    /// `σ·σd / √(σ² + σd²)`: the scale of the network's output.
    pub c_out: f64,
    /// `1 / √(σ² + σd²)`: the scale of the network's input.
    pub c_in: f64,
    /// `ln(σ) / 4`: the noise level the network is told.
    pub c_noise: f64,
    /// `(σ² + σd²) / (σ·σd)²`: the loss weight, which makes the effective target unit-variance.
    pub loss_weight: f64,
}

impl Precond {
    /// The scalings at noise level `sigma` (> 0), with σd = [`SIGMA_DATA`].
    pub fn at(sigma: f64) -> Self {
        let sd = SIGMA_DATA;
        let total = sigma * sigma + sd * sd;
        Self {
            c_skip: sd * sd / total,
            c_out: sigma * sd / total.sqrt(),
            c_in: 1.0 / total.sqrt(),
            c_noise: sigma.ln() / 4.0,
            loss_weight: total / (sigma * sd).powi(2),
        }
    }
}

/// The training noise level for a standard normal draw `z`: `σ = exp(P_mean + P_std·z)`.
pub fn training_sigma(z: f64) -> f64 {
    (P_MEAN + P_STD * z).exp()
}

/// `D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)` for images `x` `[n, c, h, w]` at noise levels
/// `sigma` `[n]`, where `net(c_in·x, c_noise)` is the network `F`.
pub fn denoise(
    x: Tensor<4>,
    sigma: Tensor<1>,
    net: impl FnOnce(Tensor<4>, Tensor<1>) -> Tensor<4>,
) -> Tensor<4> {
    let n = sigma.dims()[0];
    let sd2 = SIGMA_DATA * SIGMA_DATA;
    let s = sigma.clone().reshape([n, 1, 1, 1]);
    let total = s.clone().powi_scalar(2).add_scalar(sd2);
    let c_skip = total.clone().recip().mul_scalar(sd2);
    let c_out = s.mul_scalar(SIGMA_DATA) / total.clone().sqrt();
    let c_in = total.sqrt().recip();
    let c_noise = sigma.log().div_scalar(4.0);
    c_skip * x.clone() + c_out * net(c_in * x, c_noise)
}

/// EDM's loss on clean images `x` `[n, c, h, w]` with noise levels `sigma` `[n]` and unit
/// noise `noise` (same shape as `x`): the mean over pixels of
/// `λ(σ)·(D(x + σ·noise; σ) − x)²`.
pub fn edm_loss(
    x: Tensor<4>,
    sigma: Tensor<1>,
    noise: Tensor<4>,
    net: impl FnOnce(Tensor<4>, Tensor<1>) -> Tensor<4>,
) -> Tensor<1> {
    let n = sigma.dims()[0];
    let s = sigma.clone().reshape([n, 1, 1, 1]);
    let noisy = x.clone() + noise * s.clone();
    let weight = s.clone().powi_scalar(2).add_scalar(SIGMA_DATA * SIGMA_DATA)
        / s.mul_scalar(SIGMA_DATA).powi_scalar(2);
    let denoised = denoise(noisy, sigma, net);
    (weight * (denoised - x).powi_scalar(2)).mean()
}
