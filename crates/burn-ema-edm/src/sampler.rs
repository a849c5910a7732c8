//! Heun's second-order sampler on Karras' noise schedule (Karras et al. 2022, algorithm 1, the
//! deterministic sampler, with `S_churn = 0`).
//!
//! It integrates the probability-flow ODE `dx/dσ = (x − D(x; σ)) / σ` from `σ_max` to 0: each
//! step is an Euler step corrected with the slope at its end (trapezoidal rule), except the
//! last, to σ = 0, which is Euler's. `N` steps cost `2N − 1` evaluations of the denoiser.

use burn::prelude::*;

/// The sampler's settings; the defaults are the paper's for its CIFAR-10 and ImageNet runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeunConfig {
    /// Steps (noise levels before 0).
    pub steps: usize,
    /// The smallest noise level before 0.
    pub sigma_min: f64,
    /// The largest noise level, where sampling starts.
    pub sigma_max: f64,
    /// The schedule's exponent: larger spends more steps at low noise.
    pub rho: f64,
}

impl Default for HeunConfig {
    fn default() -> Self {
        Self {
            steps: 18,
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
        }
    }
}

impl HeunConfig {
    /// The noise levels `t_0 = σ_max > … > t_{N−1} = σ_min`, then `t_N = 0` (equation 5):
    /// `t_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`.
    pub fn sigmas(&self) -> Vec<f64> {
        let n = self.steps;
        let (lo, hi) = (
            self.sigma_min.powf(1.0 / self.rho),
            self.sigma_max.powf(1.0 / self.rho),
        );
        let mut sigmas: Vec<f64> = (0..n)
            .map(|i| {
                let frac = if n > 1 {
                    i as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                (hi + frac * (lo - hi)).powf(self.rho)
            })
            .collect();
        sigmas.push(0.0);
        sigmas
    }

    /// Denoiser evaluations per sample: `2N − 1`.
    pub fn evaluations(&self) -> usize {
        2 * self.steps - 1
    }
}

/// Samples from `denoise(x, σ)` starting at the unit-variance noise `noise` (scaled by
/// `σ_max` here), deterministically: the same noise gives the same samples.
pub fn heun_sample<const D: usize>(
    config: &HeunConfig,
    noise: Tensor<D>,
    mut denoise: impl FnMut(Tensor<D>, f64) -> Tensor<D>,
) -> Tensor<D> {
    heun_or_euler(config, noise, &mut denoise, true)
}

/// Euler's method on the same schedule (`N` evaluations): what Heun's correction improves on.
pub fn euler_sample<const D: usize>(
    config: &HeunConfig,
    noise: Tensor<D>,
    mut denoise: impl FnMut(Tensor<D>, f64) -> Tensor<D>,
) -> Tensor<D> {
    heun_or_euler(config, noise, &mut denoise, false)
}

fn heun_or_euler<const D: usize>(
    config: &HeunConfig,
    noise: Tensor<D>,
    denoise: &mut impl FnMut(Tensor<D>, f64) -> Tensor<D>,
    correct: bool,
) -> Tensor<D> {
    let sigmas = config.sigmas();
    let mut x = noise.mul_scalar(sigmas[0]);
    for pair in sigmas.windows(2) {
        let (t, next) = (pair[0], pair[1]);
        let slope = (x.clone() - denoise(x.clone(), t)).div_scalar(t);
        let euler = x.clone() + slope.clone().mul_scalar(next - t);
        x = if correct && next > 0.0 {
            let slope_next = (euler.clone() - denoise(euler, next)).div_scalar(next);
            x + (slope + slope_next).mul_scalar((next - t) / 2.0)
        } else {
            euler
        };
    }
    x
}
