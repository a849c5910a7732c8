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
use crate::shadow::{CONTAINER, Shadow};

impl<M: Module> Module for EmaModule<M> {
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        let devices = self.model.collect_devices(devices);
        if self.shadow.is_detached() {
            return devices;
        }
        self.shadow().collect_devices(devices)
    }

    /// A replica: the model is forked; the shadow stays home, no data moved (see
    /// `placement.rs`).
    fn fork(mut self, device: &Device) -> Self {
        self.model = self.model.fork(device);
        self.shadow.map(|s| s.fork(device));
        self
    }

    /// A move on purpose: the shadow follows the model, unless pinned to a device of its own.
    fn to_device(mut self, device: &Device) -> Self {
        self.model = self.model.to_device(device);
        self.shadow.map(|s| s.moved_to(device));
        self
    }

    fn train(mut self) -> Self {
        self.model = self.model.train();
        self
    }

    fn valid(&self) -> Self {
        let mut out = self.clone();
        out.model = self.model.valid();
        out
    }

    fn materialize(mut self) -> Self {
        self.model = self.model.materialize();
        self.shadow.map(Shadow::materialize);
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.enter_module("model", CONTAINER);
        self.model.visit(visitor);
        visitor.exit_module("model", CONTAINER);
        self.shadow.visit_record(visitor);
    }

    fn map<Mp: ModuleMapper>(mut self, mapper: &mut Mp) -> Self {
        mapper.enter_module("model", CONTAINER);
        self.model = self.model.map(mapper);
        mapper.exit_module("model", CONTAINER);
        self.shadow.map_record(mapper);
        self
    }
}

impl<M: Module> Clone for EmaModule<M> {
    /// Clones the live model as Burn does (buffers shared) and the shadow with its own buffers,
    /// so updating one `EmaModule` never changes another's shadow.
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone(),
            shadow: self.shadow.clone(),
            swapped: self.swapped.clone(),
            offload: self.offload,
            switch: self.switch,
        }
    }
}

impl<M: Module> fmt::Debug for EmaModule<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmaModule")
            .field("config", self.config())
            .field("num_updates", &self.shadow.num_updates())
            .field("swapped", &self.is_swapped())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<M: Module + fmt::Display> fmt::Display for EmaModule<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.config();
        writeln!(
            f,
            "EmaModule {{ decay: {}, warmup: {:?}, updates: {}, averaged tensors: {} }}",
            config.decay,
            config.warmup,
            self.shadow.num_updates(),
            self.num_averaged()
        )?;
        write!(f, "{}", self.model)
    }
}
