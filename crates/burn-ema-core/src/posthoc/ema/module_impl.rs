//! `PostHocEma` as a Burn [`Module`] (its record is its averages'), and its `Clone`, `Debug` and
//! `Display`.

use burn::module::{Module, ModuleMapper, ModuleVisitor};
use burn::tensor::Device;

use super::PostHocEma;

impl<M: Module> Clone for PostHocEma<M> {
    /// A copy that writes into the same directory: let only one of them save snapshots.
    fn clone(&self) -> Self {
        Self {
            emas: self.emas.clone(),
            config: self.config.clone(),
            dir: self.dir.clone(),
            index: self.index.clone(),
        }
    }
}

impl<M: Module> std::fmt::Debug for PostHocEma<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostHocEma")
            .field("sigma_rels", &self.config.sigma_rels)
            .field("dir", &self.dir)
            .field("snapshots", &self.index.snapshots.len())
            .field("averages", &self.emas)
            .finish()
    }
}

impl<M: Module> Module for PostHocEma<M> {
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        self.emas.collect_devices(devices)
    }

    fn fork(mut self, device: &Device) -> Self {
        self.emas = self.emas.fork(device);
        self
    }

    fn to_device(mut self, device: &Device) -> Self {
        self.emas = self.emas.to_device(device);
        self
    }

    fn train(mut self) -> Self {
        self.emas = self.emas.train();
        self
    }

    fn valid(&self) -> Self {
        // Field by field: `..self.clone()` would copy every average a second time.
        Self {
            emas: self.emas.valid(),
            config: self.config.clone(),
            dir: self.dir.clone(),
            index: self.index.clone(),
        }
    }

    fn materialize(mut self) -> Self {
        self.emas = self.emas.materialize();
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.emas.visit(visitor);
    }

    fn map<Mp: ModuleMapper>(mut self, mapper: &mut Mp) -> Self {
        self.emas = self.emas.map(mapper);
        self
    }
}

impl<M: Module + std::fmt::Display> std::fmt::Display for PostHocEma<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "PostHocEma {{ sigma_rels: {:?}, snapshots: {}, dir: {} }}",
            self.config.sigma_rels,
            self.index.snapshots.len(),
            self.dir.display()
        )?;
        write!(f, "{}", self.emas)
    }
}
