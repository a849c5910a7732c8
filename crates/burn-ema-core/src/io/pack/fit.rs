//! Loading into a module: a file's tensors checked against the module's in full (names, kinds,
//! shapes, element types, nothing left over) before any value is read in.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Shape};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{
    BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, bridge,
};

use crate::error::EmaError;

/// Some tensors of a file, named by the module paths they load into.
#[derive(Default)]
pub(crate) struct Part {
    pub(crate) tensors: BTreeMap<String, PackTensor>,
    /// Each module path's name in the file, for errors.
    pub(super) in_file: BTreeMap<String, String>,
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

    #[cfg(feature = "pytorch")]
    /// Reads every tensor once (see [`read_each`](super::read::read_each)): for files with no
    /// checksum to verify, before anything is applied.
    pub(crate) fn check_readable(&self, file: &Path, format: &'static str) -> Result<(), EmaError> {
        super::read::read_each(self.tensors.values()).map_err(|problem| EmaError::CorruptFile {
            file: file.to_path_buf(),
            format,
            problem,
        })
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
