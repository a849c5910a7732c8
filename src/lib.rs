#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly) marks what each cargo feature adds.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use burn_ema_core::*;
