//! Saving and loading an [`EmaModule`]: its full state, its shadow as the bare model's file, and
//! TensorFlow's naming convention.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{DType, TensorData};

use crate::config::EmaConfig;
use crate::ema_module::EmaModule;
use crate::error::EmaError;
use crate::io::entries::{Cast, Entries, Entry, Ids, Selection, collect, collect_prefixed, load};
use crate::io::formats::{Format, TensorFile};

/// Metadata keys of an EMA state file.
const FORMAT: &str = "burn_ema.format";
const CONFIG: &str = "burn_ema.config";
const NUM_UPDATES: &str = "burn_ema.num_updates";
/// The value of [`FORMAT`] in EMA state files.
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

/// `path`, with `ext` added when it has no extension (as Burn does for `.bpk`).
fn with_default_extension(path: &Path, ext: &str) -> PathBuf {
    if path.extension().is_none() {
        path.with_extension(ext)
    } else {
        path.to_path_buf()
    }
}

fn counter_entry(n: u64) -> Entry {
    Entry {
        id: None,
        data: TensorData::new(vec![n as i64], [1]),
    }
}

fn read_counter(entries: &Entries, file: &Path) -> Result<Option<u64>, EmaError> {
    let Some(entry) = entries.get(COUNTER) else {
        return Ok(None);
    };
    let bad = |problem: &str| EmaError::file_mismatch(file, COUNTER, problem);
    if entry.data.num_elements() != 1 {
        return Err(bad("the update counter must have one element"));
    }
    let n = match entry.data.dtype() {
        DType::I64 => entry.data.as_slice::<i64>().map(|v| v[0]),
        DType::I32 => entry.data.as_slice::<i32>().map(|v| v[0] as i64),
        _ => return Err(bad("the update counter must be an integer")),
    }
    .map_err(|e| bad(&format!("{e:?}")))?;
    u64::try_from(n)
        .map(Some)
        .map_err(|_| bad("the update counter is negative"))
}

/// The dotted name of `path` under `prefix`.
fn under(prefix: &'static str) -> impl Fn(&str) -> String {
    move |path: &str| format!("{prefix}.{path}")
}

fn starts_under(prefix: &'static str) -> impl Fn(&str) -> bool {
    move |name: &str| name.starts_with(prefix) && name[prefix.len()..].starts_with('.')
}

