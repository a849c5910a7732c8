//! Post-hoc EMA (EDM2): coefficients against the paper's equations evaluated outside this crate,
//! synthesis against sums computed here and against a profile tracked directly, the snapshot
//! directory's crash safety and resume, and every error.

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, PostHocConfig, PostHocEma,
    PostHocSnapshots, PowerProfile, Schedule, SnapshotDType, TensorEma, Width,
    posthoc_coefficients, shadow_from_file, sigma_rel_to_gamma,
};

mod common;
use common::{Net, Scalar, bits, floats, input};

fn scratch(name: &str) -> common::Scratch {
    common::Scratch::new(&format!("posthoc-{name}"))
}

fn decimal(v: &serde_json::Value) -> f64 {
    v.as_str().expect("a decimal string").parse().unwrap()
}

/// The coefficients of every fixture case, computed by `tests/fixtures/make_posthoc.py` from the
/// paper's definitions (profiles integrated numerically, 50-digit solve, EDM2's normalisation).
#[test]
fn coefficients_match_the_papers_equations() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/posthoc.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let inputs: Vec<PowerProfile> = case["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| PowerProfile::new(s["step"].as_u64().unwrap(), decimal(&s["gamma"])))
            .collect();
        let target_sigma = case["target_sigma_rel"].as_f64().unwrap();
        // The gamma of the target width, ours against the fixture's.
        let gamma = sigma_rel_to_gamma(target_sigma).unwrap();
        assert!(
            (gamma - decimal(&case["target_gamma"])).abs() < 1e-9,
            "{name}"
        );
        let target = PowerProfile::new(case["target_step"].as_u64().unwrap(), gamma);
        let got = posthoc_coefficients(&inputs, target).unwrap();
        let want: Vec<f64> = case["coefficients"]
            .as_array()
            .unwrap()
            .iter()
            .map(decimal)
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-8 * w.abs().max(1.0),
                "{name}: coefficient {i}: {g} vs {w}"
            );
        }
    }
}

/// EDM2's beta `(1 - Δt/t)^(γ + 1)` with a stride, by hand: γ = 1, an update every 2 steps, the
/// value at step `s` equal to `s`.
#[test]
fn a_strided_power_function_ema_follows_edm2s_beta() {
    let device = Device::flex();
    let config = EmaConfig::new(1.0)
        .with_schedule(Schedule::PowerFunction { gamma: 1.0 })
        .with_update_every(2);
    let mut ema = TensorEma::new(Tensor::<1>::zeros([1], &device), &config).unwrap();
    for step in 1..=6u64 {
        ema.update(Tensor::<1>::from_floats([step as f32], &device))
            .unwrap();
    }
    // Step 2 copies (beta 0); step 4: 0.25·2 + 0.75·4 = 3.5; step 6: (4/9)·3.5 + (5/9)·6 = 44/9.
    let v = common::values(&ema.value())[0];
    assert!((v - 44.0 / 9.0).abs() < 1e-6, "{v}");
    assert_eq!(ema.last_decay(), Some((1.0f64 - 2.0 / 6.0).powi(2)));
}

/// A deterministic random walk of `n` weights, one value per step.
struct Walk {
    state: u64,
    values: Vec<f32>,
}

impl Walk {
    fn new(n: usize) -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15,
            values: vec![0.0; n],
        }
    }
    fn step(&mut self) -> &[f32] {
        for v in &mut self.values {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (self.state >> 40) as f32 / (1u64 << 24) as f32;
            *v += u - 0.5;
        }
        &self.values
    }
}

