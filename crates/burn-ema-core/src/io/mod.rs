//! Files: burn-store plus what EMA files add. Nothing here knows an average's state: the
//! averages' save and load methods (`EmaModule`'s in `ema_module/files.rs`) use these pieces.
//!
//! - [`pack`]: writes (atomic, streaming, with a [`checksum`]) and checked loads, on
//!   burn-store's burnpack and safetensors support;
//! - [`ema_files`]: the EMA state's layout, TensorFlow's names, a shadow file into a bare model;
//! - `pytorch` (feature `pytorch`): EMA weights from PyTorch libraries' checkpoints.

mod checksum;
mod ema_files;
mod pack;
#[cfg(feature = "pytorch")]
mod pytorch;

pub use ema_files::{EmaFile, TF_SHADOW_SUFFIX, shadow_from_file, shadow_from_tf_style};
pub(crate) use ema_files::{
    NUM_UPDATES, State, export_module, save_weights, state_metadata, strip, tf_style_names,
    under_prefix,
};
pub(crate) use pack::{Cast, Format, Ids, Incoming, Naming, Part, tensors_of, write};
#[cfg(feature = "pytorch")]
pub use pytorch::{PytorchEma, load_pytorch_ema};
