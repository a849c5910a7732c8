//! The EDM diffusion trainer of burn-ema (Karras et al. 2022) on the shipped MNIST digits: where
//! weight averaging matters most. Train with `--ema` or `--post-hoc-ema`, sample with Heun's
//! method, score the live, EMA and post-hoc weights by FID (`examples/edm.rs`).
//!
//! - [`precond`]: EDM's preconditioning, loss weight and training noise;
//! - [`unet`]: a small U-Net; [`train`]: the run, with checkpoints that resume exactly;
//! - [`sampler`]: Heun's sampler on Karras' schedule; [`sample`]: through the network;
//! - [`fid`], [`features`]: the Fréchet distance on a digit classifier's features;
//! - [`evaluate`], [`pictures`], [`cli`]: scoring, the sample grid and the sweep plot.
#![warn(missing_docs)]

extern crate burn_ema_core as burn_ema;

pub mod cli;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod features;
pub mod fid;
pub mod pictures;
pub mod precond;
pub mod rng;
pub mod sample;
pub mod sampler;
pub mod train;
pub mod unet;

pub use error::EdmError;
