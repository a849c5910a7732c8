//! Files: burn-store plus what EMA files add.
//!
//! - [`pack`]: writes (atomic, streaming, with a [`checksum`]) and checked loads, on
//!   burn-store's burnpack and safetensors support;
//! - [`ema_files`]: the EMA state, the shadow as the bare model's file, TensorFlow's names;
//! - `pytorch` (feature `pytorch`): EMA weights from PyTorch libraries' checkpoints.

mod checksum;
mod ema_files;
mod pack;
#[cfg(feature = "pytorch")]
mod pytorch;

pub(crate) use ema_files::export_module;
pub use ema_files::{SaveOptions, TF_SHADOW_SUFFIX, load_shadow_into, load_tf_shadow};
pub(crate) use pack::{Cast, Format, Ids, Incoming, Naming, tensors_of, write};
#[cfg(feature = "pytorch")]
pub use pytorch::{PytorchEma, load_pytorch_ema};
