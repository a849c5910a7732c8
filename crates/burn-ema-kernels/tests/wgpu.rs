//! The CubeCL kernel on wgpu ([`common::cube_suite`]). CI runs these on a real Vulkan driver
//! (Mesa's lavapipe, installed by `.ci/run`), and once more on Mesa's OpenGL adapter (fewer
//! bindings per kernel, no f16). On a machine without an adapter each test says so and does not
//! run ([`common::gate`]).
#![cfg(feature = "wgpu")]

mod common;
use burn::tensor::DeviceKind;
use common::cube_suite::{Held, cube_tests, hold};

/// The default wgpu device for `test`, or `None` where the machine has none (said on stderr; a
/// failure under `BURN_EMA_REQUIRE_WGPU`).
fn device(test: &str) -> Option<Held> {
    hold(|| common::gate::wgpu_device(test, DeviceKind::DefaultDevice))
}

cube_tests!(device);
