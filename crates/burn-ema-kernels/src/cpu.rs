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
/// than it saves (a task's scheduling against the time 64 Ki elements take to stream:
/// BENCHMARKS.md, "Where the timings in code comments went").
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
    Copy
    + Send
    + Sync
    + core::ops::Add<Output = Self>
    + core::ops::Sub<Output = Self>
    + core::ops::Mul<Output = Self>
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

/// The per-element operation of a pass: the EMA update, or the triad that bounds it.
trait Kernel {
    fn step<A: Acc, S: Store<A>, V: Widen<A>>(s: S, v: V, w: A) -> S;
}

/// TensorFlow's update, `s − (s − v)·w` with `w = 1 − decay`.
struct Ema;

impl Kernel for Ema {
    #[inline(always)]
    fn step<A: Acc, S: Store<A>, V: Widen<A>>(s: S, v: V, w: A) -> S {
        let s = s.widen();
        S::narrow(s - (s - v.widen()) * w)
    }
}

/// `s + w·v`: the same traffic as the update, the least arithmetic (benchmarks' bound).
#[cfg(feature = "bench")]
struct Triad;

#[cfg(feature = "bench")]
impl Kernel for Triad {
    #[inline(always)]
    fn step<A: Acc, S: Store<A>, V: Widen<A>>(s: S, v: V, w: A) -> S {
        S::narrow(s.widen() + w * v.widen())
    }
}

#[inline(always)]
fn in_place_body<K: Kernel, A: Acc, S: Store<A>, V: Widen<A>>(shadow: &mut [S], value: &[V], w: A) {
    for (s, &v) in shadow.iter_mut().zip(value) {
        *s = K::step(*s, v, w);
    }
}

/// Two shadows of one value: the value is read once per element.
#[inline(always)]
fn two_body<K: Kernel, A: Acc, S: Store<A>, V: Widen<A>>(
    a: &mut [S],
    b: &mut [S],
    value: &[V],
    w: [A; 2],
) {
    for ((sa, sb), &v) in a.iter_mut().zip(b.iter_mut()).zip(value) {
        *sa = K::step(*sa, v, w[0]);
        *sb = K::step(*sb, v, w[1]);
    }
}

/// One pass over a piece of one value and all of its shadows.
#[inline(always)]
fn job_body<K: Kernel, A: Acc, S: Store<A>, V: Widen<A>>(job: Job<'_, S, V>) {
    let w = |k: usize| A::weight(job.weights[k]);
    let mut shadows = job.shadows;
    // Pairs of shadows share one read of the value; an odd one out goes alone.
    let mut k = 0;
    while shadows.len() - k >= 2 {
        let (head, tail) = shadows[k..].split_at_mut(1);
        two_body::<K, A, S, V>(head[0], tail[0], job.value, [w(k), w(k + 1)]);
        k += 2;
    }
    if k < shadows.len() {
        in_place_body::<K, A, S, V>(shadows[k], job.value, w(k));
    }
}

/// The loop compiled for AVX2: twice the vector width of the x86-64 baseline (SSE2) that Rust
/// targets by default (faster on this streaming loop: BENCHMARKS.md); the arithmetic is the
/// same IEEE operations element by element (no FMA contraction), so the results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn job_avx2<K: Kernel, A: Acc, S: Store<A>, V: Widen<A>>(job: Job<'_, S, V>) {
    job_body::<K, A, S, V>(job)
}

/// One job on the calling thread, with AVX2 where the CPU has it: the one place that picks.
fn job_serial<K: Kernel, A: Acc, S: Store<A>, V: Widen<A>>(job: Job<'_, S, V>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { job_avx2::<K, A, S, V>(job) };
    }
    job_body::<K, A, S, V>(job)
}

/// One value and the shadows to move towards it, each with its own weight `w = 1 − decay`:
/// usually one shadow; several (post-hoc EMA keeps two) share one read of the value.
pub struct Job<'a, S, V> {
    shadows: Vec<&'a mut [S]>,
    value: &'a [V],
    weights: Vec<f64>,
}

impl<'a, S, V> Job<'a, S, V> {
    /// One shadow. Panics when the lengths differ (a bug of the caller, never a user's input).
    pub fn new(shadow: &'a mut [S], value: &'a [V], weight: f64) -> Self {
        Self::multi(vec![shadow], value, vec![weight])
    }

    /// Several shadows of one value, one weight each. Panics when the lengths differ.
    pub fn multi(shadows: Vec<&'a mut [S]>, value: &'a [V], weights: Vec<f64>) -> Self {
        assert_eq!(shadows.len(), weights.len(), "one weight per shadow");
        assert!(
            shadows.iter().all(|s| s.len() == value.len()),
            "shadow and value lengths differ"
        );
        Self {
            shadows,
            value,
            weights,
        }
    }

