//! CubeCL tensors updated eight pairs a launch ([`EmaBackend::ema_update_eight`]).

use burn::backend::Dispatch;
use burn::tensor::{DType, Tensor};

use crate::batch::update;
use crate::{EightPairs, EightTensors, EmaBackend};

/// Updates CubeCL tensors `(key, shadow, value, weight)` eight per launch, grouped by element
/// type, weight, and whether their length allows 4-wide vectors (a launch uses the narrowest
/// width of its eight); the few left over go one by one. Returns `(key, new shadow)`.
///
/// Every size shares launches: a launch costs the host a fixed amount through Burn's fusion,
/// CubeCL and wgpu, which dwarfs the work of most tensors on a GPU (the figures:
/// BENCHMARKS.md, "wgpu").
pub(crate) fn update_in_eights<K: Copy>(
    jobs: Vec<(K, Tensor<1>, Tensor<1>, f64)>,
) -> Vec<(K, Tensor<1>)> {
    let mut groups: Vec<((DType, u64, bool), Vec<_>)> = Vec::new();
    for job in jobs {
        let key = (
            job.1.dtype(),
            job.3.to_bits(),
            job.1.dims()[0].is_multiple_of(4),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    let mut out = Vec::new();
    for ((_, weight, _), group) in groups {
        let weight = f64::from_bits(weight);
        let mut group = group.into_iter();
        loop {
            let chunk: Vec<_> = group.by_ref().take(8).collect();
            let eight = match <[_; 8]>::try_from(chunk) {
                Ok(eight) => eight,
                Err(rest) => {
                    // Fewer than eight left: one launch each.
                    out.extend(rest.into_iter().map(|(i, s, v, w)| (i, update(s, v, w))));
                    break;
                }
            };
            let indices = eight.each_ref().map(|(i, ..)| *i);
            // Moved, not cloned: a shadow held only here is written in place.
            let (shadows, values): (Vec<_>, Vec<_>) = eight
                .into_iter()
                .map(|(_, s, v, _)| (s.into_dispatch(), v.into_dispatch()))
                .unzip();
            let eight_of = |v: Vec<_>| {
                EightTensors::from_array(v.try_into().unwrap_or_else(|_| unreachable!("eight")))
            };
            let pairs = EightPairs::<Dispatch> {
                shadows: eight_of(shadows),
                values: eight_of(values),
            };
            let updated = Dispatch::ema_update_eight(pairs, weight).into_array();
            out.extend(indices.into_iter().zip(updated.map(Tensor::from_dispatch)));
        }
    }
    out
}
