//! Files: the EMA state, the shadow as the bare model's file, TensorFlow's naming convention.
//!
//! Every write is atomic ([`atomic`]); every read is checked in full before anything in memory
//! changes ([`entries`]); files carry a checksum ([`formats`]).

mod atomic;
mod ema_files;
mod entries;
mod formats;

pub(crate) use ema_files::export_module;
pub use ema_files::{SaveOptions, TF_SHADOW_SUFFIX, load_shadow_into, load_tf_shadow};
pub(crate) use formats::Format;