impl<M: Module> EmaModule<M> {
    /// Saves the EMA state — shadow, update counter and configuration — to a burnpack file
    /// (`.bpk` is added when `path` has no extension), atomically: a failed save leaves the
    /// previous file intact. Returns the path written.
    ///
    /// The live model is not stored (see [`save_with`](Self::save_with)). Load with
    /// [`load`](Self::load) or [`from_file`](Self::from_file).
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
        let path = with_default_extension(path.as_ref(), "bpk");
        let mut file = TensorFile::default();
        collect_prefixed(self.shadow(), &mut file.entries, "shadow");
        if options.include_model {
            collect_prefixed(&self.model, &mut file.entries, "model");
        }
        file.entries
            .insert(COUNTER.into(), counter_entry(self.num_updates()));
        file.metadata.insert(FORMAT.into(), STATE_FORMAT.into());
        file.metadata
            .insert(CONFIG.into(), config_json(self.config()));
        file.metadata
            .insert(NUM_UPDATES.into(), self.num_updates().to_string());
        file.save(&path, Format::Burnpack)?;
        Ok(path)
    }

    /// Loads an EMA state written by [`save`](Self::save) or [`save_with`](Self::save_with) —
    /// or a Burn record of an `EmaModule`, such as a Learner checkpoint — and resumes from it:
    /// the shadow, the update counter, the configuration stored in the file, and the live
    /// model too when the file has it.
    ///
    /// Every tensor is checked before anything is replaced: a file from another architecture,
    /// with another element type, truncated or corrupted gives an error naming the file and the
    /// tensor, and leaves this `EmaModule` unchanged.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), EmaError> {
        self.refuse_swapped("load")?;
        let path = path.as_ref();
        let file = TensorFile::load(path, Format::Burnpack)?;
        let config = match file.metadata.get(CONFIG) {
            Some(json) => parse_config(json, path)?,
            None => self.config().clone(),
        };
        *self = Self::from_state(self.model.clone(), config, &file, path)?;
        Ok(())
    }

    /// An `EmaModule` resumed from a file written by [`save`](Self::save), with the
    /// configuration stored in it. `model` gives the architecture (and the live weights, unless
    /// the file holds them).
    pub fn from_file(model: M, path: impl AsRef<Path>) -> Result<Self, EmaError> {
        let path = path.as_ref();
        let file = TensorFile::load(path, Format::Burnpack)?;
        let Some(json) = file.metadata.get(CONFIG) else {
            return Err(EmaError::NotAnEmaFile {
                file: path.to_path_buf(),
                problem: "no EMA configuration; for a Burn record of an EmaModule, \
                          use `EmaModule::new(model, config)?.load(path)`"
                    .into(),
            });
        };
        let config = parse_config(json, path)?;
        Self::from_state(model, config, &file, path)
    }

    fn from_state(
        model: M,
        config: EmaConfig,
        file: &TensorFile,
        path: &Path,
    ) -> Result<Self, EmaError> {
        let entries = &file.entries;
        let has_shadow = entries.keys().any(|n| starts_under("shadow")(n));
        let counter = read_counter(entries, path)?;
        let (true, Some(num_updates)) = (has_shadow, counter) else {
            return Err(EmaError::NotAnEmaFile {
                file: path.to_path_buf(),
                problem: "no shadow tensors or no update counter; a bare model file loads \
                          into the model with Burn's `load_file`"
                    .into(),
            });
        };
        if let Some(name) = entries
            .keys()
            .find(|n| *n != COUNTER && !starts_under("shadow")(n) && !starts_under("model")(n))
        {
            return Err(EmaError::file_mismatch(
                path,
                name,
                "not part of an EMA state (expected `shadow.*`, `model.*`, `num_updates`)",
            ));
        }
        let model = if entries.keys().any(|n| starts_under("model")(n)) {
            let selection = Selection {
                name: under("model"),
                owns: starts_under("model"),
                ids: Ids::FromFile,
                cast: Cast::Exact,
            };
            load(&model, entries, path, &selection)?
        } else {
            model
        };
        let mut ema = Self::new(model, config)?;
        let selection = Selection {
            name: under("shadow"),
            owns: starts_under("shadow"),
            ids: Ids::Keep,
            cast: Cast::Exact,
        };
        let shadow = load(ema.shadow(), entries, path, &selection)?;
        ema.shadow.set_module(shadow);
        ema.shadow.resume_at(num_updates);
        Ok(ema)
    }

    /// Saves the shadow weights as the bare model's burnpack file (`.bpk` added when `path`
    /// has no extension), atomically. The user's plain model loads it with Burn's own
    /// `load_file`, with no EMA code (TensorFlow's `variables_to_restore`). Returns the path
    /// written.
    ///
    /// The shadow is stored in its own element type: an `f32` shadow of an `f16` model loads
    /// as `f32` (cast the model with `.cast(..)` afterwards, or load with
    /// [`load_shadow_into`](crate::load_shadow_into), which converts).
    pub fn save_shadow(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_shadow")?;
        export_module(self.shadow(), path.as_ref(), Format::Burnpack, "bpk")
    }

    /// Saves the shadow weights as a safetensors file whose keys are the model's own dotted
    /// paths (`fc1.weight`), atomically; burn-store's `SafetensorsStore` (and any safetensors
    /// reader) loads it into the bare model. `.safetensors` is added when `path` has no
    /// extension. Returns the path written.
    pub fn save_shadow_safetensors(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_shadow_safetensors")?;
        export_module(
            self.shadow(),
            path.as_ref(),
            Format::Safetensors,
            "safetensors",
        )
    }

    /// Writes live and shadow weights in one safetensors file with TensorFlow's naming
    /// convention: each live tensor under its dotted path (`fc1.weight`), its shadow next to it
    /// as `fc1.weight/ExponentialMovingAverage`, and the update counter in the metadata.
    /// `.safetensors` is added when `path` has no extension. Returns the path written.
    pub fn save_tf_style(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        self.refuse_swapped("save_tf_style")?;
        let path = with_default_extension(path.as_ref(), "safetensors");
        let mut file = TensorFile::default();
        collect(&self.model, &mut file.entries, str::to_string);
        collect(self.shadow(), &mut file.entries, |p| {
            format!("{p}{TF_SHADOW_SUFFIX}")
        });
        file.metadata
            .insert(NUM_UPDATES.into(), self.num_updates().to_string());
        file.save(&path, Format::Safetensors)?;
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
        let file = TensorFile::load(path, Format::Safetensors)?;
        let is_shadow = |n: &str| n.ends_with(TF_SHADOW_SUFFIX);
        let model = load(
            &self.model,
            &file.entries,
            path,
            &Selection {
                name: str::to_string,
                owns: |n: &str| !is_shadow(n),
                ids: Ids::Keep,
                cast: Cast::FloatsToModel,
            },
        )?;
        let shadow = load(
            self.shadow(),
            &file.entries,
            path,
            &Selection {
                name: |p: &str| format!("{p}{TF_SHADOW_SUFFIX}"),
                owns: is_shadow,
                ids: Ids::Keep,
                cast: Cast::FloatsToModel,
            },
        )?;
        let num_updates = match file.metadata.get(NUM_UPDATES) {
            Some(n) => Some(n.parse::<u64>().map_err(|_| {
                EmaError::file_mismatch(path, NUM_UPDATES, format!("`{n}` is not a count"))
            })?),
            None => None,
        };
        self.model = model;
        self.shadow.set_module(shadow);
        if let Some(n) = num_updates {
            self.shadow.resume_at(n);
        }
        Ok(())
    }
}

