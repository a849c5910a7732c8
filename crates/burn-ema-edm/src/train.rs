//! The training run: EDM's loss on the training digits, Adam, the EMA (or post-hoc EMA) updated
//! after every optimizer step, checkpoints that a resumed run continues from exactly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn_ema::{
    EmaConfig, EmaFile, EmaModule, MovingAverage, PostHocConfig, PostHocEma, Schedule,
    sigma_rel_to_gamma,
};

use crate::data::Digits;
use crate::error::EdmError;
use crate::precond::{edm_loss, training_sigma};
use crate::rng::StepRng;
use crate::unet::{UNet, UNetConfig};

/// Which average of the weights a run keeps besides the live weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Averaging {
    /// None: only the live weights.
    Live,
    /// EDM2's power-function EMA of relative width `sigma_rel`.
    Power {
        /// The relative width σ_rel.
        sigma_rel: f64,
    },
    /// A classic EMA of constant decay.
    Decay(f64),
}

/// The relative widths post-hoc EMA tracks during training (EDM2's pair).
pub const TRACKED_SIGMA_RELS: [f64; 2] = [0.05, 0.10];

/// What one training run does.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// Optimizer steps.
    pub steps: u64,
    /// Digits per step.
    pub batch_size: usize,
    /// Adam's learning rate (reached after a linear warmup of `steps / 20` steps).
    pub lr: f64,
    /// The run's seed: initial weights, batches, noise.
    pub seed: u64,
    /// The network.
    pub unet: UNetConfig,
    /// The average kept during training (with `post_hoc`, the tracked σ_rel 0.10 profile).
    pub averaging: Averaging,
    /// Post-hoc EMA: snapshots of the [`TRACKED_SIGMA_RELS`] profiles every
    /// `snapshot_every` steps, in `out/snapshots`.
    pub post_hoc: bool,
    /// Steps between post-hoc snapshots.
    pub snapshot_every: u64,
    /// Steps between checkpoints (and one at the end).
    pub checkpoint_every: u64,
    /// Where checkpoints and snapshots go.
    pub out: PathBuf,
    /// A progress bar on stderr.
    pub progress: bool,
    /// Stop after this many steps of this invocation (a test's interrupted run), checkpointing
    /// there.
    pub stop_after: Option<u64>,
}

/// The live model and its average, as a training run holds them.
pub enum Averager {
    /// Live weights only.
    Live(Box<UNet>),
    /// An EMA.
    Ema(Box<EmaModule<UNet>>),
    /// Post-hoc EMA (which tracks two EMAs and snapshots them).
    PostHoc(Box<PostHocEma<UNet>>),
}

impl Averager {
    /// The live model.
    pub fn model(&self) -> &UNet {
        match self {
            Self::Live(m) => m,
            Self::Ema(e) => e.model(),
            Self::PostHoc(p) => p.model(),
        }
    }

    fn set_model(&mut self, model: UNet) {
        match self {
            Self::Live(m) => **m = model,
            Self::Ema(e) => *e.model_mut() = model,
            Self::PostHoc(p) => *p.model_mut() = model,
        }
    }

    fn update(&mut self) -> Result<(), EdmError> {
        match self {
            Self::Live(_) => {}
            Self::Ema(e) => e.update()?,
            Self::PostHoc(p) => p.update()?,
        }
        Ok(())
    }

    /// The averaged weights (for post-hoc EMA, the tracked σ_rel 0.10 profile), as an
    /// inference model.
    pub fn averaged(&self) -> Result<Option<UNet>, EdmError> {
        Ok(match self {
            Self::Live(_) => None,
            Self::Ema(e) => Some(e.shadow().valid()),
            Self::PostHoc(p) => Some(p.shadow_of(1)?.valid()),
        })
    }

    /// The post-hoc EMA, if the run keeps one.
    pub fn post_hoc(&self) -> Option<&PostHocEma<UNet>> {
        match self {
            Self::PostHoc(p) => Some(p),
            _ => None,
        }
    }
}

