//! `EmaModule` as a Burn [`Module`]: records, devices, optimizers, train/valid.
//!
//! Traversal order: `model.*`, `shadow.*`, then `num_updates` (a one-element `i64` tensor),
//! so a record of an `EmaModule` holds the live model, the shadow and the counter, and
//! Learner checkpoints carry the EMA.

use std::fmt;

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::{Bool, DType};

use crate::ema_module::EmaModule;

const CONTAINER: &str = "Struct:EmaModule";

impl<M: Module> EmaModule<M> {
    /// The counter as a fresh parameter: a fresh id, so that a mapper that loads a record
    /// (which gives back the recorded id) can be told from one that leaves it alone.
    fn counter_param(&self) -> Param<Tensor<1, Int>> {
        let data = TensorData::new(vec![self.num_updates as i64], [1]);
        let tensor = Tensor::<1, Int>::from_data(data, (&self.counter_device, DType::I64));
        Param::initialized(ParamId::new(), tensor)
    }

    fn map_shadow<Mp: ModuleMapper>(shadow: M, mapper: &mut Mp) -> M {
        shadow.map(&mut PlainGuard { inner: mapper })
    }
}

/// Passes a mapper over the shadow while keeping the shadow plain: float tensors come back as
/// non-autodiff tensors, and flags (BatchNorm's `training`) are left alone, so `unfreeze`,
/// `set_require_grad(true)` and the like cannot make the shadow trainable.
struct PlainGuard<'a, Mp> {
    inner: &'a mut Mp,
}

impl<Mp: ModuleMapper> ModuleMapper for PlainGuard<'_, Mp> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.inner.enter_module(name, container_type);
    }

    fn exit_module(&mut self, name: &str, container_type: &str) {
        self.inner.exit_module(name, container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, t, mapper) = self.inner.map_float(param).consume();
        Param::from_mapped_value(id, t.inner(), mapper)
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        self.inner.map_int(param)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        self.inner.map_bool(param)
    }

    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        flag
    }
}

impl<M: Module> Module for EmaModule<M> {
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        let devices = self.model.collect_devices(devices);
        self.shadow().collect_devices(devices)
    }

    fn fork(mut self, device: &Device) -> Self {
        let plain = device.clone().inner();
        self.model = self.model.fork(device);
        self.shadow = self.shadow.map(|s| s.fork(&plain));
        self.counter_device = plain;
        self
    }

    fn to_device(mut self, device: &Device) -> Self {
        let plain = device.clone().inner();
        self.model = self.model.to_device(device);
        self.shadow = self.shadow.map(|s| s.to_device(&plain));
        self.counter_device = plain;
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
        self.shadow = self.shadow.map(Module::materialize);
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.enter_module("model", CONTAINER);
        self.model.visit(visitor);
        visitor.exit_module("model", CONTAINER);
        visitor.enter_module("shadow", CONTAINER);
        self.shadow().visit(visitor);
        visitor.exit_module("shadow", CONTAINER);
        visitor.enter_module("num_updates", CONTAINER);
        visitor.visit_int(&self.counter_param());
        visitor.exit_module("num_updates", CONTAINER);
    }

    fn map<Mp: ModuleMapper>(mut self, mapper: &mut Mp) -> Self {
        mapper.enter_module("model", CONTAINER);
        self.model = self.model.map(mapper);
        mapper.exit_module("model", CONTAINER);
        mapper.enter_module("shadow", CONTAINER);
        let shadow = self
            .shadow
            .take()
            .expect("the shadow is present between calls");
        self.shadow = Some(Self::map_shadow(shadow, mapper));
        mapper.exit_module("shadow", CONTAINER);
        mapper.enter_module("num_updates", CONTAINER);
        let counter = self.counter_param();
        let given = counter.id;
        let counter = mapper.map_int(counter);
        mapper.exit_module("num_updates", CONTAINER);
        if counter.id != given {
            // A record was loaded: take its counter (the only case that reads it back).
            let data = counter.val().into_data();
            if let Ok(values) = data.try_into_vec_as::<i64>()
                && let Some(&n) = values.first()
            {
                self.num_updates = n.max(0) as u64;
                self.last_decay = None;
            }
        }
        self
    }
}

impl<M: Module> Clone for EmaModule<M> {
    /// Clones the live model as Burn does (buffers shared) and the shadow with its own buffers,
    /// so updating one `EmaModule` never changes another's shadow.
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone(),
            shadow: Some(self.shadow().valid()),
            config: self.config.clone(),
            schedule: self.schedule.clone(),
            layout: self.layout.clone(),
            num_updates: self.num_updates,
            last_decay: self.last_decay,
            swapped: self.swapped.clone(),
            counter_device: self.counter_device.clone(),
        }
    }
}

impl<M: Module> fmt::Debug for EmaModule<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmaModule")
            .field("config", &self.config)
            .field("num_updates", &self.num_updates)
            .field("swapped", &self.is_swapped())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<M: Module + fmt::Display> fmt::Display for EmaModule<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "EmaModule {{ decay: {}, warmup: {:?}, updates: {}, averaged tensors: {} }}",
            self.config.decay,
            self.config.warmup,
            self.num_updates,
            self.num_averaged()
        )?;
        write!(f, "{}", self.model)
    }
}
