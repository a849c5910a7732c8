//! The layouts of EMA files — the EMA state (`shadow.*`, `model.*`, `num_updates`, the
//! configuration), TensorFlow's names (`<path>/ExponentialMovingAverage`) — and loading a
//! shadow file into a bare model. `EmaModule`'s own save and load methods use these.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::DType;
use burn_store::bridge;

use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::io::pack::{Cast, Format, Ids, Incoming, Naming, PackTensor, Part, tensors_of, write};

/// Metadata keys of an EMA state file.
const FORMAT: &str = "burn_ema.format";
const CONFIG: &str = "burn_ema.config";
pub(crate) const NUM_UPDATES: &str = "burn_ema.num_updates";
/// The value of [`FORMAT`] in EMA state files this version writes. Version 2 (burn-ema 1.0)
/// stores the configuration in the 1.0 vocabulary (`schedule`); version 1 files (`warmup`,
/// the schedules' old names) are read and translated ([`parse_config`]). A version 1 reader
/// refuses version 2 files by name instead of misreading their schedule.
const STATE_FORMAT: &str = "ema-state/2";
/// Every format tag this version reads.
const READS: &str = "ema-state/1, ema-state/2";
/// The tensor name of the update counter, as in an `EmaModule`'s Burn record.
const COUNTER: &str = "num_updates";
/// TensorFlow's suffix for the shadow of a variable.
pub const TF_SHADOW_SUFFIX: &str = "/ExponentialMovingAverage";

/// A file format of an average: what [`EmaModule::save`](crate::EmaModule::save) writes and
/// [`EmaModule::load`](crate::EmaModule::load) reads — one pair of calls for every format.
///
/// | format | holds | written | read |
/// |---|---|---|---|
/// | `State` | shadow, counter, configuration (burnpack) | yes | yes (the live model too, when the file has it) |
/// | `StateWithModel` | the same and the live model: a self-contained checkpoint | yes | as `State` |
/// | `Shadow` | the shadow as the bare model's burnpack file (Burn's `load_file` reads it) | yes | into the shadow |
/// | `ShadowSafetensors` | the shadow under the model's dotted paths | yes | into the shadow |
/// | `TensorFlow` | live `<path>` and shadow `<path>/ExponentialMovingAverage`, counter (safetensors) | yes | both sides |
/// | `Pytorch(source)` | a PyTorch library's EMA checkpoint (feature `pytorch`) | no | both sides |
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_ema::{EmaConfig, EmaFile, EmaModule, MovingAverage};
///
/// # let dir = std::env::temp_dir().join(format!("burn-ema-doc-file-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let model: Linear = LinearConfig::new(4, 2).init(&Device::flex());
/// let mut ema = EmaModule::new(model.clone(), EmaConfig::new(0.999))?;
/// ema.update()?;
/// let state = ema.save(dir.join("ema"), EmaFile::State)?; // ema.bpk
/// let export = ema.save(dir.join("model-ema"), EmaFile::Shadow)?; // for the bare model
///
/// let mut resumed = EmaModule::new(model, EmaConfig::new(0.5))?;
/// resumed.load(&state, EmaFile::State)?; // shadow, counter and configuration
/// assert_eq!((resumed.num_updates(), resumed.config().decay), (1, 0.999));
/// # let _ = export;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EmaFile {
    /// The EMA state, for resuming: shadow, update counter and configuration (burnpack). The
    /// live model usually has a checkpoint of its own (the Learner's, say).
    #[default]
    State,
    /// The EMA state and the live model: a self-contained checkpoint (twice the size).
    StateWithModel,
    /// The shadow weights as the bare model's burnpack file: the user's plain model loads it
    /// with Burn's own `load_file`, with no EMA code (TensorFlow's `variables_to_restore`). The
    /// shadow is stored in its own element type (an `f32` shadow of an `f16` model loads as
    /// `f32`; [`shadow_from_file`] converts).
    Shadow,
    /// The shadow weights as a safetensors file whose keys are the model's dotted paths
    /// (`fc1.weight`): burn-store's `SafetensorsStore`, and any safetensors reader, loads it.
    ShadowSafetensors,
    /// Live and shadow weights in one safetensors file with TensorFlow's naming convention:
    /// each live tensor under its dotted path, its shadow as
    /// `<path>/ExponentialMovingAverage` ([`TF_SHADOW_SUFFIX`]), the counter in the metadata.
    TensorFlow,
    /// A PyTorch library's EMA checkpoint (read only; feature `pytorch`).
    #[cfg(feature = "pytorch")]
    Pytorch(crate::io::PytorchEma),
}

