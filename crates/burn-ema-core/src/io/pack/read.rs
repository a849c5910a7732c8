//! Reading: a file's header, metadata and (lazy) tensors, and its checksum verified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_store::burn_pack::{self, Tensor as PackTensor};
use burn_store::{ModuleStore, SafetensorsStore};

use super::{Format, Part};
use crate::error::EmaError;
use crate::io::checksum;

/// A file opened for reading: its string metadata and its tensors, by name, not yet read.
pub(crate) struct Incoming {
    pub(crate) file: PathBuf,
    pub(crate) format: &'static str,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) tensors: BTreeMap<String, PackTensor>,
}

impl Incoming {
    /// Opens a burnpack or safetensors file: the header and the metadata are read, the tensors
    /// are not.
    pub(crate) fn open(path: &Path, format: Format) -> Result<Self, EmaError> {
        // The system's own message for a missing or unreadable file.
        std::fs::File::open(path).map_err(|e| EmaError::io(path, "read", &e))?;
        let corrupt = |e: &dyn std::fmt::Display| EmaError::CorruptFile {
            file: path.to_path_buf(),
            format: format.name(),
            problem: e.to_string(),
        };
        let (metadata, tensors) = match format {
            Format::Burnpack => {
                check_burnpack_header(path).map_err(|e| corrupt(&e))?;
                let reader = burn_pack::Reader::from_file_exact(path).map_err(|e| corrupt(&e))?;
                let metadata = reader.metadata().clone();
                let tensors = reader.into_tensors().map_err(|e| corrupt(&e))?;
                (metadata, tensors)
            }
            Format::Safetensors => {
                let metadata = safetensors_metadata(path).map_err(|e| corrupt(&e))?;
                let mut store = SafetensorsStore::from_file(path);
                let tensors = store.get_all_tensors().map_err(|e| corrupt(&e))?;
                (metadata, tensors.values().cloned().collect())
            }
        };
        Ok(Self::new(path, format.name(), metadata, tensors))
    }

    pub(crate) fn new(
        file: &Path,
        format: &'static str,
        metadata: BTreeMap<String, String>,
        tensors: Vec<PackTensor>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            format,
            metadata,
            tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }

    /// Checks the tensors against the file's checksum, when it has one (reading each tensor
    /// once, one at a time).
    pub(crate) fn verify(&self) -> Result<(), EmaError> {
        let Some(expected) = self.metadata.get(checksum::KEY) else {
            // No checksum (a file from another library, or an older writer): each tensor is
            // still read once, so that a load cannot fail on unreadable data halfway through.
            return read_each(self.tensors.values()).map_err(|e| self.corrupt(e));
        };
        let tensors: Vec<PackTensor> = self.tensors.values().cloned().collect();
        let found = checksum::checksum(&tensors).map_err(|e| self.corrupt(e.to_string()))?;
        if &found != expected {
            return Err(self.corrupt(
                "the tensors do not match their checksum (the file is corrupted)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn corrupt(&self, problem: String) -> EmaError {
        EmaError::CorruptFile {
            file: self.file.clone(),
            format: self.format,
            problem,
        }
    }

    /// Takes out the tensors that `select` gives a module path (the name the module knows
    /// them by), renamed to it.
    pub(crate) fn take(&mut self, select: impl Fn(&str) -> Option<String>) -> Part {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| select(n).is_some())
            .cloned()
            .collect();
        let mut part = Part::default();
        for name in names {
            let mut tensor = self.tensors.remove(&name).expect("listed above");
            let path = select(&name).expect("selected");
            tensor.name = path.clone();
            part.in_file.insert(path.clone(), name);
            part.tensors.insert(path, tensor);
        }
        part
    }
}

/// Reads each tensor's bytes once, one tensor at a time, and checks their length against the
/// tensor's shape and element type. Loads call it (or the checksum, which reads as much) before
/// anything is applied: a file whose data cannot be read — a truncated or corrupted archive
/// entry — is refused whole instead of failing after some tensors were replaced. Found by the
/// fuzz target `pytorch` (`fuzz/`).
pub(crate) fn read_each<'a>(
    tensors: impl IntoIterator<Item = &'a PackTensor>,
) -> Result<(), String> {
    for tensor in tensors {
        let bytes = tensor
            .to_bytes()
            .map_err(|e| format!("tensor `{}`: {e}", tensor.name))?;
        if !tensor.dtype.is_bool() {
            let want = tensor
                .shape
                .num_elements()
                .checked_mul(tensor.dtype.size())
                .ok_or_else(|| format!("tensor `{}`: its size overflows", tensor.name))?;
            if bytes.len() != want {
                return Err(format!(
                    "tensor `{}`: {} bytes of data, its shape and type need {want}",
                    tensor.name,
                    bytes.len()
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a burnpack file whose header claims more metadata than the file holds: burn-pack's
/// reader allocates the claimed size (up to 100 MB) before reading it, so a 10-byte file could
/// make a load allocate 100 MB (found by `tests/fuzz_corpus.rs`'s hostile sizes).
fn check_burnpack_header(path: &Path) -> Result<(), String> {
    use burn_pack::HEADER_SIZE;
    use std::io::Read;
    // burn-pack's header: magic (4 bytes), version (2), metadata size (4, little-endian).
    const METADATA_SIZE: std::ops::Range<usize> = 6..10;
    const _: () = assert!(METADATA_SIZE.end == HEADER_SIZE);
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; HEADER_SIZE];
    if file.read_exact(&mut header).is_err() {
        return Err(format!(
            "a {size}-byte file is shorter than a burnpack header"
        ));
    }
    let field: [u8; 4] = header[METADATA_SIZE].try_into().expect("a 4-byte field");
    let claimed = u64::from(u32::from_le_bytes(field));
    if HEADER_SIZE as u64 + claimed > size {
        return Err(format!(
            "the header claims {claimed} bytes of metadata; the file has {size} bytes"
        ));
    }
    Ok(())
}

/// The header's `__metadata__` of a safetensors file (burn-store's store does not expose it).
fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(format!(
            "header length {len} does not fit a {size}-byte file"
        ));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}
