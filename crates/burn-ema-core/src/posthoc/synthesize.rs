//! [`PostHocSnapshots`]: reading a snapshot directory and synthesizing the EMA of any width from
//! it, streamed one snapshot at a time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::TensorData;
use burn::tensor::{DType, Tensor};
use burn_store::bridge;

use crate::error::EmaError;
use crate::io::{Cast, EmaFile, Ids, Naming, save_weights};
use crate::posthoc::solve::{PowerProfile, posthoc_coefficients};
use crate::posthoc::store::{Index, SnapshotInfo, open_snapshot, snapshot_path};
use crate::power_profile::sigma_rel_to_gamma;
use crate::update::cast_like;
use crate::walk::PutFloats;
use crate::walk::{Float, LeafKind, RewriteLeaves, Value, collect_leaves};

/// The width of a profile to synthesize.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Width {
    /// By relative width (EDM2's `sigma_rel`, in `(0, 1/sqrt(12)]`).
    SigmaRel(f64),
    /// By exponent (`>= 0`).
    Gamma(f64),
}

impl Width {
    /// The profile's exponent.
    pub fn gamma(self) -> Result<f64, EmaError> {
        match self {
            Self::SigmaRel(s) => sigma_rel_to_gamma(s),
            Self::Gamma(g) if g.is_finite() && g >= 0.0 => Ok(g),
            Self::Gamma(g) => Err(EmaError::invalid(
                "gamma",
                format!("must be finite and >= 0, got {g}"),
            )),
        }
    }
}

/// The snapshots a [`PostHocEma`](crate::PostHocEma) saved, read back after (or during)
/// training to synthesize the EMA of any width: EDM2's post-hoc reconstruction
/// (`reconstruct_phema.py`).
///
/// ```no_run
/// # use burn_ema_core as burn_ema;
/// # use burn::nn::{Linear, LinearConfig};
/// # use burn::prelude::*;
/// use burn_ema::{EmaFile, PostHocSnapshots, Width};
///
/// # let model: Linear = LinearConfig::new(4, 2).init(&Device::flex());
/// let snapshots = PostHocSnapshots::open("artifacts/posthoc")?;
/// // The EMA of relative width 0.07 as of the last snapshot, as the bare model...
/// let ema_007: Linear = snapshots.synthesize(&model, Width::SigmaRel(0.07), None)?;
/// // ...or as a file Burn's `load_file` reads.
/// let file = EmaFile::Shadow;
/// snapshots.synthesize_to_file(&model, Width::SigmaRel(0.07), None, "ema-0.07.bpk", file)?;
/// # Ok::<(), burn_ema::EmaError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PostHocSnapshots {
    dir: PathBuf,
    index: Index,
}

/// At most this many steps are listed in an error.
const LISTED_STEPS: usize = 8;

