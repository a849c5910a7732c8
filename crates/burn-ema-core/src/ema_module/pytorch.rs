//! Resuming an [`EmaModule`] from a PyTorch library's checkpoint (feature `pytorch`; reading
//! the checkpoint: `crate::io`).

use std::path::Path;

use burn::module::Module;

use super::EmaModule;
use crate::error::EmaError;
use crate::io::{Cast, Ids, Naming, PytorchEma};

impl<M: Module> EmaModule<M> {
    /// Resumes from a PyTorch checkpoint written by `source`: its EMA weights into the shadow,
    /// its live weights into the model when it has them (timm's `state_dict`, ema-pytorch's
    /// `online_model`), and its update counter when it keeps one (ema-pytorch's `step`,
    /// `AveragedModel`'s `n_averaged`, diffusers' `optimization_step`; timm keeps none, so the
    /// counter stays). Floats are converted to each side's element types. Checked in full
    /// first: on error nothing changes.
    pub fn load_pytorch(
        &mut self,
        path: impl AsRef<Path>,
        source: PytorchEma,
    ) -> Result<(), EmaError> {
        self.unswapped_mut("load_pytorch")?;
        let checkpoint = source.read(path.as_ref())?;
        let file = &checkpoint.file;
        if let Some(live) = &checkpoint.live {
            live.check_fits(&self.model, Naming::PyTorch, Cast::FloatsToModel, file)?;
        }
        checkpoint
            .ema
            .check_fits(self.shadow(), Naming::PyTorch, Cast::FloatsToModel, file)?;
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
