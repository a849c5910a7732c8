//! Burn's Learner trains an `EmaModule`, updates the shadow after every optimizer step,
//! validates with the configured weights and checkpoints the EMA (feature `train`).
#![cfg(feature = "train")]

use burn::module::{Module, Param};
use burn::optim::SgdConfig;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::train::metric::LossMetric;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use burn_ema::{EmaConfig, EmaModule, EvalWeights, MovingAverage, MultiEma, Schedule};

mod common;
use common::toy::{Batch, Loader, Toy, loader};

fn loaders() -> (Loader, Loader) {
    (loader(4), loader(4))
}

fn config() -> EmaConfig {
    EmaConfig::new(0.5).with_schedule(Schedule::TensorFlow)
}

fn learner(device: &Device) -> Learner<EmaModule<Toy>> {
    let ema = EmaModule::new(Toy::new(device), config()).unwrap();
    Learner::new(ema, SgdConfig::new().init(), 0.1)
}

/// Trains `$learner` with Burn's Learner over the toy data (4 items, batches of 2) for
/// `$epochs` epochs in `$dir`, checkpointing each epoch and resuming from epoch `$resume` when
/// it is `Some`; returns the trained model. (A macro: `launch` asks its model for a long list of
/// bounds that each average meets.)
macro_rules! train {
    ($dir:expr, $learner:expr, epochs: $epochs:expr, resume: $resume:expr) => {{
        let (train, valid) = loaders();
        let mut training = SupervisedTraining::new(&$dir, train, valid)
            .num_epochs($epochs)
            .with_default_checkpointers()
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .with_application_logger(None);
        if let Some(epoch) = $resume {
            training = training.checkpoint(epoch);
        }
        let result = training.launch($learner);
        assert!(result.error.is_none(), "{:?}", result.error);
        result.model
    }};
}

fn run(dir: &std::path::Path, epochs: usize, resume: Option<usize>) -> EmaModule<Toy> {
    train!(dir, learner(&Device::flex().autodiff()), epochs: epochs, resume: resume)
}

fn weights(m: &Toy) -> Vec<f32> {
    m.weight.val().into_data().try_into_vec_as::<f32>().unwrap()
}

/// The reference: SGD on `(w - 1)^2` (mean over 2 values: grad = (w - 1)), lr 0.1, and TF's
/// ramped EMA with decay 0.5, both in f64.
fn reference(steps: u64) -> (f64, f64) {
    let (mut w, mut s) = (0.0f64, 0.0f64);
    for n in 1..=steps {
        w -= 0.1 * (w - 1.0);
        let d = 0.5f64.min((1.0 + n as f64) / (10.0 + n as f64));
        s -= (s - w) * (1.0 - d);
    }
    (w, s)
}

fn temp_dir(name: &str) -> common::Scratch {
    common::Scratch::new(name)
}

