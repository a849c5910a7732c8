//! Saving and loading an [`EmaModule`]: its full state, its shadow as the bare model's file, and
//! TensorFlow's naming convention. (The file layouts themselves: `crate::io`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;

use super::EmaModule;
use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::io::{
    Cast, Format, Ids, Incoming, NUM_UPDATES, Naming, Part, SaveOptions, State, TF_SHADOW_SUFFIX,
    export_module, state_metadata, strip, tensors_of, tf_style_names, under_prefix, write,
};
use crate::shadow::Shadow;

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
        self.write_state("save", path.as_ref(), &SaveOptions::default())
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
        self.write_state("save_with", path.as_ref(), options)
    }

    /// [`save_with`](Self::save_with), refused as `operation` while swapped.
    fn write_state(
        &self,
        operation: &'static str,
        path: &Path,
        options: &SaveOptions,
    ) -> Result<PathBuf, EmaError> {
        let shadow = self.unswapped(operation)?;
        let path = Format::Burnpack.resolve(path);
        let mut tensors = tensors_of(self);
        if !options.include_model {
            tensors.retain(|t| strip(&t.name, "model").is_none());
        }
        let metadata = state_metadata(shadow.config(), shadow.num_updates());
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
        self.unswapped_mut("load")?;
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
            Some(config) if config != *self.config() => Some(Shadow::new(&self.model, config)?),
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
    pub(super) fn load_into_shadow(
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
    /// [`shadow_from_file`](crate::shadow_from_file), which converts).
    pub fn save_shadow(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        let shadow = self.unswapped("save_shadow")?;
        export_module(shadow.module(), path.as_ref(), Format::Burnpack)
    }

    /// Saves the shadow weights as a safetensors file whose keys are the model's own dotted
    /// paths (`fc1.weight`), atomically; burn-store's `SafetensorsStore` (and any safetensors
    /// reader) loads it into the bare model. `.safetensors` is added when `path` has no
    /// extension. Returns the path written.
    pub fn save_shadow_safetensors(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        let shadow = self.unswapped("save_shadow_safetensors")?;
        export_module(shadow.module(), path.as_ref(), Format::Safetensors)
    }

    /// Writes live and shadow weights in one safetensors file with TensorFlow's naming
    /// convention: each live tensor under its dotted path (`fc1.weight`), its shadow next to it
    /// as `fc1.weight/ExponentialMovingAverage`, and the update counter in the metadata.
    /// `.safetensors` is added when `path` has no extension. Returns the path written.
    pub fn save_tf_style(&self, path: impl AsRef<Path>) -> Result<PathBuf, EmaError> {
        let num_updates = self.unswapped("save_tf_style")?.num_updates();
        let path = Format::Safetensors.resolve(path.as_ref());
        let tensors = tf_style_names(tensors_of(self));
        let metadata = BTreeMap::from([(NUM_UPDATES.to_string(), num_updates.to_string())]);
        write(&path, Format::Safetensors, tensors, metadata)?;
        Ok(path)
    }

    /// Reads a safetensors file with TensorFlow's naming convention (see
    /// [`save_tf_style`](Self::save_tf_style)) into both sides: `<path>` into the live model,
    /// `<path>/ExponentialMovingAverage` into the shadow, and the update counter when the file
    /// has one. Float values are converted to each side's element type. Checked first: on error
    /// nothing changes.
    pub fn load_tf_style(&mut self, path: impl AsRef<Path>) -> Result<(), EmaError> {
        self.unswapped_mut("load_tf_style")?;
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
