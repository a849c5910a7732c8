//! Every layer burn-nn exports, averaged. The list of layers is read from burn-nn's own sources
//! (every public type that derives `Module`, found through `cargo metadata`), and the test fails
//! when one of them has no entry below, so a layer added to burn-nn cannot go unchecked. Each
//! entry builds the layer; its `EmaModule` then takes two updates of randomly perturbed weights,
//! and every float tensor of the shadow (parameters and buffers) is checked against
//! `decay·shadow + (1 − decay)·live` evaluated here in f64 from the recorded live values. A layer
//! without parameters must be refused with `EmaError::EmptyModel`, having no float tensors.
//! (A module of `tests/module.rs`, so that it links into that test binary.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::floats;
use burn::module::{Initializer, Module, ModuleMapper, Param};
use burn::nn::activation::{
    ActivationConfig, HardSwish, HardtanhConfig, LogSigmoid, Mish, RReluConfig, Relu6, SiLU,
    Tanhshrink, ThresholdConfig,
};
use burn::nn::attention::{CrossAttentionConfig, MultiHeadAttentionConfig};
use burn::nn::conv::{
    Conv1dConfig, Conv2dConfig, Conv3dConfig, ConvTranspose1dConfig, ConvTranspose2dConfig,
    ConvTranspose3dConfig, DeformConv2dConfig,
};
use burn::nn::interpolate::{Interpolate1dConfig, Interpolate2dConfig};
use burn::nn::loss::{
    BinaryCrossEntropyLossConfig, CTCLossConfig, CosineEmbeddingLossConfig, CrossEntropyLossConfig,
    GaussianNLLLossConfig, HingeEmbeddingLossConfig, HuberLossConfig, KLDivLossConfig,
    LpLossConfig, MarginRankingLossConfig, MseLoss, MultiMarginLossConfig, PoissonNllLossConfig,
    RNNTLossConfig, SmoothL1LossConfig, SoftMarginLoss, TripletMarginLossConfig,
};
use burn::nn::norm::NormalizationConfig;
use burn::nn::pool::{
    AdaptiveAvgPool1dConfig, AdaptiveAvgPool2dConfig, AdaptiveAvgPool3dConfig, AvgPool1dConfig,
    AvgPool2dConfig, MaxPool1dConfig, MaxPool2dConfig,
};
use burn::nn::transformer::{
    PositionWiseFeedForwardConfig, TransformerDecoderConfig, TransformerDecoderLayer,
    TransformerEncoderConfig, TransformerEncoderLayer,
};
use burn::nn::*;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn_ema::{EmaConfig, EmaError, EmaModule, MovingAverage};

const DECAY: f64 = 0.75;

/// What averaging a layer came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every float tensor (this many) matched the formula.
    Averaged(usize),
    /// Refused as a model without float tensors.
    NoParameters,
}

/// Adds uniform noise in `[-1, 1)` to every float tensor, parameters and buffers alike: a step
/// of an optimizer that moves every weight differently.
struct Perturb;

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let noise = t.random_like(Distribution::Uniform(-1.0, 1.0));
            t + noise
        })
    }
}

/// The last segment of a type's name: `burn_nn::modules::linear::Linear` → `Linear`.
fn short_name<M>() -> String {
    let full = std::any::type_name::<M>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// Averages `model` for two updates and checks the shadow against the formula.
fn check<M: Module>(model: M) -> (String, Outcome) {
    let name = short_name::<M>();
    let start = floats(&model);
    let mut ema = match EmaModule::new(model, EmaConfig::new(DECAY)) {
        Err(EmaError::EmptyModel) => {
            assert!(start.is_empty(), "{name}: refused, but has {start:?}");
            return (name, Outcome::NoParameters);
        }
        Err(e) => panic!("{name}: {e}"),
        Ok(ema) => ema,
    };
    assert!(
        !start.is_empty(),
        "{name}: averaged, but has no float tensors"
    );
    let mut want: Vec<(String, Vec<f64>)> = start
        .into_iter()
        .map(|(p, v)| (p, v.into_iter().map(f64::from).collect()))
        .collect();
    for _ in 0..2 {
        let live = ema.model().clone().map(&mut Perturb);
        let recorded = floats(&live);
        *ema.model_mut() = live;
        ema.update().unwrap();
        assert_eq!(recorded.len(), want.len(), "{name}");
        for ((path, shadow), (live_path, live)) in want.iter_mut().zip(recorded) {
            assert_eq!(*path, live_path, "{name}");
            for (s, l) in shadow.iter_mut().zip(live) {
                *s = DECAY * *s + (1.0 - DECAY) * f64::from(l);
            }
        }
    }
    let got = floats(ema.shadow());
    assert_eq!(got.len(), want.len(), "{name}");
    for ((path, got), (want_path, want)) in got.iter().zip(&want) {
        assert_eq!(path, want_path, "{name}");
        assert_eq!(got.len(), want.len(), "{name}: {path}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}: {path}[{i}]: shadow {g}, formula {w}"
            );
        }
    }
    (name, Outcome::Averaged(want.len()))
}

