//! Saving, exporting and resuming: exact resume, shadow files the bare model loads, safetensors,
//! TensorFlow's names, and bad files that change nothing.

mod common;
#[cfg(unix)]
#[path = "files/disk_full.rs"]
mod disk_full;
#[cfg(unix)]
#[path = "files/kill_resume.rs"]
mod kill_resume;

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn_ema::{
    EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, Schedule, ShadowDType,
    TF_SHADOW_SUFFIX, shadow_from_file, shadow_from_tf_style,
};
use common::{Net, Scalar, bits, floats, sgd_step};

fn scratch(name: &str) -> common::Scratch {
    common::Scratch::new(&format!("files-{name}"))
}

fn device() -> Device {
    Device::flex()
}

fn ad() -> Device {
    device().autodiff()
}

/// Warmup on, so that a lost or reset counter changes the result.
fn config() -> EmaConfig {
    EmaConfig::new(0.999).with_schedule(Schedule::TensorFlow)
}

/// Two nets with the same initial weights.
fn twin_nets() -> (Net, Net) {
    let a = Net::new(&ad());
    let b = Net::new(&ad()).load_record(a.valid().into_record());
    (a, b)
}

fn train(mut ema: EmaModule<Net>, steps: usize) -> EmaModule<Net> {
    for _ in 0..steps {
        ema = sgd_step(ema, &ad());
        ema.update().unwrap();
    }
    ema
}

fn trained_ema(steps: usize) -> EmaModule<Net> {
    train(EmaModule::new(Net::new(&ad()), config()).unwrap(), steps)
}

