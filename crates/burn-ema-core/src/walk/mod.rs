//! Walking a module's tensors in traversal order, rank-erased.
//!
//! The derived `visit` and `map` of a Burn module traverse its tensors in the same order, so the
//! `i`-th leaf seen by [`collect_leaves`] is the `i`-th one that [`RewriteLeaves`] is handed.
//! Float tensors keep their rank, erased ([`Float`]): the update hands them to the engine as
//! they are, and only what needs a rank-1 view (files, the non-finite check, blends) reshapes.
//! Int and bool tensors are flattened to rank 1, so one non-generic code path serves every rank.
//! Values go to another device through `host_copy` (many at once, in one read).

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::{Device, Shape};
use burn::tensor::{Bool, DType, GradientCheckpointingStrategy, Int, Tensor};

use crate::path::PathStack;

mod host_copy;
pub(crate) use host_copy::{HostCopies, is_host};

/// A float tensor of any rank, as Burn's rank-erased primitive.
///
/// Walks hand float tensors over without reshaping them: on a CubeCL device a reshape is an
/// operation of its own in Burn's fusion stream, and an update walks the live model and its
/// shadow (five reshapes per tensor of rank above 1 when leaves were flattened: three quarters
/// of the caller's time per update on a 161-tensor model, BENCHMARKS.md).
#[derive(Clone, Debug)]
pub(crate) struct Float(DispatchTensor);

impl Float {
    pub(crate) fn new<const D: usize>(t: Tensor<D>) -> Self {
        Self(t.into_dispatch())
    }

    /// The tensor as Burn's rank-erased primitive.
    pub(crate) fn into_dispatch(self) -> DispatchTensor {
        self.0
    }

    pub(crate) fn from_dispatch(t: DispatchTensor) -> Self {
        Self(t)
    }

    /// The tensor flattened to rank 1 (a reshape where its rank is another).
    pub(crate) fn flat(self) -> Tensor<1> {
        let n = self.num_elements();
        Tensor::from_dispatch(reshape(self.0, Shape::new([n])))
    }

    /// The tensor at rank `D` with `shape` (a reshape where it has another shape).
    pub(crate) fn into_tensor<const D: usize>(self, shape: Shape) -> Tensor<D> {
        Tensor::from_dispatch(reshape(self.0, shape))
    }

    pub(crate) fn num_elements(&self) -> usize {
        self.0.shape().num_elements()
    }

    pub(crate) fn shape(&self) -> Shape {
        self.0.shape()
    }

    /// The tensor with `shape` (a reshape where it has another shape).
    pub(crate) fn reshaped(self, shape: Shape) -> Self {
        Self(reshape(self.0, shape))
    }

    pub(crate) fn dtype(&self) -> DType {
        self.0.dtype()
    }

    pub(crate) fn device(&self) -> Device {
        Device::new(self.0.device())
    }

    /// This tensor in element type `dtype` (itself where it has it).
    pub(crate) fn cast_like(self, dtype: DType) -> Self {
        if self.dtype() == dtype {
            return self;
        }
        Self(Dispatch::float_cast(
            self.0,
            burn_ema_kernels::float_dtype(dtype),
        ))
    }
}

/// `t` with `shape` (itself where it has it already: no operation is recorded).
fn reshape(t: DispatchTensor, shape: Shape) -> DispatchTensor {
    if t.shape() == shape {
        t
    } else {
        Dispatch::float_reshape(t, shape)
    }
}

/// A rank-erased tensor.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Float(Float),
    Int(Tensor<1, Int>),
    Bool(Tensor<1, Bool>),
}

/// The kind of a leaf tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeafKind {
    Float,
    Int,
    Bool,
}

impl Value {
    pub(crate) fn device(&self) -> Device {
        match self {
            Self::Float(t) => t.device(),
            Self::Int(t) => t.device(),
            Self::Bool(t) => t.device(),
        }
    }

    /// This value on `device` (itself when it is there already), through host memory of its
    /// own ([`HostCopies`], whose doc says why).
    pub(crate) fn moved_to(self, device: &Device) -> Self {
        HostCopies::start(vec![self], device)
            .finish()
            .pop()
            .expect("one value in, one out")
    }

    /// The bytes of the value's data.
    pub(crate) fn num_bytes(&self) -> u64 {
        let (n, dtype) = match self {
            Self::Float(t) => (t.num_elements(), t.dtype()),
            Self::Int(t) => (t.dims()[0], t.dtype()),
            Self::Bool(t) => (t.dims()[0], t.dtype()),
        };
        (n * dtype.size()) as u64
    }