    fn len(&self) -> usize {
        self.value.len()
    }

    /// Elements touched per element of the value: the value, and each shadow read and written.
    fn traffic(&self) -> usize {
        self.value.len() * (1 + 2 * self.shadows.len())
    }

    /// The first `mid` elements of every slice, and the rest.
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (value, value_rest) = self.value.split_at(mid);
        let (shadows, shadows_rest) = self
            .shadows
            .into_iter()
            .map(|s| s.split_at_mut(mid))
            .unzip();
        let head = Self {
            shadows,
            value,
            weights: self.weights.clone(),
        };
        let tail = Self {
            shadows: shadows_rest,
            value: value_rest,
            weights: self.weights,
        };
        (head, tail)
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
/// threads in **one** parallel region: the jobs are cut into pieces of about equal traffic,
/// several small jobs sharing a piece and a large one spanning several. Model parameter sets
/// are hundreds of tensors of very different sizes; one fork-join per tensor leaves threads idle
/// at every tensor's end (slower on the ResNet-50 set: BENCHMARKS.md).
fn for_each_piece<S, V, F>(jobs: Vec<Job<'_, S, V>>, body: F)
where
    S: Send,
    V: Sync,
    F: Fn(Job<'_, S, V>) + Sync,
{
    // Sized in units of one single-shadow element (three accesses).
    let total: usize = jobs.iter().map(|j| j.traffic()).sum::<usize>() / 3;
    if total < PARALLEL_THRESHOLD || rayon::current_num_threads() == 1 {
        jobs.into_iter().for_each(body);
        return;
    }
    let piece = piece_len(total);
    let mut pieces: Vec<Vec<Job<'_, S, V>>> = vec![Vec::new()];
    let mut filled = 0;
    for mut job in jobs {
        // Elements of this job per unit of piece size.
        let per_element = (job.traffic() / job.len().max(1)).max(1);
        while job.len() > 0 {
            let room = ((piece - filled) * 3).div_ceil(per_element);
            let take = room.min(job.len());
            let (head, tail) = job.split_at(take);
            pieces.last_mut().expect("never empty").push(head);
            job = tail;
            filled += (take * per_element / 3).min(piece - filled);
            if filled == piece {
                pieces.push(Vec::new());
                filled = 0;
            }
        }
    }
    pieces
        .into_par_iter()
        .for_each(|jobs| jobs.into_iter().for_each(&body));
}

/// Updates every job's shadows towards its value, in place, in one parallel pass over all of
/// them (the CPU's `_foreach_lerp_`).
pub fn update_batch<A: Acc, S: Store<A>, V: Widen<A>>(jobs: Vec<Job<'_, S, V>>) {
    for_each_piece(jobs, job_serial::<Ema, A, S, V>);
}

/// `shadow ← shadow − (shadow − value)·w`, in place. `shadow` and `value` have equal lengths.
pub fn update_in_place<A: Acc, S: Store<A>, V: Widen<A>>(shadow: &mut [S], value: &[V], w: f64) {
    update_batch::<A, S, V>(vec![Job::new(shadow, value, w)]);
}

/// Updates several shadows of one parameter, with one weight each, in one pass over the
/// parameter: `(1 + 2K)` element accesses per parameter instead of `3K`.
pub fn update_many_in_place<A: Acc, S: Store<A>, V: Widen<A>>(
    shadows: Vec<&mut [S]>,
    value: &[V],
    weights: &[f64],
) {
    update_batch::<A, S, V>(vec![Job::multi(shadows, value, weights.to_vec())]);
}

fn out_of_place_serial<A: Acc, S: Store<A>, V: Widen<A>>(
    out: &mut [S],
    shadow: &[S],
    value: &[V],
    w: A,
) {
    for ((o, &s), &v) in out.iter_mut().zip(shadow).zip(value) {
        *o = Ema::step(s, v, w);
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

/// The bandwidth bound of the update, for benchmarks (feature `bench`): `a ← a + s·b` over the
/// same bytes (two reads, one write per element) for every job (`weight` is `s`), split over
/// threads like [`update_batch`] and compiled like the update.
#[cfg(feature = "bench")]
pub fn triad_batch(jobs: Vec<Job<'_, f32, f32>>) {
    for_each_piece(jobs, job_serial::<Triad, f32, f32, f32>);
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
        in_place_body::<Ema, f32, f32, f32>(&mut serial, &v, 0.25f32);
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