/// One entry per layer: each builds it and checks its average.
fn every_layer(d: &Device) -> Vec<(String, Outcome)> {
    let xavier = Initializer::XavierUniform { gain: 1.0 };
    let encoder = TransformerEncoderConfig::new(8, 16, 2, 1);
    let decoder = TransformerDecoderConfig::new(8, 16, 2, 1);
    vec![
        // Layers with parameters (and buffers).
        check(LinearConfig::new(3, 4).init(d)),
        check(EmbeddingConfig::new(5, 3).init(d)),
        check(Conv1dConfig::new(2, 3, 3).init(d)),
        check(Conv2dConfig::new([2, 3], [3, 3]).init(d)),
        check(Conv3dConfig::new([2, 3], [2, 2, 2]).init(d)),
        check(ConvTranspose1dConfig::new([2, 3], 3).init(d)),
        check(ConvTranspose2dConfig::new([2, 3], [3, 3]).init(d)),
        check(ConvTranspose3dConfig::new([2, 3], [2, 2, 2]).init(d)),
        check(DeformConv2dConfig::new([2, 3], [3, 3]).init(d)),
        check(BatchNormConfig::new(3).init(d)),
        check(LayerNormConfig::new(4).init(d)),
        check(GroupNormConfig::new(2, 4).init(d)),
        check(InstanceNormConfig::new(3).init(d)),
        check(RmsNormConfig::new(4).init(d)),
        check(NormalizationConfig::Batch(BatchNormConfig::new(3)).init(d)),
        check(MultiHeadAttentionConfig::new(8, 2).init(d)),
        check(CrossAttentionConfig::new(8, 6, 2, 1, 4).init(d)),
        check(PositionWiseFeedForwardConfig::new(4, 8).init(d)),
        check(encoder.init(d)),
        check(TransformerEncoderLayer::new(&encoder, d)),
        check(decoder.init(d)),
        check(TransformerDecoderLayer::new(&decoder, d)),
        check(RnnConfig::new(3, 4, true).init(d)),
        check(BiRnnConfig::new(3, 4, true).init(d)),
        check(GruConfig::new(3, 4, true).init(d)),
        check(BiGruConfig::new(3, 4, true).init(d)),
        check(LstmConfig::new(3, 4, true).init(d)),
        check(BiLstmConfig::new(3, 4, true).init(d)),
        check(GateController::new(3, 4, true, xavier, d)),
        check(SwiGluConfig::new(3, 4).init(d)),
        check(PReluConfig::new().init(d)),
        check(ActivationConfig::PRelu(PReluConfig::new()).init(d)),
        // Layers without parameters: refused by name.
        check(Identity::new()),
        check(DropoutConfig::new(0.1).init()),
        check(GaussianNoiseConfig::new(0.1).init()),
        check(PositionalEncodingConfig::new(4).init(d)),
        check(RotaryEncodingConfig::new(8, 4).init(d)),
        check(PairwiseDistanceConfig::new().init()),
        check(CosineSimilarityConfig::new().init()),
        check(Fold4dConfig::new([4, 4], [2, 2]).init()),
        check(Unfold4dConfig::new([2, 2]).init()),
        check(PixelShuffleConfig::new(2).init()),
        check(PixelUnshuffleConfig::new(2).init()),
        check(Interpolate1dConfig::new().init()),
        check(Interpolate2dConfig::new().init()),
        check(LocalResponseNormConfig::new(3).init()),
        check(AvgPool1dConfig::new(2).init()),
        check(AvgPool2dConfig::new([2, 2]).init()),
        check(MaxPool1dConfig::new(2).init()),
        check(MaxPool2dConfig::new([2, 2]).init()),
        check(AdaptiveAvgPool1dConfig::new(2).init()),
        check(AdaptiveAvgPool2dConfig::new([2, 2]).init()),
        check(AdaptiveAvgPool3dConfig::new([2, 2, 2]).init()),
        check(Relu::new()),
        check(Relu6::new()),
        check(Gelu::new()),
        check(Sigmoid::new()),
        check(Tanh::new()),
        check(Tanhshrink::new()),
        check(HardSwish::new()),
        check(Softsign::new()),
        check(LogSigmoid::new()),
        check(Mish::new()),
        check(Selu::new()),
        check(SiLU::new()),
        check(GLU::new(1)),
        check(CeluConfig::new().init()),
        check(EluConfig::new().init()),
        check(RReluConfig::new().init()),
        check(SoftplusConfig::new().init()),
        check(SoftShrinkConfig::new().init()),
        check(ShrinkConfig::new().init()),
        check(HardShrinkConfig::new().init()),
        check(HardtanhConfig::new().init()),
        check(LeakyReluConfig::new().init()),
        check(HardSigmoidConfig::new().init()),
        check(ThresholdedReluConfig::new().init()),
        check(ThresholdConfig::new(0.5, 0.0).init()),
        check(MseLoss::new()),
        check(SoftMarginLoss::new()),
        check(BinaryCrossEntropyLossConfig::new().init(d)),
        check(CrossEntropyLossConfig::new().init(d)),
        check(LpLossConfig::new(2.0).init()),
        check(HuberLossConfig::new(1.0).init()),
        check(SmoothL1LossConfig::new().init()),
        check(MarginRankingLossConfig::new().init()),
        check(CosineEmbeddingLossConfig::new().init()),
        check(KLDivLossConfig::new().init()),
        check(PoissonNllLossConfig::new().init()),
        check(MultiMarginLossConfig::new().init()),
        check(CTCLossConfig::new().init()),
        check(RNNTLossConfig::new().init()),
        check(GaussianNLLLossConfig::new().init()),
        check(TripletMarginLossConfig::new().init()),
        check(HingeEmbeddingLossConfig::new().init()),
    ]
}

