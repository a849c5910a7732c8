//! The layout of a model as the EMA sees it: one [`Slot`] per tensor, in traversal order.

use std::collections::HashMap;

use burn::module::ParamId;

use crate::config::{BufferPolicy, EmaConfig};
use crate::error::EmaError;
use crate::path::PathSet;
use crate::walk::{Leaf, LeafKind};

/// What an update does to one tensor of the shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Moving average.
    Average,
    /// Copied from the live model (excluded paths, copied buffers, int and bool tensors).
    Copy,
}

/// One tensor of the model.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) path: String,
    pub(crate) kind: LeafKind,
    pub(crate) shape: Vec<usize>,
    pub(crate) rule: Rule,
}

/// The model's slots.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) slots: Vec<Slot>,
}

impl Layout {
    /// Builds the layout from the live leaves, with which float tensors are buffers
    /// (`RunningState`s).
    ///
    /// Fails on a model without float tensors (nothing to average) and on an exclusion pattern
    /// that matches no tensor (almost always a typo).
    ///
    /// Parameters tied by `clone()` (one [`ParamId`] at several paths) get one shadow tensor
    /// per path, each averaged from its own live value: Burn's optimizers step each path on its
    /// own (their values drift apart), so one shadow fed from one path would be wrong for the
    /// other. A warning says so once per model.
    pub(crate) fn new(
        live: &[Leaf],
        is_buffer: &[bool],
        config: &EmaConfig,
    ) -> Result<Self, EmaError> {
        if !live.iter().any(|l| l.value.kind() == LeafKind::Float) {
            return Err(EmaError::EmptyModel);
        }
        let exclude = PathSet::parse(&config.exclude)?;
        for pattern in &config.exclude {
            let one = PathSet::parse(std::slice::from_ref(pattern))?;
            if !live.iter().any(|l| one.contains(&l.path)) {
                return Err(EmaError::InvalidPattern {
                    pattern: pattern.clone(),
                    problem: "matches no tensor of the model (paths look like `fc1.weight`)".into(),
                });
            }
        }
        warn_tied(live, is_buffer);
        let slots = live
            .iter()
            .zip(is_buffer)
            .map(|(live, &is_buffer)| {
                let kind = live.value.kind();
                let averaged = kind == LeafKind::Float
                    && !exclude.contains(&live.path)
                    && !(is_buffer && config.buffers == BufferPolicy::Copy);
                Slot {
                    path: live.path.clone(),
                    kind,
                    shape: live.shape.clone(),
                    rule: if averaged { Rule::Average } else { Rule::Copy },
                }
            })
            .collect();
        Ok(Self { slots })
    }

    /// Checks that two walks of a model (the live model and weights given for its shadow) have
    /// the same paths, kinds and shapes.
    pub(crate) fn check_same(live: &[Leaf], other: &[Leaf]) -> Result<(), EmaError> {
        let layout = Self {
            slots: live
                .iter()
                .map(|l| Slot {
                    path: l.path.clone(),
                    kind: l.value.kind(),
                    shape: l.shape.clone(),
                    rule: Rule::Copy,
                })
                .collect(),
        };
        layout.check(other)
    }

    /// Checks that `leaves` (of the live model or of a loaded shadow) have this layout's paths,
    /// kinds and shapes, naming the first difference.
    pub(crate) fn check(&self, leaves: &[Leaf]) -> Result<(), EmaError> {
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(leaf) = leaves.get(i) else {
                return Err(EmaError::mismatch(
                    &slot.path,
                    "the model has no tensor here any more",
                ));
            };
            if leaf.path != slot.path {
                return Err(EmaError::mismatch(
                    &slot.path,
                    format!(
                        "the model has `{}` where the shadow has `{}`",
                        leaf.path, slot.path
                    ),
                ));
            }
            if leaf.value.kind() != slot.kind {
                return Err(EmaError::mismatch(
                    &slot.path,
                    format!(
                        "kind {:?} in the model, {:?} in the shadow",
                        leaf.value.kind(),
                        slot.kind
                    ),
                ));
            }
            if leaf.shape != slot.shape {
                return Err(EmaError::mismatch(
                    &slot.path,
                    format!(
                        "shape {:?} in the model, {:?} in the shadow",
                        leaf.shape, slot.shape
                    ),
                ));
            }
        }
        if let Some(extra) = leaves.get(self.slots.len()) {
            return Err(EmaError::mismatch(
                &extra.path,
                "the model has a tensor that the shadow lacks",
            ));
        }
        Ok(())
    }

    /// The paths of the tensors that are averaged.
    pub(crate) fn averaged_paths(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.rule == Rule::Average)
            .map(|s| s.path.clone())
            .collect()
    }

    /// The number of tensors that are averaged.
    pub(crate) fn num_averaged(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.rule == Rule::Average)
            .count()
    }
}

/// Tells the user, once per model, that parameters sharing an id are averaged path by path.
fn warn_tied(live: &[Leaf], is_buffer: &[bool]) {
    let mut first: HashMap<ParamId, &str> = HashMap::new();
    for (leaf, &is_buffer) in live.iter().zip(is_buffer) {
        if leaf.value.kind() != LeafKind::Float || is_buffer {
            continue;
        }
        if let Some(other) = first.insert(leaf.id, &leaf.path) {
            log::warn!(
                "burn-ema: `{other}` and `{}` share one parameter id (tied by `clone()`); \
                 Burn's optimizers step each path on its own, so each gets its own shadow, \
                 averaged from its own live value",
                leaf.path
            );
            return;
        }
    }
}
