//! Whether this machine can run a wgpu or CUDA test, asked of the machine itself.
//!
//! The wgpu tests need a wgpu adapter: a GPU, or a driver on the CPU such as Mesa's lavapipe
//! (Vulkan), which `.ci/run` installs. The CUDA tests need an NVIDIA GPU and its driver. Some
//! need more (`f16`, a second device). Where a piece is missing, a test says which and why on the
//! test run's stderr — written past the harness's output capture, so `cargo test` shows it — and
//! passes without running its checks; the README's test command then passes on any machine and
//! says what it could not run. With `BURN_EMA_REQUIRE_WGPU=1` (set by CI) a missing wgpu piece
//! fails the test instead, so CI runs every case; `BURN_EMA_REQUIRE_WGPU=adapter` requires an
//! adapter but lets an adapter without `f16` leave those cases out (CI's second pass, on an
//! OpenGL adapter). `BURN_EMA_REQUIRE_CUDA=1` does the same for CUDA (on a GPU machine; CI has
//! none, and builds the CUDA tests without running them).
#![allow(dead_code)]

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::DType;
#[cfg(feature = "wgpu")]
use burn::tensor::DeviceKind;

/// A backend the tests may find missing: its requirement variable and how to get it.
struct Backend {
    name: &'static str,
    require: &'static str,
    remedy: &'static str,
}

#[cfg(feature = "wgpu")]
const WGPU: Backend = Backend {
    name: "wgpu",
    require: REQUIRE,
    remedy: "Install a Vulkan driver (on Debian/Ubuntu, Mesa's lavapipe: `apt-get install \
             mesa-vulkan-drivers libvulkan1`) to run it",
};

const CUDA: Backend = Backend {
    name: "CUDA",
    require: REQUIRE_CUDA,
    remedy: "Run it on a machine with an NVIDIA GPU and driver (a binary built elsewhere runs \
             there: README, \"CUDA\")",
};

/// The environment variable that turns a missing wgpu piece into a failure.
pub const REQUIRE: &str = "BURN_EMA_REQUIRE_WGPU";

/// The environment variable that turns a missing CUDA piece into a failure.
pub const REQUIRE_CUDA: &str = "BURN_EMA_REQUIRE_CUDA";

/// The wgpu device of `kind` for `test`, or `None` after saying on stderr why the test does not
/// run (a panic instead where [`REQUIRE`] asks for an adapter).
#[cfg(feature = "wgpu")]
pub fn wgpu_device(test: &str, kind: DeviceKind) -> Option<Device> {
    match probe(&format!("wgpu {kind:?}"), || Device::wgpu(kind.clone())) {
        Err(why) => {
            not_run(&WGPU, test, &why, true);
            None
        }
        Ok(device) => Some(device),
    }
}

/// The CUDA device `index` for `test`, or `None` after saying on stderr why the test does not
/// run (a panic instead under [`REQUIRE_CUDA`]; for a second or further device only where it
/// asks for that many, `BURN_EMA_REQUIRE_CUDA=2`: most GPU machines have one).
#[cfg(feature = "cuda")]
pub fn cuda_device(test: &str, index: usize) -> Option<Device> {
    match probe(&format!("CUDA {index}"), || Device::cuda(index)) {
        Err(why) => {
            let driver = std::path::Path::new("/proc/driver/nvidia/version");
            let why = if cfg!(target_os = "linux") && !driver.exists() {
                format!(
                    "{why} (no NVIDIA driver is loaded: {} is missing)",
                    driver.display()
                )
            } else {
                why
            };
            let wanted: usize = std::env::var(REQUIRE_CUDA)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if index == 0 || wanted > index {
                not_run(&CUDA, test, &why, true);
            } else {
                say(&format!(
                    "NOT RUN: {test}: {why}. It needs {} CUDA devices; {REQUIRE_CUDA}={} makes \
                     this a failure.",
                    index + 1,
                    index + 1
                ));
            }
            None
        }
        Ok(device) => Some(device),
    }
}

/// Whether `device` computes in `dtype` (a half type), else says on stderr that `test` (or its
/// part that needs it) does not run, or fails under [`REQUIRE`] for `f16` on wgpu (`bf16` on
/// wgpu is said, never required: lavapipe lacks it) and under [`REQUIRE_CUDA`] for either on
/// CUDA (every GPU CubeCL's CUDA runtime supports has both).
pub fn supports(test: &str, device: &Device, dtype: DType) -> bool {
    if device.supports_dtype(dtype) {
        return true;
    }
    let on_cuda = format!("{device:?}").contains("Cuda");
    if on_cuda {
        let why = format!("the CUDA device does not compute in {dtype:?}");
        not_run(&CUDA, test, &why, false);
        return false;
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
    #[cfg(feature = "wgpu")]
    not_run(&WGPU, test, &why, false);
    #[cfg(not(feature = "wgpu"))]
    say(&format!("NOT RUN: {test}: {why}."));
    false
}

/// Says that `test` does not run and why, or panics where the backend's requirement variable
/// asks for it: `=1` for anything, `=adapter` only for a missing `adapter` (a device).
fn not_run(backend: &Backend, test: &str, why: &str, adapter: bool) {
    let required = std::env::var(backend.require).unwrap_or_default();
    let strict = match required.as_str() {
        "" | "0" => false,
        "adapter" => adapter,
        _ => true,
    };
    let require = backend.require;
    if strict {
        panic!("{test}: {why} ({require}={required} requires it)");
    }
    let (name, remedy) = (backend.name, backend.remedy);
    say(&format!(
        "NOT RUN: {test}: {why}. {remedy}; {require}=1 makes this a failure ({name})."
    ));
}

/// Writes `line` to stderr past the harness's output capture (which takes `eprintln!`), so the
/// test run shows it, in one write so that parallel tests' lines do not interleave.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A device (`name`, made by `make`) that ran a small computation, or why not; asked once per
/// device (a failed request is not repeated by every test).
fn probe(name: &str, make: impl FnOnce() -> Device) -> Result<Device, String> {
    static ASKED: Mutex<Vec<(String, Result<Device, String>)>> = Mutex::new(Vec::new());
    let mut asked = ASKED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, answer)) = asked.iter().find(|(n, _)| n == name) {
        return answer.clone();
    }
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let device = make();
        let doubled: Vec<f32> = (Tensor::<1>::from_floats([1.0, 2.0], &device) * 2.0)
            .into_data()
            .try_to_vec()
            .expect("f32 values");
        (device, doubled)
    }));
    let answer = match attempt {
        Ok((device, doubled)) if doubled == [2.0, 4.0] => Ok(device),
        Ok((_, doubled)) => Err(format!("the {name} device computed 2·[1, 2] = {doubled:?}")),
        Err(panic) => Err(format!(
            "no usable {name} device; bringing one up panicked: {}",
            panic_message(&panic)
        )),
    };
    asked.push((name.to_string(), answer.clone()));
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
