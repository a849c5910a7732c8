//! burn-store plus what EMA files add: a checksum written with every file and checked on every
//! read, typed errors naming the file and the tensor, and loads checked in full before anything
//! in memory changes.
//!
//! Writing streams: each tensor is read back from its device when the writer reaches it and
//! dropped before the next (burn-pack's `Writer`, safetensors' `serialize_to_file`), into a
//! scratch file renamed over the destination once complete and synced (burn-pack's
//! `AtomicFile`): a failed save leaves the previous file as it was. The checksum is computed
//! first, in the same one-tensor-at-a-time way. Reading is lazy too: burnpack's reader and
//! burn-store's safetensors store hand out file-backed tensors, read when applied.
//!
//! - [`write`]: streaming, atomic writes with the checksum;
//! - [`read`]: a file's metadata and lazy tensors, the checksum verified;
//! - [`fit`]: a file's tensors checked against a module, then read into it.

mod fit;
mod read;
mod write;

pub(crate) use burn_store::burn_pack::Tensor as PackTensor;
pub(crate) use fit::{Cast, Ids, Naming, Part};
pub(crate) use read::Incoming;
pub(crate) use write::{Format, tensors_of, write};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::error::EmaError;
    use crate::io::checksum;
    use burn::tensor::DType;
    use burn::tensor::TensorData;
    use burn_store::bridge;
    use burn_store::burn_pack::Error as PackError;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("burn-ema-pack-{name}-{}", std::process::id()));
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

    fn good(name: &str) -> PackTensor {
        bridge::from_data(TensorData::new(vec![1.0f32; 64], [64]), name.into(), None)
    }

    /// A tensor whose read-back fails partway through a save (a device lost mid-write).
    fn failing(name: &str) -> PackTensor {
        PackTensor::deferred(name.into(), DType::F32, [64], None, 256, || {
            Err(PackError::IoError("device lost".into()))
        })
    }

    /// Fails only on its second read: the checksum pass succeeds, the write fails midway.
    fn failing_on_write(name: &str) -> PackTensor {
        let reads = std::sync::atomic::AtomicUsize::new(0);
        PackTensor::deferred(name.into(), DType::F32, [64], None, 256, move || {
            if reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Ok(burn::tensor::Bytes::from_elems(vec![0f32; 64]))
            } else {
                Err(PackError::IoError("device lost".into()))
            }
        })
    }

    #[test]
    fn a_save_that_fails_midway_leaves_the_previous_file_intact() {
        let dir = scratch("midway");
        for format in [Format::Burnpack, Format::Safetensors] {
            let path = dir.join(format!("ema.{}", format.extension()));
            write(&path, format, vec![good("a")], BTreeMap::new()).unwrap();
            let before = std::fs::read(&path).unwrap();
            for bad in [failing("b"), failing_on_write("b")] {
                let err = write(&path, format, vec![good("a"), bad], BTreeMap::new())
                    .expect_err("the read-back fails");
                assert!(
                    matches!(&err, EmaError::Io { operation: "write", problem, .. }
                        if problem.contains("device lost")),
                    "{format:?}: {err:?}"
                );
                assert_eq!(std::fs::read(&path).unwrap(), before, "{format:?}");
                assert!(
                    leftovers(&dir).is_empty(),
                    "{format:?}: scratch file removed"
                );
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_checksum_is_the_same_in_both_formats() {
        let dir = scratch("formats");
        let tensors = || {
            vec![
                good("w"),
                bridge::from_data(TensorData::new(vec![3i64, 4], [2]), "n".into(), None),
                bridge::from_data(TensorData::new(vec![true, false], [2]), "m".into(), None),
            ]
        };
        let bpk = dir.join("a.bpk");
        let st = dir.join("a.safetensors");
        write(&bpk, Format::Burnpack, tensors(), BTreeMap::new()).unwrap();
        write(&st, Format::Safetensors, tensors(), BTreeMap::new()).unwrap();
        let a = Incoming::open(&bpk, Format::Burnpack).unwrap();
        let b = Incoming::open(&st, Format::Safetensors).unwrap();
        assert_eq!(a.metadata[checksum::KEY], b.metadata[checksum::KEY]);
        a.verify().unwrap();
        b.verify().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