#[test]
fn resume_from_a_self_contained_file_is_bitwise_exact() {
    let dir = scratch("resume-full");
    let (a, b) = twin_nets();
    let uninterrupted = train(EmaModule::new(a, config()).unwrap(), 12);

    let first_half = train(EmaModule::new(b, config()).unwrap(), 6);
    let file = first_half
        .save(dir.join("ema"), EmaFile::StateWithModel)
        .unwrap();
    assert_eq!(file, dir.join("ema.bpk"));
    drop(first_half);
    // A fresh process: a freshly initialised model, everything else from the file.
    let resumed = EmaModule::from_file(Net::new(&ad()), &file).unwrap();
    assert_eq!(resumed.num_updates(), 6);
    assert_eq!(format!("{:?}", resumed.config()), format!("{:?}", config()));
    let resumed = train(resumed, 6);

    assert_eq!(resumed.num_updates(), 12);
    assert_eq!(bits(resumed.shadow()), bits(uninterrupted.shadow()));
    assert_eq!(bits(resumed.model()), bits(uninterrupted.model()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resume_with_the_model_checkpointed_elsewhere_is_bitwise_exact() {
    let dir = scratch("resume-shadow");
    let (a, b) = twin_nets();
    let uninterrupted = train(EmaModule::new(a, config()).unwrap(), 10);

    let first_half = train(EmaModule::new(b, config()).unwrap(), 5);
    let file = first_half
        .save(dir.join("ema.bpk"), EmaFile::State)
        .unwrap();
    let model_file = dir.join("model.bpk");
    first_half.model().clone().save_file(&model_file).unwrap();
    let size_without_model = std::fs::metadata(&file).unwrap().len();
    let with_model = first_half
        .save(dir.join("full.bpk"), EmaFile::StateWithModel)
        .unwrap();
    assert!(
        std::fs::metadata(with_model).unwrap().len() > size_without_model * 3 / 2,
        "the default file does not store the live model"
    );
    drop(first_half);

    let model = Net::new(&ad()).try_load_file(&model_file).unwrap();
    let mut resumed = EmaModule::new(model, EmaConfig::new(0.5)).unwrap();
    resumed.load(&file, EmaFile::State).unwrap();
    assert_eq!(
        format!("{:?}", resumed.config()),
        format!("{:?}", config()),
        "the file's configuration is restored"
    );
    let resumed = train(resumed, 5);
    assert_eq!(bits(resumed.shadow()), bits(uninterrupted.shadow()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_shadow_file_loads_into_the_bare_model_with_burns_load_file() {
    let dir = scratch("shadow");
    let ema = trained_ema(4);
    let file = ema.save(dir.join("model-ema"), EmaFile::Shadow).unwrap();
    assert_eq!(file, dir.join("model-ema.bpk"));

    // No EMA code: Burn's own loading into the plain model.
    let bare = Net::new(&device()).try_load_file(&file).unwrap();
    assert_eq!(bits(&bare), bits(ema.shadow()));
    assert_ne!(bits(&bare), bits(&ema.model().valid()));
    // The checked loader agrees.
    let checked = shadow_from_file(&Net::new(&device()), &file).unwrap();
    assert_eq!(bits(&checked), bits(ema.shadow()));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Burn's file-backed tensors read their file by path on first access; a loaded EMA must hold
/// its values, not a reference to a file that is replaced or deleted afterwards.
#[test]
fn what_was_loaded_does_not_depend_on_the_file_afterwards() {
    let dir = scratch("detached");
    let (ema, other) = (trained_ema(3), trained_ema(5));
    let state = ema.save(dir.join("ema.bpk"), EmaFile::State).unwrap();
    let shadow = ema.save(dir.join("shadow.bpk"), EmaFile::Shadow).unwrap();
    let tf = ema.save(dir.join("tf"), EmaFile::TensorFlow).unwrap();

    let mut resumed = EmaModule::new(Net::new(&ad()), config()).unwrap();
    resumed.load(&state, EmaFile::State).unwrap();
    let bare = shadow_from_file(&Net::new(&device()), &shadow).unwrap();
    let from_tf = shadow_from_tf_style(&Net::new(&device()), &tf).unwrap();
    // Each file replaced by another EMA's, then deleted.
    other.save(&state, EmaFile::State).unwrap();
    other.save(&shadow, EmaFile::Shadow).unwrap();
    other.save(&tf, EmaFile::TensorFlow).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(bits(resumed.shadow()), bits(ema.shadow()));
    assert_eq!(bits(&bare), bits(ema.shadow()));
    assert_eq!(bits(&from_tf), bits(ema.shadow()));
    resumed.update().unwrap();
}

/// The checksum stored in a file, whatever its format.
fn stored_checksum(file: &Path) -> String {
    const KEY: &str = "burn_ema.tensor_checksum";
    if file.extension().unwrap() == "bpk" {
        let reader = burn::store::burn_pack::Reader::from_file(file).unwrap();
        return reader.metadata()[KEY].clone();
    }
    let bytes = std::fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"][KEY].as_str().unwrap().to_string()
}

/// The checksum says what the tensors hold, not how they were stored: the same shadow from Flex
/// and from NdArray, in burnpack and in safetensors, has one checksum, and each file loads.
#[test]
#[allow(deprecated)]
fn the_checksum_is_the_same_across_formats_and_backends() {
    let dir = scratch("checksum");
    let on_flex = trained_ema(3);
    let shadow_on_ndarray = on_flex.shadow().clone().to_device(&Device::ndarray());
    let on_ndarray = EmaModule::new(shadow_on_ndarray, config()).unwrap();
    assert_eq!(bits(on_ndarray.shadow()), bits(on_flex.shadow()));
    let files = [
        on_flex.save(dir.join("flex.bpk"), EmaFile::Shadow).unwrap(),
        on_flex
            .save(dir.join("flex"), EmaFile::ShadowSafetensors)
            .unwrap(),
        on_ndarray
            .save(dir.join("ndarray.bpk"), EmaFile::Shadow)
            .unwrap(),
        on_ndarray
            .save(dir.join("ndarray"), EmaFile::ShadowSafetensors)
            .unwrap(),
    ];
    let sums: Vec<String> = files.iter().map(|f| stored_checksum(f)).collect();
    assert!(sums.iter().all(|s| s == &sums[0]), "{sums:?}");
    // And differs for other values.
    let other = trained_ema(4)
        .save(dir.join("other.bpk"), EmaFile::Shadow)
        .unwrap();
    assert_ne!(stored_checksum(&other), sums[0]);
    for file in &files[..] {
        let loaded = if file.extension().unwrap() == "bpk" {
            shadow_from_file(&Net::new(&device()), file).unwrap()
        } else {
            let mut net = Net::new(&device());
            let mut store = burn::store::SafetensorsStore::from_file(file);
            burn::store::ModuleSnapshot::load_from(&mut net, &mut store).unwrap();
            net
        };
        assert_eq!(bits(&loaded), bits(on_flex.shadow()), "{file:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A state file from a newer burn-ema (another format tag) is refused by name, not misread.
#[test]
fn a_file_of_a_newer_format_is_refused_by_name() {
    let dir = scratch("newer");
    let state = trained_ema(2)
        .save(dir.join("ema.bpk"), EmaFile::State)
        .unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    let tag = b"ema-state/2";
    let at = bytes.windows(tag.len()).position(|w| w == tag).unwrap();
    bytes[at + tag.len() - 1] = b'3';
    let newer = dir.join("newer.bpk");
    std::fs::write(&newer, &bytes).unwrap();
    let mut ema = trained_ema(1);
    let before = bits(ema.shadow());
    for err in [
        ema.load(&newer, EmaFile::State).unwrap_err(),
        EmaModule::from_file(Net::new(&ad()), &newer).unwrap_err(),
    ] {
        match &err {
            EmaError::UnsupportedFormat {
                file,
                found,
                supported,
            } => {
                assert_eq!(file, &newer);
                assert_eq!(found, "ema-state/3");
                assert_eq!(*supported, "ema-state/1, ema-state/2");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_unchanged(&ema, &before, 1);
    // The untouched file loads.
    ema.load(&state, EmaFile::State).unwrap();
    assert_eq!(ema.num_updates(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_f32_shadow_of_a_half_model_converts_on_load() {
    let dir = scratch("half");
    let half = |values: Vec<f32>| Scalar {
        value: Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(values, [3]),
            (&device(), DType::F16),
        )),
    };
    let mut ema = EmaModule::new(half(vec![1.0, 2.0, 3.0]), EmaConfig::new(0.9)).unwrap();
    ema.model_mut().set(&[2.0, 4.0, 6.0]);
    ema.update().unwrap();
    assert_eq!(ema.shadow().value.val().dtype(), DType::F32);
    let file = ema.save(dir.join("ema.bpk"), EmaFile::Shadow).unwrap();
    let loaded = shadow_from_file(&half(vec![0.0; 3]), &file).unwrap();
    assert_eq!(loaded.value.val().dtype(), DType::F16);
    // 1 + 0.1 * 1 = 1.1 and so on, rounded to f16.
    let expected: Vec<f32> = [1.1f32, 2.2, 3.3]
        .iter()
        .map(|&v| burn::tensor::f16::from_f32(v).to_f32())
        .collect();
    let got = loaded
        .value
        .val()
        .cast(burn::tensor::FloatDType::F32)
        .into_data();
    assert_eq!(got.try_to_vec::<f32>().unwrap(), expected);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_safetensors_export_loads_with_burn_store() {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let dir = scratch("safetensors");
    let ema = trained_ema(3);
    let file = ema
        .save(dir.join("model-ema"), EmaFile::ShadowSafetensors)
        .unwrap();
    assert_eq!(file, dir.join("model-ema.safetensors"));

    let mut bare = Net::new(&device());
    let result = bare
        .load_from(&mut SafetensorsStore::from_file(&file))
        .unwrap();
    assert!(result.missing.is_empty(), "{result:?}");
    assert_eq!(bits(&bare), bits(ema.shadow()));
    // Keys are the model's own paths.
    let bytes = std::fs::read(&file).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .len();
    assert_eq!(names, floats(ema.shadow()).len());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tensorflow_names_round_trip_and_load_into_a_bare_model() {
    let dir = scratch("tf");
    let ema = trained_ema(5);
    let file = ema.save(dir.join("tf"), EmaFile::TensorFlow).unwrap();

    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    assert!(names.contains(&"fc1.weight".to_string()), "{names:?}");
    assert!(
        names.contains(&format!("fc1.weight{TF_SHADOW_SUFFIX}")),
        "{names:?}"
    );
    assert!(names.contains(&format!("bn.running_mean{TF_SHADOW_SUFFIX}")));
    assert_eq!(names.len(), 2 * floats(ema.shadow()).len());

    // Into a plain model: the shadow values, the name mapping done for the user.
    let bare = shadow_from_tf_style(&Net::new(&device()), &file).unwrap();
    assert_eq!(bits(&bare), bits(ema.shadow()));

    // Into an EmaModule: both sides and the counter.
    let mut other = EmaModule::new(Net::new(&ad()), config()).unwrap();
    other.load(&file, EmaFile::TensorFlow).unwrap();
    assert_eq!(bits(other.shadow()), bits(ema.shadow()));
    assert_eq!(bits(&other.model().valid()), bits(&ema.model().valid()));
    assert_eq!(other.num_updates(), 5);
    // The live side is still trainable after the load.
    assert!(other.model().fc1.weight.val().is_require_grad());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Another architecture with some of Net's names.
#[derive(Module, Debug)]
struct Wider {
    fc1: Linear,
    fc2: Linear,
}

fn assert_unchanged(ema: &EmaModule<Net>, before: &[(String, Vec<u32>)], updates: u64) {
    assert_eq!(bits(ema.shadow()), before);
    assert_eq!(ema.num_updates(), updates);
}

#[test]
fn bad_files_are_errors_that_name_the_file_and_change_nothing() {
    let dir = scratch("bad");
    let good = trained_ema(3)
        .save(dir.join("good.bpk"), EmaFile::State)
        .unwrap();
    let mut ema = trained_ema(2);
    let before = bits(ema.shadow());

    // Missing.
    let err = ema
        .load(dir.join("missing.bpk"), EmaFile::State)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmaError::Io {
                operation: "read",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.bpk"), "{err}");

    // Truncated.
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.bpk");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = ema.load(&truncated, EmaFile::State).unwrap_err();
    assert!(matches!(err, EmaError::CorruptFile { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated.bpk"), "{err}");

    // A flipped bit in the tensor data: only the checksum can tell.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    let corrupted = dir.join("corrupted.bpk");
    std::fs::write(&corrupted, &flipped).unwrap();
    let err = ema.load(&corrupted, EmaFile::State).unwrap_err();
    assert!(
        matches!(&err, EmaError::CorruptFile { problem, .. } if problem.contains("checksum")),
        "{err:?}"
    );

    // Not a burnpack file at all.
    let garbage = dir.join("garbage.bpk");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    assert!(matches!(
        ema.load(&garbage, EmaFile::State).unwrap_err(),
        EmaError::CorruptFile { .. }
    ));

    // A bare model file: no EMA part.
    let bare = ema.save(dir.join("bare.bpk"), EmaFile::Shadow).unwrap();
    let err = ema.load(&bare, EmaFile::State).unwrap_err();
    assert!(matches!(err, EmaError::NotAnEmaFile { .. }), "{err:?}");

    // Another architecture.
    let wider = EmaModule::new(
        Wider {
            fc1: LinearConfig::new(4, 16).init(&device()),
            fc2: LinearConfig::new(16, 2).init(&device()),
        },
        config(),
    )
    .unwrap();
    let wider_file = wider.save(dir.join("wider.bpk"), EmaFile::State).unwrap();
    let err = ema.load(&wider_file, EmaFile::State).unwrap_err();
    match &err {
        EmaError::FileMismatch {
            file,
            tensor,
            problem,
        } => {
            assert_eq!(file, &wider_file);
            assert!(tensor.starts_with("shadow."), "{tensor}");
            assert!(
                problem.contains("shape") || problem.contains("does not"),
                "{problem}"
            );
        }
        other => panic!("{other:?}"),
    }

    // An element type that does not fit: a record (no stored configuration) of an f64 shadow,
    // into an EmaModule whose shadow is f32.
    let wide = EmaModule::new(
        Net::new(&ad()),
        config().with_shadow_dtype(ShadowDType::F64),
    )
    .unwrap();
    let wide_file = dir.join("f64.bpk");
    wide.clone().save_file(&wide_file).unwrap();
    let err = ema.load(&wide_file, EmaFile::State).unwrap_err();
    assert!(
        matches!(&err, EmaError::FileMismatch { problem, .. } if problem.contains("F64")),
        "{err:?}"
    );
    // A state file stores its configuration: loading it builds the f64 shadow it asks for.
    let state = wide
        .save(dir.join("f64-state.bpk"), EmaFile::State)
        .unwrap();
    let restored = EmaModule::from_file(Net::new(&ad()), &state).unwrap();
    assert_eq!(restored.shadow().fc1.weight.val().dtype(), DType::F64);

    // Through all of it, nothing changed.
    assert_unchanged(&ema, &before, 2);
    // And the good file still loads.
    ema.load(&good, EmaFile::State).unwrap();
    assert_eq!(ema.num_updates(), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_save_leaves_the_previous_file_intact() {
    let dir = scratch("atomic");
    let ema = trained_ema(2);
    let file = ema.save(dir.join("ema.bpk"), EmaFile::State).unwrap();
    let before = std::fs::read(&file).unwrap();
    // The destination is taken by a directory: the rename fails after the data was written.
    let blocked = dir.join("blocked.bpk");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let err = ema.save(&blocked, EmaFile::State).unwrap_err();
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
    assert!(blocked.join("keep").exists());
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Overwriting works and replaces the contents.
    train(ema, 1).save(&file, EmaFile::State).unwrap();
    assert_ne!(std::fs::read(&file).unwrap(), before);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A swap guard leaked with `std::mem::forget` leaves nothing behind: `shadow()`, every save,
/// `model()` and the next `update()` see the true shadow and the live weights, checked against
/// the arithmetic done here (decay 0.5 on values exact in binary). Before 1.0 the weights were
/// exchanged in place and a leaked guard left the live weights where the shadow belongs.
#[test]
fn a_leaked_swap_guard_changes_no_read_no_save_and_no_update() {
    let dir = scratch("leaked-swap");
    let device = device();
    let mut ema = EmaModule::new(Scalar::new(&[0.0, 2.0], &device), EmaConfig::new(0.5)).unwrap();
    ema.model_mut().set(&[1.0, 4.0]);
    ema.update().unwrap();
    // shadow = 0.5·[0, 2] + 0.5·[1, 4]
    let shadow = vec![0.5, 3.0];
    let swapped = ema.swap().unwrap();
    assert_eq!(
        common::values(&swapped.value.val()),
        shadow,
        "the guard shows the shadow"
    );
    std::mem::forget(swapped);

    assert_eq!(common::values(&ema.shadow().value.val()), shadow);
    assert_eq!(common::values(&ema.model().value.val()), vec![1.0, 4.0]);
    let bare = Scalar::new(&[0.0, 0.0], &device);
    for format in [EmaFile::Shadow, EmaFile::ShadowSafetensors] {
        let file = ema.save(dir.join(format!("{format:?}")), format).unwrap();
        let loaded = if format == EmaFile::Shadow {
            shadow_from_file(&bare, &file).unwrap()
        } else {
            let mut fresh = EmaModule::new(bare.clone(), EmaConfig::new(0.5)).unwrap();
            fresh.load(&file, format).unwrap();
            fresh.into_shadow()
        };
        assert_eq!(common::values(&loaded.value.val()), shadow, "{format:?}");
    }
    let state = ema
        .save(dir.join("state"), EmaFile::StateWithModel)
        .unwrap();
    let resumed = EmaModule::from_file(bare.clone(), &state).unwrap();
    assert_eq!(common::values(&resumed.shadow().value.val()), shadow);
    assert_eq!(common::values(&resumed.model().value.val()), vec![1.0, 4.0]);
    let tf = ema.save(dir.join("tf"), EmaFile::TensorFlow).unwrap();
    assert_eq!(
        common::values(&shadow_from_tf_style(&bare, &tf).unwrap().value.val()),
        shadow
    );

    // The next update averages the true shadow: 0.5·[0.5, 3] + 0.5·[3, 0].
    ema.model_mut().set(&[3.0, 0.0]);
    ema.update().unwrap();
    assert_eq!(common::values(&ema.shadow().value.val()), vec![1.75, 1.5]);
    assert_eq!(ema.num_updates(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_burn_record_of_an_ema_module_loads_too() {
    // What the Learner's checkpointer writes: the EmaModule's own record.
    let dir = scratch("record");
    let ema = trained_ema(4);
    let file = dir.join("checkpoint.bpk");
    ema.clone().save_file(&file).unwrap();
    let mut other = EmaModule::new(Net::new(&ad()), config()).unwrap();
    other.load(&file, EmaFile::State).unwrap();
    assert_eq!(other.num_updates(), 4);
    assert_eq!(bits(other.shadow()), bits(ema.shadow()));
    assert_eq!(bits(&other.model().valid()), bits(&ema.model().valid()));
    std::fs::remove_dir_all(dir).unwrap();
}