/// burn-nn's source directory, as cargo resolved it for this workspace.
fn burn_nn_sources() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    // For this host only: offline, cargo has not downloaded other platforms' packages.
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .args(["--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "burn-nn")
        .expect("burn-nn is a dependency");
    let manifest = package["manifest_path"].as_str().unwrap();
    Path::new(manifest).parent().unwrap().join("src")
}

/// Every public struct or enum under `dir` whose derive list holds `Module`.
fn modules_in(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules_in(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let code = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let derives_module = line.trim_start().starts_with("#[derive(")
                && line
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|word| word == "Module");
            if !derives_module {
                continue;
            }
            // The item it is on: the next `struct` or `enum` line, past docs and attributes.
            let item = lines[i + 1..]
                .iter()
                .map(|l| l.trim_start())
                .find(|l| !l.starts_with("///") && !l.starts_with("#[") && !l.is_empty())
                .unwrap_or_else(|| panic!("{}:{}: derive without an item", path.display(), i));
            for kind in ["pub struct ", "pub enum "] {
                if let Some(rest) = item.strip_prefix(kind) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    out.insert(name);
                }
            }
        }
    }
}

#[test]
fn every_burn_nn_layer_averages_by_the_formula() {
    let sources = burn_nn_sources();
    let mut exported = BTreeSet::new();
    modules_in(&sources, &mut exported);
    assert!(
        exported.len() >= 90 && exported.contains("Linear") && exported.contains("BiLstm"),
        "read {} modules from {}: {exported:?}",
        exported.len(),
        sources.display()
    );

    let device = Device::flex();
    device.seed(11);
    let outcomes = every_layer(&device);
    let checked: BTreeSet<String> = outcomes.iter().map(|(n, _)| n.clone()).collect();
    let missing: Vec<_> = exported.difference(&checked).collect();
    assert!(
        missing.is_empty(),
        "burn-nn layers without an entry: {missing:?}"
    );
    let unknown: Vec<_> = checked.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "entries that are not burn-nn modules: {unknown:?}"
    );

    let averaged: Vec<_> = outcomes
        .iter()
        .filter_map(|(n, o)| match o {
            Outcome::Averaged(tensors) => Some(format!("{n} ({tensors})")),
            Outcome::NoParameters => None,
        })
        .collect();
    println!(
        "{} burn-nn modules from {}: {} averaged by the formula: {}; the other {} have no \
         parameters and were refused as empty",
        exported.len(),
        sources.display(),
        averaged.len(),
        averaged.join(", "),
        outcomes.len() - averaged.len()
    );
    // The layers that hold weights are the ones averaged (a wrong refusal fails in `check`).
    for layer in [
        "Linear",
        "BatchNorm",
        "Lstm",
        "MultiHeadAttention",
        "PRelu",
        "Activation",
    ] {
        assert!(
            averaged.iter().any(|a| a.starts_with(&format!("{layer} "))),
            "{layer}"
        );
    }
}
