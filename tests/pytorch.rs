//! EMA weights from PyTorch checkpoints: timm, ema-pytorch, `AveragedModel`, diffusers.
//!
//! The fixtures in `tests/fixtures/pytorch/` were written by those libraries themselves
//! (`make_pytorch_ema.py`); `expected.json` holds the EMA weights, live weights and counters as
//! the libraries computed them, in PyTorch's names and layouts. Feature `pytorch`.
#![cfg(feature = "pytorch")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, PytorchEma, load_pytorch_ema,
};
use common::{Net, bits, floats};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch")
        .join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn flatten(value: &serde_json::Value, out: &mut Vec<f32>) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        v => out.push(v.as_f64().unwrap() as f32),
    }
}

/// The float tensors of `expected.json`'s `[library][part]`, by PyTorch name, flattened.
fn torch_side(library: &str, part: &str) -> BTreeMap<String, Vec<f32>> {
    let expected = expected();
    let map = expected[library][part].as_object().unwrap();
    map.iter()
        .map(|(name, v)| {
            let mut out = vec![];
            flatten(v, &mut out);
            (name.clone(), out)
        })
        .collect()
}

/// A `Net`'s float tensors in PyTorch's names and layouts: linear weights transposed
/// (`[out, in]`), the norm's `gamma`/`beta` as `weight`/`bias`. Written out by hand, so that it
/// does not share code with the loader it checks.
fn as_torch(net: &Net) -> BTreeMap<String, Vec<f32>> {
    let transposed = |l: &Linear| {
        let w = l.weight.val();
        let [i, o] = w.dims();
        let v = common::values(&w);
        (0..o)
            .flat_map(|r| (0..i).map(move |c| (r, c)))
            .map(|(r, c)| v[c * o + r])
            .collect::<Vec<f32>>()
    };
    let burn: BTreeMap<String, Vec<f32>> = floats(net).into_iter().collect();
    BTreeMap::from([
        ("fc1.weight".into(), transposed(&net.fc1)),
        ("fc1.bias".into(), burn["fc1.bias"].clone()),
        ("bn.weight".into(), burn["bn.gamma"].clone()),
        ("bn.bias".into(), burn["bn.beta"].clone()),
        ("bn.running_mean".into(), burn["bn.running_mean"].clone()),
        ("bn.running_var".into(), burn["bn.running_var"].clone()),
        ("fc2.weight".into(), transposed(&net.fc2)),
        ("fc2.bias".into(), burn["fc2.bias"].clone()),
    ])
}

fn device() -> Device {
    Device::flex()
}

const PRESETS: [(PytorchEma, &str, &str); 4] = [
    (PytorchEma::Timm, "timm", "timm.pth.tar"),
    (PytorchEma::EmaPytorch, "ema-pytorch", "ema_pytorch.pt"),
    (
        PytorchEma::AveragedModel,
        "AveragedModel",
        "averaged_model.pt",
    ),
    (PytorchEma::Diffusers, "diffusers", "diffusers_ema"),
];

#[test]
fn each_library_s_ema_weights_load_into_the_bare_model() {
    for (preset, library, file) in PRESETS {
        let model = Net::new(&device());
        let loaded = load_pytorch_ema(&model, fixture(file), preset).unwrap();
        assert_eq!(as_torch(&loaded), torch_side(library, "ema"), "{library}");
        // And the EMA is not the live model (the fixture would prove nothing otherwise).
        if let Some(live) = expected()[library]["live"].as_object() {
            assert!(!live.is_empty());
            assert_ne!(as_torch(&loaded), torch_side(library, "live"), "{library}");
        }
    }
    // diffusers: the safetensors file itself works too.
    let file = fixture("diffusers_ema/diffusion_pytorch_model.safetensors");
    let loaded = load_pytorch_ema(&Net::new(&device()), file, PytorchEma::Diffusers).unwrap();
    assert_eq!(as_torch(&loaded), torch_side("diffusers", "ema"));
    // What diffusers averaged (its parameters, not buffers) is what its file holds.
    let params: Vec<Vec<f32>> = expected()["diffusers"]["ema_parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let mut out = vec![];
            flatten(v, &mut out);
            out
        })
        .collect();
    let torch = as_torch(&loaded);
    let order = [
        "fc1.weight",
        "fc1.bias",
        "bn.weight",
        "bn.bias",
        "fc2.weight",
        "fc2.bias",
    ];
    for (name, values) in order.iter().zip(&params) {
        assert_eq!(&torch[*name], values, "{name}");
    }
}

