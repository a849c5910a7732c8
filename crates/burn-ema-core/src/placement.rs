//! Where a shadow lives, and what `fork` and `to_device` do to it.
//!
//! Burn's multi-device strategies move models with two calls, and the shadow answers them
//! differently:
//!
//! - **`to_device`** is a move on purpose: the shadow follows the model (one copy), unless it
//!   is pinned to a device of its own ([`ShadowPlacement::Device`],
//!   [`ShadowPlacement::Offload`]).
//! - **`fork`** makes a replica. The Learner forks a copy of the model to every device on every
//!   step (`MultiDevice`), and one per worker (`DistributedDataParallel`). A replica forked to
//!   another device than the shadow's home keeps the shadow where it is (its tensor handles,
//!   shared, no data moved) and notes the device it was sent to; the shadow moves there only if
//!   this replica is ever updated as the main one (a single-device Learner on another device than
//!   the model was built on). A replica whose parameters are marked distributed (a DDP secondary
//!   worker) drops the shadow at its first update instead: the main worker's is the only one.
//!
//! Within one model the shadow is **shard-local**: a shadow tensor lives on the device of the
//! parameter it averages. When parameters are stepped on several devices (Burn's `MultiDevice`
//! strategy with `OptimSharded` keeps each parameter, and its optimizer state, on one of them),
//! each shadow tensor moves to its parameter's device once, at the first update that finds it
//! elsewhere, and is updated there from then on: no bytes cross devices per step, and the
//! shadow's memory is split like the optimizer's. When the model is forked whole to one device
//! (the Learner does so before validating), readers of the shadow (`EmaModule::shadow`, the
//! Learner's validation, `into_shadow`) get it gathered there, once per change; the spread
//! tensors stay where they are for the next update. (A model that is itself split over devices,
//! and never forked, reads its shadow split the same way.) A placed shadow (either
//! `ShadowPlacement`) stays whole on its device and copies the live weights to it at every update
//! instead.
//!
//! [`ShadowPlacement::Device`]: crate::ShadowPlacement::Device
//! [`ShadowPlacement::Offload`]: crate::ShadowPlacement::Offload

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::Device;
use burn::tensor::Tensor;

use crate::walk::{HostCopies, LeafRewriter, RewriteLeaves, Value};

/// Where a shadow lives and how it follows its model.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    /// The device the shadow's tensors are on (plain, never autodiff).
    home: Device,
    /// Set by a `ShadowPlacement`: the shadow stays on `home` whatever the model does.
    pinned: bool,
    /// On a replica forked away from `home`: the device it was forked to. Nothing has moved.
    away: Option<Device>,
    /// Whether some of the shadow's tensors live on other devices than `home` (shard-local
    /// tensors of parameters stepped elsewhere).
    spread: bool,
    /// Where readers get a spread shadow gathered: the device the model was forked to whole
    /// since the last update (`None`: readers get it as it lives, like the model's parameters).
    gather_to: Option<Device>,
    /// Bytes of shadow data moved between devices, shared by every clone and fork.
    moved: Arc<AtomicU64>,
    /// Bytes of live weights copied to a pinned shadow's device by updates, shared likewise.
    copied: Arc<AtomicU64>,
}

