//! Whether this machine can run a wgpu test, asked of the machine itself.
//!
//! The wgpu tests need a wgpu adapter: a GPU, or a driver on the CPU such as Mesa's lavapipe
//! (Vulkan), which `.ci/run` installs. Some need more of it (`f16`, a second adapter). Where a
//! piece is missing, a test says which and why on the test run's stderr — written past the
//! harness's output capture, so `cargo test` shows it — and passes without running its checks;
//! the README's test command then passes on any machine and says what it could not run. With
//! `BURN_EMA_REQUIRE_WGPU=1` (set by CI) a missing piece fails the test instead, so CI runs every
//! case. `BURN_EMA_REQUIRE_WGPU=adapter` requires an adapter but lets an adapter without `f16`
//! leave those cases out (CI's second pass, on an OpenGL adapter).
#![allow(dead_code)]

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::{DType, DeviceKind};

/// The environment variable that turns a missing piece into a failure.
pub const REQUIRE: &str = "BURN_EMA_REQUIRE_WGPU";

/// The wgpu device of `kind` for `test`, or `None` after saying on stderr why the test does not
/// run (a panic instead where [`REQUIRE`] asks for an adapter).
pub fn wgpu_device(test: &str, kind: DeviceKind) -> Option<Device> {
    match probe(kind.clone()) {
        Err(why) => {
            not_run(test, &why, true);
            None
        }
        Ok(device) => Some(device),
    }
}

/// Whether `device` computes in `dtype` (a half type), else says on stderr that `test` (or its
/// part that needs it) does not run, or fails under [`REQUIRE`] for `f16` (`bf16` is said, never
/// required: lavapipe lacks it).
pub fn supports(test: &str, device: &Device, dtype: DType) -> bool {
    if device.supports_dtype(dtype) {
        return true;
    }
    if dtype == DType::BF16 {
        // No driver a CI machine can install has it: said, never required.
        let why = "the wgpu adapter does not compute in BF16 (lavapipe does not; some GPUs do)";
        say(&format!("NOT RUN: {test}: {why}."));
        return false;
    }
    let why = format!(
        "the wgpu adapter does not compute in {dtype:?} (e.g. an OpenGL adapter; Vulkan drivers \
         such as Mesa's lavapipe and GPUs do)"
    );
    not_run(test, &why, false);
    false
}

/// Says that `test` does not run and why, or panics where [`REQUIRE`] asks for it: `=1` for
/// anything, `=adapter` only for a missing `adapter` (not for a missing `f16`).
fn not_run(test: &str, why: &str, adapter: bool) {
    let required = std::env::var(REQUIRE).unwrap_or_default();
    let strict = match required.as_str() {
        "" | "0" => false,
        "adapter" => adapter,
        _ => true,
    };
    if strict {
        panic!("{test}: {why} ({REQUIRE}={required} requires it)");
    }
    say(&format!(
        "NOT RUN: {test}: {why}. Install a Vulkan driver (on Debian/Ubuntu, Mesa's lavapipe: \
         `apt-get install mesa-vulkan-drivers libvulkan1`) to run it; {REQUIRE}=1 makes this \
         a failure."
    ));
}

/// Writes `line` to stderr past the harness's output capture (which takes `eprintln!`), so the
/// test run shows it, in one write so that parallel tests' lines do not interleave.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A device of `kind` that ran a small computation, or why not; asked once per kind (a failed
/// adapter request is not repeated by every test).
fn probe(kind: DeviceKind) -> Result<Device, String> {
    static ASKED: Mutex<Vec<(DeviceKind, Result<Device, String>)>> = Mutex::new(Vec::new());
    let mut asked = ASKED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, answer)) = asked.iter().find(|(k, _)| *k == kind) {
        return answer.clone();
    }
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let device = Device::wgpu(kind.clone());
        let doubled: Vec<f32> = (Tensor::<1>::from_floats([1.0, 2.0], &device) * 2.0)
            .into_data()
            .try_to_vec()
            .expect("f32 values");
        (device, doubled)
    }));
    let answer = match attempt {
        Ok((device, doubled)) if doubled == [2.0, 4.0] => Ok(device),
        Ok((_, doubled)) => Err(format!(
            "the wgpu adapter ({kind:?}) computed 2·[1, 2] = {doubled:?}"
        )),
        Err(panic) => Err(format!(
            "no usable wgpu adapter ({kind:?}); bringing one up panicked: {}",
            panic_message(&panic)
        )),
    };
    asked.push((kind, answer.clone()));
    answer
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into());
    // The first line says what failed; the rest is wgpu's chain of causes.
    text.lines().next().unwrap_or_default().to_string()
}
