//! Saving and loading an [`EmaModule`]: every format through [`EmaModule::save`] and
//! [`EmaModule::load`], chosen by an [`EmaFile`]. (The file layouts themselves: `crate::io`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;

use super::EmaModule;
use crate::config::EmaConfig;
use crate::error::EmaError;
use crate::io::{
    Cast, EmaFile, Format, Ids, Incoming, NUM_UPDATES, Naming, Part, State, TF_SHADOW_SUFFIX,
    export_module, state_metadata, strip, tensors_of, tf_style_names, under_prefix, write,
};
use crate::shadow::Shadow;

impl<M: Module> EmaModule<M> {
    /// Saves in `format` (see [`EmaFile`]) to `path`, atomically: a failed save leaves the
    /// previous file intact. `.bpk` or `.safetensors` is added when `path` has no extension;
    /// returns the path written.
    ///
    /// The save streams: each tensor is read back from its device when the writer reaches it,
    /// so it needs memory for the largest tensor, not for a copy of the model. The state
    /// formats name their tensors as the `EmaModule`'s Burn record does (`shadow.*`,
    /// `model.*`, `num_updates`), so a state file with the model is also a valid record for
    /// Burn's own `load_file`.
    ///
    /// Fails with [`EmaError::InvalidConfig`] (field `format`) for a format that is only read
    /// ([`EmaFile::Pytorch`](EmaFile)).
    pub fn save(&self, path: impl AsRef<Path>, format: EmaFile) -> Result<PathBuf, EmaError> {
        let shadow = self.settled();
        shadow.held()?;
        let Some(pack) = format.pack() else {
            return Err(EmaError::invalid(
                "format",
                format!("{format:?} checkpoints are read, not written"),
            ));
        };
        let path = pack.resolve(path.as_ref());
        match format {
            EmaFile::State | EmaFile::StateWithModel => {
                let mut tensors = tensors_of(self);
                if format == EmaFile::State {
                    tensors.retain(|t| strip(&t.name, "model").is_none());
                }
                write(&path, pack, tensors, state_metadata(shadow.config()))?;
                Ok(path)
            }
            EmaFile::Shadow | EmaFile::ShadowSafetensors => {
                export_module(shadow.module(), &path, pack)
            }
            _ => {
                let tensors = tf_style_names(tensors_of(self));
                let counter = shadow.num_updates().to_string();
                let metadata = BTreeMap::from([(NUM_UPDATES.to_string(), counter)]);
                write(&path, pack, tensors, metadata)?;
                Ok(path)
            }
        }
    }

    /// Loads a file of `format` (see [`EmaFile`]) and resumes from it:
    ///
    /// - the state formats (either; or a Burn record of an `EmaModule`, such as a Learner
    ///   checkpoint): the shadow, the update counter, the configuration stored in the file, and
    ///   the live model too when the file has it. Files of every burn-ema version load (a
    ///   pre-1.0 file's configuration is translated to the 1.0 vocabulary);
    /// - `Shadow`, `ShadowSafetensors`: the shadow weights (converted to the shadow's element
    ///   types), nothing else;
    /// - `TensorFlow`: `<path>` into the live model, `<path>/ExponentialMovingAverage` into the
    ///   shadow, and the counter when the file has one (floats converted);
    /// - `Pytorch(source)`: its EMA weights into the shadow, its live weights into the model
    ///   when it has them (timm's `state_dict`, ema-pytorch's `online_model`), its counter when
    ///   it keeps one (ema-pytorch's `step`, `AveragedModel`'s `n_averaged`, diffusers'
    ///   `optimization_step`; timm keeps none, so the counter stays).
    ///
    /// Everything is checked before anything is replaced — the format, the checksum, every
    /// tensor's name, kind, shape and element type: a file from another architecture, with
    /// another element type, truncated or corrupted gives an error naming the file and the
    /// tensor, and leaves this `EmaModule` unchanged. Values are read into the shadow in place,
    /// one tensor at a time (no second copy of the shadow in memory), unless a state file's
    /// configuration differs from this one's.
    pub fn load(&mut self, path: impl AsRef<Path>, format: EmaFile) -> Result<(), EmaError> {
        self.settled_mut()?;
        let path = path.as_ref();
        match format {
            EmaFile::State | EmaFile::StateWithModel => {
                let (state, config) = State::read(Incoming::open(path, Format::Burnpack)?)?;
                self.load_state(state, config, path)
            }
            EmaFile::Shadow | EmaFile::ShadowSafetensors => {
                let pack = format.pack().expect("written by this crate");
                let mut file = Incoming::open(path, pack)?;
                file.verify()?;
                let shadow = file.take(|n| Some(n.to_string()));
                let module = self.settled().module();
                shadow.check_fits(module, Naming::Burn, Cast::FloatsToModel, path)?;
                self.load_into_shadow(shadow, Naming::Burn, path)
            }
            EmaFile::TensorFlow => self.load_tf_style(path),
            #[cfg(feature = "pytorch")]
            EmaFile::Pytorch(source) => self.load_pytorch(path, source),
        }
    }

    /// An `EmaModule` resumed from a state file written by [`save`](Self::save) (either state
    /// format), with the configuration stored in it. `model` gives the architecture (and the
    /// live weights, unless the file holds them).
    pub fn from_file(model: M, path: impl AsRef<Path>) -> Result<Self, EmaError> {
        let path = path.as_ref();
        let (state, config) = State::read(Incoming::open(path, Format::Burnpack)?)?;
        let Some(config) = config else {
            return Err(EmaError::NotAnEmaFile {
                file: path.to_path_buf(),
                problem: "no EMA configuration; for a Burn record of an EmaModule, \
                          use `EmaModule::new(model, config)?.load(path, EmaFile::State)`"
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
            Some(config) if config != *self.shadow.config() => {
                Some(Shadow::new(&self.model, config)?)
            }
            _ => None,
        };
        if !state.model.is_empty() {
            state
                .model
                .check_fits(&self.model, Naming::Burn, Cast::Exact, path)?;
        }
        let shadow_module = fresh
            .as_ref()
            .map_or_else(|| self.settled().gathered(), Shadow::module);
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
    fn load_into_shadow(
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

    fn load_tf_style(&mut self, path: &Path) -> Result<(), EmaError> {
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
        let module = self.settled().gathered();
        shadow.check_fits(module, Naming::Burn, Cast::FloatsToModel, path)?;
        model.apply_to(&mut self.model, Naming::Burn, Ids::Keep, path)?;
        self.load_into_shadow(shadow, Naming::Burn, path)?;
        if let Some(n) = num_updates {
            self.shadow.resume_at(n);
        }
        Ok(())
    }

    #[cfg(feature = "pytorch")]
    fn load_pytorch(&mut self, path: &Path, source: crate::io::PytorchEma) -> Result<(), EmaError> {
        let checkpoint = source.read(path)?;
        let file = &checkpoint.file;
        if let Some(live) = &checkpoint.live {
            live.check_fits(&self.model, Naming::PyTorch, Cast::FloatsToModel, file)?;
        }
        let module = self.settled().gathered();
        checkpoint
            .ema
            .check_fits(module, Naming::PyTorch, Cast::FloatsToModel, file)?;
        checkpoint.check_readable()?;
        if let Some(live) = checkpoint.live {
            live.apply_to(&mut self.model, Naming::PyTorch, Ids::Keep, file)?;
        }
        self.load_into_shadow(checkpoint.ema, Naming::PyTorch, file)?;
        if let Some(n) = checkpoint.num_updates {
            self.shadow.resume_at(n);
        }
        Ok(())
    }
}
