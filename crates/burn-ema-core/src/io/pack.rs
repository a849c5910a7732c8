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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{DType, Shape};
use burn_store::burn_pack::{self, AtomicFile, Tensor as PackTensor};
use burn_store::{
    BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore, bridge,
};

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
            return Ok(());
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

/// Some tensors of a file, named by the module paths they load into.
#[derive(Default)]
pub(crate) struct Part {
    pub(crate) tensors: BTreeMap<String, PackTensor>,
    /// Each module path's name in the file, for errors.
    in_file: BTreeMap<String, String>,
}

/// Whether a float tensor may have another float type than the module's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cast {
    /// The element types must be equal.
    Exact,
    /// Float values are converted to the module's float type (e.g. an `f32` shadow into an
    /// `f16` model).
    FloatsToModel,
}

/// How a load treats parameter ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ids {
    /// Take the ids recorded in the file, as Burn's records do (optimizer state is keyed by
    /// them).
    FromFile,
    /// Keep the module's own ids (the shadow's derive from the model's).
    Keep,
}

/// How a file names and lays out a module's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Naming {
    /// Burn's: dotted module paths, Burn's shapes.
    Burn,
    /// PyTorch's: linear weights transposed, norms' `gamma`/`beta` named `weight`/`bias`, enum
    /// variants left out of paths (burn-store's PyTorch adapters). Read with feature `pytorch`.
    #[cfg_attr(not(feature = "pytorch"), allow(dead_code))]
    PyTorch,
}

impl Naming {
    /// The module's tensors as the file names them, not read.
    fn describe<M: Module>(self, module: &M) -> Vec<PackTensor> {
        match self {
            Self::Burn => module.collect(None, None, false),
            Self::PyTorch => module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true),
        }
    }

    /// The adapter that turns the file's tensors into the module's, and whether paths skip
    /// enum variants.
    fn reader(self) -> (Option<Box<dyn ModuleAdapter>>, bool) {
        match self {
            Self::Burn => (None, false),
            Self::PyTorch => (Some(Box::new(PyTorchToBurnAdapter)), true),
        }
    }
}

/// What kind of tensor an element type holds.
fn kind(dtype: DType) -> &'static str {
    if dtype.is_float() {
        "float"
    } else if dtype.is_bool() {
        "bool"
    } else if matches!(dtype, DType::QFloat(_)) {
        "quantized"
    } else {
        "int"
    }
}

impl Part {
    /// Tensors already named by their module paths (PyTorch checkpoints' parts).
    #[cfg_attr(not(feature = "pytorch"), allow(dead_code))]
    pub(crate) fn new(tensors: BTreeMap<String, PackTensor>) -> Self {
        Self {
            tensors,
            in_file: BTreeMap::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    fn name_in_file(&self, path: &str) -> String {
        self.in_file
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string())
    }

    /// Checks that the part fits `module` exactly — a tensor for each of the module's, of its
    /// kind, shape and (unless cast) element type, and none left over — without reading any
    /// value.
    pub(crate) fn check_fits<M: Module>(
        &self,
        module: &M,
        naming: Naming,
        cast: Cast,
        file: &Path,
    ) -> Result<(), EmaError> {
        let expected: BTreeMap<String, (DType, Shape)> = naming
            .describe(module)
            .into_iter()
            .map(|t| (t.name, (t.dtype, t.shape)))
            .collect();
        let mismatch = |path: &str, problem: String| {
            EmaError::file_mismatch(file, self.name_in_file(path), problem)
        };
        for (path, (want, shape)) in &expected {
            let Some(found) = self.tensors.get(path) else {
                return Err(mismatch(
                    path,
                    "the model has this tensor, the file does not".into(),
                ));
            };
            let problem = if kind(found.dtype) != kind(*want) {
                Some(format!(
                    "a {} tensor in the file, a {} tensor in the model",
                    kind(found.dtype),
                    kind(*want)
                ))
            } else if found.shape != *shape {
                Some(format!(
                    "shape {:?} in the file, {:?} in the model",
                    found.shape.as_slice(),
                    shape.as_slice()
                ))
            } else if same_type(found.dtype, *want)
                || (cast == Cast::FloatsToModel && want.is_float())
            {
                None
            } else {
                Some(format!(
                    "element type {:?} in the file, {want:?} in the model",
                    found.dtype
                ))
            };
            if let Some(problem) = problem {
                return Err(mismatch(path, problem));
            }
        }
        if let Some(extra) = self.tensors.keys().find(|n| !expected.contains_key(*n)) {
            return Err(mismatch(
                extra,
                "the file has this tensor, the model does not (another architecture?)".into(),
            ));
        }
        Ok(())
    }

    /// Loads the part into `module`, in place (each tensor replaced as it is read, so a load
    /// needs no second copy of the module); call [`check_fits`](Self::check_fits) first, so
    /// that nothing changes on a file that does not fit. Floats are converted to the module's
    /// element types.
    pub(crate) fn apply_to<M: Module>(
        self,
        module: &mut M,
        naming: Naming,
        ids: Ids,
        file: &Path,
    ) -> Result<(), EmaError> {
        let types: BTreeMap<String, DType> = naming
            .describe(module)
            .into_iter()
            .map(|t| (t.name, t.dtype))
            .collect();
        let tensors = self
            .tensors
            .into_values()
            .map(|mut t| {
                if ids == Ids::Keep {
                    t.param_id = None;
                }
                let want = match types.get(&t.name) {
                    Some(&want) if want.is_float() && !same_type(t.dtype, want) => Some(want),
                    _ => None,
                };
                let (name, dtype, shape) =
                    (t.name.clone(), want.unwrap_or(t.dtype), t.shape.clone());
                bridge::map_data(t, name, dtype, shape, move |data| {
                    // File-backed bytes are read lazily, by path, on first access: read them
                    // now, so that the module holds its values, not a reference to a file that
                    // may be replaced or deleted later (and was checked only as it is now).
                    std::hint::black_box(data.as_bytes().first());
                    match want {
                        Some(want) => data.convert_dtype(want),
                        None => data,
                    }
                })
            })
            .collect();
        let (adapter, skip_enum) = naming.reader();
        let result = module.apply(tensors, None, adapter, skip_enum);
        match result.errors.first() {
            None => Ok(()),
            Some(err) => Err(EmaError::file_mismatch(file, "", err.to_string())),
        }
    }
}

/// Element types that mean the same (`Flex32` is Flex's `F32`).
fn same_type(a: DType, b: DType) -> bool {
    let f32ish = |d| matches!(d, DType::F32 | DType::Flex32);
    a == b || (f32ish(a) && f32ish(b)) || (a.is_bool() && b.is_bool())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
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
