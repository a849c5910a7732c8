//! The example trainers, driven for a few steps: the files appear, the EMA file loads into the
//! bare model and evaluates to what the trainer reported, the metrics are sane, and bad input gives
//! a clear error.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn_ema::{EmaConfig, EmaError, Schedule};
use burn_ema_mnist::MnistError;
use burn_ema_mnist::cli::TrainArgs;
use burn_ema_mnist::custom_loop::train_custom_loop;
use burn_ema_mnist::data::{PIXELS, TRAIN_SIZE, default_data_dir, load_split};
use burn_ema_mnist::eval::evaluate;
use burn_ema_mnist::model::Cnn;
use burn_ema_mnist::train::{TrainReport, TrainSettings, train_with_learner};
use clap::Parser;

/// Every float value of a module, in traversal order.
fn weights<M: Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let data = param.val().into_data();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

#[path = "common/scratch.rs"]
mod scratch;

/// A fresh, empty folder under the system's temporary directory, removed when dropped.
fn scratch(name: &str) -> scratch::Scratch {
    scratch::Scratch::new(&format!("test-{name}"))
}

fn settings(artifacts: PathBuf, ema: Option<EmaConfig>) -> TrainSettings {
    TrainSettings {
        epochs: 2,
        batch_size: 32,
        lr: 0.01,
        seed: 7,
        ema,
        post_hoc: None,
        swa_start_epoch: None,
        device: Device::flex(),
        artifacts,
        data_dir: default_data_dir(),
        train_limit: Some(96),
        valid_limit: Some(200),
        record_weights: false,
    }
}

fn ema_config() -> EmaConfig {
    EmaConfig::new(0.9).with_schedule(Schedule::TensorFlow)
}

fn load_cnn(path: &Path) -> Cnn {
    Cnn::new(&Device::flex())
        .try_load_file(path)
        .unwrap_or_else(|e| panic!("{} does not load into the bare Cnn: {e:?}", path.display()))
}

