//! Atomic file writes: a crash, a full disk or any error during a save leaves the previous file
//! intact.
//!
//! The bytes go to a temporary file next to the destination (same directory, so same file
//! system), which is flushed to disk (`fsync`) and then renamed over the destination; the
//! directory is synced too, so the rename itself survives a power cut. Readers see either the
//! old file or the new one, never a partial write.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::EmaError;

/// Where the bytes of a save go: a file, or (in tests) a file wrapped to fail on purpose.
pub(crate) trait Sink: Write {
    /// Flushes the data to the storage device.
    fn sync(&mut self) -> io::Result<()>;
}

impl Sink for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EmaError> {
    write_atomic_with(path, bytes, |file| file)
}

/// [`write_atomic`], with the temporary file wrapped by `wrap` (tests inject failures there).
pub(crate) fn write_atomic_with<S: Sink>(
    path: &Path,
    bytes: &[u8],
    wrap: impl FnOnce(File) -> S,
) -> Result<(), EmaError> {
    let fail = |err: io::Error| EmaError::io(path, "write", &err);
    let temp = temp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(fail)?;
    let written = (|| {
        let mut sink = wrap(file);
        sink.write_all(bytes)?;
        sink.flush()?;
        sink.sync()
    })();
    if let Err(err) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(err));
    }
    sync_dir(path);
    Ok(())
}

/// A temporary name in the destination's directory, unique within and across processes.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{unique}.tmp", std::process::id()))
}

/// Makes the rename durable. Best effort: some platforms cannot open directories.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that accepts `budget` bytes and then fails like a full disk.
    struct FullDisk {
        file: File,
        budget: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device",
                ));
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.file.write(&buf[..n])
        }

        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }

    impl Sink for FullDisk {
        fn sync(&mut self) -> io::Result<()> {
            self.file.sync_all()
        }
    }

    /// A file whose `fsync` fails (a dying disk).
    struct FailingSync(File);

    impl Write for FailingSync {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Sink for FailingSync {
        fn sync(&mut self) -> io::Result<()> {
            Err(io::Error::other("input/output error"))
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("burn-ema-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn a_write_replaces_the_file() {
        let dir = scratch("replace");
        let path = dir.join("ema.bpk");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert!(leftovers(&dir).is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_disk_leaves_the_previous_file_intact() {
        let dir = scratch("full");
        let path = dir.join("ema.bpk");
        write_atomic(&path, b"the previous checkpoint").unwrap();
        let big = vec![7u8; 1 << 16];
        let err =
            write_atomic_with(&path, &big, |file| FullDisk { file, budget: 1000 }).unwrap_err();
        assert!(
            matches!(&err, EmaError::Io { file, operation: "write", problem }
                if file == &path && problem.contains("no space")),
            "{err:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"the previous checkpoint");
        assert!(leftovers(&dir).is_empty(), "the temporary file is removed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_sync_leaves_the_previous_file_intact() {
        let dir = scratch("sync");
        let path = dir.join("ema.bpk");
        write_atomic(&path, b"previous").unwrap();
        let err = write_atomic_with(&path, b"next", FailingSync).unwrap_err();
        assert!(matches!(err, EmaError::Io { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"previous");
        assert!(leftovers(&dir).is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = scratch("missing");
        let path = dir.join("no/such/dir/ema.bpk");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("ema.bpk"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
