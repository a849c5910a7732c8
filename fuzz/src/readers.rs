//! One function per file reader of burn-ema, for the fuzz targets (`fuzz/fuzz_targets/`) and for
//! the corpus replay on the stable toolchain (`tests/fuzz_corpus.rs`, which includes this file).
//!
//! Each writes the input where its reader looks, calls the public API that reads it and checks
//! what every reader promises whatever the bytes are:
//! - no panic, no abort, no allocation beyond a few times the file's length (the fuzz runs set
//!   libFuzzer's `-malloc_limit_mb`; `tests/fuzz_corpus.rs` counts the largest allocation);
//! - a refused file is an [`EmaError`] (its message is formatted, so a panicking `Display` is
//!   found too);
//! - a refused load leaves the average exactly as it was (loads are checked in full first).
//!
//! The model is `tests/common`'s `Net` (same names and shapes, its own copy: this file must not
//! depend on the test crate), so the committed fixtures in `tests/fixtures/` are valid seeds.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn_ema::{
    EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage, PostHocSnapshots, PytorchEma, Width,
    load_pytorch_ema, shadow_from_file, shadow_from_tf_style,
};

/// `tests/common`'s `Net`: the model every fixture was written from.
#[derive(Module, Debug)]
pub struct Net {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

/// A new `Net` on Flex.
pub fn net() -> Net {
    let device = Device::flex();
    Net {
        fc1: LinearConfig::new(4, 8).init(&device),
        bn: BatchNormConfig::new(8).init(&device),
        fc2: LinearConfig::new(8, 2).init(&device),
    }
}

/// The committed files the readers' targets start from (and the post-hoc ones are built on).
pub mod fixtures {
    pub const POSTHOC_INDEX: &[u8] =
        include_bytes!("../../tests/fixtures/legacy/posthoc/index.json");
    pub const POSTHOC_SNAPSHOTS: [(&str, &[u8]); 4] = [
        (
            "snapshot-000000000002-p0.bpk",
            include_bytes!("../../tests/fixtures/legacy/posthoc/snapshot-000000000002-p0.bpk"),
        ),
        (
            "snapshot-000000000002-p1.bpk",
            include_bytes!("../../tests/fixtures/legacy/posthoc/snapshot-000000000002-p1.bpk"),
        ),
        (
            "snapshot-000000000004-p0.bpk",
            include_bytes!("../../tests/fixtures/legacy/posthoc/snapshot-000000000004-p0.bpk"),
        ),
        (
            "snapshot-000000000004-p1.bpk",
            include_bytes!("../../tests/fixtures/legacy/posthoc/snapshot-000000000004-p1.bpk"),
        ),
    ];
    pub const DIFFUSERS_WEIGHTS: &[u8] = include_bytes!(
        "../../tests/fixtures/pytorch/diffusers_ema/diffusion_pytorch_model.safetensors"
    );
}

thread_local! {
    /// This thread's scratch folder (the replay test runs readers on several threads).
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// An empty scratch folder of this thread, `name` inside it.
fn scratch(name: &str) -> PathBuf {
    let dir = SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::env::temp_dir().join(format!("burn-ema-fuzz-{}-{n}", std::process::id()))
            })
            .clone()
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(name)).expect("a scratch folder");
    dir.join(name)
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("the scratch file is written");
}

