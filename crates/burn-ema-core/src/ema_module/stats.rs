//! What a user monitors about an [`EmaModule`], in one value.

use burn::module::Module;
use burn::prelude::Device;

use super::{EmaModule, SwitchEvery};
use crate::walk::collect_leaves;

/// The counters and facts of an [`EmaModule`] a training loop logs or checks, taken at one
/// moment by [`EmaModule::stats`] (after the update in flight, if offloaded).
///
/// ```
/// # use burn_ema_core as burn_ema;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_ema::{EmaConfig, EmaModule, MovingAverage};
///
/// let model: Linear = LinearConfig::new(4, 2).init(&Device::flex());
/// let mut ema = EmaModule::new(model, EmaConfig::new(0.999))?;
/// ema.update()?;
/// let stats = ema.stats();
/// assert_eq!((stats.num_updates, stats.last_decay), (1, Some(0.999)));
/// // 4·2 weights and 2 biases, f32, all on the model's device.
/// assert_eq!(stats.shadow_bytes_by_device, vec![(Device::flex(), 40)]);
/// assert_eq!((stats.num_averaged, stats.non_finite_skips), (2, 0));
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EmaStats {
    /// The update counter: the last step applied (`0` before the first update).
    pub num_updates: u64,
    /// The decay the most recent update applied (0 for a copy); `None` before the first.
    pub last_decay: Option<f64>,
    /// The tensors that are averaged (the others are copied).
    pub num_averaged: usize,
    /// Updates skipped because a live value was NaN or infinite
    /// ([`NonFinite::Skip`](crate::NonFinite::Skip)).
    pub non_finite_skips: u64,
    /// The shadow's home device, where `shadow()` returns it whole.
    pub shadow_device: Device,
    /// The bytes of shadow data each device holds, home first. One entry, unless the shadow is
    /// shard-local: with Burn's `MultiDevice` strategy and `OptimSharded`, each parameter is
    /// stepped on one device, and its shadow tensor lives there too, so the shadow's memory is
    /// split across devices like the optimizer's state. Empty where no shadow is held.
    pub shadow_bytes_by_device: Vec<(Device, u64)>,
    /// Bytes of shadow data moved between devices since this `EmaModule` was made (shared by
    /// its clones and forks): `to_device`, a [placement](crate::ShadowPlacement), a replica
    /// that became the main one, a shard-local shadow tensor going to its parameter's device
    /// (once), and a spread shadow gathered for a reader. Replicas that Burn's `MultiDevice`
    /// strategy forks to other devices every step move none.
    pub shadow_bytes_moved: u64,
    /// Bytes of live weights that updates copied to the shadow's device since this
    /// `EmaModule` was made (shared by its clones and forks): every update of a placed shadow
    /// copies the weights it averages; an unplaced shadow, same-device or shard-local, copies
    /// none.
    pub live_bytes_copied: u64,
    /// Whether updates run on a worker thread ([`ShadowPlacement::Offload`](crate::ShadowPlacement::Offload)).
    pub offloaded: bool,
    /// Whether this `EmaModule` holds a shadow. Only a secondary worker's replica in a
    /// distributed (DDP) run does not: it dropped its copy at its first update, leaving the
    /// main worker's as the only one (see the README, "Multi-device, distributed and offloaded
    /// EMA").
    pub holds_shadow: bool,
    /// The Switch EMA schedule, if any ([`EmaModule::with_switch`]).
    pub switch: Option<SwitchEvery>,
}

impl<M: Module> EmaModule<M> {
    /// The counters a user monitors (see [`EmaStats`]), after the update in flight.
    pub fn stats(&self) -> EmaStats {
        let shadow = self.settled();
        let home = shadow.placement().home().clone();
        let holds_shadow = !shadow.is_detached();
        let mut bytes: Vec<(Device, u64)> = Vec::new();
        if holds_shadow {
            bytes.push((home.clone(), 0));
            for leaf in collect_leaves(shadow.module()) {
                let device = leaf.value.device();
                let n = leaf.value.num_bytes();
                match bytes.iter_mut().find(|(d, _)| *d == device) {
                    Some((_, total)) => *total += n,
                    None => bytes.push((device, n)),
                }
            }
        }
        EmaStats {
            num_updates: shadow.num_updates(),
            last_decay: shadow.last_decay(),
            num_averaged: shadow.layout().num_averaged(),
            non_finite_skips: shadow.non_finite_skips(),
            shadow_device: home,
            shadow_bytes_by_device: bytes,
            shadow_bytes_moved: shadow.placement().bytes_moved(),
            live_bytes_copied: shadow.placement().bytes_copied(),
            offloaded: self.offload.is_some(),
            holds_shadow,
            switch: self.switch,
        }
    }
}
