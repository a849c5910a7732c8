//! `EmaModule` as a Burn [`Module`]: records, devices, optimizers, train/valid.
//!
//! Traversal order: `model.*`, then the shadow's part ([`Shadow::visit_record`]: `shadow.*`
//! and `num_updates`, a one-element `i64` tensor), so a record of an `EmaModule` holds the live
//! model, the shadow and the counter, and Learner checkpoints carry the EMA.
//!
//! [`Shadow::visit_record`]: crate::shadow::Shadow

use std::fmt;

use burn::module::{Module, ModuleMapper, ModuleVisitor};
use burn::prelude::Device;

use super::EmaModule;
use super::background::ShadowSlot;
use crate::shadow::{Shadow, Shadows, impl_average_module};

impl_average_module!(EmaModule, model: model, shadows: shadow);

impl<M: Module> Shadows<M> for ShadowSlot<M> {
    /// After waiting for a background update.
    fn each(&mut self, f: impl FnMut(Shadow<M>) -> Shadow<M>) {
        self.map(f);
    }

    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        (**self).collect_devices(devices)
    }

    fn visit_record<V: ModuleVisitor>(&self, visitor: &mut V) {
        (**self).visit_record(visitor);
    }

    fn map_record<Mp: ModuleMapper>(&mut self, mapper: &mut Mp) {
        (**self).map_record(mapper);
    }
}

impl<M: Module> Clone for EmaModule<M> {
    /// Clones the live model as Burn does (buffers shared) and the shadow with its own buffers,
    /// so updating one `EmaModule` never changes another's shadow.
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone(),
            shadow: self.shadow.clone(),
            offload: self.offload,
            switch: self.switch,
        }
    }
}

impl<M: Module> fmt::Debug for EmaModule<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmaModule")
            .field("config", self.shadow.config())
            .field("num_updates", &self.shadow.num_updates())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<M: Module + fmt::Display> fmt::Display for EmaModule<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.shadow.config();
        writeln!(
            f,
            "EmaModule {{ decay: {}, schedule: {:?}, updates: {}, averaged tensors: {} }}",
            config.decay,
            config.schedule,
            self.shadow.num_updates(),
            self.shadow.layout().num_averaged()
        )?;
        write!(f, "{}", self.model)
    }
}
