//! Where an [`EmaModule`]'s shadow lives: a device of its own, or the host with updates on a
//! worker thread. (What `fork` and `to_device` do to it: `crate::placement`.)

use burn::module::Module;
use burn::prelude::{Device, Tensor};

use super::EmaModule;
use super::background::ShadowSlot;
use crate::error::{EmaError, panic_message};
use crate::walk::{collect_leaves, is_host};

impl<M: Module> EmaModule<M> {
    /// Keeps the shadow on `device` from now on, whatever the model does: `to_device` and
    /// `fork` move the model only, and each update copies the live weights across (4 bytes per
    /// `f32` parameter). Use it to keep the shadow off a busy GPU (timm's `device='cpu'`,
    /// ema-pytorch's `allow_different_devices`), or on the main device of a multi-device run.
    ///
    /// Fails with [`EmaError::Device`] when a tensor cannot go from the model's device to
    /// `device` and back (the device does not exist, or its backend cannot reach the model's).
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule};
    ///
    /// let gpu = Device::flex(); // e.g. Device::wgpu(Default::default())
    /// let model: Linear = LinearConfig::new(4, 2).init(&gpu.clone().autodiff());
    /// let ema = EmaModule::new(model, EmaConfig::new(0.999))?.with_shadow_device(&Device::flex())?;
    /// assert_eq!(ema.shadow_device(), Device::flex());
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn with_shadow_device(mut self, device: &Device) -> Result<Self, EmaError> {
        let (model, slot) = self.unswapped_mut("with_shadow_device")?;
        let device = device.clone().inner();
        check_reachable(model, &device)?;
        slot.pin_to(&device);
        Ok(self)
    }

    /// Keeps the shadow on the host (`host`: a Flex or NdArray device) and runs every update on
    /// a worker thread, overlapping the next training step: the live weights are copied to the
    /// host once per update (4 bytes per `f32` parameter, 2 per `f16`) and averaged there with
    /// the fused CPU pass. The shadow then costs no accelerator memory (diffusers'
    /// `offload_ema`, NeMo's `cpu_offload`).
    ///
    /// Anything that reads the shadow — [`shadow`](Self::shadow), a swap, a save, a record, the
    /// next update — first waits for the update in flight: nothing ever sees a half-updated
    /// shadow. An update's error comes out of the next [`update`](crate::MovingAverage::update) or
    /// [`sync`](Self::sync). While the worker copies the weights it holds their buffers, so the
    /// next optimizer step may write new buffers instead of updating in place.
    ///
    /// Fails with [`EmaError::Device`] when `host` is not a CPU backend's device or cannot
    /// be reached from the model's.
    pub fn offload(self, host: &Device) -> Result<Self, EmaError>
    where
        M: 'static,
    {
        if !is_host(host) {
            return Err(EmaError::Device {
                device: format!("{host:?}"),
                problem: "offload keeps the shadow in host memory: give a Flex or NdArray \
                          device (use `with_shadow_device` for any other device)"
                    .into(),
            });
        }
        let mut ema = self.with_shadow_device(host)?;
        ema.offload = Some(ShadowSlot::spawn_update);
        Ok(ema)
    }

    /// Whether updates run on a worker thread ([`offload`](Self::offload)).
    pub fn is_offloaded(&self) -> bool {
        self.offload.is_some()
    }

    /// The device the shadow is on: its home, where [`shadow`](Self::shadow) returns it whole.
    /// (A shard-local shadow keeps some tensors on the devices that step their parameters:
    /// [`shadow_bytes_by_device`](Self::shadow_bytes_by_device).)
    pub fn shadow_device(&self) -> Device {
        self.shadow.placement().home().clone()
    }

    /// The bytes of shadow data each device holds, home first. One entry, unless the shadow is
    /// shard-local: with Burn's `MultiDevice` strategy and `OptimSharded`, each parameter is
    /// stepped on one device, and its shadow tensor lives there too, so the shadow's memory is
    /// split across devices like the optimizer's state.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule};
    ///
    /// let model: Linear = LinearConfig::new(4, 2).init(&Device::flex());
    /// let ema = EmaModule::new(model, EmaConfig::new(0.999))?;
    /// // 4·2 weights and 2 biases, f32, all on the model's device.
    /// assert_eq!(ema.shadow_bytes_by_device(), vec![(Device::flex(), 40)]);
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn shadow_bytes_by_device(&self) -> Vec<(Device, u64)> {
        let home = self.shadow_device();
        let mut bytes: Vec<(Device, u64)> = vec![(home, 0)];
        for leaf in collect_leaves(self.shadow.module()) {
            let device = leaf.value.device();
            let n = leaf.value.num_bytes();
            match bytes.iter_mut().find(|(d, _)| *d == device) {
                Some((_, total)) => *total += n,
                None => bytes.push((device, n)),
            }
        }
        bytes
    }

    /// Bytes of shadow data moved between devices since this `EmaModule` was made (shared by its
    /// clones and forks): `to_device`, [`with_shadow_device`](Self::with_shadow_device), a
    /// replica that became the main one, a shard-local shadow tensor going to its parameter's
    /// device (once), and a spread shadow gathered for a reader. Replicas that Burn's
    /// `MultiDevice` strategy forks to other devices every step move none.
    pub fn shadow_bytes_moved(&self) -> u64 {
        self.shadow.placement().bytes_moved()
    }

    /// Bytes of live weights that updates copied to the shadow's device since this `EmaModule`
    /// was made (shared by its clones and forks): every update of a pinned shadow
    /// ([`with_shadow_device`](Self::with_shadow_device), [`offload`](Self::offload)) copies the
    /// weights it averages; an unpinned shadow, same-device or shard-local, copies none.
    pub fn live_bytes_copied(&self) -> u64 {
        self.shadow.placement().bytes_copied()
    }

    /// Whether this `EmaModule` holds a shadow. Only a secondary worker's replica in a
    /// distributed (DDP) run does not: it dropped its copy at its first update, leaving the main
    /// worker's as the only one (see the README, "Multi-device, distributed and offloaded EMA").
    pub fn holds_shadow(&self) -> bool {
        !self.shadow.is_detached()
    }
}

/// Fails unless a tensor goes from the model's device to `device` and back.
fn check_reachable<M: Module>(model: &M, device: &Device) -> Result<(), EmaError> {
    let Some(model_device) = model.devices().into_iter().next() else {
        return Ok(());
    };
    let model_device = model_device.inner();
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<1>::from_floats([1.0], &model_device).to_device(device);
        let back = t.to_device(&model_device);
        back.into_data().try_to_vec::<f32>().ok() == Some(vec![1.0])
    });
    match probe {
        Ok(true) => Ok(()),
        Ok(false) => Err(EmaError::Device {
            device: format!("{device:?}"),
            problem: format!("a value sent from {model_device:?} and back came back changed"),
        }),
        Err(panic) => Err(EmaError::Device {
            device: format!("{device:?}"),
            problem: format!(
                "cannot reach it from the model's device {model_device:?}: {}",
                panic_message(panic.as_ref())
            ),
        }),
    }
}