impl EmaFile {
    /// The container of the formats this crate writes.
    pub(crate) fn pack(self) -> Option<Format> {
        match self {
            Self::State | Self::StateWithModel | Self::Shadow => Some(Format::Burnpack),
            Self::ShadowSafetensors | Self::TensorFlow => Some(Format::Safetensors),
            #[cfg(feature = "pytorch")]
            Self::Pytorch(_) => None,
        }
    }
}

/// `name` without `prefix.`, if it is under it.
pub(crate) fn strip<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.strip_prefix('.')
}

/// The update counter of a file's `num_updates` tensor.
fn read_counter(file: &mut Incoming) -> Result<Option<u64>, EmaError> {
    let Some(tensor) = file.tensors.remove(COUNTER) else {
        return Ok(None);
    };
    let bad = |problem: &str| EmaError::file_mismatch(&file.file, COUNTER, problem);
    let data = bridge::into_data(tensor).map_err(|e| bad(&e.to_string()))?;
    if data.num_elements() != 1 {
        return Err(bad("the update counter must have one element"));
    }
    if !matches!(data.dtype(), DType::I64 | DType::I32) {
        return Err(bad("the update counter must be an integer"));
    }
    let n = data
        .try_into_vec_as::<i64>()
        .map_err(|e| bad(&format!("{e:?}")))?[0];
    u64::try_from(n)
        .map(Some)
        .map_err(|_| bad("the update counter is negative"))
}

/// The format tag, checked: files of a newer format are refused by name.
fn check_format(file: &Incoming) -> Result<(), EmaError> {
    match file.metadata.get(FORMAT) {
        None => Ok(()),
        Some(tag) if READS.split(", ").any(|t| t == tag) => Ok(()),
        Some(tag) => Err(EmaError::UnsupportedFormat {
            file: file.file.clone(),
            found: tag.clone(),
            supported: READS,
        }),
    }
}

/// The metadata of an EMA state file. (The update counter is the `num_updates` tensor, as in
/// an `EmaModule`'s Burn record, and only there.)
pub(crate) fn state_metadata(config: &EmaConfig) -> BTreeMap<String, String> {
    let config = serde_json::to_string(config).expect("an EmaConfig always serializes");
    BTreeMap::from([
        (FORMAT.to_string(), STATE_FORMAT.to_string()),
        (CONFIG.to_string(), config),
    ])
}

/// An `EmaModule` record's tensors under TensorFlow's names: `model.<path>` as `<path>`,
/// `shadow.<path>` as `<path>/ExponentialMovingAverage` (the counter is left out).
pub(crate) fn tf_style_names(tensors: Vec<PackTensor>) -> Vec<PackTensor> {
    tensors
        .into_iter()
        .filter_map(|mut t| {
            t.name = if let Some(p) = strip(&t.name, "model") {
                p.to_string()
            } else {
                format!("{}{TF_SHADOW_SUFFIX}", strip(&t.name, "shadow")?)
            };
            Some(t)
        })
        .collect()
}

/// An EMA state file's parts: the shadow, the live model (if stored) and the counter.
pub(crate) struct State {
    pub(crate) shadow: Part,
    pub(crate) model: Part,
    pub(crate) num_updates: u64,
}

impl State {
    /// Reads and checks a state file's parts, with the configuration it stores (if any).
    pub(crate) fn read(mut file: Incoming) -> Result<(Self, Option<EmaConfig>), EmaError> {
        check_format(&file)?;
        file.verify()?;
        let config = file
            .metadata
            .get(CONFIG)
            .map(|json| parse_config(json, &file.file))
            .transpose()?;
        let counter = read_counter(&mut file)?;
        let shadow = file.take(|n| strip(n, "shadow").map(str::to_string));
        let model = file.take(|n| strip(n, "model").map(str::to_string));
        let (false, Some(num_updates)) = (shadow.is_empty(), counter) else {
            return Err(EmaError::NotAnEmaFile {
                file: file.file.clone(),
                problem: "no shadow tensors or no update counter; a bare model file loads \
                          into the model with Burn's `load_file`"
                    .into(),
            });
        };
        if let Some(name) = file.tensors.keys().next() {
            return Err(EmaError::file_mismatch(
                &file.file,
                name,
                "not part of an EMA state (expected `shadow.*`, `model.*`, `num_updates`)",
            ));
        }
        let state = Self {
            shadow,
            model,
            num_updates,
        };
        Ok((state, config))
    }
}

/// A shadow tensor's name as the file has it.
pub(crate) fn under_prefix(err: EmaError, prefix: &str) -> EmaError {
    match err {
        EmaError::FileMismatch {
            file,
            tensor,
            problem,
        } if !tensor.starts_with(prefix) => EmaError::FileMismatch {
            file,
            tensor: format!("{prefix}.{tensor}"),
            problem,
        },
        other => other,
    }
}

