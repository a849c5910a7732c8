//! Where an [`EmaModule`]'s shadow lives: a device of its own, or the host with updates on a
//! worker thread. (What `fork` and `to_device` do to it: `crate::placement`.)

use burn::module::Module;
use burn::prelude::{Device, Tensor};

use super::EmaModule;
use super::background::ShadowSlot;
use crate::error::{EmaError, panic_message};
use crate::walk::is_host;

/// Where an [`EmaModule`]'s shadow lives, given to [`EmaModule::with_placement`]. By default
/// it lives with the model's parameters (and moves with `to_device`).
#[derive(Clone, Debug, PartialEq)]
pub enum ShadowPlacement {
    /// On `device` from now on, whatever the model does: `to_device` and `fork` move the model
    /// only, and each update copies the live weights across (4 bytes per `f32` parameter). Use
    /// it to keep the shadow off a busy GPU (timm's `device='cpu'`, ema-pytorch's
    /// `allow_different_devices`), or on the main device of a multi-device run.
    Device(Device),
    /// On the host (a Flex or NdArray device), every update on a worker thread, overlapping
    /// the next training step: the caller's thread only starts the copy of the live weights to
    /// the host (one batched read); the worker waits for it and averages there with the fused
    /// CPU pass. The shadow then costs no accelerator memory (diffusers' `offload_ema`, NeMo's
    /// `cpu_offload`).
    ///
    /// Anything that reads the shadow — `shadow()`, a swap, a save, a record, the next update
    /// — first waits for the update in flight: nothing ever sees a half-updated shadow. An
    /// update's error comes out of the next [`update`](crate::MovingAverage::update) or
    /// [`sync`](EmaModule::sync). While the copy is in flight it holds the weights' buffers,
    /// so the next optimizer step may write new buffers instead of updating in place.
    Offload(Device),
}

impl<M: Module + 'static> EmaModule<M> {
    /// Places the shadow (see [`ShadowPlacement`]).
    ///
    /// Fails with [`EmaError::Device`] when a tensor cannot go from the model's device to
    /// the device and back (the device does not exist, or its backend cannot reach the
    /// model's), or when an offload's device is not a CPU backend's.
    ///
    /// ```
    /// # use burn_ema_core as burn_ema;
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::prelude::*;
    /// use burn_ema::{EmaConfig, EmaModule, ShadowPlacement};
    ///
    /// let gpu = Device::flex(); // e.g. Device::wgpu(Default::default())
    /// let model: Linear = LinearConfig::new(4, 2).init(&gpu.clone().autodiff());
    /// let ema = EmaModule::new(model, EmaConfig::new(0.999))?
    ///     .with_placement(ShadowPlacement::Offload(Device::flex()))?;
    /// let stats = ema.stats();
    /// assert_eq!((stats.shadow_device, stats.offloaded), (Device::flex(), true));
    /// # Ok::<(), burn_ema::EmaError>(())
    /// ```
    pub fn with_placement(mut self, placement: ShadowPlacement) -> Result<Self, EmaError> {
        let (device, offload) = match placement {
            ShadowPlacement::Device(device) => (device, false),
            ShadowPlacement::Offload(host) => {
                if !is_host(&host) {
                    return Err(EmaError::Device {
                        device: format!("{host:?}"),
                        problem: "offload keeps the shadow in host memory: give a Flex or \
                                  NdArray device (ShadowPlacement::Device takes any other)"
                            .into(),
                    });
                }
                (host, true)
            }
        };
        let (model, slot) = self.settled_mut()?;
        let device = device.inner();
        check_reachable(model, &device)?;
        slot.pin_to(&device);
        self.offload = offload.then_some(ShadowSlot::spawn_update as super::Spawn<M>);
        Ok(self)
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
