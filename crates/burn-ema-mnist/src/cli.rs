//! Command-line arguments shared by the example trainers.

use std::path::PathBuf;

use burn::prelude::Device;
use burn_ema::{BufferPolicy, EmaConfig, PostHocConfig, Schedule};
use clap::{Args, ValueEnum};

use crate::data::default_data_dir;
use crate::error::MnistError;
use crate::train::TrainSettings;

/// The backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// The NdArray CPU backend (deprecated by Burn 0.22, still supported).
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12): needs the `burn-ema-mnist/wgpu` cargo feature.
    Wgpu,
}

impl DeviceArg {
    /// The device, or an error when its backend is not compiled in.
    #[allow(deprecated)]
    pub fn device(self) -> Result<Device, MnistError> {
        match self {
            Self::Flex => Ok(Device::flex()),
            Self::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(not(feature = "wgpu"))]
            Self::Wgpu => Err(MnistError::Device(
                "wgpu is not compiled in: build with `--features burn-ema-mnist/wgpu`".into(),
            )),
        }
    }
}

/// The warmup schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WarmupArg {
    /// Constant decay.
    None,
    /// TensorFlow's `min(decay, (1 + n) / (10 + n))`.
    NumUpdates,
    /// timm's `1 - (1 + n)^(-3/4)`.
    Power,
}

/// The buffer policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuffersArg {
    /// Average BatchNorm's running statistics like the weights.
    Average,
    /// Copy them from the live model.
    Copy,
}

impl BuffersArg {
    /// The policy this argument names.
    pub fn policy(self) -> BufferPolicy {
        match self {
            Self::Average => BufferPolicy::Average,
            Self::Copy => BufferPolicy::Copy,
        }
    }
}

/// Arguments of the training examples.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Keep an exponential moving average of the weights, and report it.
    #[arg(long)]
    pub ema: bool,
    /// The EMA decay.
    #[arg(long, default_value_t = 0.99)]
    pub ema_decay: f64,
    /// The EMA warmup.
    #[arg(long, value_enum, default_value_t = WarmupArg::NumUpdates)]
    pub ema_warmup: WarmupArg,
    /// What the EMA does with BatchNorm's running statistics.
    #[arg(long, value_enum, default_value_t = BuffersArg::Average)]
    pub ema_buffers: BuffersArg,
    /// Post-hoc EMA (EDM2): track power-function EMAs of relative width 0.05 and 0.10 and save
    /// their snapshots into `<artifacts>/posthoc`; `examples/posthoc.rs` then synthesizes and
    /// evaluates any width from them. Replaces `--ema`.
    #[arg(long, conflicts_with = "ema")]
    pub post_hoc_ema: bool,
    /// SWA (custom loop): the uniform average of the weights after every step from the end of
    /// epoch `--swa-start` on, BatchNorm's statistics recomputed for it (`update_bn`) before each
    /// evaluation. Replaces `--ema`.
    #[arg(long, conflicts_with_all = ["ema", "post_hoc_ema"])]
    pub swa: bool,
    /// With `--swa`: the epochs trained before averaging starts.
    #[arg(long, default_value_t = 2)]
    pub swa_start: usize,
    /// With `--post-hoc-ema`: a snapshot of each profile every this many steps.
    #[arg(long, default_value_t = 25)]
    pub snapshot_every: u64,
    /// Training epochs.
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam's learning rate (high on purpose: the live weights are noisy, the EMA smooths them).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Seed of the initialisation, the split and the shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The backend.
    #[arg(long, value_enum, default_value_t = DeviceArg::Flex)]
    pub device: DeviceArg,
    /// Where checkpoints, model files, metrics.csv and the plot go.
    #[arg(long, default_value = "artifacts/mnist")]
    pub artifacts: PathBuf,
    /// The MNIST IDX files.
    #[arg(long, default_value_os_t = default_data_dir())]
    pub data: PathBuf,
}

impl TrainArgs {
    /// The EMA configuration, when `--ema` is given (validated).
    pub fn ema_config(&self) -> Result<Option<EmaConfig>, MnistError> {
        if !self.ema {
            return Ok(None);
        }
        let warmup = match self.ema_warmup {
            WarmupArg::None => Schedule::Constant,
            WarmupArg::NumUpdates => Schedule::TensorFlow,
            WarmupArg::Power => Schedule::Warmup {
                inv_gamma: 1.0,
                power: 0.75,
            },
        };
        let buffers = self.ema_buffers.policy();
        let config = EmaConfig::new(self.ema_decay)
            .with_schedule(warmup)
            .with_buffers(buffers);
        config.validate()?;
        Ok(Some(config))
    }

    /// The post-hoc EMA configuration, when `--post-hoc-ema` is given (validated).
    pub fn post_hoc_config(&self) -> Result<Option<PostHocConfig>, MnistError> {
        if !self.post_hoc_ema {
            return Ok(None);
        }
        let buffers = self.ema_buffers.policy();
        let config = PostHocConfig::new()
            .with_snapshot_every(self.snapshot_every)
            .with_buffers(buffers);
        config.validate()?;
        Ok(Some(config))
    }

    /// The settings these arguments describe.
    pub fn settings(&self) -> Result<TrainSettings, MnistError> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(MnistError::Training(
                "--epochs and --batch-size must be at least 1".into(),
            ));
        }
        if self.swa && self.swa_start >= self.epochs {
            return Err(MnistError::Training(format!(
                "--swa-start ({}) must be below --epochs ({}): SWA averages the epochs after it",
                self.swa_start, self.epochs
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(MnistError::Training(format!(
                "--lr must be a positive number, got {}",
                self.lr
            )));
        }
        Ok(TrainSettings {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            ema: self.ema_config()?,
            post_hoc: self.post_hoc_config()?,
            swa_start_epoch: self.swa.then_some(self.swa_start),
            device: self.device.device()?,
            artifacts: self.artifacts.clone(),
            data_dir: self.data.clone(),
            train_limit: None,
            valid_limit: None,
            record_weights: false,
        })
    }
}
