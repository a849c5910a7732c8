//! Training with Burn's Learner, with or without an EMA.
//!
//! With an EMA, the Learner trains `EmaModule<Cnn>`: it steps the live weights, updates the
//! shadow after every optimizer step, validates with the shadow weights, and writes the EMA into
//! every epoch's checkpoint. After training, each epoch's checkpoint is loaded back and both
//! the live and the EMA weights are evaluated on the validation split.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, LearnerModel, SupervisedTraining};
use burn_ema::{EmaConfig, EmaModule, MovingAverage, PostHocConfig, PostHocEma};

use crate::data::{MnistBatch, MnistBatcher, MnistItem, load_split};
use crate::error::MnistError;
use crate::eval::evaluate;
use crate::metrics::{EpochMetrics, plot, write_csv};
use crate::model::Cnn;

/// What a training run does.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the initialisation, the split and the shuffling.
    pub seed: u64,
    /// The EMA, if any.
    pub ema: Option<EmaConfig>,
    /// Post-hoc EMA, if any (snapshots go into `<artifacts>/posthoc`).
    pub post_hoc: Option<PostHocConfig>,
    /// SWA from the end of this epoch on (the custom loop): the uniform average of the weights
    /// after every later step, BatchNorm's statistics recomputed before each evaluation.
    pub swa_start_epoch: Option<usize>,
    /// The (non-autodiff) device; training runs on its autodiff version.
    pub device: Device,
    /// Output folder.
    pub artifacts: PathBuf,
    /// The MNIST IDX files.
    pub data_dir: PathBuf,
    /// Train on the first `n` training digits only (tests use a few batches).
    pub train_limit: Option<usize>,
    /// Validate on the first `n` validation digits only (tests).
    pub valid_limit: Option<usize>,
    /// Keep the live weights at the start and after every optimizer step (the custom loop;
    /// tests check the EMA file against the average of them).
    pub record_weights: bool,
}

/// What a training run produced.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Validation metrics per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// The live model's file (`model.bpk`).
    pub model_file: PathBuf,
    /// The EMA model's file (`model-ema.bpk`), loadable by the bare model.
    pub ema_file: Option<PathBuf>,
    /// `metrics.csv`.
    pub metrics_file: PathBuf,
    /// The plot of the metrics (SVG).
    pub plot_file: PathBuf,
    /// With `record_weights` (the custom loop): every float of the live model, in traversal
    /// order, at the start and after each optimizer step.
    pub recorded_live: Option<Vec<Vec<f32>>>,
}

impl TrainReport {
    /// Prints where the run's files are.
    pub fn print_files(&self) {
        println!("\nlive model:  {}", self.model_file.display());
        if let Some(ema) = &self.ema_file {
            println!("EMA model:   {} (loads into the bare Cnn)", ema.display());
        }
        println!("metrics:     {}", self.metrics_file.display());
        println!("plot:        {}", self.plot_file.display());
    }
}

/// The data of a run: training digits (limited if asked) and validation digits.
pub(crate) fn load_data(s: &TrainSettings) -> Result<(Vec<MnistItem>, Vec<MnistItem>), MnistError> {
    let (mut train, mut valid) = load_split(&s.data_dir, s.seed)?;
    if let Some(n) = s.train_limit {
        train.truncate(n.max(1));
    }
    if let Some(n) = s.valid_limit {
        valid.truncate(n.max(1));
    }
    Ok((train, valid))
}

pub(crate) fn loader(
    items: Vec<MnistItem>,
    s: &TrainSettings,
    shuffle: bool,
) -> Arc<dyn DataLoader<MnistBatch>> {
    // The device must be explicit: the default device is the first backend compiled in (wgpu
    // when the `wgpu` feature is on), whatever `--device` says.
    let mut builder = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(s.batch_size)
        .set_device(s.device.clone());
    if shuffle {
        builder = builder.shuffle(s.seed);
    }
    builder.build(InMemDataset::new(items))
}

/// The post-hoc EMA snapshot directory of a run.
pub fn posthoc_dir(artifacts: &Path) -> PathBuf {
    artifacts.join("posthoc")
}

pub(crate) fn prepare_artifacts(dir: &Path) -> Result<(), MnistError> {
    // A new run starts without the previous run's checkpoints and snapshots.
    for old in [dir.join("checkpoint"), posthoc_dir(dir)] {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| MnistError::Output {
                path: old.clone(),
                problem: e.to_string(),
            })?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| MnistError::Output {
        path: dir.to_path_buf(),
        problem: e.to_string(),
    })
}

