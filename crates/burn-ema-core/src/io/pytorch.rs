//! EMA weights from PyTorch checkpoints, through burn-store's `PytorchStore` and
//! `SafetensorsStore`: each library's key layout is a preset, so users name the library, not
//! its keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{ModuleStore, PytorchStore, bridge};

use crate::error::EmaError;
use crate::io::pack::{Cast, Format, Ids, Incoming, Naming, Part};

/// The library that wrote a PyTorch checkpoint holding EMA weights, and so where they are in it.
///
/// Weights are read in PyTorch's layout (linear weights transposed, norms' `weight`/`bias` as
/// Burn's `gamma`/`beta`) and converted to the model's float types; BatchNorm's
/// `num_batches_tracked`, which Burn has no counterpart for, is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PytorchEma {
    /// timm's training checkpoints (`CheckpointSaver`, `train.py --model-ema`): the EMA under
    /// `state_dict_ema`, the live weights under `state_dict`. No update counter.
    Timm,
    /// lucidrains' ema-pytorch, `torch.save(ema.state_dict(), path)`: the EMA under
    /// `ema_model.`, the live weights under `online_model.` (when it was included), the
    /// counter in `step`; its `initted` flag is skipped.
    EmaPytorch,
    /// PyTorch's `torch.optim.swa_utils.AveragedModel` (with `get_ema_multi_avg_fn`, say),
    /// `torch.save(averaged.state_dict(), path)`: the EMA under `module.`, the counter in
    /// `n_averaged`.
    AveragedModel,
    /// diffusers' `EMAModel.save_pretrained(dir)`: the EMA weights as the model's safetensors
    /// file in `dir` (`diffusion_pytorch_model.safetensors`; give the folder or the file), the
    /// counter as `optimization_step` in `dir/config.json`.
    Diffusers,
}

/// The weights file diffusers' `ModelMixin.save_pretrained` writes.
const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// What a checkpoint holds: EMA weights, perhaps live weights, perhaps the update counter.
pub(crate) struct Checkpoint {
    pub(crate) file: PathBuf,
    pub(crate) ema: Part,
    pub(crate) live: Option<Part>,
    pub(crate) num_updates: Option<u64>,
}

impl Checkpoint {
    /// Reads every tensor once: a checkpoint has no checksum, and a load must not fail on
    /// unreadable data after some tensors were replaced.
    pub(crate) fn check_readable(&self) -> Result<(), EmaError> {
        let format = "PyTorch";
        self.ema.check_readable(&self.file, format)?;
        match &self.live {
            Some(live) => live.check_readable(&self.file, format),
            None => Ok(()),
        }
    }
}

impl PytorchEma {
    fn name(self) -> &'static str {
        match self {
            Self::Timm => "timm",
            Self::EmaPytorch => "ema-pytorch",
            Self::AveragedModel => "AveragedModel",
            Self::Diffusers => "diffusers",
        }
    }

    pub(crate) fn read(self, path: &Path) -> Result<Checkpoint, EmaError> {
        std::fs::metadata(path).map_err(|e| EmaError::io(path, "read", &e))?;
        let no_ema = |problem: String| EmaError::NotAnEmaFile {
            file: path.to_path_buf(),
            problem,
        };
        let (ema, live, num_updates) = match self {
            Self::Timm => {
                let ema = read_pt(path, Some("state_dict_ema")).map_err(|e| {
                    no_ema(format!(
                        "no `state_dict_ema` (was it trained with `--model-ema`?): {e}"
                    ))
                })?;
                let ema = keep(ema, |n| Some(n.to_string()));
                let live = read_pt(path, Some("state_dict"))
                    .ok()
                    .map(|t| keep(t, |n| Some(n.to_string())));
                (ema, live, None)
            }
            Self::EmaPytorch => {
                let mut file = keyed(path, read_pt(path, None).map_err(|e| corrupt(path, e))?);
                let step = take_count(&mut file, "step")?;
                let ema = file.take(|n| n.strip_prefix("ema_model.").map(str::to_string));
                let live = file.take(|n| n.strip_prefix("online_model.").map(str::to_string));
                (ema.tensors, Some(live.tensors), step)
            }
            Self::AveragedModel => {
                let mut file = keyed(path, read_pt(path, None).map_err(|e| corrupt(path, e))?);
                let n = take_count(&mut file, "n_averaged")?;
                let ema = file.take(|n| n.strip_prefix("module.").map(str::to_string));
                (ema.tensors, None, n)
            }
            Self::Diffusers => {
                let (weights, config) = if path.is_dir() {
                    (path.join(DIFFUSERS_WEIGHTS), Some(path.join("config.json")))
                } else {
                    (
                        path.to_path_buf(),
                        path.parent().map(|d| d.join("config.json")),
                    )
                };
                let file = Incoming::open(&weights, Format::Safetensors)?;
                let step = config
                    .filter(|c| c.exists())
                    .map(|c| optimization_step(&c))
                    .transpose()?
                    .flatten();
                (
                    keep(file.tensors.into_values().collect(), |n| {
                        Some(n.to_string())
                    }),
                    None,
                    step,
                )
            }
        };
        let ema = without_bookkeeping(ema);
        if ema.is_empty() {
            return Err(no_ema(format!(
                "no EMA weights where {} keeps them",
                self.name()
            )));
        }
        Ok(Checkpoint {
            file: path.to_path_buf(),
            ema: Part::new(ema),
            live: live
                .map(without_bookkeeping)
                .filter(|t| !t.is_empty())
                .map(Part::new),
            num_updates,
        })
    }
}