/// What a finished run reports.
pub struct Trained {
    /// The live model and its average.
    pub averager: Averager,
    /// The step the run started from (0, or a checkpoint's).
    pub resumed_from: u64,
    /// Wall time of the steps this invocation ran.
    pub train_time: Duration,
    /// Of which, in the average's update.
    pub average_time: Duration,
    /// Steps this invocation ran.
    pub steps_run: u64,
    /// The mean loss of the last 100 steps.
    pub final_loss: f64,
}

fn ema_config(averaging: Averaging) -> Result<Option<EmaConfig>, EdmError> {
    Ok(match averaging {
        Averaging::Live => None,
        Averaging::Power { sigma_rel } => {
            Some(EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction {
                gamma: sigma_rel_to_gamma(sigma_rel)?,
            }))
        }
        Averaging::Decay(decay) => Some(EmaConfig::new(decay)),
    })
}

fn post_hoc_config(s: &TrainSettings) -> PostHocConfig {
    PostHocConfig::new()
        .with_sigma_rels(TRACKED_SIGMA_RELS.to_vec())
        .with_snapshot_every(s.snapshot_every)
}

/// The checkpoint folder of `step`.
fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoint-{step:08}"))
}

/// The latest complete checkpoint in `out` (folders are renamed into place once written).
pub fn latest_checkpoint(out: &Path) -> Option<u64> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint-")?.parse::<u64>().ok()
        })
        .max()
}