/// The EMA of width 0.07, synthesized from snapshots of the 0.05 and 0.10 profiles, is close to
/// the 0.07 profile tracked directly during the same run — the whole point of post-hoc EMA —
/// while the tracked profiles themselves are far from it.
#[test]
fn a_synthesized_width_matches_that_width_tracked_directly() {
    let device = Device::flex();
    let dir = scratch("tracked");
    let mut walk = Walk::new(64);
    let model = Scalar::new(walk.step(), &device);
    let config = PostHocConfig::new().with_snapshot_every(25);
    let mut posthoc = PostHocEma::new(model.clone(), config, &dir).unwrap();
    let held_out = EmaConfig::new(1.0).with_schedule(Schedule::PowerFunction {
        gamma: sigma_rel_to_gamma(0.07).unwrap(),
    });
    let mut direct = EmaModule::new(model.clone(), held_out).unwrap();
    for _ in 0..400 {
        let values = walk.step().to_vec();
        posthoc.model_mut().set(&values);
        direct.model_mut().set(&values);
        posthoc.update().unwrap();
        direct.update().unwrap();
    }
    assert_eq!(posthoc.snapshots().len(), 2 * 16);
    let synthesized = PostHocSnapshots::open(&dir)
        .unwrap()
        .synthesize(&model, Width::SigmaRel(0.07), None)
        .unwrap();
    let get = |m: &Scalar| common::values(&m.value.val());
    let (s, d) = (get(&synthesized), get(direct.shadow()));
    let (narrow, wide) = (
        get(posthoc.shadow_of(0).unwrap()),
        get(posthoc.shadow_of(1).unwrap()),
    );
    let rms = |a: &[f32], b: &[f32]| {
        (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
    };
    let error = rms(&s, &d);
    let spread = rms(&narrow, &d).min(rms(&wide, &d));
    println!("rms(synthesized - tracked 0.07) = {error:.5}; nearest tracked profile: {spread:.5}");
    assert!(error < 0.1 * spread, "{error} vs {spread}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn sgd(net: Net, device: &Device) -> Net {
    let mut optim = SgdConfig::new().init();
    let loss = net.forward(input(device)).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    optim.step(0.5, net, grads)
}

/// A small training run: `steps` SGD steps of `Net` with post-hoc EMA into `dir`.
fn train(dir: &std::path::Path, config: PostHocConfig, steps: usize) -> PostHocEma<Net> {
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut posthoc = PostHocEma::new(Net::new(&device), config, dir).unwrap();
    for _ in 0..steps {
        let live = posthoc.model().clone();
        *posthoc.model_mut() = sgd(live, &device);
        posthoc.update().unwrap();
    }
    posthoc
}

fn template() -> Net {
    Net::new(&Device::flex())
}

/// A tracked profile at a snapshot step reproduces that snapshot; a synthesis is the weighted
/// sum of the snapshots with the solve's coefficients, summed here in f64 from the files.
#[test]
fn synthesis_is_the_weighted_sum_of_the_snapshots() {
    let dir = scratch("sum");
    let posthoc = train(&dir, PostHocConfig::new().with_snapshot_every(5), 20);
    let reader = PostHocSnapshots::open(&dir).unwrap();
    assert_eq!(reader.steps(), vec![5, 10, 15, 20]);
    assert_eq!(reader.tracked_sigma_rels(), vec![0.05, 0.10]);

    // The 0.10 profile at step 10 is its snapshot.
    let at_10 = reader
        .synthesize(&template(), Width::SigmaRel(0.10), Some(10))
        .unwrap();
    let file = dir.join("snapshot-000000000010-p1.bpk");
    let snapshot = shadow_from_file(&template(), &file).unwrap();
    for ((path, a), (_, b)) in floats(&at_10).into_iter().zip(floats(&snapshot)) {
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{path}: {x} vs {y}"
            );
        }
    }
    // And the last one is the live average.
    let last = reader
        .synthesize(&template(), Width::SigmaRel(0.05), None)
        .unwrap();
    for ((path, a), (_, b)) in floats(&last)
        .into_iter()
        .zip(floats(posthoc.shadow_of(0).unwrap()))
    {
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{path}: {x} vs {y}"
            );
        }
    }

    // 0.07 at step 15: only snapshots up to step 15 take part.
    let coefficients = reader
        .coefficients(Width::SigmaRel(0.07), Some(15))
        .unwrap();
    assert_eq!(coefficients.len(), 6);
    assert!(coefficients.iter().all(|(s, _)| s.step <= 15));
    let mut want: Vec<(String, Vec<f64>)> = Vec::new();
    for (info, x) in &coefficients {
        let snapshot = shadow_from_file(&template(), dir.join(&info.file)).unwrap();
        for (k, (path, values)) in floats(&snapshot).into_iter().enumerate() {
            if want.len() <= k {
                want.push((path, vec![0.0; values.len()]));
            }
            for (acc, v) in want[k].1.iter_mut().zip(values) {
                *acc += x * v as f64;
            }
        }
    }
    let got = reader
        .synthesize(&template(), Width::SigmaRel(0.07), Some(15))
        .unwrap();
    for ((path, a), (_, b)) in floats(&got).into_iter().zip(want) {
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (*x as f64 - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{path}: {x} vs {y}"
            );
        }
    }
    // The file Burn's own loader reads holds the same model.
    let path = reader
        .synthesize_to_file(
            &template(),
            Width::SigmaRel(0.07),
            Some(15),
            dir.join("ema-0.07"),
            EmaFile::Shadow,
        )
        .unwrap();
    let loaded = template().try_load_file(&path).unwrap();
    assert_eq!(floats(&loaded), floats(&got));
    std::fs::remove_dir_all(dir).unwrap();
}

