//! `PostHocEma` as a Burn [`Module`] (its record is its averages'), and its `Clone`, `Debug` and
//! `Display`.

use burn::module::Module;

use super::PostHocEma;
use crate::shadow::impl_average_module;

impl<M: Module> Clone for PostHocEma<M> {
    /// A copy that writes into the same directory: let only one of them save snapshots.
    fn clone(&self) -> Self {
        Self {
            emas: self.emas.clone(),
            config: self.config.clone(),
            dir: self.dir.clone(),
            index: self.index.clone(),
        }
    }
}

impl<M: Module> std::fmt::Debug for PostHocEma<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostHocEma")
            .field("sigma_rels", &self.config.sigma_rels)
            .field("dir", &self.dir)
            .field("snapshots", &self.index.snapshots.len())
            .field("averages", &self.emas)
            .finish()
    }
}

// The record, devices and modes of a `PostHocEma` are its `MultiEma`'s: `model.*`, then
// `averages.{k}.*`.
impl_average_module!(PostHocEma, model: emas.model, shadows: emas.averages);

impl<M: Module + std::fmt::Display> std::fmt::Display for PostHocEma<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "PostHocEma {{ sigma_rels: {:?}, snapshots: {}, dir: {} }}",
            self.config.sigma_rels,
            self.index.snapshots.len(),
            self.dir.display()
        )?;
        write!(f, "{}", self.emas)
    }
}