fn corrupt(path: &Path, err: impl std::fmt::Display) -> EmaError {
    EmaError::CorruptFile {
        file: path.to_path_buf(),
        format: "PyTorch",
        problem: err.to_string(),
    }
}

/// A `.pt`/`.pth` file's tensors (under `key`, when given), not yet read.
fn read_pt(path: &Path, key: Option<&str>) -> Result<Vec<PackTensor>, String> {
    let mut store = PytorchStore::from_file(path);
    if let Some(key) = key {
        store = store.with_top_level_key(key);
    }
    let tensors = store.get_all_tensors().map_err(|e| e.to_string())?;
    Ok(tensors.values().cloned().collect())
}

fn keyed(path: &Path, tensors: Vec<PackTensor>) -> Incoming {
    Incoming::new(path, "PyTorch", BTreeMap::new(), tensors)
}

fn keep(
    tensors: Vec<PackTensor>,
    rename: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, PackTensor> {
    tensors
        .into_iter()
        .filter_map(|mut t| {
            t.name = rename(&t.name)?;
            Some((t.name.clone(), t))
        })
        .collect()
}

/// PyTorch's BatchNorm step counter, which Burn's norms do not have.
fn without_bookkeeping(mut tensors: BTreeMap<String, PackTensor>) -> BTreeMap<String, PackTensor> {
    tensors.retain(|name, _| !name.ends_with("num_batches_tracked"));
    tensors
}

/// A one-element integer tensor `name` of the checkpoint, taken out, as a count.
fn take_count(file: &mut Incoming, name: &str) -> Result<Option<u64>, EmaError> {
    let Some(tensor) = file.tensors.remove(name) else {
        return Ok(None);
    };
    let bad = |problem: String| EmaError::file_mismatch(&file.file, name, problem);
    let data = bridge::into_data(tensor).map_err(|e| bad(e.to_string()))?;
    let values = data
        .try_into_vec_as::<i64>()
        .map_err(|e| bad(format!("{e:?}")))?;
    match values.as_slice() {
        [n] if *n >= 0 => Ok(Some(*n as u64)),
        _ => Err(bad("expected one count".into())),
    }
}

/// `optimization_step` of a diffusers `config.json`, if there.
fn optimization_step(config: &Path) -> Result<Option<u64>, EmaError> {
    let text = std::fs::read_to_string(config).map_err(|e| EmaError::io(config, "read", &e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EmaError::CorruptFile {
            file: config.to_path_buf(),
            format: "JSON",
            problem: e.to_string(),
        })?;
    Ok(json.get("optimization_step").and_then(|v| v.as_u64()))
}

/// Loads the EMA weights of a PyTorch checkpoint written by `source` into a copy of `model`,
/// converting floats to the model's element types. Every tensor is checked first (names,
/// kinds, shapes; nothing left over); `model` itself never changes. A checkpoint without EMA
/// weights is an [`EmaError::NotAnEmaFile`].
///
/// ```no_run
/// # use burn::nn::{Linear, LinearConfig};
/// # use burn::prelude::*;
/// use burn_ema_core::{PytorchEma, load_pytorch_ema};
/// # fn run(model: Linear) -> Result<(), burn_ema_core::EmaError> {
/// // timm's `train.py --model-ema` checkpoint: the EMA weights, into the bare model.
/// let ema_model = load_pytorch_ema(&model, "last.pth.tar", PytorchEma::Timm)?;
/// # Ok(()) }
/// ```
pub fn load_pytorch_ema<M: Module>(
    model: &M,
    path: impl AsRef<Path>,
    source: PytorchEma,
) -> Result<M, EmaError> {
    let checkpoint = source.read(path.as_ref())?;
    let file = &checkpoint.file;
    checkpoint
        .ema
        .check_fits(model, Naming::PyTorch, Cast::FloatsToModel, file)?;
    checkpoint.check_readable()?;
    let mut model = model.clone();
    checkpoint
        .ema
        .apply_to(&mut model, Naming::PyTorch, Ids::Keep, file)?;
    Ok(model)
}