fn listed(posthoc: &PostHocEma<Net>) -> Vec<(u64, usize)> {
    posthoc
        .snapshots()
        .iter()
        .map(|s| (s.step, s.profile))
        .collect()
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    names.sort();
    names
}

/// A crash between the snapshot files and the index loses nothing (the files are adopted); a
/// run resumed from an earlier checkpoint writes its snapshots again without duplicates, and
/// they come out the same bytes.
#[test]
fn snapshots_survive_a_crash_and_a_resume() {
    let dir = scratch("resume");
    let config = PostHocConfig::new().with_snapshot_every(5);
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut posthoc = PostHocEma::new(Net::new(&device), config.clone(), &dir).unwrap();
    let mut checkpoint = None;
    let mut index_at_15 = None;
    for step in 1..=20u64 {
        let live = posthoc.model().clone();
        *posthoc.model_mut() = sgd(live, &device);
        posthoc.update().unwrap();
        if step == 10 {
            // What a checkpoint holds: the module's record.
            checkpoint = Some(posthoc.clone().into_record());
        }
        if step == 15 {
            index_at_15 = Some(std::fs::read(posthoc.index_file()).unwrap());
        }
    }
    let expected: Vec<(u64, usize)> = (1..=4).flat_map(|k| [(5 * k, 0), (5 * k, 1)]).collect();
    assert_eq!(listed(&posthoc), expected);
    // The values, bit for bit (the files also carry parameter ids, and a rebuilt model's
    // BatchNorm buffers have new ones).
    let values = |dir: &std::path::Path| -> Vec<_> {
        snapshot_files(dir)
            .iter()
            .map(|n| bits(&shadow_from_file(&template(), dir.join(n)).unwrap()))
            .collect()
    };
    let values_at_20 = values(&dir);

    // A crash after step 20's files, before its index: the index on disk is step 15's.
    std::fs::write(posthoc.index_file(), index_at_15.unwrap()).unwrap();
    let reopened = PostHocEma::new(Net::new(&device), config.clone(), &dir).unwrap();
    assert_eq!(
        listed(&reopened),
        expected,
        "the unlisted step-20 files are adopted"
    );
    assert_eq!(PostHocSnapshots::open(&dir).unwrap().snapshots().len(), 8);

    // Resumed from the step-10 checkpoint: steps 11-20 again.
    let mut resumed = reopened.load_record(checkpoint.unwrap());
    assert_eq!(resumed.num_updates(), 10);
    for step in 11..=20u64 {
        let live = resumed.model().clone();
        *resumed.model_mut() = sgd(live, &device);
        resumed.update().unwrap();
        if step == 15 {
            // Step 15 replaced, step 20 set aside until it is written again.
            assert_eq!(listed(&resumed), expected[..6].to_vec());
            assert_eq!(snapshot_files(&dir).len(), 6);
            assert_eq!(snapshot_files(&dir.join("superseded")).len(), 2);
        }
    }
    assert_eq!(listed(&resumed), expected);
    assert!(
        values(&dir) == values_at_20,
        "the resumed run wrote the same snapshots"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A snapshot that fails part-way (profile 0 written, profile 1 blocked) fails the update as a
/// whole: the averages and the counter are as before, the index lists nothing new, no temporary
/// file is left, and the same update succeeds once the disk is fixed, giving the averages and
/// snapshots of an update that never failed (the same averages cloned before and updated).
#[test]
fn a_failed_snapshot_fails_the_whole_update() {
    let dir = scratch("fault");
    let mut posthoc = train(&dir, PostHocConfig::new().with_snapshot_every(5), 9);
    let index = std::fs::read(posthoc.index_file()).unwrap();
    let files: Vec<String> = snapshot_files(&dir);
    let before: Vec<_> = (0..2)
        .map(|k| bits(posthoc.shadow_of(k).unwrap()))
        .collect();
    // Step 10's second file is blocked by a directory: the rename onto it fails.
    let blocked = dir.join("snapshot-000000000010-p1.bpk");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let device = Device::flex().autodiff();
    let live = posthoc.model().clone();
    *posthoc.model_mut() = sgd(live, &device);
    // What the update gives when nothing fails: the same averages, updated without snapshots.
    let mut reference = posthoc.averages().clone();
    reference.update().unwrap();
    let err = posthoc.update().unwrap_err();
    assert!(
        matches!(
            err,
            EmaError::Io {
                operation: "write",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(posthoc.num_updates(), 9, "the update was undone");
    let after: Vec<_> = (0..2)
        .map(|k| bits(posthoc.shadow_of(k).unwrap()))
        .collect();
    assert_eq!(after, before, "the averages were put back");
    assert_eq!(std::fs::read(posthoc.index_file()).unwrap(), index);
    assert_eq!(listed(&posthoc), vec![(5, 0), (5, 1)]);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Retried once the disk is fixed: the same state as a run that never failed.
    std::fs::remove_dir_all(&blocked).unwrap();
    posthoc.update().unwrap();
    assert_eq!(listed(&posthoc), vec![(5, 0), (5, 1), (10, 0), (10, 1)]);
    assert!(files.iter().all(|f| dir.join(f).exists()));
    for k in 0..2 {
        let want = bits(reference.shadow_of(k).unwrap());
        assert_eq!(bits(posthoc.shadow_of(k).unwrap()), want);
        let file = dir.join(format!("snapshot-000000000010-p{k}.bpk"));
        assert_eq!(bits(&shadow_from_file(&template(), file).unwrap()), want);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// f16 snapshots take half the disk and synthesize within f16's rounding.
#[test]
fn f16_snapshots_halve_the_disk() {
    let (d32, d16) = (scratch("f32"), scratch("f16"));
    let run = |dir: &std::path::Path, dtype: SnapshotDType| {
        let mut walk = Walk::new(4096);
        let model = Scalar::new(walk.step(), &Device::flex());
        let config = PostHocConfig::new()
            .with_snapshot_every(10)
            .with_snapshot_dtype(dtype);
        let mut posthoc = PostHocEma::new(model.clone(), config, dir).unwrap();
        for _ in 0..30 {
            let values = walk.step().to_vec();
            posthoc.model_mut().set(&values);
            posthoc.update().unwrap();
        }
        PostHocSnapshots::open(dir)
            .unwrap()
            .synthesize(&model, Width::SigmaRel(0.08), None)
            .unwrap()
    };
    let a = run(&d32, SnapshotDType::F32);
    let b = run(&d16, SnapshotDType::F16);
    let size = |d: &std::path::Path| -> u64 {
        snapshot_files(d)
            .iter()
            .map(|n| std::fs::metadata(d.join(n)).unwrap().len())
            .sum()
    };
    let (s32, s16) = (size(&d32), size(&d16));
    println!("6 snapshots of 4096 weights: f32 {s32} bytes, f16 {s16} bytes");
    assert!(s16 * 10 < s32 * 6, "{s16} vs {s32}");
    let (a, b) = (
        common::values(&a.value.val()),
        common::values(&b.value.val()),
    );
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
        .fold(0.0f32, f32::max);
    println!("largest difference of the syntheses: {worst:e}");
    assert!(worst > 0.0 && worst < 5e-3, "{worst}");
    std::fs::remove_dir_all(d32).unwrap();
    std::fs::remove_dir_all(d16).unwrap();
}

#[test]
fn every_post_hoc_error_is_clear() {
    let dir = scratch("errors");
    // Not a snapshot directory.
    let err = PostHocSnapshots::open(&dir).unwrap_err();
    assert!(matches!(err, EmaError::NoSnapshots { .. }), "{err:?}");
    // No snapshot yet.
    let config = PostHocConfig::new().with_snapshot_every(5);
    let early = train(&dir, config.clone(), 3);
    let err = early
        .posthoc_snapshots()
        .synthesize(&template(), Width::SigmaRel(0.07), None)
        .unwrap_err();
    assert!(matches!(err, EmaError::NoSnapshots { .. }), "{err:?}");
    drop(early);
    std::fs::remove_dir_all(&dir).unwrap();

    let posthoc = train(&dir, config.clone(), 10);
    let reader = posthoc.posthoc_snapshots();
    // A step without snapshots.
    let err = reader
        .synthesize(&template(), Width::SigmaRel(0.07), Some(7))
        .unwrap_err();
    assert_eq!(
        err,
        EmaError::NoSnapshotAtStep {
            step: 7,
            available: "5, 10".into()
        }
    );
    // A width out of range.
    let err = reader.coefficients(Width::SigmaRel(0.5), None).unwrap_err();
    assert!(
        matches!(
            err,
            EmaError::InvalidConfig {
                field: "sigma_rel",
                ..
            }
        ),
        "{err:?}"
    );
    // Another architecture.
    let other = burn::nn::LinearConfig::new(4, 8).init(&Device::flex());
    let err = reader
        .synthesize(&other, Width::SigmaRel(0.07), None)
        .unwrap_err();
    assert!(matches!(err, EmaError::FileMismatch { .. }), "{err:?}");
    // A directory of another setup.
    let err = PostHocEma::new(
        template(),
        config.clone().with_sigma_rels(vec![0.05, 0.15]),
        &dir,
    )
    .unwrap_err();
    assert!(
        matches!(err, EmaError::InvalidConfig { field: "dir", .. }),
        "{err:?}"
    );
    // Bad configurations.
    for bad in [
        config.clone().with_sigma_rels(vec![]),
        config.clone().with_sigma_rels(vec![0.1, 0.1]),
        config.clone().with_sigma_rels(vec![0.3]),
        config.clone().with_snapshot_every(0),
        config.clone().with_update_every(2).with_snapshot_every(5),
    ] {
        assert!(
            matches!(bad.validate(), Err(EmaError::InvalidConfig { .. })),
            "{bad:?}"
        );
    }
    // A snapshot before the first update.
    let other_dir = scratch("errors-early");
    let mut fresh = PostHocEma::new(template(), config.clone(), &other_dir).unwrap();
    assert!(matches!(
        fresh.snapshot(),
        Err(EmaError::InvalidConfig { .. })
    ));
    std::fs::remove_dir_all(other_dir).unwrap();
    // An ill-conditioned solve: two profiles a hair apart.
    let close = scratch("errors-close");
    let posthoc = train(&close, config.with_sigma_rels(vec![0.1, 0.100_000_01]), 10);
    let err = posthoc
        .posthoc_snapshots()
        .synthesize(&template(), Width::SigmaRel(0.05), None)
        .unwrap_err();
    assert!(matches!(err, EmaError::IllConditioned { .. }), "{err:?}");
    println!("{err}");
    std::fs::remove_dir_all(close).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// `PostHocConfig` speaks `EmaConfig`'s vocabulary: its non-finite policy and its validation
/// weights reach every profile.
#[test]
fn post_hoc_profiles_take_the_non_finite_policy_and_the_eval_weights() {
    use burn_ema::{EmaError, EvalWeights, NonFinite};
    let dir = scratch("vocabulary");
    let device = Device::flex();
    let config = PostHocConfig::new()
        .with_snapshot_every(10)
        .with_non_finite(NonFinite::Error)
        .with_eval_weights(EvalWeights::Live);
    let mut ema = PostHocEma::new(Scalar::new(&[1.0], &device), config, dir.join("s")).unwrap();
    for k in 0..ema.num_averages() {
        let profile = ema.config_of(k).unwrap();
        assert_eq!(
            (profile.options.non_finite, profile.options.eval_weights),
            (NonFinite::Error, EvalWeights::Live)
        );
    }
    ema.model_mut().set(&[f32::NAN]);
    let err = ema.update().unwrap_err();
    assert!(matches!(err, EmaError::NonFinite { .. }), "{err}");
    assert_eq!(ema.num_updates(), 0);
    ema.model_mut().set(&[2.0]);
    ema.update().unwrap();
    assert_eq!(
        common::values(&ema.eval_model().value.val()),
        vec![2.0],
        "the live weights"
    );
}

/// Each profile's average saves as the bare model in either shadow format (profile 1 is not
/// profile 0's file); the state formats are refused by name, as an index out of range is.
#[test]
fn a_profile_saves_as_the_bare_model_in_either_shadow_format() {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let dir = scratch("save");
    let posthoc = train(&dir, PostHocConfig::new().with_snapshot_every(5), 7);
    let shadows: Vec<_> = (0..2)
        .map(|k| bits(posthoc.shadow_of(k).unwrap()))
        .collect();
    assert_ne!(
        shadows[0], shadows[1],
        "the two profiles must differ for this test"
    );
    for (k, want) in shadows.iter().enumerate() {
        let path = posthoc
            .save(k, dir.join(format!("profile-{k}")), EmaFile::Shadow)
            .unwrap();
        assert_eq!(path, dir.join(format!("profile-{k}.bpk")));
        assert_eq!(&bits(&template().try_load_file(&path).unwrap()), want);

        let path = posthoc
            .save(
                k,
                dir.join(format!("profile-{k}")),
                EmaFile::ShadowSafetensors,
            )
            .unwrap();
        let mut bare = template();
        let result = bare
            .load_from(&mut SafetensorsStore::from_file(&path))
            .unwrap();
        assert!(result.missing.is_empty(), "{result:?}");
        assert_eq!(&bits(&bare), want);
    }
    for format in [EmaFile::State, EmaFile::StateWithModel, EmaFile::TensorFlow] {
        match posthoc.save(0, dir.join("state"), format) {
            Err(EmaError::InvalidConfig { field, .. }) => assert_eq!(field, "format"),
            other => panic!("{format:?}: {other:?}"),
        }
    }
    assert!(posthoc.save(2, dir.join("none"), EmaFile::Shadow).is_err());
    assert!(!dir.join("state.bpk").exists() && !dir.join("none.bpk").exists());
}

/// An index whose snapshot names lead out of the folder (`../x`, `/x`) is refused when the
/// folder is opened: a synthesis would otherwise read whatever file the index names.
#[test]
fn an_index_naming_files_outside_its_folder_is_refused() {
    let scratch = scratch("outside");
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy/posthoc");
    let dir = scratch.join("snapshots");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let index = std::fs::read_to_string(dir.join("index.json")).unwrap();
    PostHocSnapshots::open(&dir).expect("the committed folder opens");
    let first = "snapshot-000000000002-p0.bpk";
    std::fs::rename(dir.join(first), scratch.join(first)).unwrap();
    let outside = scratch.join(first).display().to_string();
    for name in [format!("../{first}"), outside] {
        std::fs::write(dir.join("index.json"), index.replace(first, &name)).unwrap();
        let err = PostHocSnapshots::open(&dir).expect_err(&name);
        assert!(
            matches!(&err, EmaError::CorruptFile { file, problem, .. }
                if file == &dir.join("index.json") && problem.contains(&name)),
            "{name}: {err:?}"
        );
    }
}
