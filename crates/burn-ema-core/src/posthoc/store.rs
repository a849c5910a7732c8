//! The snapshot directory of post-hoc EMA: one burnpack file per profile and snapshot step,
//! and `index.json`, the list of what was saved.
//!
//! Crash safety: every file is written atomically (scratch file, fsync, rename), snapshot files
//! before the index that lists them. A crash leaves the previous index and, at worst, snapshot
//! files it does not list yet; opening the directory again adopts them (each file carries its
//! step and profile in its metadata), so no finished snapshot is lost. A snapshot at a step
//! the index already has replaces it, and snapshots after it leave the index for
//! `superseded/` (they belong to a run that was resumed from an earlier checkpoint and will be
//! written again, or to an earlier run in the directory), so none is duplicated and none
//! deleted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn_store::bridge;
use burn_store::burn_pack::AtomicFile;
use serde::{Deserialize, Serialize};

use crate::error::EmaError;
use crate::io::{Format, Incoming, tensors_of, write};
use crate::posthoc::config::SnapshotDType;

/// Where snapshots that left the index go, inside the snapshot directory.
pub(crate) const SUPERSEDED: &str = "superseded";
/// The index's file name inside the snapshot directory.
pub(crate) const INDEX: &str = "index.json";
const INDEX_FORMAT: &str = "burn-ema-posthoc-index/1";
const SNAPSHOT_FORMAT: &str = "burn-ema-posthoc-snapshot/1";
const KEY_FORMAT: &str = "burn_ema.format";
const KEY_STEP: &str = "burn_ema.step";
const KEY_PROFILE: &str = "burn_ema.profile";
const KEY_GAMMA: &str = "burn_ema.gamma";
const KEY_SIGMA_REL: &str = "burn_ema.sigma_rel";

/// One tracked profile.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Its relative width.
    pub sigma_rel: f64,
    /// Its exponent.
    pub gamma: f64,
}

/// One saved snapshot: the average of one profile as of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The training step it was taken at.
    pub step: u64,
    /// Which profile (its index in [`PostHocConfig::sigma_rels`](crate::PostHocConfig)).
    pub profile: usize,
    /// The profile's relative width.
    pub sigma_rel: f64,
    /// The profile's exponent.
    pub gamma: f64,
    /// Its file name, inside the snapshot directory.
    pub file: String,
}

/// What `index.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Index {
    pub(crate) format: String,
    pub(crate) profiles: Vec<ProfileInfo>,
    pub(crate) dtype: SnapshotDType,
    /// The model paths whose values are averages (summed in a synthesis); the others are
    /// copies of the live model's, taken from the latest snapshot used.
    pub(crate) averaged: Vec<String>,
    /// Sorted by step, then profile.
    pub(crate) snapshots: Vec<SnapshotInfo>,
}

fn corrupt(file: &Path, problem: impl Into<String>) -> EmaError {
    EmaError::CorruptFile {
        file: file.to_path_buf(),
        format: "json",
        problem: problem.into(),
    }
}

/// Whether `name` is one file name: a single normal path component.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}

/// The file name of profile `profile`'s snapshot at `step` (sorts by step).
pub(crate) fn snapshot_file_name(step: u64, profile: usize) -> String {
    format!("snapshot-{step:012}-p{profile}.bpk")
}

impl Index {
    pub(crate) fn new(
        profiles: Vec<ProfileInfo>,
        dtype: SnapshotDType,
        averaged: Vec<String>,
    ) -> Self {
        Self {
            format: INDEX_FORMAT.into(),
            profiles,
            dtype,
            averaged,
            snapshots: Vec::new(),
        }
    }

