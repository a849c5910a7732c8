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
/// The value of [`FORMAT`] in EMA state files this version writes and reads.
const STATE_FORMAT: &str = "ema-state/1";
/// The tensor name of the update counter, as in an `EmaModule`'s Burn record.
const COUNTER: &str = "num_updates";
/// TensorFlow's suffix for the shadow of a variable.
pub const TF_SHADOW_SUFFIX: &str = "/ExponentialMovingAverage";

/// What [`EmaModule::save_with`](crate::EmaModule::save_with) writes.
///
/// ```
/// use burn_ema_core::SaveOptions;
/// // A self-contained checkpoint: the live model too.
/// let options = SaveOptions::new().with_include_model(true);
/// assert!(options.include_model);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveOptions {
    /// Also store the live model. Off by default: it doubles the file, and the live weights
    /// usually have a checkpoint of their own (the Learner's, say).
    pub include_model: bool,
}

impl SaveOptions {
    /// The defaults: the EMA state without the live model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to store the live model too (a self-contained checkpoint).
    pub fn with_include_model(mut self, include_model: bool) -> Self {
        self.include_model = include_model;
        self
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
        Some(tag) if tag == STATE_FORMAT => Ok(()),
        Some(tag) => Err(EmaError::UnsupportedFormat {
            file: file.file.clone(),
            found: tag.clone(),
            supported: STATE_FORMAT,
        }),
    }
}

/// The metadata of an EMA state file.
pub(crate) fn state_metadata(config: &EmaConfig, num_updates: u64) -> BTreeMap<String, String> {
    let config = serde_json::to_string(config).expect("an EmaConfig always serializes");
    BTreeMap::from([
        (FORMAT.to_string(), STATE_FORMAT.to_string()),
        (CONFIG.to_string(), config),
        (NUM_UPDATES.to_string(), num_updates.to_string()),
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
/// [`EmaModule::save_tf_style`](crate::EmaModule::save_tf_style)) as a model like `model`: each
/// of the model's tensors takes `<path>/ExponentialMovingAverage`, converted to the model's
/// float type — the name mapping of TensorFlow's `variables_to_restore`, done for you. Returns a
/// new model; `model` itself is never changed, and an error names the file and the tensor.
pub fn shadow_from_tf_style<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
    load_part(model, path.as_ref(), Format::Safetensors, |n| {
        n.strip_suffix(TF_SHADOW_SUFFIX).map(str::to_string)
    })
}

/// The shadow weights of a file written by
/// [`EmaModule::save_shadow`](crate::EmaModule::save_shadow) (burnpack) as a model like `model`,
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

fn parse_config(json: &str, path: &Path) -> Result<EmaConfig, EmaError> {
    let config: EmaConfig = serde_json::from_str(json).map_err(|e| EmaError::CorruptFile {
        file: path.to_path_buf(),
        format: "burnpack",
        problem: format!("the stored EMA configuration does not parse: {e}"),
    })?;
    config.validate()?;
    Ok(config)
}
