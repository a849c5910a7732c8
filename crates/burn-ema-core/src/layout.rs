//! The layout of a model as the EMA sees it: one [`Slot`] per tensor, in traversal order.

use std::collections::HashMap;

use burn::module::ParamId;
use burn::prelude::Shape;

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
    pub(crate) shape: Shape,
    pub(crate) rule: Rule,
}

/// The model's slots.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) slots: Vec<Slot>,
    /// The live model's parameter ids, slot by slot, as last seen to have this layout: a live
    /// model with these ids, kinds and shapes has it (an id names one parameter, and with it
    /// its path), so an update checks it without walking its paths
    /// ([`check_live`](Self::check_live)).
    known_ids: Vec<ParamId>,
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
        let exclude = PathSet::parse(&config.options.exclude)?;
        for pattern in &config.options.exclude {
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
                    && !(is_buffer && config.options.buffers == BufferPolicy::Copy);
                Slot {
                    path: live.path.clone(),
                    kind,
                    shape: live.shape.clone(),
                    rule: if averaged { Rule::Average } else { Rule::Copy },
                }
            })
            .collect();
        Ok(Self {
            slots,
            known_ids: live.iter().map(|l| l.id).collect(),
        })
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
            known_ids: Vec::new(),
        };
        layout.check(other)
    }

    /// Checks the live model's `leaves` (collected without paths) by the ids, kinds and shapes
    /// last seen, walking nothing more; only when the ids differ (a model rebuilt or reloaded,
    /// or a structure that changed) are the paths collected (`with_paths`) and checked as
    /// [`check`](Self::check) does. An update then [remembers](Self::remember_ids) the ids.
    pub(crate) fn check_live(
        &self,
        leaves: &[Leaf],
        with_paths: impl FnOnce() -> Vec<Leaf>,
    ) -> Result<(), EmaError> {
        let known = leaves.len() == self.slots.len()
            && self.has_known_ids(leaves)
            && leaves
                .iter()
                .zip(&self.slots)
                .all(|(leaf, slot)| leaf.value.kind() == slot.kind && leaf.shape == slot.shape);
        if known {
            Ok(())
        } else {
            self.check(&with_paths())
        }
    }

    /// Remembers the ids of live `leaves` that passed [`check_live`](Self::check_live).
    pub(crate) fn remember_ids(&mut self, leaves: &[Leaf]) {
        if !self.has_known_ids(leaves) {
            self.known_ids = leaves.iter().map(|l| l.id).collect();
        }
    }

    fn has_known_ids(&self, leaves: &[Leaf]) -> bool {
        self.known_ids.len() == leaves.len()
            && leaves
                .iter()
                .zip(&self.known_ids)
                .all(|(l, id)| l.id == *id)
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
                        &*leaf.shape, &*slot.shape
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

#[cfg(test)]
mod tests {
    use burn::module::{Module, Param};
    use burn::prelude::*;

    use super::*;
    use crate::walk::{collect_leaves, collect_values};

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    fn two(device: &Device) -> Two {
        Two {
            a: Param::from_tensor(Tensor::zeros([2, 3], device)),
            b: Param::from_tensor(Tensor::zeros([4], device)),
        }
    }

    fn layout(model: &Two) -> Layout {
        let leaves = collect_leaves(model);
        Layout::new(&leaves, &[false, false], &EmaConfig::new(0.9)).unwrap()
    }

    /// The ids seen last spare the walk with paths; new ids take it once, then are known.
    #[test]
    fn live_leaves_are_checked_by_id_and_paths_walked_only_for_new_ids() {
        let device = Device::flex();
        let model = two(&device);
        let mut layout = layout(&model);
        let no_walk = || -> Vec<Leaf> { panic!("the paths were walked for known ids") };
        layout.check_live(&collect_values(&model), no_walk).unwrap();

        let rebuilt = two(&device);
        let leaves = collect_values(&rebuilt);
        let mut walked = 0;
        let with_paths = || {
            walked += 1;
            collect_leaves(&rebuilt)
        };
        layout.check_live(&leaves, with_paths).unwrap();
        assert_eq!(walked, 1);
        layout.remember_ids(&leaves);
        layout.check_live(&leaves, no_walk).unwrap();

        // Known ids with another shape: refused, by path.
        let reshaped = Two {
            b: rebuilt.b.clone().map(|t| t.narrow(0, 0, 3)),
            ..rebuilt
        };
        let err = layout
            .check_live(&collect_values(&reshaped), || collect_leaves(&reshaped))
            .unwrap_err();
        assert!(
            matches!(&err, EmaError::StructureMismatch { path, .. } if path == "b"),
            "{err}"
        );
    }
}
