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
    /// The shadow id of this tensor appears at several paths (tied weights).
    pub(crate) tied: bool,
    pub(crate) rule: Rule,
}

/// The model's slots.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) slots: Vec<Slot>,
}

impl Layout {
    /// Builds the layout from the live leaves and the shadow's leaves right after the shadow's
    /// ids were reassigned: a float tensor that kept its live id is a buffer, since
    /// `RunningState` ignores the id a mapper gives it.
    pub(crate) fn new(
        live: &[Leaf],
        shadow: &[Leaf],
        config: &EmaConfig,
    ) -> Result<Self, EmaError> {
        let exclude = PathSet::parse(&config.exclude)?;
        let mut seen: HashMap<ParamId, usize> = HashMap::new();
        for leaf in shadow {
            *seen.entry(leaf.id).or_default() += 1;
        }
        let slots = live
            .iter()
            .zip(shadow)
            .map(|(live, shadow)| {
                let kind = live.value.kind();
                let is_buffer = kind == LeafKind::Float && live.id == shadow.id;
                let averaged = kind == LeafKind::Float
                    && !exclude.contains(&live.path)
                    && !(is_buffer && config.buffers == BufferPolicy::Copy);
                Slot {
                    path: live.path.clone(),
                    kind,
                    shape: live.shape.clone(),
                    tied: seen[&shadow.id] > 1,
                    rule: if averaged { Rule::Average } else { Rule::Copy },
                }
            })
            .collect();
        Ok(Self { slots })
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

    /// The number of tensors that are averaged.
    pub(crate) fn num_averaged(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.rule == Rule::Average)
            .count()
    }
}
