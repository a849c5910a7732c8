//! The shadows an average holds — one (`EmaModule`'s slot) or several (`MultiEma`'s list) — as
//! its Burn `Module` impl needs them, and that impl, written once ([`impl_average_module`]).

use burn::module::{Module, ModuleMapper, ModuleVisitor};
use burn::prelude::Device;

use super::{CONTAINER, Shadow};

/// What an average's `Module` impl does to its shadows.
pub(crate) trait Shadows<M: Module> {
    /// Rewrites every shadow with `f`.
    fn each(&mut self, f: impl FnMut(Shadow<M>) -> Shadow<M>);

    /// Adds the devices of every shadow's tensors.
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device>;

    /// The shadows' part of the average's record.
    fn visit_record<V: ModuleVisitor>(&self, visitor: &mut V);

    /// Passes a mapper over the shadows' part of the record.
    fn map_record<Mp: ModuleMapper>(&mut self, mapper: &mut Mp);
}

/// Where several averages' records go: `averages.{k}.shadow.*`, `averages.{k}.num_updates`.
const AVERAGES: &str = "averages";

impl<M: Module> Shadows<M> for Vec<Shadow<M>> {
    fn each(&mut self, f: impl FnMut(Shadow<M>) -> Shadow<M>) {
        *self = std::mem::take(self).into_iter().map(f).collect();
    }

    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        self.iter()
            .fold(devices, |devices, shadow| shadow.collect_devices(devices))
    }

    fn visit_record<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.enter_module(AVERAGES, CONTAINER);
        for (k, shadow) in self.iter().enumerate() {
            let k = k.to_string();
            visitor.enter_module(&k, "Vec");
            shadow.visit_record(visitor);
            visitor.exit_module(&k, "Vec");
        }
        visitor.exit_module(AVERAGES, CONTAINER);
    }

    fn map_record<Mp: ModuleMapper>(&mut self, mapper: &mut Mp) {
        mapper.enter_module(AVERAGES, CONTAINER);
        for (k, shadow) in self.iter_mut().enumerate() {
            let k = k.to_string();
            mapper.enter_module(&k, "Vec");
            shadow.map_record(mapper);
            mapper.exit_module(&k, "Vec");
        }
        mapper.exit_module(AVERAGES, CONTAINER);
    }
}

/// Burn's `Module` for an average `$average<M>` made of a live model (the field path after
/// `model:`) and a [`Shadows`] (the path after `shadows:`): the one impl of `EmaModule`,
/// `MultiEma` and `PostHocEma` (whose fields are its `MultiEma`'s). Its record holds
/// `model.*`, then the shadows' part. `fork` makes a replica: the model is forked, the shadows
/// stay home (no data moved, see `placement.rs`); `to_device` is a move on purpose: the
/// shadows follow, unless pinned. `train` and `valid` change the model's mode only (a shadow
/// is always in evaluation mode). Invoked where the fields are visible.
macro_rules! impl_average_module {
    ($average:ident, model: $($model:ident).+, shadows: $($shadows:ident).+) => {
        // Burn's module display, so an average can be a field of a `#[derive(Module)]` struct
        // (an agent holding its online and target networks): the live model, as Burn shows it,
        // and the parameters of the model and the averages.
        impl<M: burn::module::Module + burn::module::ModuleDisplay>
            burn::module::ModuleDisplayDefault for $average<M>
        {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                content
                    .set_top_level_type(stringify!($average))
                    .add("model", &self.$($model).+)
                    .optional()
            }

            /// The live model's and the averages' (all are in the record).
            fn num_params(&self) -> usize {
                burn::module::Module::num_params(self)
            }
        }

        impl<M: burn::module::Module + burn::module::ModuleDisplay> burn::module::ModuleDisplay
            for $average<M>
        {
        }

        impl<M: burn::module::Module> burn::module::Module for $average<M> {
            fn collect_devices(
                &self,
                devices: Vec<burn::prelude::Device>,
            ) -> Vec<burn::prelude::Device> {
                let devices = self.$($model).+.collect_devices(devices);
                $crate::shadow::Shadows::collect_devices(&self.$($shadows).+, devices)
            }

            fn fork(mut self, device: &burn::prelude::Device) -> Self {
                self.$($model).+ = self.$($model).+.fork(device);
                $crate::shadow::Shadows::each(&mut self.$($shadows).+, |s| s.fork(device));
                self
            }

            fn to_device(mut self, device: &burn::prelude::Device) -> Self {
                self.$($model).+ = self.$($model).+.to_device(device);
                $crate::shadow::Shadows::each(&mut self.$($shadows).+, |s| s.moved_to(device));
                self
            }

            fn train(mut self) -> Self {
                self.$($model).+ = self.$($model).+.train();
                self
            }

            fn valid(&self) -> Self {
                let mut out = self.clone();
                out.$($model).+ = self.$($model).+.valid();
                out
            }

            fn materialize(mut self) -> Self {
                self.$($model).+ = self.$($model).+.materialize();
                $crate::shadow::Shadows::each(&mut self.$($shadows).+, |s| s.materialize());
                self
            }

            fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
                visitor.enter_module("model", $crate::shadow::CONTAINER);
                self.$($model).+.visit(visitor);
                visitor.exit_module("model", $crate::shadow::CONTAINER);
                $crate::shadow::Shadows::visit_record(&self.$($shadows).+, visitor);
            }

            fn map<Mp: burn::module::ModuleMapper>(mut self, mapper: &mut Mp) -> Self {
                mapper.enter_module("model", $crate::shadow::CONTAINER);
                self.$($model).+ = self.$($model).+.map(mapper);
                mapper.exit_module("model", $crate::shadow::CONTAINER);
                $crate::shadow::Shadows::map_record(&mut self.$($shadows).+, mapper);
                self
            }
        }
    };
}

pub(crate) use impl_average_module;