impl Placement {
    pub(crate) fn new(home: Device) -> Self {
        Self {
            home: home.inner(),
            pinned: false,
            away: None,
            spread: false,
            gather_to: None,
            moved: Arc::default(),
            copied: Arc::default(),
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

    pub(crate) fn bytes_copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// Whether some shadow tensors live on other devices than `home`.
    pub(crate) fn is_spread(&self) -> bool {
        self.spread
    }

    /// Where a reader gets the shadow gathered, if it is spread and the model was forked whole
    /// to one device since the last update.
    pub(crate) fn gather_target(&self) -> Option<&Device> {
        self.gather_to.as_ref().filter(|_| self.spread)
    }

    /// An update aligns the shadow with the live parameters again: readers get it as it lives.
    pub(crate) fn start_update(&mut self) {
        self.gather_to = None;
    }

    /// Notes where the shadow's tensors are now (after an update or a load): spread over
    /// several devices, or whole on one. A whole shadow that is not pinned is at home wherever
    /// it is (it followed its parameters).
    pub(crate) fn observe(&mut self, devices: &[Device]) {
        match devices {
            [one] if !self.pinned => {
                self.home = one.clone();
                self.spread = false;
            }
            _ => self.spread = devices.iter().any(|d| *d != self.home),
        }
        if !self.spread {
            self.gather_to = None;
        }
    }

    /// `value` (a live value) for an update of `shadow`: where the shadow is pinned, the live
    /// value comes to the shadow's device (counted); otherwise the shadow tensor goes to its
    /// parameter's device (counted; once, it stays there). Returns `(shadow, value)`.
    pub(crate) fn meet(&self, shadow: Value, value: Value) -> (Value, Value) {
        if self.pinned {
            let device = shadow.device();
            (shadow, self.copy_live(value, &device))
        } else {
            let device = value.device();
            if shadow.device() != device {
                self.moved.fetch_add(shadow.num_bytes(), Ordering::Relaxed);
            }
            (shadow.moved_to(&device), value)
        }
    }

    /// A live value copied to `device` (a pinned shadow's), counted.
    pub(crate) fn copy_live(&self, value: Value, device: &Device) -> Value {
        self.copy_all_live(vec![value], device)
            .finish()
            .pop()
            .expect("one value in, one out")
    }

    /// Live values set going to `device` (a pinned shadow's) in one batched read, counted now.
    pub(crate) fn copy_all_live(&self, values: Vec<Value>, device: &Device) -> HostCopies {
        let bytes: u64 = values
            .iter()
            .filter(|v| v.device() != *device)
            .map(Value::num_bytes)
            .sum();
        self.copied.fetch_add(bytes, Ordering::Relaxed);
        HostCopies::start(values, device)
    }

    /// `module` (the shadow) whole on `device`, each tensor copied through host memory of its
    /// own; the bytes that cross devices are counted.
    pub(crate) fn gather<M: Module>(&self, module: M, device: &Device) -> M {
        let mut to = MoveTo {
            device: device.clone(),
            moved: 0,
        };
        let module = module.map(&mut RewriteLeaves::new(&mut to));
        self.moved.fetch_add(to.moved, Ordering::Relaxed);
        module
    }

    /// What `fork(device)` does: a replica on another device leaves the shadow where it is.
    pub(crate) fn fork(&mut self, device: &Device) {
        let device = device.clone().inner();
        if self.spread {
            self.gather_to = Some(device.clone());
        }
        self.away = (!self.pinned && device != self.home).then_some(device);
    }

    /// Where the shadow goes for `to_device(device)`, if it moves (`None` when pinned or
    /// already there whole).
    pub(crate) fn move_target(&mut self, device: &Device) -> Option<Device> {
        self.away = None;
        let device = device.clone().inner();
        (!self.pinned && (device != self.home || self.spread)).then_some(device)
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

    /// Moves `module` (the shadow) whole to `device`, counting the bytes that move, and makes
    /// it home.
    pub(crate) fn relocate<M: Module>(&mut self, module: M, device: &Device) -> M {
        self.home = device.clone().inner();
        self.spread = false;
        self.gather_to = None;
        self.gather(module, &self.home)
    }
}

/// Moves every tensor of a module to a device, each through host memory of its own (see
/// [`Value::moved_to`]), counting the bytes of those not there already.
struct MoveTo {
    device: Device,
    moved: u64,
}

impl LeafRewriter for MoveTo {
    fn rewrite(&mut self, _index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        if value.device() != self.device {
            self.moved += value.num_bytes();
        }
        (id, value.moved_to(&self.device))
    }
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
