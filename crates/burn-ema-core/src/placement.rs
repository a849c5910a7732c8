//! Where a shadow lives, and what `fork` and `to_device` do to it.
//!
//! Burn's multi-device strategies move models with two calls, and the shadow answers them
//! differently:
//!
//! - **`to_device`** is a move on purpose: the shadow follows the model (one copy), unless it
//!   is pinned to a device of its own ([`EmaModule::with_shadow_device`],
//!   [`EmaModule::offload`]).
//! - **`fork`** makes a replica. The Learner forks a copy of the model to every device on every
//!   step (`MultiDevice`), and one per worker (`DistributedDataParallel`). A replica forked to
//!   another device than the shadow's home keeps the shadow where it is (its tensor handles,
//!   shared, no data moved) and notes the device it was sent to; the shadow moves there only if
//!   this replica is ever updated as the main one (a single-device Learner on another device than
//!   the model was built on). A replica whose parameters are marked distributed (a DDP secondary
//!   worker) drops the shadow at its first update instead: the main worker's is the only one.
//!
//! [`EmaModule::with_shadow_device`]: crate::EmaModule::with_shadow_device
//! [`EmaModule::offload`]: crate::EmaModule::offload

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::Device;
use burn::tensor::Tensor;

use crate::walk::{LeafRewriter, RewriteLeaves, Value, collect_leaves};

/// Where a shadow lives and how it follows its model.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    /// The device the shadow's tensors are on (plain, never autodiff).
    home: Device,
    /// Set by `with_shadow_device`/`offload`: the shadow stays on `home` whatever the model does.
    pinned: bool,
    /// On a replica forked away from `home`: the device it was forked to. Nothing has moved.
    away: Option<Device>,
    /// Bytes of shadow data moved between devices, shared by every clone and fork.
    moved: Arc<AtomicU64>,
}

impl Placement {
    pub(crate) fn new(home: Device) -> Self {
        Self {
            home: home.inner(),
            pinned: false,
            away: None,
            moved: Arc::default(),
        }
    }

    pub(crate) fn home(&self) -> &Device {
        &self.home
    }

    /// Whether this is a replica forked to another device than the shadow's.
    pub(crate) fn is_away(&self) -> bool {
        self.away.is_some()
    }

    pub(crate) fn bytes_moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// What `fork(device)` does: a replica on another device leaves the shadow where it is.
    pub(crate) fn fork(&mut self, device: &Device) {
        let device = device.clone().inner();
        self.away = (!self.pinned && device != self.home).then_some(device);
    }

    /// Where the shadow goes for `to_device(device)`, if it moves (`None` when pinned or
    /// already there).
    pub(crate) fn move_target(&mut self, device: &Device) -> Option<Device> {
        self.away = None;
        let device = device.clone().inner();
        (!self.pinned && device != self.home).then_some(device)
    }

    /// Where the shadow goes before this replica uses it as its own (`None`: it is home).
    pub(crate) fn settle_target(&mut self) -> Option<Device> {
        self.away.take()
    }

    /// Pins the shadow to `device` (after it was moved there).
    pub(crate) fn pin(&mut self, device: &Device) {
        self.home = device.clone().inner();
        self.pinned = true;
        self.away = None;
    }

    /// Moves `module` (the shadow) to `device`, counting the bytes, and makes it home.
    pub(crate) fn relocate<M: Module>(&mut self, module: M, device: &Device) -> M {
        let device = device.clone().inner();
        self.moved
            .fetch_add(module_bytes(&module), Ordering::Relaxed);
        self.home = device.clone();
        module.map(&mut RewriteLeaves::new(&mut MoveTo { device }))
    }
}

/// Moves every tensor of a module to a device, each through host memory of its own (see
/// [`Value::moved_to`]).
struct MoveTo {
    device: Device,
}

impl LeafRewriter for MoveTo {
    fn rewrite(&mut self, _index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        (id, value.moved_to(&self.device))
    }
}

/// The bytes of every tensor of `module`.
pub(crate) fn module_bytes<M: Module>(module: &M) -> u64 {
    collect_leaves(module)
        .iter()
        .map(|leaf| {
            let (n, dtype) = match &leaf.value {
                Value::Float(t) => (t.num_elements(), t.dtype()),
                Value::Int(t) => (t.dims()[0], t.dtype()),
                Value::Bool(t) => (t.dims()[0], t.dtype()),
            };
            (n * dtype.size()) as u64
        })
        .sum()
}

/// Whether any of `model`'s float parameters is marked distributed (Burn's DDP workers mark
/// every parameter of their replica).
pub(crate) fn any_distributed<M: Module>(model: &M) -> bool {
    struct Find(bool);
    impl ModuleVisitor for Find {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !self.0 {
                let t = param.val();
                self.0 = t.is_autodiff() && t.is_distributed();
            }
        }
    }
    let mut find = Find(false);
    model.visit(&mut find);
    find.0
}