#[test]
fn an_ema_module_resumes_from_each_library() {
    let ad = device().autodiff();
    for (preset, library, file) in PRESETS {
        let mut ema = EmaModule::new(Net::new(&ad), EmaConfig::new(0.9)).unwrap();
        let live_before = as_torch(&ema.model().valid());
        ema.load(fixture(file), EmaFile::Pytorch(preset)).unwrap();
        assert_eq!(
            as_torch(ema.shadow()),
            torch_side(library, "ema"),
            "{library}"
        );
        match expected()[library]["live"].as_object() {
            Some(_) => assert_eq!(
                as_torch(&ema.model().valid()),
                torch_side(library, "live"),
                "{library}: the live weights"
            ),
            None => assert_eq!(as_torch(&ema.model().valid()), live_before, "{library}"),
        }
        let counter = expected()[library]["num_updates"].as_u64().unwrap_or(0);
        assert_eq!(ema.num_updates(), counter, "{library}");
        // The live model stays trainable.
        assert!(ema.model().fc1.weight.val().is_require_grad(), "{library}");
        // And the EMA goes on from there.
        ema.update().unwrap();
        assert_eq!(ema.num_updates(), counter + 1);
    }
}

#[derive(Module, Debug)]
struct Wider {
    fc1: Linear,
    fc2: Linear,
}

#[test]
fn checkpoints_without_ema_weights_or_of_another_model_are_errors_that_change_nothing() {
    let ad = device().autodiff();
    let mut ema = EmaModule::new(Net::new(&ad), EmaConfig::new(0.9)).unwrap();
    let (shadow, live) = (bits(ema.shadow()), bits(&ema.model().valid()));

    // timm without `--model-ema`.
    let err = ema
        .load(
            fixture("timm_no_ema.pth.tar"),
            EmaFile::Pytorch(PytorchEma::Timm),
        )
        .unwrap_err();
    assert!(
        matches!(&err, EmaError::NotAnEmaFile { problem, .. } if problem.contains("state_dict_ema")),
        "{err:?}"
    );
    // The wrong preset: ema-pytorch's keys where AveragedModel's are expected, and back.
    for (preset, file) in [
        (PytorchEma::AveragedModel, "ema_pytorch.pt"),
        (PytorchEma::EmaPytorch, "averaged_model.pt"),
    ] {
        let err = ema
            .load(fixture(file), EmaFile::Pytorch(preset))
            .unwrap_err();
        assert!(matches!(err, EmaError::NotAnEmaFile { .. }), "{err:?}");
        assert!(err.to_string().contains(file), "{err}");
    }
    // Not a checkpoint at all; a missing one.
    let err = ema
        .load(
            fixture("expected.json"),
            EmaFile::Pytorch(PytorchEma::EmaPytorch),
        )
        .unwrap_err();
    assert!(matches!(err, EmaError::CorruptFile { .. }), "{err:?}");
    let err = ema
        .load(fixture("missing.pt"), EmaFile::Pytorch(PytorchEma::Timm))
        .unwrap_err();
    assert!(matches!(err, EmaError::Io { .. }), "{err:?}");
    // Another architecture: the first tensor that differs, by its name in the checkpoint.
    let wider = Wider {
        fc1: LinearConfig::new(4, 16).init(&device()),
        fc2: LinearConfig::new(16, 2).init(&device()),
    };
    let err = load_pytorch_ema(
        &wider,
        fixture("averaged_model.pt"),
        PytorchEma::AveragedModel,
    )
    .unwrap_err();
    match &err {
        EmaError::FileMismatch {
            tensor, problem, ..
        } => {
            assert!(
                tensor.starts_with("fc") || tensor.starts_with("bn"),
                "{tensor}"
            );
            assert!(
                problem.contains("shape") || problem.contains("does not"),
                "{problem}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bits(ema.shadow()), shadow);
    assert_eq!(bits(&ema.model().valid()), live);
    assert_eq!(ema.num_updates(), 0);
}
