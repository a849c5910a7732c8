//! The EMA update as loops over slices: one read of the parameter, one read and one write of the
//! shadow, nothing else. Written so the compiler vectorizes them, and split over threads (rayon)
//! for large tensors.
//!
//! The arithmetic is TensorFlow's `s ← s − (s − v)·w` with `w = 1 − decay`, in the shadow's
//! type for `f32` and `f64` shadows — the same operations in the same order as the tensor-op
//! path, so both give the same bits. Half-precision values are widened on load; a
//! half-precision shadow is computed in `f32` and rounded once (more accurate than the tensor-op
//! path, which rounds after each operation: the results may differ by one half ulp).

use burn::tensor::{bf16, f16};
use rayon::prelude::*;

/// Below this many elements a tensor is updated on the calling thread: splitting costs more
/// than it saves (a few microseconds per task, while 64 Ki f32 elements stream in ~10 µs).
pub const PARALLEL_THRESHOLD: usize = 1 << 16;

/// A value type the update reads, widened to the accumulation type `A`.
pub trait Widen<A>: Copy + Send + Sync {
    /// The value in the accumulation type.
    fn widen(self) -> A;
}

/// A shadow type the update reads and writes, through the accumulation type `A`.
pub trait Store<A>: Widen<A> {
    /// The accumulation-type value rounded to the shadow type.
    fn narrow(a: A) -> Self;
}

macro_rules! identity {
    ($t:ty) => {
        impl Widen<$t> for $t {
            #[inline(always)]
            fn widen(self) -> $t {
                self
            }
        }
        impl Store<$t> for $t {
            #[inline(always)]
            fn narrow(a: $t) -> $t {
                a
            }
        }
    };
}
identity!(f32);
identity!(f64);

impl Widen<f64> for f32 {
    #[inline(always)]
    fn widen(self) -> f64 {
        self as f64
    }
}

macro_rules! half {
    ($t:ty) => {
        impl Widen<f32> for $t {
            #[inline(always)]
            fn widen(self) -> f32 {
                self.to_f32()
            }
        }
        impl Store<f32> for $t {
            #[inline(always)]
            fn narrow(a: f32) -> $t {
                <$t>::from_f32(a)
            }
        }
    };
}
half!(f16);
half!(bf16);

/// Arithmetic of the accumulation types.
pub trait Acc:
    Copy + Send + Sync + core::ops::Sub<Output = Self> + core::ops::Mul<Output = Self>
{
    /// `w` in this type (`f32` rounds it as TensorFlow does for an `f32` variable).
    fn weight(w: f64) -> Self;
}

impl Acc for f32 {
    fn weight(w: f64) -> Self {
        w as f32
    }
}

impl Acc for f64 {
    fn weight(w: f64) -> Self {
        w
    }
}

#[inline(always)]
fn step<A: Acc, S: Store<A>, V: Widen<A>>(s: S, v: V, w: A) -> S {
    let s = s.widen();
    S::narrow(s - (s - v.widen()) * w)
}

#[inline(always)]
fn in_place_body<A: Acc, S: Store<A>, V: Widen<A>>(shadow: &mut [S], value: &[V], w: A) {
    for (s, &v) in shadow.iter_mut().zip(value) {
        *s = step(*s, v, w);
    }
}

/// The loop compiled for AVX2: twice the vector width of the x86-64 baseline (SSE2) that Rust
/// targets by default. Measured 10-20% faster on this streaming loop; the arithmetic is the
/// same IEEE operations element by element (no FMA contraction), so the results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn in_place_avx2<A: Acc, S: Store<A>, V: Widen<A>>(shadow: &mut [S], value: &[V], w: A) {
    in_place_body(shadow, value, w)
}

fn in_place_serial<A: Acc, S: Store<A>, V: Widen<A>>(shadow: &mut [S], value: &[V], w: A) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { in_place_avx2(shadow, value, w) };
    }
    in_place_body(shadow, value, w)
}

/// One shadow slice to update towards one value slice, with its own weight `w = 1 − decay`.
pub struct Job<'a, S, V> {
    /// The shadow, updated in place.
    pub shadow: &'a mut [S],
    /// The value it moves towards; as long as `shadow`.
    pub value: &'a [V],
    /// `1 − decay`.
    pub weight: f64,
}

impl<'a, S, V> Job<'a, S, V> {
    /// A job; panics when the lengths differ (a bug of the caller, never a user's input).
    pub fn new(shadow: &'a mut [S], value: &'a [V], weight: f64) -> Self {
        assert_eq!(shadow.len(), value.len(), "shadow and value lengths differ");
        Self {
            shadow,
            value,
            weight,
        }
    }
}

/// Elements per parallel piece: `total / (4 × threads)` so threads can balance, at least
/// [`MIN_PIECE`] to amortise scheduling, at most [`MAX_PIECE`] so a large job splits evenly.
fn piece_len(total: usize) -> usize {
    (total / (4 * rayon::current_num_threads())).clamp(MIN_PIECE, MAX_PIECE)
}

