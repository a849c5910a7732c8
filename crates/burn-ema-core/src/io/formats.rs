//! File formats: burnpack (Burn's own, what `load_file` reads) and safetensors (what the rest
//! of the ecosystem reads), with a checksum, so that a corrupted file is an error, not silently
//! wrong weights.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{BoolStore, Bytes, DType, TensorData};

use crate::error::EmaError;
use crate::io::atomic::write_atomic;
use crate::io::entries::{Entries, Entry};

/// Metadata key of the checksum of the tensors.
const CHECKSUM: &str = "burn_ema.checksum";

/// A file's tensors and its string metadata.
#[derive(Clone, Debug, Default)]
pub(crate) struct TensorFile {
    pub(crate) entries: Entries,
    pub(crate) metadata: BTreeMap<String, String>,
}

/// The on-disk formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Burnpack,
    Safetensors,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Burnpack => "burnpack",
            Self::Safetensors => "safetensors",
        }
    }
}

/// A 64-bit checksum of every tensor's name, type, shape and bytes, in name order.
fn checksum(entries: &Entries) -> String {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            h = (h ^ w).wrapping_mul(PRIME).rotate_left(29);
        }
        for &b in words.remainder() {
            h = (h ^ b as u64).wrapping_mul(PRIME);
        }
        h = (h ^ bytes.len() as u64).wrapping_mul(PRIME);
    };
    for (name, entry) in entries {
        mix(name.as_bytes());
        mix(format!(
            "{:?}{:?}",
            entry.data.dtype(),
            entry.data.shape().as_slice()
        )
        .as_bytes());
        mix(entry.data.as_bytes());
    }
    format!("{h:016x}")
}

impl TensorFile {
    /// Writes the file atomically (see [`write_atomic`]).
    pub(crate) fn save(&self, path: &Path, format: Format) -> Result<(), EmaError> {
        let bytes = self.encode(format).map_err(|problem| EmaError::Io {
            file: path.to_path_buf(),
            operation: "write",
            problem,
        })?;
        write_atomic(path, &bytes)
    }

    /// Reads and checks a file.
    pub(crate) fn load(path: &Path, format: Format) -> Result<Self, EmaError> {
        let bytes = std::fs::read(path).map_err(|e| EmaError::io(path, "read", &e))?;
        let corrupt = |problem: String| EmaError::CorruptFile {
            file: path.to_path_buf(),
            format: format.name(),
            problem,
        };
        let file = Self::decode(bytes, format).map_err(corrupt)?;
        match file.metadata.get(CHECKSUM) {
            Some(sum) if *sum != checksum(&file.entries) => Err(corrupt(
                "the tensors do not match their checksum (the file is corrupted)".into(),
            )),
            _ => Ok(file),
        }
    }

    fn encode(&self, format: Format) -> Result<Vec<u8>, String> {
        let mut metadata = self.metadata.clone();
        metadata.insert(CHECKSUM.into(), checksum(&self.entries));
        match format {
            Format::Burnpack => {
                let tensors = self
                    .entries
                    .iter()
                    .map(|(name, e)| {
                        let bytes = Bytes::from_bytes_vec(e.data.as_bytes().to_vec());
                        burn_pack::Tensor::new(
                            name.clone(),
                            e.data.dtype(),
                            e.data.shape().clone(),
                            e.id,
                            bytes,
                        )
                    })
                    .collect();
                let writer = metadata
                    .iter()
                    .fold(burn_pack::Writer::new(tensors), |w, (k, v)| {
                        w.with_metadata(k, v)
                    });
                let bytes = writer.into_bytes().map_err(|e| e.to_string())?;
                Ok(bytes.to_vec())
            }
            Format::Safetensors => {
                let mut views = Vec::with_capacity(self.entries.len());
                for (name, e) in &self.entries {
                    let dtype = st_dtype(e.data.dtype()).ok_or_else(|| {
                        format!("`{name}`: {:?} has no safetensors type", e.data.dtype())
                    })?;
                    let view = safetensors::tensor::TensorView::new(
                        dtype,
                        e.data.shape().as_slice().to_vec(),
                        e.data.as_bytes(),
                    )
                    .map_err(|err| format!("`{name}`: {err}"))?;
                    views.push((name.clone(), view));
                }
                let info: HashMap<String, String> = metadata.into_iter().collect();
                safetensors::tensor::serialize(views, Some(info)).map_err(|e| e.to_string())
            }
        }
    }

    fn decode(bytes: Vec<u8>, format: Format) -> Result<Self, String> {
        match format {
            Format::Burnpack => {
                let reader = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(bytes))
                    .map_err(|e| e.to_string())?;
                let metadata = reader.metadata().clone();
                let mut entries = Entries::new();
                for tensor in reader.into_tensors().map_err(|e| e.to_string())? {
                    let (name, dtype, shape, id, bytes) =
                        tensor.into_parts().map_err(|e| e.to_string())?;
                    let data = TensorData::try_from_bytes(bytes, shape, dtype)
                        .map_err(|e| format!("`{name}`: {e:?}"))?;
                    entries.insert(name, Entry { id, data });
                }
                Ok(Self { entries, metadata })
            }
            Format::Safetensors => {
                let (_, header) =
                    safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
                let metadata = header
                    .metadata()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let file =
                    safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
                let mut entries = Entries::new();
                for (name, view) in file.tensors() {
                    let dtype = burn_dtype(view.dtype())
                        .ok_or_else(|| format!("`{name}`: unsupported type {:?}", view.dtype()))?;
                    let data = TensorData::try_from_bytes_vec(
                        view.data().to_vec(),
                        view.shape().to_vec(),
                        dtype,
                    )
                    .map_err(|e| format!("`{name}`: {e:?}"))?;
                    entries.insert(name, Entry { id: None, data });
                }
                Ok(Self { entries, metadata })
            }
        }
    }
}

fn st_dtype(dtype: DType) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match dtype {
        DType::F64 => S::F64,
        DType::F32 | DType::Flex32 => S::F32,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::I64 => S::I64,
        DType::I32 => S::I32,
        DType::I16 => S::I16,
        DType::I8 => S::I8,
        DType::U64 => S::U64,
        DType::U32 => S::U32,
        DType::U16 => S::U16,
        DType::U8 => S::U8,
        DType::Bool(BoolStore::Native | BoolStore::U8) => S::BOOL,
        _ => return None,
    })
}

fn burn_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match dtype {
        S::F64 => DType::F64,
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::I16 => DType::I16,
        S::I8 => DType::I8,
        S::U64 => DType::U64,
        S::U32 => DType::U32,
        S::U16 => DType::U16,
        S::U8 => DType::U8,
        S::BOOL => DType::Bool(BoolStore::Native),
        _ => return None,
    })
}