/// Every float of a module, as bits (NaN payloads included).
fn bits<M: Module>(module: &M) -> Vec<u32> {
    struct Collect(Vec<u32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            let values = data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("floats are f32");
            self.0.extend(values.into_iter().map(f32::to_bits));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// The whole state a load may change.
fn state(ema: &EmaModule<Net>) -> (Vec<u32>, Vec<u32>, u64, String) {
    (
        bits(ema.shadow()),
        bits(ema.model()),
        ema.num_updates(),
        format!("{:?}", ema.config()),
    )
}

/// A refused file: its error is formatted (as a user would print it).
fn refused(err: EmaError) {
    let message = err.to_string();
    assert!(!message.is_empty());
}

/// `EmaModule::load(path, format)`: on an error, nothing changed.
fn load_into_ema(path: &Path, format: EmaFile) {
    let mut ema = EmaModule::new(net(), EmaConfig::new(0.99)).expect("a valid EMA");
    let before = state(&ema);
    if let Err(err) = ema.load(path, format) {
        assert_eq!(
            state(&ema),
            before,
            "a refused {format:?} load changed the EMA"
        );
        refused(err);
    }
}

fn result<T>(r: Result<T, EmaError>) {
    if let Err(err) = r {
        refused(err);
    }
}

/// An EMA state file (`EmaFile::State`, `StateWithModel`): `load` and `from_file`.
pub fn ema_state(data: &[u8]) {
    let path = scratch("state").join("ema.bpk");
    write(&path, data);
    load_into_ema(&path, EmaFile::State);
    result(EmaModule::from_file(net(), &path));
}

/// A shadow-only burnpack file (`EmaFile::Shadow`): into an EMA and into a bare model.
pub fn shadow(data: &[u8]) {
    let path = scratch("shadow").join("shadow.bpk");
    write(&path, data);
    load_into_ema(&path, EmaFile::Shadow);
    result(shadow_from_file(&net(), &path));
}

/// A safetensors file, header and data (`EmaFile::ShadowSafetensors`, diffusers' weights).
pub fn safetensors(data: &[u8]) {
    let path = scratch("safetensors").join("shadow.safetensors");
    write(&path, data);
    load_into_ema(&path, EmaFile::ShadowSafetensors);
    result(load_pytorch_ema(&net(), &path, PytorchEma::Diffusers));
}

/// TensorFlow's names (`<path>/ExponentialMovingAverage`) in a safetensors file.
pub fn tensorflow(data: &[u8]) {
    let path = scratch("tensorflow").join("tf.safetensors");
    write(&path, data);
    load_into_ema(&path, EmaFile::TensorFlow);
    result(shadow_from_tf_style(&net(), &path));
}

/// PyTorch checkpoints (zip and pickle) of timm, ema-pytorch and `AveragedModel`; an input
/// that starts with `{` is diffusers' `config.json` beside its committed weights file.
pub fn pytorch(data: &[u8]) {
    let dir = scratch("pytorch");
    if data.first() == Some(&b'{') {
        write(
            &dir.join("diffusion_pytorch_model.safetensors"),
            fixtures::DIFFUSERS_WEIGHTS,
        );
        write(&dir.join("config.json"), data);
        load_into_ema(&dir, EmaFile::Pytorch(PytorchEma::Diffusers));
        return;
    }
    let path = dir.join("checkpoint.pt");
    write(&path, data);
    for source in [
        PytorchEma::Timm,
        PytorchEma::EmaPytorch,
        PytorchEma::AveragedModel,
    ] {
        result(load_pytorch_ema(&net(), &path, source));
    }
    load_into_ema(&path, EmaFile::Pytorch(PytorchEma::EmaPytorch));
}

/// Opens a snapshot folder and synthesizes from it, as a user's sweep would.
fn sweep(dir: &Path) {
    let snapshots = match PostHocSnapshots::open(dir) {
        Ok(s) => s,
        Err(err) => return refused(err),
    };
    for step in [None, Some(2), Some(4)] {
        for width in [Width::SigmaRel(0.07), Width::Gamma(6.94)] {
            result(snapshots.coefficients(width, step));
            result(snapshots.synthesize(&net(), width, step));
        }
    }
}

/// The post-hoc snapshot index (`index.json`) of a folder holding the committed snapshots.
pub fn posthoc_index(data: &[u8]) {
    let dir = scratch("posthoc-index");
    for (name, bytes) in fixtures::POSTHOC_SNAPSHOTS {
        write(&dir.join(name), bytes);
    }
    write(&dir.join("index.json"), data);
    sweep(&dir);
}

/// A post-hoc snapshot file: in place of a listed one, and as an unlisted one (a file written
/// before a crash, which opening the folder adopts).
pub fn posthoc_snapshot(data: &[u8]) {
    let (replaced, _) = fixtures::POSTHOC_SNAPSHOTS[3];
    for unlisted in [false, true] {
        let dir = scratch("posthoc-snapshot");
        write(&dir.join("index.json"), fixtures::POSTHOC_INDEX);
        for (name, bytes) in fixtures::POSTHOC_SNAPSHOTS {
            write(&dir.join(name), bytes);
        }
        let name = if unlisted {
            "snapshot-000000000006-p0.bpk"
        } else {
            replaced
        };
        write(&dir.join(name), data);
        sweep(&dir);
    }
}

/// A reader's harness.
pub type Reader = fn(&[u8]);

/// Every target, by name: what `tests/fuzz_corpus.rs` replays `fuzz/corpus/<name>/` with.
pub const TARGETS: [(&str, Reader); 7] = [
    ("ema_state", ema_state),
    ("shadow", shadow),
    ("safetensors", safetensors),
    ("tensorflow", tensorflow),
    ("pytorch", pytorch),
    ("posthoc_index", posthoc_index),
    ("posthoc_snapshot", posthoc_snapshot),
];