    pub(crate) fn kind(&self) -> LeafKind {
        match self {
            Self::Float(_) => LeafKind::Float,
            Self::Int(_) => LeafKind::Int,
            Self::Bool(_) => LeafKind::Bool,
        }
    }
}

/// One tensor of a module, with where it sits.
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    /// The dotted path; empty when collected by [`collect_values`].
    pub(crate) path: String,
    pub(crate) id: ParamId,
    /// The tensor's own shape (int and bool values are flattened). Burn's `Shape` holds up to
    /// five dimensions inline: no allocation per leaf.
    pub(crate) shape: Shape,
    pub(crate) value: Value,
}

impl Leaf {
    /// The (non-autodiff) device of the leaf's value.
    pub(crate) fn value_device(&self) -> Device {
        self.value.device().inner()
    }
}

/// Every tensor of `module`, in traversal order (float tensors at their rank, others flattened),
/// with its path.
pub(crate) fn collect_leaves<M: Module>(module: &M) -> Vec<Leaf> {
    collect(module, true)
}

/// [`collect_leaves`] without the paths (left empty): the update's walk, which allocates
/// nothing per leaf (the layout knows the paths, and checks the live model by its ids:
/// [`Layout::check_live`](crate::layout::Layout::check_live)).
pub(crate) fn collect_values<M: Module>(module: &M) -> Vec<Leaf> {
    collect(module, false)
}

fn collect<M: Module>(module: &M, with_paths: bool) -> Vec<Leaf> {
    let mut collector = Collector {
        path: with_paths.then(PathStack::default),
        leaves: Vec::new(),
    };
    module.visit(&mut collector);
    collector.leaves
}

struct Collector {
    /// `None` when paths are not collected.
    path: Option<PathStack>,
    leaves: Vec<Leaf>,
}

impl Collector {
    fn push(&mut self, id: ParamId, shape: Shape, value: Value) {
        let path = self
            .path
            .as_ref()
            .map(PathStack::current)
            .unwrap_or_default();
        self.leaves.push(Leaf {
            path,
            id,
            shape,
            value,
        });
    }
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        if let Some(path) = &mut self.path {
            path.enter(name);
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        if let Some(path) = &mut self.path {
            path.exit();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        self.push(param.id, t.shape(), Value::Float(Float::new(t)));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        let t = param.val();
        let shape = t.shape();
        let n = shape.num_elements();
        self.push(param.id, shape, Value::Int(t.reshape([n])));
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        let t = param.val();
        let shape = t.shape();
        let n = shape.num_elements();
        self.push(param.id, shape, Value::Bool(t.reshape([n])));
    }
}

/// How a tensor takes part in autodiff, so that a replacement can be put back the same way.
///
/// The live model's parameters are autodiff leaves with `require_grad`; a value written into them
/// must become such a leaf again, or the optimizer would no longer see it. The shadow's tensors
/// are plain, and stay plain whatever they are replaced with.
struct TensorContext {
    autodiff: bool,
    require_grad: bool,
    distributed: bool,
    checkpointing: Option<GradientCheckpointingStrategy>,
}

impl TensorContext {
    fn capture<const D: usize>(t: &Tensor<D>) -> Option<Self> {
        t.is_autodiff().then(|| Self {
            autodiff: true,
            require_grad: t.is_require_grad(),
            distributed: t.is_distributed(),
            checkpointing: t.gradient_checkpointing_strategy(),
        })
    }

    fn restore<const D: usize>(context: Option<Self>, value: Tensor<D>, id: ParamId) -> Tensor<D> {
        let value = value.inner();
        let Some(context) = context else {
            return value;
        };
        debug_assert!(context.autodiff);
        let mut t = Tensor::from_inner(value);
        if let Some(strategy) = context.checkpointing {
            t = t.with_gradient_checkpointing_strategy(strategy);
        }
        if context.require_grad {
            t = t.require_grad();
        }
        if context.distributed {
            t = t.set_distributed(id);
        }
        t
    }
}

/// What [`RewriteLeaves`] does with the `i`-th leaf.
pub(crate) trait LeafRewriter {
    /// Returns the new id and value of leaf `index`, given its current ones. The value must keep
    /// the leaf's kind and number of elements.
    fn rewrite(&mut self, index: usize, id: ParamId, value: Value) -> (ParamId, Value);
}

/// A mapper that hands every tensor (as [`collect_leaves`] sees it) to a [`LeafRewriter`] and
/// puts the result back in the tensor's shape and autodiff context.
pub(crate) struct RewriteLeaves<'a, R> {
    index: usize,
    rewriter: &'a mut R,
    /// Another module's float contexts and flags, in traversal order, for
    /// [`independent_copy`]; `None`: each tensor keeps its own.
    like: Option<Like>,
}