#[test]
fn learner_updates_the_shadow_after_each_step() {
    let dir = temp_dir("learner");
    let ema = run(&dir, 2, None);
    // 2 epochs of 2 batches: 4 optimizer steps, 4 updates.
    assert_eq!(ema.num_updates(), 4);
    let (w, s) = reference(4);
    let (live, shadow) = (weights(ema.model()), weights(ema.shadow()));
    assert!((live[0] as f64 - w).abs() < 1e-5, "{live:?} vs {w}");
    assert!((shadow[0] as f64 - s).abs() < 1e-5, "{shadow:?} vs {s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_carry_the_ema_and_resume_it() {
    let dir = temp_dir("resume");
    let first = run(&dir, 2, None);
    let record = ModuleRecord::load(dir.join("checkpoint").join("model-2.bpk")).unwrap();
    let restored = EmaModule::new(Toy::new(&Device::flex()), config())
        .unwrap()
        .load_record(record);
    assert_eq!(restored.num_updates(), 4);
    assert_eq!(weights(restored.shadow()), weights(first.shadow()));

    // Resuming from epoch 2 continues the EMA: after 4 epochs it is the 8-step reference,
    // which it would not be had the shadow or its counter been reset.
    let resumed = run(&dir, 4, Some(2));
    assert_eq!(resumed.num_updates(), 8);
    let (_, s) = reference(8);
    let shadow = weights(resumed.shadow());
    assert!((shadow[0] as f64 - s).abs() < 1e-5, "{shadow:?} vs {s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validation_uses_the_configured_weights() {
    let device = Device::flex().autodiff();
    for eval in [EvalWeights::Shadow, EvalWeights::Live] {
        let mut ema = EmaModule::new(
            Toy::new(&device),
            EmaConfig::new(0.9).with_eval_weights(eval),
        )
        .unwrap();
        ema.model_mut().weight = ema.model().weight.clone().map(|w| w.add_scalar(1.0));
        ema.update().unwrap();
        let valid = ema.valid();
        let batch = Batch {
            target: Tensor::zeros([1, 2], &device.clone().inner()),
        };
        let out = InferenceStep::step(&valid, batch);
        let expected = match eval {
            EvalWeights::Shadow => 0.1f32 * 0.1,
            EvalWeights::Live => 1.0,
        };
        let loss = out.loss.into_data().try_into_vec_as::<f32>().unwrap()[0];
        assert!((loss - expected).abs() < 1e-6, "{eval:?}: {loss}");
    }
}

fn multi_configs() -> Vec<EmaConfig> {
    vec![config(), EmaConfig::new(0.9)]
}

/// The reference of a constant-decay EMA (0.9) of the same SGD run.
fn reference_constant(steps: u64) -> f64 {
    let (mut w, mut s) = (0.0f64, 0.0f64);
    for _ in 1..=steps {
        w -= 0.1 * (w - 1.0);
        s -= (s - w) * (1.0 - 0.9f32 as f64);
    }
    s
}

#[test]
fn learner_trains_a_multi_ema_and_resumes_every_average() {
    let dir = temp_dir("multi");
    let run = |epochs: usize, resume: Option<usize>| {
        let multi = MultiEma::new(Toy::new(&Device::flex().autodiff()), multi_configs()).unwrap();
        let learner = Learner::new(multi, SgdConfig::new().init(), 0.1);
        train!(dir, learner, epochs: epochs, resume: resume)
    };
    let first = run(2, None);
    assert_eq!(first.num_updates(), 4);
    let (_, s) = reference(4);
    let got = weights(first.shadow_of(0).unwrap())[0] as f64;
    assert!((got - s).abs() < 1e-5, "{got} vs {s}");
    let got = weights(first.shadow_of(1).unwrap())[0] as f64;
    assert!((got - reference_constant(4)).abs() < 1e-5, "{got}");
    // Resumed from epoch 2, both averages go on from their checkpointed state.
    let resumed = run(4, Some(2));
    assert_eq!(resumed.num_updates(), 8);
    let (_, s) = reference(8);
    let got = weights(resumed.shadow_of(0).unwrap())[0] as f64;
    assert!((got - s).abs() < 1e-5, "{got} vs {s}");
    let got = weights(resumed.shadow_of(1).unwrap())[0] as f64;
    assert!((got - reference_constant(8)).abs() < 1e-5, "{got}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two parameters tied by `clone()` (one id at two paths), trained by AdamW through the
/// Learner. Burn's optimizer steps them as separate tensors — here only the first path moves —
/// so each path's shadow must follow its own live weights; a shadow shared by id (what
/// burn-ema did before) would give path `b` the average of path `a`.
#[derive(Module, Debug)]
struct TiedToy {
    a: Param<Tensor<2>>,
    b: Param<Tensor<2>>,
}

impl TiedToy {
    fn new(device: &Device) -> Self {
        let p = Param::from_data(TensorData::new(vec![0.0f32, 0.5], [1, 2]), device);
        Self { a: p.clone(), b: p }
    }

    fn regression(&self, target: Tensor<2>) -> RegressionOutput {
        let a = self.a.val();
        let b = self.b.val();
        let loss = a
            .clone()
            .sub(target.clone())
            .powi_scalar(2)
            .mean()
            .add(b.add(target.clone()).powi_scalar(2).mean());
        RegressionOutput::new(loss, a, target)
    }
}

impl TrainStep for TiedToy {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, item: Batch) -> TrainOutput<RegressionOutput> {
        let out = self.regression(item.target);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for TiedToy {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, item: Batch) -> RegressionOutput {
        self.regression(item.target)
    }
}

#[test]
fn learner_averages_tied_parameters_path_by_path() {
    use burn::optim::AdamWConfig;
    let device = Device::flex().autodiff();
    let dir = temp_dir("tied");
    let ema = EmaModule::new(TiedToy::new(&device), EmaConfig::new(0.8)).unwrap();
    let learner = Learner::new(ema, AdamWConfig::new().init(), 0.1);
    let trained = train!(dir, learner, epochs: 2, resume: None::<usize>);

    assert_eq!(trained.num_updates(), 4);
    let live_a = weights_of(&trained.model().a);
    let live_b = weights_of(&trained.model().b);
    assert_ne!(live_a, live_b, "the live copies drift apart");
    assert_eq!(live_b, vec![0.0, 0.5], "only the first path moves");
    // Path b never moved: its average is its value, bit for bit.
    assert_eq!(weights_of(&trained.shadow().b), live_b);
    // Path a's average lies between where it started and where it is.
    let shadow_a = weights_of(&trained.shadow().a);
    for ((s, l), start) in shadow_a.iter().zip(&live_a).zip([0.0f32, 0.5]) {
        assert!(
            (s - start) * (l - start) > 0.0,
            "{shadow_a:?} vs {live_a:?}"
        );
        assert!(
            (s - start).abs() < (l - start).abs(),
            "{shadow_a:?} vs {live_a:?}"
        );
    }
    // Swapped in through the scoped helper, each path evaluates with its own average.
    let (a, b) = trained
        .with_shadow_weights(|m| (weights_of(&m.a), weights_of(&m.b)))
        .unwrap();
    assert_eq!((a, b), (shadow_a, live_b));
    let _ = std::fs::remove_dir_all(&dir);
}

fn weights_of(p: &Param<Tensor<2>>) -> Vec<f32> {
    p.val().into_data().try_into_vec_as::<f32>().unwrap()
}

/// Switch EMA under the Learner: with a switch every 2 steps, `update` writes the EMA into the
/// live weights after steps 2 and 4, and training goes on from there (an f64 reference of SGD,
/// TensorFlow's ramped EMA and the switch).
#[test]
fn learner_switches_the_ema_into_the_live_weights() {
    use burn_ema::SwitchEvery;
    let dir = temp_dir("learner-switch");
    let ema = EmaModule::new(Toy::new(&Device::flex().autodiff()), config())
        .unwrap()
        .with_switch(SwitchEvery::steps(2))
        .unwrap();
    let learner = Learner::new(ema, SgdConfig::new().init(), 0.1);
    let ema = train!(dir, learner, epochs: 2, resume: None::<usize>);
    assert_eq!(ema.num_updates(), 4);
    let (mut w, mut s) = (0.0f64, 0.0f64);
    for n in 1..=4u64 {
        w -= 0.1 * (w - 1.0);
        let d = 0.5f64.min((1.0 + n as f64) / (10.0 + n as f64));
        s -= (s - w) * (1.0 - d);
        if n % 2 == 0 {
            w = s;
        }
    }
    let (live, shadow) = (weights(ema.model()), weights(ema.shadow()));
    assert!((shadow[0] as f64 - s).abs() < 1e-5, "{shadow:?} vs {s}");
    assert!((live[0] as f64 - w).abs() < 1e-5, "{live:?} vs {w}");
    // Without the switch the live weight would be far from the EMA.
    assert!((reference(4).0 - w).abs() > 0.05);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under Burn's gradient accumulation the EMA follows optimizer steps, not micro-batches (the
/// mistake of F5-TTS #631): with `grads_accumulation(4)`, 8 micro-batches make 2 optimizer
/// steps and 2 updates, and the shadow is the formula over the parameters after those two
/// steps. The parameters after the first step come from a run of 4 micro-batches (one step).
#[test]
fn under_gradient_accumulation_the_ema_follows_optimizer_steps() {
    let device = Device::flex().autodiff();
    let decay = 0.5;
    let accumulated = |items: usize| {
        let dir = temp_dir(&format!("accumulation-{items}"));
        let ema = EmaModule::new(Toy::new(&device), EmaConfig::new(decay)).unwrap();
        let learner = Learner::new(ema, SgdConfig::new().init(), 0.1);
        // Batches of 2: `items / 2` micro-batches.
        let result = SupervisedTraining::new(&dir, loader(items), loader(4))
            .num_epochs(1)
            .grads_accumulation(4)
            .metric_train_numeric(LossMetric::new())
            .with_application_logger(None)
            .launch(learner);
        assert!(result.error.is_none(), "{:?}", result.error);
        let _ = std::fs::remove_dir_all(&dir);
        result.model
    };
    let one_step = accumulated(8);
    let two_steps = accumulated(16);
    assert_eq!(
        one_step.num_updates(),
        1,
        "4 micro-batches, 1 optimizer step"
    );
    assert_eq!(
        two_steps.num_updates(),
        2,
        "8 micro-batches, 2 optimizer steps"
    );

    let start = weights(&Toy::new(&device));
    let (p1, p2) = (weights(one_step.model()), weights(two_steps.model()));
    assert_ne!(p1, p2, "the second optimizer step moved the weights");
    let shadow = weights(two_steps.shadow());
    for i in 0..start.len() {
        let s1 = decay * start[i] as f64 + (1.0 - decay) * p1[i] as f64;
        let s2 = decay * s1 + (1.0 - decay) * p2[i] as f64;
        assert!(
            (shadow[i] as f64 - s2).abs() < 1e-6,
            "{i}: {} vs {s2}",
            shadow[i]
        );
    }
}
