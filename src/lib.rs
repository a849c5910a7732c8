pub use burn_ema_core::*;