/// What [`independent_copy`] takes from the module it copies, in one visit: each leaf's
/// autodiff context (`None` for int and bool leaves, by leaf index) and each flag (training
/// mode, ...), in traversal order.
#[derive(Default)]
struct Like {
    contexts: Vec<Option<TensorContext>>,
    flags: Vec<bool>,
    /// The next flag [`RewriteLeaves::map_flag`] puts back.
    next_flag: usize,
}

impl ModuleVisitor for Like {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.contexts.push(TensorContext::capture(&param.val()));
    }

    fn visit_int<const D: usize>(&mut self, _: &Param<Tensor<D, Int>>) {
        self.contexts.push(None);
    }

    fn visit_bool<const D: usize>(&mut self, _: &Param<Tensor<D, Bool>>) {
        self.contexts.push(None);
    }

    fn visit_flag(&mut self, flag: &Param<Flag>) {
        self.flags.push(flag.val().is_enabled());
    }
}

/// A copy of `module` that shares no mutable state with it: its tensors with `values` put in
/// (`None`: the module's own), each float leaf in `module`'s autodiff context (`require_grad`,
/// distributed, gradient checkpointing) and every flag (training mode) as in `module`.
///
/// `module.clone()` would not do: Burn's `RunningState` buffers (BatchNorm's statistics) are
/// shared cells that clones write through, so values put into a clone would change `module`
/// too. `valid()` makes new cells; the contexts and flags are then put back.
pub(crate) fn independent_copy<M: Module>(module: &M, values: Vec<Option<Value>>) -> M {
    let mut like = Like::default();
    module.visit(&mut like);
    let mut rewrite = RewriteLeaves {
        index: 0,
        rewriter: &mut PutFloats { values },
        like: Some(like),
    };
    module.valid().map(&mut rewrite)
}

/// Writes values into a module's leaves by index (`None`, or a value of another kind: the
/// leaf keeps its own).
pub(crate) struct PutFloats {
    pub(crate) values: Vec<Option<Value>>,
}

impl LeafRewriter for PutFloats {
    fn rewrite(&mut self, index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        match self.values.get_mut(index).and_then(Option::take) {
            Some(new) if new.kind() == value.kind() => (id, new),
            _ => (id, value),
        }
    }
}

impl<'a, R: LeafRewriter> RewriteLeaves<'a, R> {
    pub(crate) fn new(rewriter: &'a mut R) -> Self {
        Self {
            index: 0,
            rewriter,
            like: None,
        }
    }

    fn next(&mut self, id: ParamId, value: Value) -> (ParamId, Value) {
        let out = self.rewriter.rewrite(self.index, id, value);
        self.index += 1;
        out
    }
}

impl<R: LeafRewriter> ModuleMapper for RewriteLeaves<'_, R> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, t, mapper) = param.consume();
        let shape = t.shape();
        let context = match &mut self.like {
            Some(like) => like.contexts.get_mut(self.index).and_then(Option::take),
            None => TensorContext::capture(&t),
        };
        let (id, value) = self.next(id, Value::Float(Float::new(t.inner())));
        let Value::Float(t) = value else {
            unreachable!("a float leaf was rewritten to another kind")
        };
        let t = TensorContext::restore(context, t.into_tensor(shape), id);
        Param::from_mapped_value(id, t, mapper)
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let (id, t, mapper) = param.consume();
        let shape = t.shape();
        let n = shape.num_elements();
        let (id, value) = self.next(id, Value::Int(t.reshape([n])));
        let Value::Int(t) = value else {
            unreachable!("an int leaf was rewritten to another kind")
        };
        Param::from_mapped_value(id, t.reshape(shape), mapper)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        let (id, t, mapper) = param.consume();
        let shape = t.shape();
        let n = shape.num_elements();
        let (id, value) = self.next(id, Value::Bool(t.reshape([n])));
        let Value::Bool(t) = value else {
            unreachable!("a bool leaf was rewritten to another kind")
        };
        Param::from_mapped_value(id, t.reshape(shape), mapper)
    }

    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        let Some(like) = &mut self.like else {
            return flag;
        };
        let value = like.flags.get(like.next_flag).copied();
        like.next_flag += 1;
        match value {
            Some(value) => flag.with_value(value),
            None => flag,
        }
    }
}
