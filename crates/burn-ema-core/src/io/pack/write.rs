//! Writing: streaming, atomic, with the checksum.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::DType;
use burn_store::ModuleSnapshot;
use burn_store::burn_pack::{self, AtomicFile, Tensor as PackTensor};

use crate::error::EmaError;
use crate::io::checksum;

/// The on-disk formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Burn's own (what `load_file` reads).
    Burnpack,
    /// What the rest of the ecosystem reads.
    Safetensors,
}

impl Format {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Burnpack => "burnpack",
            Self::Safetensors => "safetensors",
        }
    }

    /// The extension added to a path that has none (as Burn does for `.bpk`).
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Self::Burnpack => "bpk",
            Self::Safetensors => "safetensors",
        }
    }

    pub(crate) fn resolve(self, path: &Path) -> PathBuf {
        if path.extension().is_none() {
            path.with_extension(self.extension())
        } else {
            path.to_path_buf()
        }
    }
}

/// A module's tensors as burn-store collects them: named by their dotted paths, read back from
/// the device only when written.
pub(crate) fn tensors_of<M: Module>(module: &M) -> Vec<PackTensor> {
    module.collect(None, None, false)
}

fn write_error(path: &Path, err: impl std::fmt::Display) -> EmaError {
    EmaError::Io {
        file: path.to_path_buf(),
        operation: "write",
        problem: err.to_string(),
    }
}

/// Writes `tensors` and `metadata` (plus the checksum) to `path`, atomically and streaming.
pub(crate) fn write(
    path: &Path,
    format: Format,
    tensors: Vec<PackTensor>,
    mut metadata: BTreeMap<String, String>,
) -> Result<(), EmaError> {
    let sum = checksum::checksum(&tensors).map_err(|e| write_error(path, e))?;
    metadata.insert(checksum::KEY.into(), sum);
    match format {
        Format::Burnpack => metadata
            .iter()
            .fold(burn_pack::Writer::new(tensors), |w, (k, v)| {
                w.with_metadata(k, v)
            })
            .auto_extension(false)
            .overwrite(true)
            .write_to_file(path)
            .map_err(|e| write_error(path, e)),
        Format::Safetensors => write_safetensors(path, tensors, metadata),
    }
}

/// A tensor as safetensors' writer sees it: its bytes drawn when written.
struct View(PackTensor, safetensors::Dtype);

impl safetensors::View for View {
    fn dtype(&self) -> safetensors::Dtype {
        self.1
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // No error channel here: a failed read-back panics, caught below and reported.
        let bytes = self
            .0
            .to_bytes()
            .unwrap_or_else(|e| panic!("tensor `{}`: {e}", self.0.name));
        std::borrow::Cow::Owned(bytes.to_vec())
    }

    fn data_len(&self) -> usize {
        self.0.byte_len()
    }
}

fn write_safetensors(
    path: &Path,
    tensors: Vec<PackTensor>,
    metadata: BTreeMap<String, String>,
) -> Result<(), EmaError> {
    let mut views = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let dtype = st_dtype(tensor.dtype).ok_or_else(|| {
            write_error(
                path,
                format!(
                    "`{}`: {:?} has no safetensors type",
                    tensor.name, tensor.dtype
                ),
            )
        })?;
        views.push((tensor.name.clone(), View(tensor, dtype)));
    }
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    let (scratch, reserved) = AtomicFile::create(path).map_err(|e| write_error(path, e))?;
    // safetensors opens the scratch path itself.
    drop(reserved);
    let scratch_path = scratch.path().to_path_buf();
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        safetensors::serialize_to_file(views, Some(metadata), &scratch_path)
    }));
    match written {
        Ok(Ok(())) => scratch.commit().map_err(|e| write_error(path, e)),
        Ok(Err(e)) => Err(write_error(path, e)),
        Err(panic) => Err(write_error(path, crate::error::panic_message(&*panic))),
    }
}

/// safetensors' element type for a Burn one (`Flex32` is stored as `F32`, bools as `BOOL`).
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
        DType::Bool(_) => S::BOOL,
        _ => return None,
    })
}
