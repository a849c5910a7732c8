//! The CubeCL kernel on CUDA ([`common::cube_suite`], the suite wgpu runs). CI builds and links
//! these (`.ci/run`, with the LLVM from `scripts/install-cuda-llvm`) but has no GPU to run them
//! on: each says so and does not run, unless `BURN_EMA_REQUIRE_CUDA=1` makes that a failure (set
//! it on a GPU machine; README, "CUDA").
#![cfg(feature = "cuda")]

mod common;
use common::cube_suite::{Held, cube_tests, hold};

/// CUDA device 0 for `test`, or `None` where the machine has none (said on stderr; a failure
/// under `BURN_EMA_REQUIRE_CUDA`).
fn device(test: &str) -> Option<Held> {
    hold(|| common::gate::cuda_device(test, 0))
}

cube_tests!(device);