    /// The index of `dir`, `None` when it has none.
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>, EmaError> {
        let path = dir.join(INDEX);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EmaError::io(&path, "read", &e)),
        };
        let format = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| corrupt(&path, e.to_string()))?
            .get("format")
            .and_then(|f| f.as_str().map(str::to_string));
        match format.as_deref() {
            Some(INDEX_FORMAT) => {}
            Some(other) => {
                return Err(EmaError::UnsupportedFormat {
                    file: path,
                    found: other.into(),
                    supported: INDEX_FORMAT,
                });
            }
            None => return Err(corrupt(&path, "not a burn-ema post-hoc EMA index")),
        }
        let index: Self = serde_json::from_str(&text).map_err(|e| corrupt(&path, e.to_string()))?;
        // A listed file is read from the folder: a name that leads out of it (`../x`, `/x`)
        // would make a synthesis read any file the process can.
        if let Some(bad) = index
            .snapshots
            .iter()
            .find(|s| !is_plain_file_name(&s.file))
        {
            return Err(corrupt(
                &path,
                format!(
                    "snapshot file name {:?} is not a file name inside the folder",
                    bad.file
                ),
            ));
        }
        Ok(Some(index))
    }

    /// Writes the index into `dir`, atomically.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), EmaError> {
        let path = dir.join(INDEX);
        let text = serde_json::to_string_pretty(self).expect("an index always serializes");
        let fail = |e: &dyn std::fmt::Display| EmaError::Io {
            file: path.clone(),
            operation: "write",
            problem: e.to_string(),
        };
        let (scratch, mut file) = AtomicFile::create(&path).map_err(|e| fail(&e))?;
        file.write_all(text.as_bytes()).map_err(|e| fail(&e))?;
        drop(file);
        scratch.commit().map_err(|e| fail(&e))
    }

    /// Adopts snapshot files of `dir` that the index does not list (written just before a
    /// crash, ahead of the index): each is checked and listed from its own metadata. Returns
    /// how many were adopted.
    pub(crate) fn adopt_unlisted(&mut self, dir: &Path) -> Result<usize, EmaError> {
        let entries = std::fs::read_dir(dir).map_err(|e| EmaError::io(dir, "read", &e))?;
        let mut adopted = 0;
        for entry in entries {
            let entry = entry.map_err(|e| EmaError::io(dir, "read", &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = self.snapshots.iter().any(|s| s.file == name);
            if listed || !(name.starts_with("snapshot-") && name.ends_with(".bpk")) {
                continue;
            }
            let info = match read_snapshot_info(&dir.join(&name)) {
                Ok(info)
                    if self.profiles.get(info.profile).map(|p| p.gamma) == Some(info.gamma) =>
                {
                    info
                }
                Ok(_) | Err(_) => {
                    log::warn!(
                        "burn-ema: post-hoc EMA: ignoring {name} (not one of this run's snapshots)"
                    );
                    continue;
                }
            };
            log::info!(
                "burn-ema: post-hoc EMA: adopting snapshot {name}, written before the index (an interrupted run)"
            );
            self.insert(info);
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Lists `info`, replacing the entry of the same step and profile.
    pub(crate) fn insert(&mut self, info: SnapshotInfo) {
        self.snapshots
            .retain(|s| !(s.step == info.step && s.profile == info.profile));
        self.snapshots.push(info);
        self.snapshots.sort_by_key(|s| (s.step, s.profile));
    }
}

/// Removes the scratch files that writers killed mid-write left in `dir` (burn-pack's
/// `AtomicFile` names them `<destination>.<pid>-<n>.tmp` and removes them itself unless the
/// process dies): those of other processes, since one process at a time writes a snapshot
/// directory. Never a file at a final name, and a file that cannot be removed is only clutter.
pub(crate) fn remove_stale_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = format!(".{}-", std::process::id());
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".tmp") else {
            continue;
        };
        let scratch = stem.rsplit_once('.').is_some_and(|(_, tag)| {
            tag.split_once('-').is_some_and(|(pid, n)| {
                !pid.is_empty()
                    && pid.bytes().all(|b| b.is_ascii_digit())
                    && n.bytes().all(|b| b.is_ascii_digit())
            })
        });
        if scratch && !name.contains(&own) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        log::warn!(
            "burn-ema: post-hoc EMA: removed {removed} scratch files of an earlier process's \
             interrupted writes from {}",
            dir.display()
        );
    }
}

/// Writes profile `info.profile`'s average `shadow` as the snapshot `info` describes, into
/// `dir`, atomically, its floats saved as `dtype`.
pub(crate) fn write_snapshot<M: Module>(
    dir: &Path,
    shadow: &M,
    info: &SnapshotInfo,
    dtype: SnapshotDType,
) -> Result<(), EmaError> {
    let tensors = tensors_of(shadow)
        .into_iter()
        .map(|t| {
            let to = dtype.resolve(t.dtype);
            if !t.dtype.is_float() || to == t.dtype {
                return t;
            }
            // Converted one tensor at a time as the writer reaches it.
            let (name, shape) = (t.name.clone(), t.shape.clone());
            bridge::map_data(t, name, to, shape, move |data| data.convert_dtype(to))
        })
        .collect();
    let metadata = BTreeMap::from([
        (KEY_FORMAT.to_string(), SNAPSHOT_FORMAT.to_string()),
        (KEY_STEP.to_string(), info.step.to_string()),
        (KEY_PROFILE.to_string(), info.profile.to_string()),
        (KEY_GAMMA.to_string(), format!("{:e}", info.gamma)),
        (KEY_SIGMA_REL.to_string(), format!("{:e}", info.sigma_rel)),
    ]);
    write(&dir.join(&info.file), Format::Burnpack, tensors, metadata)
}

/// Opens a snapshot file and checks that it is one (its format tag, step and profile).
pub(crate) fn open_snapshot(path: &Path) -> Result<(Incoming, SnapshotInfo), EmaError> {
    let file = Incoming::open(path, Format::Burnpack)?;
    let get = |key: &str| {
        file.metadata
            .get(key)
            .ok_or_else(|| EmaError::NotAnEmaFile {
                file: path.to_path_buf(),
                problem: format!("no `{key}` in its metadata: not a post-hoc EMA snapshot"),
            })
    };
    let format = get(KEY_FORMAT)?;
    if format != SNAPSHOT_FORMAT {
        return Err(EmaError::UnsupportedFormat {
            file: path.to_path_buf(),
            found: format.clone(),
            supported: SNAPSHOT_FORMAT,
        });
    }
    let bad = |key: &str| corrupt(path, format!("`{key}` does not parse"));
    let info = SnapshotInfo {
        step: get(KEY_STEP)?.parse().map_err(|_| bad(KEY_STEP))?,
        profile: get(KEY_PROFILE)?.parse().map_err(|_| bad(KEY_PROFILE))?,
        gamma: get(KEY_GAMMA)?.parse().map_err(|_| bad(KEY_GAMMA))?,
        sigma_rel: get(KEY_SIGMA_REL)?
            .parse()
            .map_err(|_| bad(KEY_SIGMA_REL))?,
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    Ok((file, info))
}

fn read_snapshot_info(path: &Path) -> Result<SnapshotInfo, EmaError> {
    let (file, info) = open_snapshot(path)?;
    file.verify()?;
    Ok(info)
}

/// The path of a listed snapshot.
pub(crate) fn snapshot_path(dir: &Path, info: &SnapshotInfo) -> PathBuf {
    dir.join(&info.file)
}
