//! Saving and loading an [`EmaModule`]: its full state, its shadow as the bare model's file, and
//! TensorFlow's naming convention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::DType;
use burn_store::bridge;

use crate::config::EmaConfig;
use crate::ema_module::EmaModule;
use crate::error::EmaError;
use crate::io::pack::{Cast, Format, Ids, Incoming, Naming, Part, tensors_of, write};
use crate::shadow::Shadow;

/// Metadata keys of an EMA state file.
const FORMAT: &str = "burn_ema.format";
const CONFIG: &str = "burn_ema.config";
const NUM_UPDATES: &str = "burn_ema.num_updates";
/// The value of [`FORMAT`] in EMA state files this version writes and reads.
const STATE_FORMAT: &str = "ema-state/1";
/// The tensor name of the update counter, as in an `EmaModule`'s Burn record.
const COUNTER: &str = "num_updates";
/// TensorFlow's suffix for the shadow of a variable.
pub const TF_SHADOW_SUFFIX: &str = "/ExponentialMovingAverage";

/// What [`EmaModule::save_with`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveOptions {
    /// Also store the live model. Off by default: it doubles the file, and the live weights
    /// usually have a checkpoint of their own (the Learner's, say).
    pub include_model: bool,
}

impl SaveOptions {
    /// Also store the live model (a self-contained checkpoint).
    pub fn with_model() -> Self {
        Self {
            include_model: true,
        }
    }
}

/// `name` without `prefix.`, if it is under it.
fn strip<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
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

/// An EMA state file's parts: the shadow, the live model (if stored) and the counter.
struct State {
    shadow: Part,
    model: Part,
    num_updates: u64,
}

impl State {
    fn read(mut file: Incoming) -> Result<(Self, Option<EmaConfig>), EmaError> {
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

impl<M: Module> EmaModule<M> {
    /// Saves the EMA state — shadow, update counter and configuration — to a burnpack file
    /// (`.bpk` is added when `path` has no extension), atomically: a failed save leaves the
    /// previous file intact. Returns the path written.
    ///
    /// The save streams: each tensor is read back from its device when the writer reaches it,
    /// so it needs memory for the largest tensor, not for a copy of the model. The live model
    /// is not stored (see [`save_with`](Self::save_with)). Load with [`load`](Self::load) or
    /// [`from_file`](Self::from_file).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save")?;
        self.save_with(path, &SaveOptions::default())
    }

    /// [`save`](Self::save), with options (e.g. also storing the live model).
    ///
    /// The file's tensors are named as in the `EmaModule`'s Burn record (`shadow.*`,
    /// `model.*`, `num_updates`), so a file with the model is also a valid record of the
    /// `EmaModule` for Burn's own `load_file`.
    pub fn save_with(
        &self,
        path: impl AsRef<Path>,
        options: &SaveOptions,
    ) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_with")?;
        let path = Format::Burnpack.resolve(path.as_ref());
        let mut tensors = tensors_of(self);
        if !options.include_model {
            tensors.retain(|t| strip(&t.name, "model").is_none());
        }
        let metadata = BTreeMap::from([
            (FORMAT.to_string(), STATE_FORMAT.to_string()),
            (CONFIG.to_string(), config_json(self.config())),
            (NUM_UPDATES.to_string(), self.num_updates().to_string()),
        ]);
        write(&path, Format::Burnpack, tensors, metadata)?;
        Ok(path)
    }

