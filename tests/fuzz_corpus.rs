//! The fuzz corpus replayed on the stable toolchain: every file under `fuzz/corpus/<target>/`
//! (seeds, what the fuzz runs kept) and `fuzz/artifacts/<target>/` (the crashers they found, fixed
//! since) goes through the same reader harness as the fuzz targets (`fuzz/src/readers.rs`),
//! and none may panic or allocate much more than its own length. Hostile sizes are checked by
//! name too. Feature `flex` and `pytorch` (the harness reads PyTorch checkpoints).
//!
//! The seeds are committed; `cargo test --test fuzz_corpus --features flex,pytorch -- --ignored
//! write_seeds` writes them again from the current writers and the committed fixtures.
#![cfg(all(feature = "flex", feature = "pytorch"))]

#[path = "../fuzz/src/readers.rs"]
mod readers;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use burn_ema::{EmaConfig, EmaError, EmaFile, EmaModule, MovingAverage};

/// The system allocator, counting the largest single allocation of the current thread.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may be gone while a thread exits.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// What one reader may allocate at once for a file of `len` bytes: a few times its length, and
/// the fixed cost of reading anything (the model's own tensors, buffers of the readers).
fn allowed(len: usize) -> usize {
    4 * len + (256 << 10)
}

/// Runs `reader` on `data` on this thread, returning the largest single allocation it made.
fn largest_allocation(reader: readers::Reader, data: &[u8]) -> usize {
    LARGEST.with(|l| l.set(0));
    reader(data);
    LARGEST.with(|l| l.get())
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_and_crasher_is_read_without_a_panic() {
    let mut report = Vec::new();
    for (target, reader) in readers::TARGETS {
        let corpus = files_in(&fuzz_dir().join("corpus").join(target));
        let crashers = files_in(&fuzz_dir().join("artifacts").join(target));
        assert!(
            corpus.len() >= 2,
            "fuzz/corpus/{target}/ holds {} files: the seeds are missing",
            corpus.len()
        );
        let mut worst = (0usize, 0usize, String::new());
        for file in corpus.iter().chain(&crashers) {
            let data = std::fs::read(file).unwrap();
            let largest = largest_allocation(reader, &data);
            assert!(
                largest <= allowed(data.len()),
                "{}: a {}-byte file made the reader allocate {largest} bytes at once",
                file.display(),
                data.len()
            );
            if largest > worst.0 {
                worst = (largest, data.len(), file.display().to_string());
            }
        }
        report.push(format!(
            "{target}: {} corpus files, {} crashers, largest allocation {} bytes (a {}-byte input)",
            corpus.len(),
            crashers.len(),
            worst.0,
            worst.1
        ));
    }
    println!("{}", report.join("\n"));
}

/// A safetensors file from its header's JSON and `data` bytes.
fn safetensors_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// A burnpack file whose header claims `metadata_size` bytes of metadata, followed by `rest`.
fn burnpack_file(metadata_size: u32, rest: &[u8]) -> Vec<u8> {
    let mut bytes = 0x4255524Eu32.to_le_bytes().to_vec(); // "BURN", burn-pack's magic number
    bytes.extend_from_slice(&1u16.to_le_bytes()); // format version 1
    bytes.extend_from_slice(&metadata_size.to_le_bytes());
    bytes.extend_from_slice(rest);
    bytes
}

/// Hostile sizes: each is refused as a corrupt file, having allocated at most a bounded
/// multiple of its own (tiny) length.
#[test]
fn hostile_sizes_are_refused_before_allocating() {
    let cases: Vec<(&str, Vec<u8>, EmaFile)> = vec![
        (
            "a safetensors header claiming 2^60 bytes",
            (1u64 << 60).to_le_bytes().to_vec(),
            EmaFile::ShadowSafetensors,
        ),
        (
            "a safetensors tensor whose shape's product overflows",
            safetensors_file(
                r#"{"fc1.weight":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
            EmaFile::ShadowSafetensors,
        ),
        (
            "a safetensors tensor claiming 2^60 bytes of data",
            safetensors_file(
                r#"{"fc1.weight":{"dtype":"F32","shape":[268435456,1073741824],"data_offsets":[0,1152921504606846976]}}"#,
                &[0; 4],
            ),
            EmaFile::ShadowSafetensors,
        ),
        (
            "a burnpack header claiming 100 MB of metadata",
            burnpack_file(100 << 20, &[0; 16]),
            EmaFile::State,
        ),
        (
            "a burnpack header claiming 4 GB of metadata",
            burnpack_file(u32::MAX, &[0; 16]),
            EmaFile::Shadow,
        ),
    ];
    let dir = std::env::temp_dir().join(format!("burn-ema-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (what, bytes, format) in cases {
        let path = dir.join(match format {
            EmaFile::ShadowSafetensors => "hostile.safetensors",
            _ => "hostile.bpk",
        });
        std::fs::write(&path, &bytes).unwrap();
        let mut ema = EmaModule::new(readers_net(), EmaConfig::new(0.9)).unwrap();
        LARGEST.with(|l| l.set(0));
        let err = ema.load(&path, format).expect_err(what);
        let largest = LARGEST.with(|l| l.get());
        assert!(
            matches!(&err, EmaError::CorruptFile { file, .. } if file == &path),
            "{what}: {err:?}"
        );
        assert!(
            largest <= allowed(bytes.len()),
            "{what}: allocated {largest} bytes at once for a {}-byte file",
            bytes.len()
        );
        println!("{what}: refused ({err}); largest allocation {largest} bytes");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn readers_net() -> readers::Net {
    readers::net()
}

/// Writes the seeds of every target into `fuzz/corpus/<target>/seed-*` from the current
/// writers (an EMA of `Net` after two updates, in every format) and the committed fixtures.
#[test]
#[ignore = "writes the committed seeds; run by hand"]
fn write_seeds() {
    let corpus = fuzz_dir().join("corpus");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let seed = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let copy = |target: &str, fixture: &str| {
        let bytes = std::fs::read(fixtures.join(fixture)).unwrap();
        let name = fixture.replace('/', "-");
        seed(target, &name, &bytes);
    };

    let mut ema = EmaModule::new(readers::net(), EmaConfig::new(0.9)).unwrap();
    ema.update().unwrap();
    ema.update().unwrap();
    let dir = std::env::temp_dir().join(format!("burn-ema-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (target, format, name) in [
        ("ema_state", EmaFile::State, "state"),
        ("ema_state", EmaFile::StateWithModel, "state-with-model"),
        ("shadow", EmaFile::Shadow, "shadow"),
        ("safetensors", EmaFile::ShadowSafetensors, "shadow"),
        ("tensorflow", EmaFile::TensorFlow, "tf"),
    ] {
        let path = ema.save(dir.join(name), format).unwrap();
        seed(target, name, &std::fs::read(path).unwrap());
    }
    std::fs::remove_dir_all(&dir).unwrap();

    for fixture in [
        "legacy/state.bpk",
        "legacy/state_cosine.bpk",
        "legacy/state_with_model.bpk",
    ] {
        copy("ema_state", fixture);
    }
    copy("shadow", "legacy/shadow.bpk");
    copy("safetensors", "legacy/shadow.safetensors");
    copy(
        "safetensors",
        "pytorch/diffusers_ema/diffusion_pytorch_model.safetensors",
    );
    copy("tensorflow", "legacy/tf_style.safetensors");
    for fixture in [
        "pytorch/averaged_model.pt",
        "pytorch/ema_pytorch.pt",
        "pytorch/timm.pth.tar",
        "pytorch/timm_no_ema.pth.tar",
        "pytorch/diffusers_ema/config.json",
    ] {
        copy("pytorch", fixture);
    }
    copy("posthoc_index", "legacy/posthoc/index.json");
    seed(
        "posthoc_index",
        "empty-index.json",
        br#"{"format":"burn-ema-posthoc-index/1","profiles":[],"dtype":"F32","averaged":[],"snapshots":[]}"#,
    );
    seed(
        "posthoc_index",
        "other-format.json",
        br#"{"format":"burn-ema-posthoc-index/2"}"#,
    );
    for (name, bytes) in readers::fixtures::POSTHOC_SNAPSHOTS {
        seed("posthoc_snapshot", name, bytes);
    }
    // The hostile sizes, so that the fuzzers start from them too.
    seed("safetensors", "hostile-header", &(1u64 << 60).to_le_bytes());
    seed(
        "shadow",
        "hostile-metadata",
        &burnpack_file(u32::MAX, &[0; 16]),
    );
}
