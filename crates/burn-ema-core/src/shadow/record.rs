//! A shadow's part of its owner's Burn record: `shadow.*`, then `num_updates` (a one-element
//! `i64` tensor), so Learner checkpoints and `EmaModule` files carry the EMA. The shadow stays
//! plain (non-autodiff, evaluation mode) whatever a mapper does to it.

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::{Device, Int, TensorData};
use burn::tensor::{Bool, DType, Tensor};

use super::{CONTAINER, Shadow};

impl<M: Module> Shadow<M> {
    /// The counter as a fresh parameter: a fresh id, so that a mapper that loads a record
    /// (which gives back the recorded id) can be told from one that leaves it alone.
    fn counter_param(&self) -> Param<Tensor<1, Int>> {
        let data = TensorData::new(vec![self.counter.get() as i64], [1]);
        let tensor = Tensor::<1, Int>::from_data(data, (self.placement.home(), DType::I64));
        Param::initialized(ParamId::new(), tensor)
    }

    /// Adds the devices of the shadow's tensors (none on a detached replica).
    pub(crate) fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        if self.detached {
            devices
        } else {
            self.module().collect_devices(devices)
        }
    }

    /// The shadow's part of a record, in traversal order: `shadow.*`, then `num_updates`.
    pub(crate) fn visit_record<V: ModuleVisitor>(&self, visitor: &mut V) {
        if self.detached {
            return;
        }
        visitor.enter_module("shadow", CONTAINER);
        self.module().visit(visitor);
        visitor.exit_module("shadow", CONTAINER);
        visitor.enter_module("num_updates", CONTAINER);
        visitor.visit_int(&self.counter_param());
        visitor.exit_module("num_updates", CONTAINER);
    }

    /// Passes a mapper over the shadow's part of a record (see [`visit_record`]); the shadow
    /// stays plain whatever the mapper does, and a loaded record's counter is taken.
    ///
    /// [`visit_record`]: Self::visit_record
    pub(crate) fn map_record<Mp: ModuleMapper>(&mut self, mapper: &mut Mp) {
        if self.detached {
            return;
        }
        mapper.enter_module("shadow", CONTAINER);
        self.map_module(|m| m.map(&mut PlainGuard { inner: mapper }));
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
                self.resume_at(n.max(0) as u64);
            }
        }
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
        // Handed over as an autodiff tensor: some mappers only take those (Burn's DDP sharder
        // marks every float tensor distributed, which a plain tensor refuses with a panic).
        let (id, t, mapper) = param.consume();
        let lifted = Param::from_mapped_value(id, Tensor::from_inner(t), mapper);
        let (id, t, mapper) = self.inner.map_float(lifted).consume();
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