    /// Loads an EMA state written by [`save`](Self::save) or [`save_with`](Self::save_with) —
    /// or a Burn record of an `EmaModule`, such as a Learner checkpoint — and resumes from it:
    /// the shadow, the update counter, the configuration stored in the file, and the live
    /// model too when the file has it.
    ///
    /// Everything is checked before anything is replaced — the format, the checksum, every
    /// tensor's name, kind, shape and element type: a file from another architecture, with
    /// another element type, truncated or corrupted gives an error naming the file and the
    /// tensor, and leaves this `EmaModule` unchanged. The values are then read into the
    /// shadow in place, one tensor at a time (no second copy of the shadow in memory), unless
    /// the file's configuration differs from this one's.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), EmaError> {
        self.refuse_swapped("load")?;
        let (state, config) = State::read(Incoming::open(path.as_ref(), Format::Burnpack)?)?;
        self.load_state(state, config, path.as_ref())
    }

    /// An `EmaModule` resumed from a file written by [`save`](Self::save), with the
    /// configuration stored in it. `model` gives the architecture (and the live weights, unless
    /// the file holds them).
    pub fn from_file(model: M, path: impl AsRef<Path>) -> Result<Self, EmaError> {
        let path = path.as_ref();
        let (state, config) = State::read(Incoming::open(path, Format::Burnpack)?)?;
        let Some(config) = config else {
            return Err(EmaError::NotAnEmaFile {
                file: path.to_path_buf(),
                problem: "no EMA configuration; for a Burn record of an EmaModule, \
                          use `EmaModule::new(model, config)?.load(path)`"
                    .into(),
            });
        };
        let mut ema = Self::new(model, config)?;
        ema.load_state(state, None, path)?;
        Ok(ema)
    }

    fn load_state(
        &mut self,
        state: State,
        config: Option<EmaConfig>,
        path: &Path,
    ) -> Result<(), EmaError> {
        // A shadow of another configuration (another element type, say) is built anew; the
        // same configuration loads into the shadow in place.
        let fresh = match config {
            Some(config) if config_json(&config) != config_json(self.config()) => {
                Some(Shadow::new(&self.model, config)?)
            }
            _ => None,
        };
        if !state.model.is_empty() {
            state
                .model
                .check_fits(&self.model, Naming::Burn, Cast::Exact, path)?;
        }
        let shadow_module = fresh.as_ref().map_or_else(|| self.shadow(), Shadow::module);
        state
            .shadow
            .check_fits(shadow_module, Naming::Burn, Cast::Exact, path)
            .map_err(|e| under_prefix(e, "shadow"))?;
        // Everything fits: from here on, values are read in.
        if !state.model.is_empty() {
            state
                .model
                .apply_to(&mut self.model, Naming::Burn, Ids::FromFile, path)?;
        }
        if let Some(fresh) = fresh {
            self.shadow.map(|_| fresh);
        }
        self.load_into_shadow(state.shadow, Naming::Burn, path)?;
        self.shadow.resume_at(state.num_updates);
        Ok(())
    }

    /// Reads `part` into the shadow in place (checked by the caller), keeping the shadow's ids.
    pub(crate) fn load_into_shadow(
        &mut self,
        part: Part,
        naming: Naming,
        path: &Path,
    ) -> Result<(), EmaError> {
        let mut applied = Ok(());
        self.shadow.map_module(|mut module| {
            applied = part.apply_to(&mut module, naming, Ids::Keep, path);
            module
        });
        applied
    }

    /// Saves the shadow weights as the bare model's burnpack file (`.bpk` added when `path`
    /// has no extension), atomically and streaming. The user's plain model loads it with
    /// Burn's own `load_file`, with no EMA code (TensorFlow's `variables_to_restore`). Returns
    /// the path written.
    ///
    /// The shadow is stored in its own element type: an `f32` shadow of an `f16` model loads
    /// as `f32` (cast the model with `.cast(..)` afterwards, or load with
    /// [`load_shadow_into`](crate::load_shadow_into), which converts).
    pub fn save_shadow(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_shadow")?;
        export_module(self.shadow(), path.as_ref(), Format::Burnpack)
    }

    /// Saves the shadow weights as a safetensors file whose keys are the model's own dotted
    /// paths (`fc1.weight`), atomically; burn-store's `SafetensorsStore` (and any safetensors
    /// reader) loads it into the bare model. `.safetensors` is added when `path` has no
    /// extension. Returns the path written.
    pub fn save_shadow_safetensors(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_shadow_safetensors")?;
        export_module(self.shadow(), path.as_ref(), Format::Safetensors)
    }

    /// Writes live and shadow weights in one safetensors file with TensorFlow's naming
    /// convention: each live tensor under its dotted path (`fc1.weight`), its shadow next to it
    /// as `fc1.weight/ExponentialMovingAverage`, and the update counter in the metadata.
    /// `.safetensors` is added when `path` has no extension. Returns the path written.
    pub fn save_tf_style(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_tf_style")?;
        let path = Format::Safetensors.resolve(path.as_ref());
        let tensors = tensors_of(self)
            .into_iter()
            .filter_map(|mut t| {
                t.name = if let Some(p) = strip(&t.name, "model") {
                    p.to_string()
                } else {
                    format!("{}{TF_SHADOW_SUFFIX}", strip(&t.name, "shadow")?)
                };
                Some(t)
            })
            .collect();
        let metadata = BTreeMap::from([(NUM_UPDATES.to_string(), self.num_updates().to_string())]);
        write(&path, Format::Safetensors, tensors, metadata)?;
        Ok(path)
    }

    /// Reads a safetensors file with TensorFlow's naming convention (see
    /// [`save_tf_style`](Self::save_tf_style)) into both sides: `<path>` into the live model,
    /// `<path>/ExponentialMovingAverage` into the shadow, and the update counter when the file
    /// has one. Float values are converted to each side's element type. Checked first: on error
    /// nothing changes.
    pub fn load_tf_style(&mut self, path: impl AsRef<Path>) -> Result<(), EmaError> {
        self.refuse_swapped("load_tf_style")?;
        let path = path.as_ref();
        let mut file = Incoming::open(path, Format::Safetensors)?;
        file.verify()?;
        let num_updates = match file.metadata.get(NUM_UPDATES) {
            Some(n) => Some(n.parse::<u64>().map_err(|_| {
                EmaError::file_mismatch(path, NUM_UPDATES, format!("`{n}` is not a count"))
            })?),
            None => None,
        };
        let shadow = file.take(|n| n.strip_suffix(TF_SHADOW_SUFFIX).map(str::to_string));
        let model = file.take(|n| Some(n.to_string()));
        model.check_fits(&self.model, Naming::Burn, Cast::FloatsToModel, path)?;
        shadow.check_fits(self.shadow(), Naming::Burn, Cast::FloatsToModel, path)?;
        model.apply_to(&mut self.model, Naming::Burn, Ids::Keep, path)?;
        self.load_into_shadow(shadow, Naming::Burn, path)?;
        if let Some(n) = num_updates {
            self.shadow.resume_at(n);
        }
        Ok(())
    }
}

/// A shadow tensor's name as the file has it.
fn under_prefix(err: EmaError, prefix: &str) -> EmaError {
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

/// Loads the shadow weights of a TensorFlow-style file (see [`EmaModule::save_tf_style`]) into a
/// bare model: each of the model's tensors takes `<path>/ExponentialMovingAverage`, converted to
/// the model's float type: the name mapping of TensorFlow's `variables_to_restore`, done for
/// you. Returns the loaded model; `model` itself is never changed, and an error names the file
/// and the tensor.
pub fn load_tf_shadow<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
    load_part(model, path.as_ref(), Format::Safetensors, |n| {
        n.strip_suffix(TF_SHADOW_SUFFIX).map(str::to_string)
    })
}

/// Loads a shadow file written by [`EmaModule::save_shadow`] (burnpack) into a bare model,
/// converting float values to the model's element types, with every tensor checked first.
/// (Burn's own `load_file` also reads the file; this gives `EmaError`s naming the tensor and
/// converts an `f32` shadow into an `f16` model.)
pub fn load_shadow_into<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
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

fn config_json(config: &EmaConfig) -> String {
    serde_json::to_string(config).expect("an EmaConfig always serializes")
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
