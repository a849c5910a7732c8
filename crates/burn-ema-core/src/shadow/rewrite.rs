//! The leaf rewriters a shadow is made and updated with: its own ids and element types
//! ([`InitShadow`]), values put back slot by slot (`walk::PutFloats`), and the averaged tensors
//! taken out for one batched update ([`TakeAveraged`]).

use burn::module::ParamId;

use crate::config::EmaConfig;
use crate::layout::{Layout, Rule};
use crate::placement::Placement;
use crate::walk::{Float, LeafRewriter, Value};

/// The shadow id of a live parameter id: a fixed bijective mix, so shadow ids never collide
/// with live ones in practice, and a shadow of the same model always gets the same ids.
pub(crate) fn shadow_id(id: ParamId) -> ParamId {
    let mut z = id.val() ^ 0x454d_415f_5348_4144; // "EMA_SHAD"
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ParamId::from(z ^ (z >> 31))
}

/// Gives the shadow's parameters their own ids and element types.
pub(crate) struct InitShadow<'a> {
    pub(crate) config: &'a EmaConfig,
}

impl LeafRewriter for InitShadow<'_> {
    fn rewrite(&mut self, _index: usize, id: ParamId, value: Value) -> (ParamId, Value) {
        match value {
            Value::Float(t) => {
                let dtype = self.config.options.shadow_dtype.resolve(t.dtype());
                (shadow_id(id), Value::Float(t.cast_like(dtype)))
            }
            other => (id, other),
        }
    }
}

/// The first pass of an update over a shadow: copies what is copied, and takes the tensors to
/// average out (leaving the live value in their place for a moment) for one batched update,
/// after which `walk::PutFloats` puts them back. Taking them out keeps their buffers uniquely
/// owned, so they are written in place.
pub(super) struct TakeAveraged<'a> {
    pub(super) layout: &'a Layout,
    pub(super) placement: &'a Placement,
    pub(super) live: &'a [Option<Value>],
    pub(super) decay: f64,
    /// `(slot index, shadow, value)` of the averaged tensors taken out.
    pub(super) batch: Vec<(usize, Float, Float)>,
}

impl LeafRewriter for TakeAveraged<'_> {
    fn rewrite(&mut self, index: usize, id: ParamId, shadow: Value) -> (ParamId, Value) {
        let live = self.live[index]
            .clone()
            .expect("the live model has every slot");
        // A shadow tensor on another device than its parameter: it moves there once (shard-local,
        // e.g. a parameter that `OptimSharded` steps on a secondary device), or, pinned, the
        // live value comes across (see `placement.rs`).
        let (shadow, live) = self.placement.meet(shadow, live);
        let new = match (shadow, live) {
            (Value::Float(s), Value::Float(p)) => match self.layout.slots[index].rule {
                Rule::Average if self.decay >= 1.0 => Value::Float(s),
                Rule::Average if self.decay > 0.0 => {
                    self.batch.push((index, s, p.clone()));
                    Value::Float(p)
                }
                Rule::Average | Rule::Copy => Value::Float(p.cast_like(s.dtype())),
            },
            (_, live) => live,
        };
        (id, new)
    }
}