/// Checks what every run with an EMA must produce.
fn check_ema_report(report: &TrainReport, artifacts: &Path, epochs: usize) {
    assert_eq!(report.epochs.len(), epochs);
    for (i, row) in report.epochs.iter().enumerate() {
        assert_eq!(row.epoch, i + 1);
        let ema = row.ema.as_ref().expect("an EMA run reports EMA metrics");
        for eval in [&row.live, ema] {
            assert!((0.0..=1.0).contains(&eval.accuracy), "{eval:?}");
            assert!(eval.loss.is_finite() && eval.loss > 0.0, "{eval:?}");
            let counted: u32 = eval.confusion.iter().flatten().sum();
            assert_eq!(counted, 200, "the confusion matrix counts every digit");
        }
    }
    for file in ["model.bpk", "model-ema.bpk", "metrics.csv", "metrics.svg"] {
        assert!(artifacts.join(file).is_file(), "{file} is missing");
    }
    assert_eq!(
        report.ema_file.as_deref(),
        Some(&*artifacts.join("model-ema.bpk"))
    );

    // The EMA file loads into the bare model, with no EMA code, and evaluates to exactly what the
    // trainer reported for the last epoch.
    let (_, valid) = load_split(&default_data_dir(), 7).unwrap();
    let valid = &valid[..200];
    let shadow = load_cnn(&artifacts.join("model-ema.bpk"));
    let live = load_cnn(&artifacts.join("model.bpk"));
    let reported = report.epochs.last().unwrap();
    let shadow_eval = evaluate(&shadow, valid, &Device::flex());
    let live_eval = evaluate(&live, valid, &Device::flex());
    assert_eq!(
        shadow_eval.confusion,
        reported.ema.as_ref().unwrap().confusion
    );
    assert_eq!(live_eval.confusion, reported.live.confusion);
    assert!((shadow_eval.loss - reported.ema.as_ref().unwrap().loss).abs() < 1e-4);
    // The weights themselves (the files always differ: they hold other parameter ids).
    let (live_w, shadow_w) = (weights(&live), weights(&shadow));
    assert_eq!(live_w.len(), shadow_w.len());
    let differing = live_w.iter().zip(&shadow_w).filter(|(a, b)| a != b).count();
    assert!(
        differing > live_w.len() / 2,
        "the EMA file holds the shadow weights, not the live ones ({differing} of {} differ)",
        live_w.len()
    );

    let csv = std::fs::read_to_string(artifacts.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + epochs, "{csv}");
    assert!(lines[0].contains("ema_accuracy"), "{csv}");
    let svg = std::fs::read_to_string(artifacts.join("metrics.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("EMA"),
        "not the expected plot"
    );
}

#[test]
fn learner_run_with_ema_writes_files_that_the_bare_model_loads() {
    let artifacts = scratch("learner-ema");
    let report =
        train_with_learner(&settings(artifacts.to_path_buf(), Some(ema_config()))).unwrap();
    check_ema_report(&report, &artifacts, 2);
    // The Learner wrote the EMA into its checkpoints.
    assert!(artifacts.join("checkpoint/model-2.bpk").is_file());
    std::fs::remove_dir_all(artifacts).unwrap();
}

#[test]
fn custom_loop_with_ema_writes_files_that_the_bare_model_loads() {
    let artifacts = scratch("custom-ema");
    let report = train_custom_loop(&settings(artifacts.to_path_buf(), Some(ema_config()))).unwrap();
    check_ema_report(&report, &artifacts, 2);
    std::fs::remove_dir_all(artifacts).unwrap();
}

/// The EMA file the custom loop writes is the average of the live weights it went through:
/// TensorFlow's decays `min(0.9, (1 + n)/(10 + n))` (f32, as TensorFlow) applied here in f64
/// to the weights recorded after each of the 6 optimizer steps, from a copy of the initial ones.
#[test]
fn the_custom_loops_ema_file_is_the_average_of_the_recorded_weights() {
    let artifacts = scratch("custom-ema-values");
    let mut s = settings(artifacts.to_path_buf(), Some(ema_config()));
    s.record_weights = true;
    let report = train_custom_loop(&s).unwrap();
    let recorded = report.recorded_live.clone().unwrap();
    assert_eq!(
        recorded.len(),
        1 + 6,
        "96 digits in batches of 32, two epochs"
    );
    let mut shadow: Vec<f64> = recorded[0].iter().map(|&v| v as f64).collect();
    for (n, live) in recorded.iter().enumerate().skip(1) {
        let n = n as f32;
        let decay = 0.9f32.min((1.0 + n) / (10.0 + n)) as f64;
        for (s, &p) in shadow.iter_mut().zip(live) {
            *s = decay * *s + (1.0 - decay) * p as f64;
        }
    }
    let file = weights(&load_cnn(report.ema_file.as_ref().unwrap()));
    assert_eq!(file.len(), shadow.len());
    let worst = shadow
        .iter()
        .zip(&file)
        .map(|(want, &got)| (want - got as f64).abs() / want.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "largest relative difference {worst}");
    // Not a copy of the last (or first) weights: the average differs from both.
    assert_ne!(file, *recorded.last().unwrap());
    assert_ne!(file, recorded[0]);
    std::fs::remove_dir_all(artifacts).unwrap();
}

/// `--swa` in the custom loop: the uniform average from epoch 2 on, its BatchNorm statistics
/// recomputed (`update_bn`) for every evaluation and for the file, which loads into the bare
/// model and evaluates to what was reported.
#[test]
fn custom_loop_with_swa_writes_files_that_the_bare_model_loads() {
    let artifacts = scratch("custom-swa");
    let mut s = settings(artifacts.to_path_buf(), None);
    s.swa_start_epoch = Some(1);
    let report = train_custom_loop(&s).unwrap();
    check_ema_report(&report, &artifacts, 2);
    // The Learner's trainer says where SWA runs instead of ignoring it.
    let err = train_with_learner(&s).unwrap_err();
    assert!(err.to_string().contains("mnist_custom_loop"), "{err}");
    std::fs::remove_dir_all(artifacts).unwrap();
}

#[test]
fn run_without_ema_reports_live_metrics_only() {
    let artifacts = scratch("custom-bare");
    let mut s = settings(artifacts.to_path_buf(), None);
    s.epochs = 1;
    let report = train_custom_loop(&s).unwrap();
    assert!(report.ema_file.is_none());
    assert!(report.epochs[0].ema.is_none());
    assert!(!artifacts.join("model-ema.bpk").exists());
    load_cnn(&report.model_file);
    std::fs::remove_dir_all(artifacts).unwrap();
}

#[test]
fn the_shipped_data_splits_8000_2000_deterministically() {
    let (train, valid) = load_split(&default_data_dir(), 42).unwrap();
    assert_eq!((train.len(), valid.len()), (TRAIN_SIZE, 2_000));
    assert!(
        train
            .iter()
            .all(|d| d.pixels.len() == PIXELS && d.label < 10)
    );
    let (again, _) = load_split(&default_data_dir(), 42).unwrap();
    assert!(train.iter().zip(&again).all(|(a, b)| a.pixels == b.pixels));
    let (other, _) = load_split(&default_data_dir(), 43).unwrap();
    assert!(train.iter().zip(&other).any(|(a, b)| a.pixels != b.pixels));
    let mut counts = [0; 10];
    valid.iter().for_each(|d| counts[d.label as usize] += 1);
    assert!(
        counts.iter().all(|&c| c > 100),
        "every digit is in the split: {counts:?}"
    );
}

#[test]
fn missing_data_is_a_clear_error() {
    let dir = scratch("no-data");
    let mut s = settings(dir.join("artifacts"), None);
    s.data_dir = dir.to_path_buf();
    let err = train_with_learner(&s).unwrap_err();
    assert!(matches!(err, MnistError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("images-idx3-ubyte.gz"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn corrupt_data_is_a_clear_error() {
    let dir = scratch("bad-data");
    let real = default_data_dir();
    // A file that is not gzip, then a gzip stream cut short.
    std::fs::write(dir.join("images-idx3-ubyte.gz"), b"not gzip at all").unwrap();
    std::fs::copy(
        real.join("labels-idx1-ubyte.gz"),
        dir.join("labels-idx1-ubyte.gz"),
    )
    .unwrap();
    let err = load_split(&dir, 1).unwrap_err();
    assert!(matches!(err, MnistError::BadData { .. }), "{err:?}");
    assert!(err.to_string().contains("images-idx3-ubyte.gz"), "{err}");

    let bytes = std::fs::read(real.join("images-idx3-ubyte.gz")).unwrap();
    std::fs::write(dir.join("images-idx3-ubyte.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_split(&dir, 1).unwrap_err();
    assert!(matches!(err, MnistError::BadData { .. }), "{err:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
}

#[test]
fn command_line_errors_are_clear() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from([&["mnist"], args].concat())
            .unwrap()
            .train
    };

    let err = parse(&["--ema", "--ema-decay", "1.5"])
        .settings()
        .unwrap_err();
    assert!(
        matches!(err, MnistError::Ema(EmaError::InvalidConfig { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("1.5"), "{err}");

    // wgpu works when the example crate is built with it, and is a clear error otherwise: the
    // build says which to expect.
    let wgpu = parse(&["--device", "wgpu"]).settings();
    if burn_ema_mnist::WGPU_COMPILED {
        let s = wgpu.unwrap();
        assert!(format!("{:?}", s.device).contains("Wgpu"), "{:?}", s.device);
    } else {
        let err = wgpu.unwrap_err();
        assert!(matches!(err, MnistError::Device(_)), "{err:?}");
    }

    assert!(Cli::try_parse_from(["mnist", "--device", "tpu"]).is_err());
    assert!(parse(&["--lr=-1"]).settings().is_err());

    let s = parse(&["--ema", "--ema-warmup", "power", "--ema-buffers", "copy"])
        .settings()
        .unwrap();
    let ema = s.ema.unwrap();
    assert_eq!(ema.options.buffers, burn_ema::BufferPolicy::Copy);
    assert!(matches!(ema.schedule, Schedule::Warmup { .. }));
    assert!(parse(&[]).settings().unwrap().ema.is_none());

    // SWA: from the end of epoch 2 of 4 by default; a start at or past the end is refused, and
    // it replaces the EMA.
    assert_eq!(
        parse(&["--swa"]).settings().unwrap().swa_start_epoch,
        Some(2)
    );
    let err = parse(&["--swa", "--swa-start", "4"])
        .settings()
        .unwrap_err();
    assert!(err.to_string().contains("--swa-start"), "{err}");
    assert!(Cli::try_parse_from(["mnist", "--swa", "--ema"]).is_err());
}

/// `--post-hoc-ema`, in the custom loop and with the Learner: snapshots every step (3 steps an
/// epoch, 2 epochs), the widest profile reported and saved, and a sweep over the snapshots that
/// reproduces the tracked profile's evaluation.
#[test]
fn post_hoc_ema_runs_in_both_trainers_and_sweeps() {
    use burn_ema::{PostHocConfig, PostHocSnapshots};
    use burn_ema_mnist::posthoc::{plot_sweep, sweep};
    use burn_ema_mnist::train::posthoc_dir;
    for learner in [false, true] {
        let artifacts = scratch(&format!("posthoc-{learner}"));
        let mut s = settings(artifacts.to_path_buf(), None);
        s.post_hoc = Some(PostHocConfig::new().with_snapshot_every(2));
        let report = if learner {
            train_with_learner(&s).unwrap()
        } else {
            train_custom_loop(&s).unwrap()
        };
        check_ema_report(&report, &artifacts, 2);
        let snapshots = PostHocSnapshots::open(posthoc_dir(&artifacts)).unwrap();
        // 6 steps: snapshots at 2, 4, 6 of both profiles.
        assert_eq!(snapshots.steps(), vec![2, 4, 6], "learner: {learner}");
        assert_eq!(snapshots.snapshots().len(), 6);
        let (_, valid) = load_split(&default_data_dir(), 7).unwrap();
        let valid = &valid[..200];
        let rows = sweep(&snapshots, &[0.07, 0.10], None, valid, &Device::flex()).unwrap();
        assert!(!rows[0].tracked && rows[1].tracked);
        // The tracked 0.10 profile at the last step is the EMA file the run saved.
        let saved = evaluate(
            &load_cnn(&artifacts.join("model-ema.bpk")),
            valid,
            &Device::flex(),
        );
        assert!(
            (rows[1].evaluation.loss - saved.loss).abs() < 1e-4,
            "{rows:?}"
        );
        let plot = artifacts.join("posthoc.svg");
        plot_sweep(&plot, &rows, "test").unwrap();
        assert!(
            std::fs::read_to_string(&plot)
                .unwrap()
                .contains("tracked during training")
        );
        std::fs::remove_dir_all(artifacts).unwrap();
    }
}

/// The mean-teacher trainer driven for a few steps: a teacher evaluated beside its student,
/// the baseline without one, and a labelled count that cannot be balanced refused.
#[test]
fn mean_teacher_trains_a_student_against_its_ema_teacher() {
    use burn_ema_mnist::mean_teacher::{MeanTeacherSettings, train_mean_teacher};
    let mut s = MeanTeacherSettings::new(default_data_dir());
    s.epochs = 2;
    s.batch_size = 32;
    s.labels = 20;
    s.train_limit = Some(160);
    s.valid_limit = Some(100);
    let with = train_mean_teacher(&s).unwrap();
    assert_eq!(with.len(), 2);
    for epoch in &with {
        let teacher = epoch.teacher.as_ref().expect("the teacher is evaluated");
        for eval in [&epoch.student, teacher] {
            assert!((0.0..=1.0).contains(&eval.accuracy) && eval.loss.is_finite());
            assert_eq!(eval.confusion.iter().flatten().sum::<u32>(), 100);
        }
    }
    // After 10 steps at decay 0.99 the teacher is not the student.
    assert_ne!(with[1].teacher.as_ref().unwrap(), &with[1].student);
    let without = train_mean_teacher(&MeanTeacherSettings {
        teacher_decay: None,
        ..s.clone()
    })
    .unwrap();
    assert!(without.iter().all(|e| e.teacher.is_none()));
    // The same seed and labelled batches: the teacher's consistency cost changes the student.
    assert_ne!(without[1].student, with[1].student);
    let err = train_mean_teacher(&MeanTeacherSettings { labels: 15, ..s }).unwrap_err();
    assert!(err.to_string().contains("multiple of 10"), "{err}");
}