pub(crate) fn save(module: impl Module, path: PathBuf) -> Result<PathBuf, MnistError> {
    module.save_file(&path).map_err(|e| MnistError::Output {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    Ok(path.with_extension("bpk"))
}

/// Writes `metrics.csv` and `metrics.svg`, and returns the report.
pub(crate) fn finish(
    s: &TrainSettings,
    epochs: Vec<EpochMetrics>,
    model_file: PathBuf,
    ema_file: Option<PathBuf>,
) -> Result<TrainReport, MnistError> {
    let metrics_file = s.artifacts.join("metrics.csv");
    let plot_file = s.artifacts.join("metrics.svg");
    write_csv(&metrics_file, &epochs)?;
    plot(&plot_file, &epochs)?;
    Ok(TrainReport {
        epochs,
        model_file,
        ema_file,
        metrics_file,
        plot_file,
        recorded_live: None,
    })
}

fn launch<M>(
    s: &TrainSettings,
    train: Vec<MnistItem>,
    valid: Vec<MnistItem>,
    model: M,
) -> Result<M, MnistError>
where
    M: LearnerModel
        + burn::train::InferenceStep<Input = MnistBatch, Output = burn::train::ClassificationOutput>
        + burn::train::TrainStep<Input = MnistBatch, Output = burn::train::ClassificationOutput>,
{
    let mut training = SupervisedTraining::new(
        &s.artifacts,
        loader(train, s, true),
        loader(valid, s, false),
    );
    if let Some(renderer) = crate::progress::LineRenderer::for_stdout() {
        training = training.renderer(renderer);
    }
    let result = training
        .num_epochs(s.epochs)
        .with_default_checkpointers()
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(s.epochs))
        .metric_train_numeric(AccuracyMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_application_logger(None)
        .launch(Learner::new(model, AdamConfig::new().init(), s.lr));
    if let Some(error) = result.error {
        return Err(MnistError::Training(error.to_string()));
    }
    Ok(result.model)
}

fn checkpoint(s: &TrainSettings, epoch: usize) -> Result<ModuleRecord, MnistError> {
    let path = s
        .artifacts
        .join("checkpoint")
        .join(format!("model-{epoch}.bpk"));
    ModuleRecord::load(&path).map_err(|e| MnistError::Model {
        path,
        problem: e.to_string(),
    })
}

/// Trains the CNN with Burn's Learner, wrapped in an [`EmaModule`] when `s.ema` is set.
pub fn train_with_learner(s: &TrainSettings) -> Result<TrainReport, MnistError> {
    if s.swa_start_epoch.is_some() {
        // The Learner validates with the averaged weights as they are; SWA needs its BatchNorm
        // statistics recomputed first, which the custom loop does.
        return Err(MnistError::Training(
            "--swa runs in the custom loop: `cargo run --release --example mnist_custom_loop -- \
             --swa`"
                .into(),
        ));
    }
    let (train, valid) = load_data(s)?;
    prepare_artifacts(&s.artifacts)?;
    s.device.seed(s.seed);
    let device = s.device.clone().autodiff();
    let plain = s.device.clone();
    let mut epochs = Vec::with_capacity(s.epochs);
    if let Some(config) = &s.post_hoc {
        let dir = posthoc_dir(&s.artifacts);
        let posthoc = PostHocEma::new(Cnn::new(&device), config.clone(), &dir)?;
        let mut trained = launch(s, train, valid.clone(), posthoc)?;
        for epoch in 1..=s.epochs {
            // Read back into a PostHocEma of the same directory (nothing is written).
            let at_epoch = PostHocEma::new(Cnn::new(&plain), config.clone(), &dir)?
                .try_load_record(checkpoint(s, epoch)?)
                .map_err(|e| MnistError::Training(format!("{e:?}")))?;
            epochs.push(EpochMetrics {
                epoch,
                live: evaluate(at_epoch.model(), &valid, &plain),
                ema: Some(evaluate(widest(&at_epoch), &valid, &plain)),
            });
        }
        return finish_posthoc(s, &mut trained, epochs);
    }
    match &s.ema {
        Some(config) => {
            let ema = EmaModule::new(Cnn::new(&device), config.clone())?;
            let trained = launch(s, train, valid.clone(), ema)?;
            for epoch in 1..=s.epochs {
                let record = checkpoint(s, epoch)?;
                let at_epoch = EmaModule::new(Cnn::new(&plain), config.clone())?
                    .try_load_record(record)
                    .map_err(|e| MnistError::Training(format!("{e:?}")))?;
                epochs.push(EpochMetrics {
                    epoch,
                    live: evaluate(at_epoch.model(), &valid, &plain),
                    ema: Some(evaluate(at_epoch.shadow(), &valid, &plain)),
                });
            }
            let model_file = save(trained.model().clone(), s.artifacts.join("model"))?;
            let ema_file = save(trained.shadow().clone(), s.artifacts.join("model-ema"))?;
            finish(s, epochs, model_file, Some(ema_file))
        }
        None => {
            let trained = launch(s, train, valid.clone(), Cnn::new(&device))?;
            for epoch in 1..=s.epochs {
                let at_epoch = Cnn::new(&plain)
                    .try_load_record(checkpoint(s, epoch)?)
                    .map_err(|e| MnistError::Training(format!("{e:?}")))?;
                epochs.push(EpochMetrics {
                    epoch,
                    live: evaluate(&at_epoch, &valid, &plain),
                    ema: None,
                });
            }
            let model_file = save(trained, s.artifacts.join("model"))?;
            finish(s, epochs, model_file, None)
        }
    }
}

/// The widest profile tracked (EDM2's 0.10): the one the per-epoch table reports.
pub(crate) fn widest(posthoc: &PostHocEma<Cnn>) -> &Cnn {
    posthoc
        .shadow_of(posthoc.num_averages() - 1)
        .expect("at least one profile")
}

/// Ends a post-hoc EMA run: a last snapshot when the last step had none, the live model and
/// the widest profile saved, and the metrics.
pub(crate) fn finish_posthoc(
    s: &TrainSettings,
    posthoc: &mut PostHocEma<Cnn>,
    epochs: Vec<EpochMetrics>,
) -> Result<TrainReport, MnistError> {
    let last = posthoc.num_updates();
    if posthoc.snapshots().last().map(|s| s.step) != Some(last) {
        posthoc.snapshot()?;
    }
    println!(
        "post-hoc EMA: {} snapshots in {} (synthesize any width: cargo run --release --example posthoc -- --snapshots {})",
        posthoc.snapshots().len(),
        posthoc.dir().display(),
        posthoc.dir().display()
    );
    let model_file = save(posthoc.model().valid(), s.artifacts.join("model"))?;
    let ema_file = save(widest(posthoc).clone(), s.artifacts.join("model-ema"))?;
    finish(s, epochs, model_file, Some(ema_file))
}
