//! A save on a full disk and into unwritable places: the error names the path, the previous
//! file is intact and no scratch file is left.
//!
//! A full disk is a child process (this test binary, its ignored test `disk_full::saver`)
//! under `RLIMIT_FSIZE` = K bytes, set by `prlimit`, with `SIGXFSZ` ignored (`trap '' XFSZ`, kept
//! across `exec`): its writes past K bytes fail with `EFBIG`, as on a full disk, after K bytes
//! of the file were written.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn_ema::{EmaConfig, EmaFile, EmaModule, MovingAverage};

use super::common::Net;

const FORMATS: [EmaFile; 5] = [
    EmaFile::State,
    EmaFile::StateWithModel,
    EmaFile::Shadow,
    EmaFile::ShadowSafetensors,
    EmaFile::TensorFlow,
];

fn format_by_name(name: &str) -> EmaFile {
    *FORMATS
        .iter()
        .find(|f| format!("{f:?}") == name)
        .expect("a format name")
}

/// An EMA two updates in (the values do not matter here: only whether the file is whole).
fn ema() -> EmaModule<Net> {
    let mut ema = EmaModule::new(
        Net::new(&burn::prelude::Device::flex()),
        EmaConfig::new(0.9),
    )
    .expect("a valid EMA");
    ema.update().unwrap();
    ema.update().unwrap();
    ema
}

/// The child: saves `BURN_EMA_SAVE_TO` in `BURN_EMA_SAVE_FORMAT` and prints the outcome.
#[test]
#[ignore = "the child process of the disk-full test"]
fn saver() {
    let to = std::env::var("BURN_EMA_SAVE_TO").expect("BURN_EMA_SAVE_TO");
    let format = format_by_name(&std::env::var("BURN_EMA_SAVE_FORMAT").unwrap());
    match ema().save(&to, format) {
        Ok(path) => println!("SAVED {}", path.display()),
        Err(err) => println!("REFUSED {err}"),
    }
}

/// Runs the child with file writes limited to `limit` bytes; returns its outcome line.
fn save_with_limit(to: &Path, format: EmaFile, limit: u64) -> String {
    let output = Command::new("sh")
        .args([
            "-c",
            "trap '' XFSZ; exec prlimit --fsize=\"$0\" \"$@\"",
            &limit.to_string(),
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "disk_full::saver", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("BURN_EMA_SAVE_TO", to)
        .env("BURN_EMA_SAVE_FORMAT", format!("{format:?}"))
        .output()
        .expect("sh and prlimit (util-linux) run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| {
            // The harness prints `test disk_full::saver ... ` before the child's line.
            let at = l.find("SAVED ").or_else(|| l.find("REFUSED "))?;
            Some(&l[at..])
        })
        .unwrap_or_else(|| {
            panic!(
                "the child printed no outcome: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every format, the disk full after 0, 1, half and all but one of the file's bytes.
#[test]
fn a_save_on_a_full_disk_names_the_file_and_keeps_the_previous_one() {
    let scratch = super::scratch("disk-full");
    let mut tried = 0;
    for format in FORMATS {
        let dir = scratch.join(format!("{format:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let previous: PathBuf = ema().save(dir.join("ema"), format).unwrap();
        let before = std::fs::read(&previous).unwrap();
        let size = before.len() as u64;
        // The child's file holds other values (its own random net): a whole new file differs.
        let unlimited = save_with_limit(&dir.join("ema"), format, u64::MAX / 2);
        assert_eq!(
            unlimited,
            format!("SAVED {}", previous.display()),
            "{format:?}"
        );
        assert_ne!(std::fs::read(&previous).unwrap(), before, "{format:?}");
        let before = std::fs::read(&previous).unwrap();
        for limit in [0, 1, size / 2, size - 1] {
            let outcome = save_with_limit(&dir.join("ema"), format, limit);
            assert!(
                outcome.starts_with("REFUSED ")
                    && outcome.contains(&previous.display().to_string()),
                "{format:?}, disk full after {limit} of {size} bytes: {outcome}"
            );
            assert_eq!(
                std::fs::read(&previous).unwrap(),
                before,
                "{format:?}, {limit} bytes: the previous file changed"
            );
            let name = previous.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                entries(&dir),
                vec![name],
                "{format:?}, {limit} bytes: a scratch file was left"
            );
            tried += 1;
        }
    }
    println!("{tried} full-disk saves refused, every previous file intact, no scratch file left");
}

/// Unwritable places: a folder that is a file, and a read-only folder (which binds only
/// without root's override: said in the output when it does not).
#[test]
fn a_save_into_an_unwritable_place_names_the_path() {
    let dir = super::scratch("unwritable");
    let ema = ema();
    let not_a_folder = dir.join("file");
    std::fs::write(&not_a_folder, b"x").unwrap();
    for format in FORMATS {
        let to = not_a_folder.join("ema");
        let err = ema.save(&to, format).expect_err("a folder that is a file");
        assert!(
            err.to_string()
                .contains(&not_a_folder.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&not_a_folder).unwrap(), b"x");

    use std::os::unix::fs::PermissionsExt;
    let read_only = dir.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    let previous = ema.save(read_only.join("ema"), EmaFile::State).unwrap();
    let before = std::fs::read(&previous).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let binds = std::fs::write(read_only.join("probe"), b"").is_err();
    if binds {
        let err = ema
            .save(&previous, EmaFile::State)
            .expect_err("a read-only folder");
        assert!(
            err.to_string().contains(&previous.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(&previous).unwrap(), before);
        assert_eq!(entries(&read_only), vec!["ema.bpk".to_string()]);
        println!("read-only folder: refused ({err})");
    } else {
        println!(
            "read-only folder: NOT TESTED here, this process overrides permissions (root); the folder-that-is-a-file case ran"
        );
    }
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).unwrap();
}