/// Loads the shadow weights of a TensorFlow-style file (see [`EmaModule::save_tf_style`]) into a
/// bare model: each of the model's tensors takes `<path>/ExponentialMovingAverage`, converted to
/// the model's float type: the name mapping of TensorFlow's `variables_to_restore`, done for
/// you. Returns the loaded model; `model` itself is never changed, and an error names the file
/// and the tensor.
pub fn load_tf_shadow<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
    let path = path.as_ref();
    let file = TensorFile::load(path, Format::Safetensors)?;
    load(
        model,
        &file.entries,
        path,
        &Selection {
            name: |p: &str| format!("{p}{TF_SHADOW_SUFFIX}"),
            owns: |n: &str| n.ends_with(TF_SHADOW_SUFFIX),
            ids: Ids::Keep,
            cast: Cast::FloatsToModel,
        },
    )
}

/// Loads a shadow file written by [`EmaModule::save_shadow`] (burnpack) into a bare model,
/// converting float values to the model's element types, with every tensor checked first.
/// (Burn's own `load_file` also reads the file; this gives `EmaError`s naming the tensor and
/// converts an `f32` shadow into an `f16` model.)
pub fn load_shadow_into<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<M, EmaError> {
    let path = path.as_ref();
    let file = TensorFile::load(path, Format::Burnpack)?;
    load(
        model,
        &file.entries,
        path,
        &Selection {
            name: str::to_string,
            owns: |_: &str| true,
            ids: Ids::Keep,
            cast: Cast::FloatsToModel,
        },
    )
}

/// Writes `module` as a bare model file (`ext` added when `path` has none), atomically; returns
/// the path written.
pub(crate) fn export_module<M: Module>(
    module: &M,
    path: &Path,
    format: Format,
    ext: &str,
) -> Result<PathBuf, EmaError> {
    let path = with_default_extension(path, ext);
    let mut file = TensorFile::default();
    collect_prefixed(module, &mut file.entries, "");
    file.save(&path, format)?;
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