fn write_checkpoint(
    out: &Path,
    step: u64,
    averager: &Averager,
    optim: &ModuleOptimizer,
) -> Result<(), EdmError> {
    let partial = out.join(format!("checkpoint-{step:08}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| EdmError::io(&partial, e))?;
    let model = partial.join("model.bpk");
    averager
        .model()
        .clone()
        .save_into(&mut BurnpackStore::from_file(&model).overwrite(true))
        .map_err(|e| EdmError::io(&model, e))?;
    let optimizer = partial.join("optimizer.bin");
    optim
        .save(&optimizer)
        .map_err(|e| EdmError::io(&optimizer, e))?;
    match averager {
        Averager::Live(_) => {}
        Averager::Ema(e) => {
            e.save(partial.join("ema.bpk"), EmaFile::State)?;
        }
        Averager::PostHoc(p) => {
            let file = partial.join("posthoc.bpk");
            p.save_into(&mut BurnpackStore::from_file(&file).overwrite(true))
                .map_err(|e| EdmError::io(&file, e))?;
        }
    }
    let done = checkpoint_dir(out, step);
    std::fs::rename(&partial, &done).map_err(|e| EdmError::io(&done, e))?;
    // Older checkpoints are dropped once a newer one is in place.
    for entry in std::fs::read_dir(out).map_err(|e| EdmError::io(out, e))? {
        let path = entry.map_err(|e| EdmError::io(out, e))?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("checkpoint-") && path != done {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

/// A new run's model and average, or the latest checkpoint's.
fn start(s: &TrainSettings, device: &Device) -> Result<(Averager, ModuleOptimizer, u64), EdmError> {
    std::fs::create_dir_all(&s.out).map_err(|e| EdmError::io(&s.out, e))?;
    let snapshots = s.out.join("snapshots");
    let optim = AdamConfig::new().init();
    let Some(step) = latest_checkpoint(&s.out) else {
        device.seed(s.seed);
        let model = s.unet.init(device);
        let averager = if s.post_hoc {
            Averager::PostHoc(Box::new(PostHocEma::new(
                model,
                post_hoc_config(s),
                &snapshots,
            )?))
        } else {
            match ema_config(s.averaging)? {
                None => Averager::Live(Box::new(model)),
                Some(config) => Averager::Ema(Box::new(EmaModule::new(model, config)?)),
            }
        };
        return Ok((averager, optim, 0));
    };
    let dir = checkpoint_dir(&s.out, step);
    let model_file = dir.join("model.bpk");
    let mut model = s.unet.init(device);
    model
        .load_from(&mut BurnpackStore::from_file(&model_file))
        .map_err(|e| EdmError::io(&model_file, e))?;
    let optimizer = dir.join("optimizer.bin");
    let optim = optim
        .load(&optimizer)
        .map_err(|e| EdmError::io(&optimizer, e))?;
    let averager = if s.post_hoc {
        let mut p = PostHocEma::new(model.clone(), post_hoc_config(s), &snapshots)?;
        let file = dir.join("posthoc.bpk");
        p.load_from(&mut BurnpackStore::from_file(&file))
            .map_err(|e| EdmError::io(&file, e))?;
        *p.model_mut() = model;
        Averager::PostHoc(Box::new(p))
    } else {
        match ema_config(s.averaging)? {
            None => Averager::Live(Box::new(model)),
            Some(config) => {
                let mut e = EmaModule::new(model, config)?;
                e.load(dir.join("ema.bpk"), EmaFile::State)?;
                Averager::Ema(Box::new(e))
            }
        }
    };
    Ok((averager, optim, step))
}

/// Adam's learning rate at `step` (1-based): a linear warmup over the first `steps / 20`.
fn learning_rate(s: &TrainSettings, step: u64) -> f64 {
    let warmup = (s.steps / 20).max(1);
    s.lr * (step as f64 / warmup as f64).min(1.0)
}

/// One step's loss: its batch, noise levels and noise are functions of (seed, step).
fn step_loss(
    model: &UNet,
    train: &Digits,
    s: &TrainSettings,
    step: u64,
    device: &Device,
) -> Tensor<1> {
    let (x, labels) = train.batch_of_step(s.seed, step, s.batch_size, device);
    let n = s.batch_size;
    let mut rng = StepRng::new(s.seed, step, 1);
    let sigmas: Vec<f32> = (0..n)
        .map(|_| training_sigma(rng.normal()) as f32)
        .collect();
    let sigma = Tensor::<1>::from_data(TensorData::new(sigmas, [n]), device);
    let noise = StepRng::new(s.seed, step, 2).normals(x.shape().num_elements());
    let noise = Tensor::<4>::from_data(TensorData::new(noise, x.dims()), device);
    let classes = model.is_class_conditional().then_some(labels);
    edm_loss(x, sigma, noise, |x, c_noise| {
        model.forward(x, c_noise, classes)
    })
}

/// Trains (or resumes) on `train` on `device` (an autodiff device).
pub fn train(s: &TrainSettings, train: &Digits, device: &Device) -> Result<Trained, EdmError> {
    if s.steps == 0 || s.batch_size == 0 || s.checkpoint_every == 0 || s.snapshot_every == 0 {
        return Err(EdmError::Settings(
            "steps, batch size, checkpoint and snapshot intervals must be positive".into(),
        ));
    }
    let (mut averager, mut optim, resumed_from) = start(s, device)?;
    let last = match s.stop_after {
        Some(n) => (resumed_from + n).min(s.steps),
        None => s.steps,
    };
    let bar = progress_bar(s, resumed_from);
    let started = Instant::now();
    let mut average_time = Duration::ZERO;
    let mut losses = std::collections::VecDeque::new();
    for step in resumed_from + 1..=last {
        let model = averager.model().clone();
        let loss = step_loss(&model, train, s, step, device);
        let value: f64 = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        averager.set_model(optim.step(learning_rate(s, step), model, grads));
        let t = Instant::now();
        averager.update()?;
        average_time += t.elapsed();
        losses.push_back(value);
        if losses.len() > 100 {
            losses.pop_front();
        }
        if let Some(bar) = &bar {
            bar.set_position(step);
            let mean = losses.iter().sum::<f64>() / losses.len() as f64;
            let rate = (step - resumed_from) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("loss {mean:.4} · {rate:.2} steps/s"));
        }
        if step % s.checkpoint_every == 0 || step == last {
            write_checkpoint(&s.out, step, &averager, &optim)?;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(Trained {
        averager,
        resumed_from,
        train_time: started.elapsed(),
        average_time,
        steps_run: last - resumed_from,
        final_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
    })
}

fn progress_bar(s: &TrainSettings, at: u64) -> Option<indicatif::ProgressBar> {
    s.progress.then(|| {
        let bar = indicatif::ProgressBar::new(s.steps).with_position(at);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps · {msg} · eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    })
}