impl PostHocSnapshots {
    /// Reads the index of the snapshot directory `dir` (adopting snapshot files that a crash
    /// left unlisted). Fails when `dir` has no index ([`EmaError::NoSnapshots`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, EmaError> {
        let dir = dir.as_ref().to_path_buf();
        let Some(mut index) = Index::read(&dir)? else {
            return Err(EmaError::NoSnapshots {
                dir,
                problem: " (no index.json: not a post-hoc EMA snapshot directory)".into(),
            });
        };
        index.adopt_unlisted(&dir)?;
        Ok(Self { dir, index })
    }

    pub(crate) fn from_index(dir: PathBuf, index: Index) -> Self {
        Self { dir, index }
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every snapshot, by step, then profile.
    pub fn snapshots(&self) -> &[SnapshotInfo] {
        &self.index.snapshots
    }

    /// The relative widths of the profiles tracked during training.
    pub fn tracked_sigma_rels(&self) -> Vec<f64> {
        self.index.profiles.iter().map(|p| p.sigma_rel).collect()
    }

    /// The steps that have snapshots, in order.
    pub fn steps(&self) -> Vec<u64> {
        let mut steps: Vec<u64> = self.index.snapshots.iter().map(|s| s.step).collect();
        steps.dedup();
        steps
    }

    /// EDM2's coefficients for the profile `width` at snapshot step `step` (the last one when
    /// `None`), over the snapshots at or before it: `(snapshot, coefficient)` pairs, summing to
    /// 1. See [`posthoc_coefficients`](crate::posthoc_coefficients).
    pub fn coefficients(
        &self,
        width: Width,
        step: Option<u64>,
    ) -> Result<Vec<(SnapshotInfo, f64)>, EmaError> {
        let gamma = width.gamma()?;
        let steps = self.steps();
        let Some(&last) = steps.last() else {
            return Err(EmaError::NoSnapshots {
                dir: self.dir.clone(),
                problem: String::new(),
            });
        };
        let step = step.unwrap_or(last);
        if !steps.contains(&step) {
            let shown: Vec<String> = steps
                .iter()
                .take(LISTED_STEPS)
                .map(u64::to_string)
                .collect();
            let more = steps.len().saturating_sub(LISTED_STEPS);
            return Err(EmaError::NoSnapshotAtStep {
                step,
                available: if more > 0 {
                    format!("{}, ... ({more} more, up to {last})", shown.join(", "))
                } else {
                    shown.join(", ")
                },
            });
        }
        let used: Vec<SnapshotInfo> = self
            .index
            .snapshots
            .iter()
            .filter(|s| s.step > 0 && s.step <= step)
            .cloned()
            .collect();
        if used.is_empty() {
            return Err(EmaError::NoSnapshots {
                dir: self.dir.clone(),
                problem: format!(" at or before step {step} (only at step 0)"),
            });
        }
        let profiles: Vec<PowerProfile> = used
            .iter()
            .map(|s| PowerProfile::new(s.step, s.gamma))
            .collect();
        let x = posthoc_coefficients(&profiles, PowerProfile::new(step, gamma))?;
        Ok(used.into_iter().zip(x).collect())
    }

    /// The EMA of profile `width` as of snapshot step `step` (the last one when `None`),
    /// synthesized into a copy of `template` (a model of the architecture that was trained, on
    /// the device the synthesis should run on): `Σ x_i · snapshot_i` in `f32` over the averaged
    /// tensors, the other tensors (copied buffers, integers) from the latest snapshot, as EDM2's
    /// `reconstruct_phema.py` does.
    ///
    /// Streamed: snapshots are read one at a time, each checked (checksum, architecture) before
    /// any value is used; memory is the result plus an `f32` accumulator. Fails on no snapshots,
    /// a step without snapshots, an ill-conditioned solve, and snapshots of another
    /// architecture ([`EmaError::FileMismatch`]).
    pub fn synthesize<M: Module>(
        &self,
        template: &M,
        width: Width,
        step: Option<u64>,
    ) -> Result<M, EmaError> {
        let coefficients = self.coefficients(width, step)?;
        // Plain (non-autodiff), in evaluation mode: the result is an inference model.
        let template = &template.valid();
        let leaves = collect_leaves(template);
        let averaged: HashSet<&str> = self.index.averaged.iter().map(String::as_str).collect();
        let summed: Vec<bool> = leaves
            .iter()
            .map(|l| l.value.kind() == LeafKind::Float && averaged.contains(l.path.as_str()))
            .collect();
        let mut sums: Vec<Option<Tensor<1>>> = vec![None; leaves.len()];
        let mut result = None;
        let last = coefficients.len() - 1;
        for (i, (info, x)) in coefficients.iter().enumerate() {
            let path = snapshot_path(&self.dir, info);
            let (mut file, found) = open_snapshot(&path)?;
            if (found.step, found.profile) != (info.step, info.profile) {
                return Err(EmaError::CorruptFile {
                    file: path,
                    format: "burnpack",
                    problem: format!(
                        "holds step {} of profile {}, the index says step {} of profile {}",
                        found.step, found.profile, info.step, info.profile
                    ),
                });
            }
            file.verify()?;
            let part = file.take(|n| Some(n.to_string()));
            part.check_fits(template, Naming::Burn, Cast::FloatsToModel, &path)?;
            for (slot, leaf) in leaves.iter().enumerate().filter(|(s, _)| summed[*s]) {
                let tensor = part.tensors.get(&leaf.path).ok_or_else(|| {
                    EmaError::file_mismatch(&path, &leaf.path, "missing from the snapshot")
                })?;
                let data = bridge::to_data(tensor)
                    .map_err(|e| EmaError::file_mismatch(&path, &leaf.path, e.to_string()))?;
                let values = Tensor::<1>::from_data(
                    TensorData::new(
                        data.convert_dtype(DType::F32)
                            .try_into_vec::<f32>()
                            .map_err(|e| {
                                EmaError::file_mismatch(&path, &leaf.path, format!("{e:?}"))
                            })?,
                        [leaf.shape.iter().product::<usize>()],
                    ),
                    (&leaf.value_device(), DType::F32),
                );
                let term = values.mul_scalar(*x);
                sums[slot] = Some(match sums[slot].take() {
                    Some(sum) => sum.add(term),
                    None => term,
                });
            }
            if i == last {
                // The latest snapshot gives the tensors that are not summed.
                let mut model = template.clone();
                part.apply_to(&mut model, Naming::Burn, Ids::Keep, &path)?;
                result = Some(model);
            }
        }
        let model = result.expect("at least one snapshot");
        let values = sums
            .into_iter()
            .zip(&leaves)
            .map(|(sum, leaf)| match (sum, &leaf.value) {
                (Some(sum), Value::Float(like)) => {
                    Some(Value::Float(Float::new(cast_like(sum, like.dtype()))))
                }
                _ => None,
            })
            .collect();
        Ok(model.map(&mut RewriteLeaves::new(&mut PutFloats { values })))
    }

    /// [`synthesize`](Self::synthesize), written to `path` in `format`, as the bare model's
    /// file: [`EmaFile::Shadow`] (burnpack, `.bpk` added when `path` has no extension: Burn's
    /// `load_file` reads it) or [`EmaFile::ShadowSafetensors`], atomically. Returns the path
    /// written.
    pub fn synthesize_to_file<M: Module>(
        &self,
        template: &M,
        width: Width,
        step: Option<u64>,
        path: impl AsRef<Path>,
        format: EmaFile,
    ) -> Result<PathBuf, EmaError> {
        let model = self.synthesize(template, width, step)?;
        let why = "a synthesis is a model's weights, with no EMA state";
        save_weights(&model, path.as_ref(), format, why)
    }
}