/// Loads a file's tensors, selected and renamed by `select`, into a copy of `model` (floats
/// converted to its element types), checked first.
fn load_part<M: Module>(
    model: &M,
    path: &Path,
    format: Format,
    select: impl Fn(&str) -> Option<String>,
) -> Result<M, EmaError> {
    let mut file = Incoming::open(path, format)?;
    file.verify()?;
    let part = file.take(select);
    part.check_fits(model, Naming::Burn, Cast::FloatsToModel, path)?;
    let mut model = model.clone();
    part.apply_to(&mut model, Naming::Burn, Ids::Keep, path)?;
    Ok(model)
}

/// The shadow weights of a TensorFlow-style file (see
/// [`EmaFile::TensorFlow`](crate::EmaFile::TensorFlow)) as a model like `model`: each
/// of the model's tensors takes `<path>/ExponentialMovingAverage`, converted to the model's
/// float type — the name mapping of TensorFlow's `variables_to_restore`, done for you. Returns a
/// new model; `model` itself is never changed, and an error names the file and the tensor.
pub fn shadow_from_tf_style<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
    load_part(model, path.as_ref(), Format::Safetensors, |n| {
        n.strip_suffix(TF_SHADOW_SUFFIX).map(str::to_string)
    })
}

/// The shadow weights of a file written by
/// [`EmaFile::Shadow`](crate::EmaFile::Shadow) (burnpack) as a model like `model`,
/// float values converted to the model's element types, every tensor checked first. Returns a
/// new model; `model` itself is never changed. (Burn's own `load_file` also reads the file;
/// this gives `EmaError`s naming the tensor and converts an `f32` shadow into an `f16` model.)
pub fn shadow_from_file<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
    load_part(model, path.as_ref(), Format::Burnpack, |n| {
        Some(n.to_string())
    })
}

/// Writes `module` as a bare model file (the format's extension added when `path` has none),
/// atomically and streaming; returns the path written.
pub(crate) fn export_module<M: Module>(
    module: &M,
    path: &Path,
    format: Format,
) -> Result<PathBuf, EmaError> {
    let path = format.resolve(path);
    write(&path, format, tensors_of(module), BTreeMap::new())?;
    Ok(path)
}

/// Writes `weights` (one average's shadow, a synthesized average) as a bare model file in
/// `format`, [`EmaFile::Shadow`] or [`EmaFile::ShadowSafetensors`]: the one save of averages
/// that have no EMA state of their own (`MultiEma`'s and `PostHocEma`'s, a synthesis). Other
/// formats are refused with [`EmaError::InvalidConfig`] (field `format`), `why` saying where
/// they are written instead.
pub(crate) fn save_weights<M: Module>(
    weights: &M,
    path: &Path,
    format: EmaFile,
    why: &str,
) -> Result<PathBuf, EmaError> {
    match (format, format.pack()) {
        (EmaFile::Shadow | EmaFile::ShadowSafetensors, Some(pack)) => {
            export_module(weights, path, pack)
        }
        _ => Err(EmaError::invalid(
            "format",
            format!(
                "these weights are saved as EmaFile::Shadow or ShadowSafetensors, not {format:?}: {why}"
            ),
        )),
    }
}

/// The fields of [`AverageOptions`](crate::AverageOptions), which files written before 1.0
/// kept at the configuration's top level.
const SHARED_OPTIONS: [&str; 6] = [
    "update_every",
    "buffers",
    "exclude",
    "shadow_dtype",
    "non_finite",
    "eval_weights",
];

/// The stored configuration, in either vocabulary: a version 1 file's `warmup` field is the
/// `schedule` (its variants' old names, `None`, `NumUpdates` and `Power`, are serde aliases
/// of [`Schedule`](crate::Schedule)'s), and its shared options are top-level fields.
fn parse_config(json: &str, path: &Path) -> Result<EmaConfig, EmaError> {
    let corrupt = |e: serde_json::Error| EmaError::CorruptFile {
        file: path.to_path_buf(),
        format: "burnpack",
        problem: format!("the stored EMA configuration does not parse: {e}"),
    };
    let mut value: serde_json::Value = serde_json::from_str(json).map_err(corrupt)?;
    if let Some(fields) = value.as_object_mut() {
        // Before 1.0 the schedule was `warmup`, and the options every average shares were
        // fields of the configuration itself.
        if !fields.contains_key("schedule")
            && let Some(warmup) = fields.remove("warmup")
        {
            fields.insert("schedule".into(), warmup);
        }
        if !fields.contains_key("options") {
            let options: serde_json::Map<_, _> = SHARED_OPTIONS
                .iter()
                .filter_map(|&key| Some((key.to_string(), fields.remove(key)?)))
                .collect();
            fields.insert("options".into(), options.into());
        }
    }
    let config: EmaConfig = serde_json::from_value(value).map_err(corrupt)?;
    config.validate()?;
    Ok(config)
}
