//! Training without the Learner: the manual EMA API in a plain loop.
//!
//! ```text
//! let mut ema = EmaModule::new(model, config)?;         // the shadow starts as a copy
//! loop {
//!     let loss = ema.model().forward(batch);            // train the live weights
//!     let grads = GradientsParams::from_grads(loss.backward(), &ema);
//!     ema = optim.step(lr, ema, grads);                 // steps the live model only
//!     ema.update()?;                                    // then the shadow follows
//! }
//! ema.with_shadow_weights(|model| evaluate(model))?;     // evaluate with the shadow weights
//! ```

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn_ema::{EmaConfig, EmaModule, MovingAverage, PostHocEma, update_bn};

use crate::data::{MnistBatcher, MnistItem};
use crate::error::MnistError;
use crate::eval::evaluate;
use crate::metrics::EpochMetrics;
use crate::model::Cnn;
use crate::train::{
    TrainReport, TrainSettings, finish, finish_posthoc, load_data, loader, posthoc_dir,
    prepare_artifacts, save, widest,
};
use burn::tensor::{Device, Tensor};

/// What the loop trains: the bare CNN, or the CNN wrapped with its EMA. Both are Burn modules,
/// so the same optimizer code steps either.
trait Trainee: Module + Sized {
    /// The live weights, which the loss is computed with.
    fn live(&self) -> &Cnn;
    /// Runs after each optimizer step.
    fn after_step(&mut self) -> Result<(), MnistError>;
    /// Validation metrics for this epoch (`train`: the training digits, for what needs them).
    fn evaluate(
        &mut self,
        epoch: usize,
        train: &[MnistItem],
        valid: &[MnistItem],
        device: &Device,
    ) -> Result<EpochMetrics, MnistError>;
    /// Saves the weights and writes the metrics.
    fn finish(
        self,
        s: &TrainSettings,
        epochs: Vec<EpochMetrics>,
    ) -> Result<TrainReport, MnistError>;
}

impl Trainee for Cnn {
    fn live(&self) -> &Cnn {
        self
    }

    fn after_step(&mut self) -> Result<(), MnistError> {
        Ok(())
    }

    fn evaluate(
        &mut self,
        epoch: usize,
        _train: &[MnistItem],
        valid: &[MnistItem],
        device: &Device,
    ) -> Result<EpochMetrics, MnistError> {
        Ok(EpochMetrics {
            epoch,
            live: evaluate(self, valid, device),
            ema: None,
        })
    }

    fn finish(
        self,
        s: &TrainSettings,
        epochs: Vec<EpochMetrics>,
    ) -> Result<TrainReport, MnistError> {
        let model_file = save(self.valid(), s.artifacts.join("model"))?;
        finish(s, epochs, model_file, None)
    }
}

impl Trainee for EmaModule<Cnn> {
    fn live(&self) -> &Cnn {
        self.model()
    }

    fn after_step(&mut self) -> Result<(), MnistError> {
        // The optimizer stepped the live weights; now the shadow follows them.
        Ok(self.update()?)
    }

    fn evaluate(
        &mut self,
        epoch: usize,
        _train: &[MnistItem],
        valid: &[MnistItem],
        device: &Device,
    ) -> Result<EpochMetrics, MnistError> {
        // Swap mode: the shadow weights go into the model without copying (in evaluation
        // mode), and come back out when the closure returns.
        let shadow = self.with_shadow_weights(|model| evaluate(model, valid, device))?;
        Ok(EpochMetrics {
            epoch,
            live: evaluate(self.model(), valid, device),
            ema: Some(shadow),
        })
    }

    fn finish(
        self,
        s: &TrainSettings,
        epochs: Vec<EpochMetrics>,
    ) -> Result<TrainReport, MnistError> {
        let (live, shadow) = self.into_parts();
        let model_file = save(live.valid(), s.artifacts.join("model"))?;
        let ema_file = save(shadow, s.artifacts.join("model-ema"))?;
        finish(s, epochs, model_file, Some(ema_file))
    }
}

impl Trainee for PostHocEma<Cnn> {
    fn live(&self) -> &Cnn {
        self.model()
    }

    fn after_step(&mut self) -> Result<(), MnistError> {
        // Every profile follows the step; every `snapshot_every` steps they are saved.
        Ok(self.update()?)
    }

    fn evaluate(
        &mut self,
        epoch: usize,
        _train: &[MnistItem],
        valid: &[MnistItem],
        device: &Device,
    ) -> Result<EpochMetrics, MnistError> {
        Ok(EpochMetrics {
            epoch,
            live: evaluate(self.model(), valid, device),
            ema: Some(evaluate(widest(self), valid, device)),
        })
    }

    fn finish(
        mut self,
        s: &TrainSettings,
        epochs: Vec<EpochMetrics>,
    ) -> Result<TrainReport, MnistError> {
        finish_posthoc(s, &mut self, epochs)
    }
}