/// Smallest parallel piece, in elements.
const MIN_PIECE: usize = 1 << 15;

/// Largest parallel piece, in elements (3 MiB of traffic for `f32`).
const MAX_PIECE: usize = 1 << 18;

/// Runs `body` over every job, on the calling thread for small totals, otherwise over all
/// threads in **one** parallel region: the jobs are cut into pieces of about equal size, several
/// small jobs sharing a piece and a large one spanning several. Model parameter sets are
/// hundreds of tensors of very different sizes; one fork-join per tensor would leave threads
/// idle at every tensor's end (measured: 15% of the bound on the ResNet-50 set).
fn for_each_piece<S, V, F>(jobs: Vec<Job<'_, S, V>>, body: F)
where
    S: Send,
    V: Sync,
    F: Fn(&mut [S], &[V], f64) + Sync,
{
    let total: usize = jobs.iter().map(|j| j.shadow.len()).sum();
    if total < PARALLEL_THRESHOLD || rayon::current_num_threads() == 1 {
        for job in jobs {
            body(job.shadow, job.value, job.weight);
        }
        return;
    }
    let piece = piece_len(total);
    let mut pieces: Vec<Vec<Job<'_, S, V>>> = vec![Vec::new()];
    let mut filled = 0;
    for job in jobs {
        let (mut shadow, mut value, weight) = (job.shadow, job.value, job.weight);
        while !shadow.is_empty() {
            let take = (piece - filled).min(shadow.len());
            let (s, s_rest) = shadow.split_at_mut(take);
            let (v, v_rest) = value.split_at(take);
            pieces.last_mut().expect("never empty").push(Job {
                shadow: s,
                value: v,
                weight,
            });
            (shadow, value) = (s_rest, v_rest);
            filled += take;
            if filled == piece {
                pieces.push(Vec::new());
                filled = 0;
            }
        }
    }
    pieces.into_par_iter().for_each(|jobs| {
        for job in jobs {
            body(job.shadow, job.value, job.weight);
        }
    });
}

/// Updates many shadows, each towards its value with its own weight, in place, in one parallel
/// pass over all of them (the CPU's `_foreach_lerp_`).
pub fn update_batch<A: Acc, S: Store<A>, V: Widen<A>>(jobs: Vec<Job<'_, S, V>>) {
    for_each_piece(jobs, |s, v, w| in_place_serial(s, v, A::weight(w)));
}

/// `shadow ← shadow − (shadow − value)·w`, in place. `shadow` and `value` have equal lengths.
pub fn update_in_place<A: Acc, S: Store<A>, V: Widen<A>>(shadow: &mut [S], value: &[V], w: f64) {
    update_batch::<A, S, V>(vec![Job::new(shadow, value, w)]);
}

fn out_of_place_serial<A: Acc, S: Store<A>, V: Widen<A>>(
    out: &mut [S],
    shadow: &[S],
    value: &[V],
    w: A,
) {
    for ((o, &s), &v) in out.iter_mut().zip(shadow).zip(value) {
        *o = step(s, v, w);
    }
}

/// The update into a new buffer, for a shadow that must not be written (it is shared).
pub fn update_into<A: Acc, S: Store<A>, V: Widen<A>>(shadow: &[S], value: &[V], w: f64) -> Vec<S> {
    assert_eq!(shadow.len(), value.len(), "shadow and value lengths differ");
    let w = A::weight(w);
    let mut out: Vec<S> = shadow.to_vec();
    if shadow.len() < PARALLEL_THRESHOLD {
        out_of_place_serial(&mut out, shadow, value, w);
    } else {
        let chunk = piece_len(shadow.len());
        out.par_chunks_mut(chunk)
            .zip(shadow.par_chunks(chunk))
            .zip(value.par_chunks(chunk))
            .for_each(|((o, s), v)| out_of_place_serial(o, s, v, w));
    }
    out
}

fn multi_serial<A: Acc, S: Store<A>, V: Widen<A>>(shadows: &mut [&mut [S]], value: &[V], w: &[A]) {
    // Several shadows of one parameter: the parameter is read once per element, each shadow once.
    match shadows {
        [a, b] => {
            for ((sa, sb), &v) in a.iter_mut().zip(b.iter_mut()).zip(value) {
                *sa = step(*sa, v, w[0]);
                *sb = step(*sb, v, w[1]);
            }
        }
        _ => {
            for (i, &v) in value.iter().enumerate() {
                for (s, &w) in shadows.iter_mut().zip(w) {
                    s[i] = step(s[i], v, w);
                }
            }
        }
    }
}

/// Updates several shadows of one parameter, with one weight each, in one pass over the
/// parameter: `(1 + 2K)` element accesses per parameter instead of `3K`.
pub fn update_many_in_place<A: Acc, S: Store<A>, V: Widen<A>>(
    shadows: Vec<&mut [S]>,
    value: &[V],
    weights: &[f64],
) {
    assert_eq!(shadows.len(), weights.len(), "one weight per shadow");
    assert!(
        shadows.iter().all(|s| s.len() == value.len()),
        "shadow and value lengths differ"
    );
    let w: Vec<A> = weights.iter().map(|&w| A::weight(w)).collect();
    if value.len() < PARALLEL_THRESHOLD {
        let mut shadows = shadows;
        multi_serial(&mut shadows, value, &w);
        return;
    }
    // Split every shadow into the same chunks, then hand chunk `i` of each to one task.
    let chunk = piece_len(value.len());
    let mut per_chunk: Vec<Vec<&mut [S]>> = value.chunks(chunk).map(|_| Vec::new()).collect();
    for shadow in shadows {
        for (i, chunk) in shadow.chunks_mut(chunk).enumerate() {
            per_chunk[i].push(chunk);
        }
    }
    per_chunk
        .into_par_iter()
        .zip(value.par_chunks(chunk))
        .for_each(|(mut s, v)| multi_serial(&mut s, v, &w));
}

#[inline(always)]
fn triad_body(a: &mut [f32], b: &[f32], s: f32) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += s * y;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn triad_avx2(a: &mut [f32], b: &[f32], s: f32) {
    triad_body(a, b, s)
}

fn triad_serial(a: &mut [f32], b: &[f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { triad_avx2(a, b, s) };
    }
    triad_body(a, b, s)
}

/// The bandwidth bound of the update, for benchmarks: `a ← a + s·b` over the same bytes (two
/// reads, one write per element) for every job (`weight` is `s`), split over threads like
/// [`update_batch`] and compiled like the update.
pub fn triad_batch(jobs: Vec<Job<'_, f32, f32>>) {
    for_each_piece(jobs, |a, b, s| triad_serial(a, b, s as f32));
}

/// [`triad_batch`] of one slice pair.
pub fn triad(a: &mut [f32], b: &[f32], s: f32) {
    triad_batch(vec![Job::new(a, b, s as f64)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(s: f64, v: f64, decay: f64) -> f64 {
        decay * s + (1.0 - decay) * v
    }

    proptest! {
        #[test]
        fn f32_in_place_matches_f64(
            pairs in prop::collection::vec((-100.0f32..100.0, -100.0f32..100.0), 0..300),
            decay in 0.0f64..1.0,
        ) {
            let (mut s, v): (Vec<f32>, Vec<f32>) = pairs.iter().copied().unzip();
            let before = s.clone();
            update_in_place::<f32, f32, f32>(&mut s, &v, 1.0 - decay);
            for i in 0..s.len() {
                let want = reference(before[i] as f64, v[i] as f64, decay);
                let scale = before[i].abs().max(v[i].abs()).max(1.0) as f64;
                prop_assert!((s[i] as f64 - want).abs() <= 1e-6 * scale, "{} vs {}", s[i], want);
            }
        }

        #[test]
        fn two_shadows_in_one_pass_equal_two_single_updates(
            pairs in prop::collection::vec((-10.0f32..10.0, -10.0f32..10.0), 0..200),
            d1 in 0.0f64..1.0,
            d2 in 0.0f64..1.0,
        ) {
            let (a0, v): (Vec<f32>, Vec<f32>) = pairs.iter().copied().unzip();
            let (mut a, mut b) = (a0.clone(), a0.clone());
            update_many_in_place::<f32, f32, f32>(vec![&mut a, &mut b], &v, &[1.0 - d1, 1.0 - d2]);
            let (mut a1, mut b1) = (a0.clone(), a0);
            update_in_place::<f32, f32, f32>(&mut a1, &v, 1.0 - d1);
            update_in_place::<f32, f32, f32>(&mut b1, &v, 1.0 - d2);
            prop_assert_eq!(a, a1);
            prop_assert_eq!(b, b1);
        }
    }

    #[test]
    fn large_tensors_split_over_threads_give_the_serial_result() {
        let n = 3 * PARALLEL_THRESHOLD + 17;
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let s0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut par = s0.clone();
        update_in_place::<f32, f32, f32>(&mut par, &v, 0.25);
        let mut serial = s0.clone();
        in_place_serial(&mut serial, &v, 0.25f32);
        assert_eq!(par, serial);
        assert_eq!(update_into::<f32, f32, f32>(&s0, &v, 0.25), serial);
        let (mut a, mut b) = (s0.clone(), s0.clone());
        update_many_in_place::<f32, f32, f32>(vec![&mut a, &mut b], &v, &[0.25, 0.25]);
        assert_eq!(a, serial);
        assert_eq!(b, serial);
    }

    #[test]
    fn half_values_widen_and_half_shadows_round_once() {
        let v = [f16::from_f32(2.0), f16::from_f32(-1.5)];
        let mut s = [1.0f32, 1.0];
        update_in_place::<f32, f32, f16>(&mut s, &v, 0.5);
        assert_eq!(s, [1.5, -0.25]);
        let mut h = [bf16::from_f32(1.0)];
        update_in_place::<f32, bf16, bf16>(&mut h, &[bf16::from_f32(3.0)], 0.5);
        assert_eq!(h[0].to_f32(), 2.0);
    }
}
