//! A module's tensors as named entries, and checked loading of entries back into a module.
//!
//! Loading is two-phase, so that a file that does not fit changes nothing: first every tensor
//! the module expects is checked against the file (present, same kind, shape and element
//! type, and no tensor of the file left over), then the values are put in, on a clone.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use crate::error::EmaError;
use crate::path::PathStack;

/// One tensor of a file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The parameter id recorded with it, if any.
    pub(crate) id: Option<u64>,
    /// Its data (shape and element type included).
    pub(crate) data: TensorData,
}

/// The tensors of a file, by name.
pub(crate) type Entries = BTreeMap<String, Entry>;

/// `prefix` + `path`, dotted.
fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Adds every tensor of `module` to `entries`, named `name(path)`, in the form Burn records
/// (after the parameter's save transform).
pub(crate) fn collect<M: Module>(module: &M, entries: &mut Entries, name: impl Fn(&str) -> String) {
    let mut collector = Collector {
        path: PathStack::default(),
        entries,
        name: &name,
    };
    module.visit(&mut collector);
}

/// [`collect`] with dotted names under `prefix`.
pub(crate) fn collect_prefixed<M: Module>(module: &M, entries: &mut Entries, prefix: &str) {
    collect(module, entries, |path| join(prefix, path));
}

struct Collector<'a, F> {
    path: PathStack,
    entries: &'a mut Entries,
    name: &'a F,
}

impl<F: Fn(&str) -> String> Collector<'_, F> {
    fn push(&mut self, id: ParamId, data: TensorData) {
        let name = (self.name)(&self.path.current());
        self.entries.insert(
            name,
            Entry {
                id: Some(id.val()),
                data,
            },
        );
    }
}

impl<F: Fn(&str) -> String> ModuleVisitor for Collector<'_, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.push(param.id, param.transform_for_save().val().into_data());
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        self.push(param.id, param.transform_for_save().val().into_data());
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        self.push(param.id, param.transform_for_save().val().into_data());
    }
}

/// How a load treats parameter ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ids {
    /// Take the ids recorded in the file, as Burn's records do (optimizer state is keyed by
    /// them).
    FromFile,
    /// Keep the module's own ids (the shadow's ids derive from the model's).
    Keep,
}

/// Whether a float entry may have another float type than the module's tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cast {
    /// The element types must be equal.
    Exact,
    /// Float values are converted to the module's float type (e.g. an `f32` shadow into an
    /// `f16` model).
    FloatsToModel,
}

/// Which entries a load reads, and how.
pub(crate) struct Selection<N, O> {
    /// The entry name of a module path.
    pub(crate) name: N,
    /// Whether an entry belongs to this module: such an entry that the module has no tensor
    /// for means the file comes from another architecture.
    pub(crate) owns: O,
    pub(crate) ids: Ids,
    pub(crate) cast: Cast,
}

/// Loads the selected entries into `module`, after checking that they all fit: every tensor of
/// the module has an entry with its kind, shape and element type, and every entry the module
/// owns has a tensor.
///
/// On error, `module` is untouched: the values go into a clone.
pub(crate) fn load<M: Module, N: Fn(&str) -> String, O: Fn(&str) -> bool>(
    module: &M,
    entries: &Entries,
    file: &Path,
    selection: &Selection<N, O>,
) -> Result<M, EmaError> {
    let mut checker = Checker {
        path: PathStack::default(),
        entries,
        file,
        name: &selection.name,
        cast: selection.cast,
        error: None,
        seen: std::collections::HashSet::new(),
    };
    module.visit(&mut checker);
    if let Some(err) = checker.error {
        return Err(err);
    }
    if let Some(name) = entries
        .keys()
        .find(|name| (selection.owns)(name) && !checker.seen.contains(*name))
    {
        return Err(EmaError::file_mismatch(
            file,
            name,
            "the file has this tensor, the model does not (another architecture?)",
        ));
    }
    let mut loader = Loader {
        path: PathStack::default(),
        entries,
        ids: selection.ids,
        name: &selection.name,
    };
    Ok(module.clone().map(&mut loader))
}

/// What kind of tensor a dtype holds.
fn kind(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 | DType::F32 | DType::Flex32 | DType::F16 | DType::BF16 => "float",
        DType::Bool(_) => "bool",
        DType::QFloat(_) => "quantized",
        _ => "int",
    }
}

struct Checker<'a, F> {
    path: PathStack,
    entries: &'a Entries,
    file: &'a Path,
    name: &'a F,
    cast: Cast,
    error: Option<EmaError>,
    seen: std::collections::HashSet<String>,
}

impl<F: Fn(&str) -> String> Checker<'_, F> {
    fn check(&mut self, (shape, want): (burn::tensor::Shape, DType)) {
        if self.error.is_some() {
            return;
        }
        let name = (self.name)(&self.path.current());
        let problem = match self.entries.get(&name) {
            None => Some("the model has this tensor, the file does not".to_string()),
            Some(entry) => {
                let found = entry.data.dtype();
                if kind(found) != kind(want) {
                    Some(format!(
                        "a {} tensor in the file, a {} tensor in the model",
                        kind(found),
                        kind(want)
                    ))
                } else if *entry.data.shape() != shape {
                    Some(format!(
                        "shape {:?} in the file, {:?} in the model",
                        entry.data.shape().as_slice(),
                        shape.as_slice()
                    ))
                } else if found != want
                    && !(self.cast == Cast::FloatsToModel && kind(found) == "float")
                {
                    Some(format!(
                        "element type {found:?} in the file, {want:?} in the model"
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            self.error = Some(EmaError::file_mismatch(self.file, name, problem));
        } else {
            self.seen.insert(name);
        }
    }

    /// The tensor's shape and element type, without reading its values.
    fn describe<const D: usize, K>(t: Tensor<D, K>) -> (burn::tensor::Shape, DType)
    where
        K: burn::tensor::kind::Basic,
    {
        (t.shape(), t.dtype())
    }
}

impl<F: Fn(&str) -> String> ModuleVisitor for Checker<'_, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.check(Self::describe(param.transform_for_save().val()));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        self.check(Self::describe(param.transform_for_save().val()));
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        self.check(Self::describe(param.transform_for_save().val()));
    }
}

struct Loader<'a, F> {
    path: PathStack,
    entries: &'a Entries,
    ids: Ids,
    name: &'a F,
}

impl<F: Fn(&str) -> String> Loader<'_, F> {
    fn take(&self, current: ParamId) -> (&Entry, ParamId) {
        let entry = &self.entries[&(self.name)(&self.path.current())];
        let id = match (self.ids, entry.id) {
            (Ids::FromFile, Some(id)) => ParamId::from(id),
            _ => current,
        };
        (entry, id)
    }
}

macro_rules! load_kind {
    ($method:ident, $kind:ty) => {
        fn $method<const D: usize>(
            &mut self,
            param: Param<Tensor<D, $kind>>,
        ) -> Param<Tensor<D, $kind>> {
            let (entry, id) = self.take(param.id);
            let device = param.lazy_device();
            // The module's element type: equal to the file's, or (floats only, the check
            // refused every other difference) the one the file's values are converted to.
            let dtype = param.val().dtype();
            let tensor = Tensor::<D, $kind>::from_data(entry.data.clone(), (&device, dtype));
            param.transform_for_load(tensor, id)
        }
    };
}

impl<F: Fn(&str) -> String> ModuleMapper for Loader<'_, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    load_kind!(map_float, burn::tensor::Float);
    load_kind!(map_int, Int);
    load_kind!(map_bool, Bool);
}