/// SWA: the uniform average of the weights after every step from a chosen one on, evaluated
/// with BatchNorm statistics recomputed for it over the training digits (PyTorch's
/// `AveragedModel` + `update_bn`).
#[derive(Module, Debug)]
struct Swa {
    average: EmaModule<Cnn>,
}

/// Digits per batch of the BatchNorm recalibration pass (forward only).
const RECALIBRATION_BATCH: usize = 256;

impl Swa {
    /// The averaged weights with their BatchNorm statistics recomputed over `train`.
    fn recalibrated(&self, train: &[MnistItem], device: &Device) -> Result<Cnn, MnistError> {
        let autodiff = device.clone().autodiff();
        let batches = train
            .chunks(RECALIBRATION_BATCH)
            .map(|items| MnistBatcher.batch(items.to_vec(), &autodiff));
        Ok(update_bn(
            self.average.shadow(),
            batches,
            |model: &Cnn, batch| {
                let _ = model.forward(batch.images);
            },
        )?)
    }
}

impl Trainee for Swa {
    fn live(&self) -> &Cnn {
        self.average.model()
    }

    fn after_step(&mut self) -> Result<(), MnistError> {
        Ok(self.average.update()?)
    }

    fn evaluate(
        &mut self,
        epoch: usize,
        train: &[MnistItem],
        valid: &[MnistItem],
        device: &Device,
    ) -> Result<EpochMetrics, MnistError> {
        // The averaged weights with the averaged statistics, to show what recomputing buys.
        let stale = evaluate(self.average.shadow(), valid, device);
        let swa = evaluate(&self.recalibrated(train, device)?, valid, device);
        println!(
            "  SWA with its averaged BatchNorm statistics: accuracy {:.2}%, loss {:.4}; \
             recomputed (update_bn): {:.2}%, {:.4}",
            100.0 * stale.accuracy,
            stale.loss,
            100.0 * swa.accuracy,
            swa.loss
        );
        Ok(EpochMetrics {
            epoch,
            live: evaluate(self.average.model(), valid, device),
            ema: Some(swa),
        })
    }

    fn finish(
        self,
        s: &TrainSettings,
        epochs: Vec<EpochMetrics>,
    ) -> Result<TrainReport, MnistError> {
        let (train, _) = load_data(s)?;
        let recalibrated = self.recalibrated(&train, &s.device)?;
        let model_file = save(self.average.model().valid(), s.artifacts.join("model"))?;
        let swa_file = save(recalibrated, s.artifacts.join("model-ema"))?;
        finish(s, epochs, model_file, Some(swa_file))
    }
}

/// Trains the CNN in a hand-written loop; with an EMA, evaluates both weight sets each epoch by
/// swapping the shadow weights in and out.
pub fn train_custom_loop(s: &TrainSettings) -> Result<TrainReport, MnistError> {
    let (train, valid) = load_data(s)?;
    prepare_artifacts(&s.artifacts)?;
    s.device.seed(s.seed);
    let model = Cnn::new(&s.device.clone().autodiff());
    if let Some(start) = s.swa_start_epoch {
        let steps_per_epoch = train.len().div_ceil(s.batch_size) as u64;
        let average = EmaModule::new(model, EmaConfig::swa(start as u64 * steps_per_epoch))?;
        return run(s, Swa { average }, train, &valid);
    }
    if let Some(config) = &s.post_hoc {
        let posthoc = PostHocEma::new(model, config.clone(), posthoc_dir(&s.artifacts))?;
        return run(s, posthoc, train, &valid);
    }
    match &s.ema {
        Some(config) => run(s, EmaModule::new(model, config.clone())?, train, &valid),
        None => run(s, model, train, &valid),
    }
}

fn run<T: Trainee>(
    s: &TrainSettings,
    mut trainee: T,
    train: Vec<MnistItem>,
    valid: &[MnistItem],
) -> Result<TrainReport, MnistError> {
    let mut optim = AdamConfig::new().init();
    let batches = loader(train.clone(), s, true);
    let mut epochs = Vec::with_capacity(s.epochs);
    let mut recorded = s.record_weights.then(|| vec![flat_floats(trainee.live())]);
    for epoch in 1..=s.epochs {
        for batch in batches.iter() {
            let batch = batch.map_err(|e| MnistError::Training(e.to_string()))?;
            let loss = trainee.live().forward_classification(batch).loss;
            // An EmaModule is itself a Module: the optimizer steps the live weights and finds no
            // gradient for the shadow, which has parameter ids of its own.
            let grads = GradientsParams::from_grads(loss.backward(), &trainee);
            trainee = optim.step(s.lr, trainee, grads);
            trainee.after_step()?;
            if let Some(r) = &mut recorded {
                r.push(flat_floats(trainee.live()));
            }
        }
        let metrics = trainee.evaluate(epoch, &train, valid, &s.device)?;
        println!("{}", metrics.summary());
        epochs.push(metrics);
    }
    let mut report = trainee.finish(s, epochs)?;
    report.recorded_live = recorded;
    Ok(report)
}

/// A module's float values, in traversal order.
fn flat_floats<M: Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}
