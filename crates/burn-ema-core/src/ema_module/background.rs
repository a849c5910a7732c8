//! An `EmaModule`'s shadow, possibly being updated on a worker thread.
//!
//! With [`ShadowPlacement::Offload`](crate::ShadowPlacement::Offload), `update()` hands the shadow and
//! handles on the live weights to a worker thread and returns; the worker copies the weights
//! to the host and runs the fused CPU pass while the next training step runs. Whatever reads
//! the shadow waits for the worker first: [`ShadowSlot`] dereferences to the shadow, and
//! dereferencing waits. No read ever sees a half-updated shadow, and there is at most one
//! update in flight (the next `update()` waits for the previous one).
//!
//! Clones share the update in flight (cloning does not wait, so the Learner's per-step
//! `model()` clones keep the overlap); each gets the finished shadow when it first reads it.

use std::ops::{Deref, DerefMut};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use burn::module::Module;

use crate::error::{EmaError, panic_message};
use crate::shadow::{Shadow, live_leaves, update_shadows_from};
use crate::walk::PutFloats;
use crate::walk::{Leaf, RewriteLeaves};

/// A finished background update: the shadow (taken by the first slot that owns the update
/// alone), and the update's outcome.
struct Done<M: Module> {
    shadow: Option<Shadow<M>>,
    result: Result<(), EmaError>,
}

/// What the worker hands back: the shadow and the update's outcome.
type Outcome<M> = (Shadow<M>, Result<(), EmaError>);

/// An update in flight, shared by the clones of one `EmaModule`.
struct Pending<M: Module> {
    job: Option<JoinHandle<Outcome<M>>>,
    done: Option<Done<M>>,
}

type Shared<M> = Arc<Mutex<Pending<M>>>;

/// Waits for the update in flight; returns its outcome and, when `want` is set, its shadow (by
/// value when `shared` is held by this slot alone, else a copy sharing the tensors).
fn wait<M: Module>(shared: &Shared<M>, want: bool) -> (Option<Shadow<M>>, Result<(), EmaError>) {
    let alone = Arc::strong_count(shared) == 1;
    let mut pending = shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if pending.done.is_none() {
        let job = pending
            .job
            .take()
            .expect("a pending update has its job until done");
        let (shadow, result) = job
            .join()
            .expect("the background update catches its panics");
        pending.done = Some(Done {
            shadow: Some(shadow),
            result,
        });
    }
    let done = pending.done.as_mut().expect("done above");
    let shadow = match (want, alone) {
        (false, _) => None,
        (true, true) => done.shadow.take(),
        (true, false) => done.shadow.clone(),
    };
    (shadow, done.result.clone())
}

/// An `EmaModule`'s shadow: ready, or being updated in the background.
pub(crate) struct ShadowSlot<M: Module> {
    /// This slot's shadow, once known (filled from `pending` by the first read).
    ready: OnceLock<Shadow<M>>,
    /// The update in flight that `ready` waits for, if any.
    pending: Option<Shared<M>>,
    /// The outcome of the last background update, until [`sync`](Self::sync) takes it.
    error: Option<EmaError>,
}

impl<M: Module> ShadowSlot<M> {
    pub(crate) fn new(shadow: Shadow<M>) -> Self {
        Self {
            ready: OnceLock::from(shadow),
            pending: None,
            error: None,
        }
    }

    /// Waits for the update in flight, if any, and returns its error once.
    pub(crate) fn sync(&mut self) -> Result<(), EmaError> {
        let _ = self.deref_mut();
        match self.error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The shadow, by value (after waiting).
    pub(crate) fn into_shadow(mut self) -> Shadow<M> {
        let _ = self.deref_mut();
        self.ready.take().expect("deref_mut leaves the slot ready")
    }

    /// Rewrites the shadow with `f` (after waiting).
    pub(crate) fn map(&mut self, f: impl FnOnce(Shadow<M>) -> Shadow<M>) {
        let _ = self.deref_mut();
        let shadow = self.ready.take().expect("deref_mut leaves the slot ready");
        let _ = self.ready.set(f(shadow));
    }

    /// Starts updating the shadow from `live` (the live model) as of `step` on a worker
    /// thread; callers [`sync`](Self::sync) first.
    ///
    /// The caller's thread takes the live values' handles (a walk of the model) and sets their
    /// copy to the host going, all of them in one read, queued on an accelerator before
    /// anything the next training step submits; it waits for nothing. The values cannot change
    /// meanwhile: Burn's tensors are values (the next step writes new buffers, or in place only
    /// into buffers no one else holds), and BatchNorm's running statistics are read at their
    /// synced values here. The worker waits for the copy, lets the device buffers go, then runs
    /// the averaging pass.
    pub(crate) fn spawn_update(&mut self, live: M, step: u64)
    where
        M: 'static,
    {
        debug_assert!(self.pending.is_none(), "callers sync before spawning");
        // Everything that may fail on this thread runs before the shadow leaves the slot.
        let placement = self.deref().placement().clone();
        let leaves = live_leaves(&live);
        let (shapes, values): (Vec<_>, Vec<_>) = leaves
            .into_iter()
            .map(|leaf| ((leaf.path, leaf.id, leaf.shape), leaf.value))
            .unzip();
        let copies = placement.copy_all_live(values, placement.home());
        let mut shadow = self.ready.take().expect("callers sync before spawning");
        let job = std::thread::Builder::new()
            .name("burn-ema-update".into())
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    let leaves: Vec<Leaf> = shapes
                        .into_iter()
                        .zip(copies.finish())
                        .map(|((path, id, shape), value)| Leaf {
                            path,
                            id,
                            shape,
                            value,
                        })
                        .collect();
                    let host = on_host(live, &leaves);
                    let shadows = std::slice::from_mut(&mut shadow);
                    update_shadows_from(&host, || leaves, shadows, step, None).map(drop)
                }));
                let result = result.unwrap_or_else(|panic| {
                    let message = panic_message(panic.as_ref());
                    Err(EmaError::BackgroundUpdate { step, message })
                });
                (shadow, result)
            })
            .expect("the OS starts a thread");
        self.pending = Some(Arc::new(Mutex::new(Pending {
            job: Some(job),
            done: None,
        })));
    }
}

/// The live model's structure holding its values copied to the host, for recovery after a
/// panic; the live model (its device buffers) is let go here, before the averaging pass.
fn on_host<M: Module>(live: M, leaves: &[Leaf]) -> M {
    let mut put = PutFloats {
        values: leaves.iter().map(|l| Some(l.value.clone())).collect(),
    };
    live.map(&mut RewriteLeaves::new(&mut put))
}

impl<M: Module> Deref for ShadowSlot<M> {
    type Target = Shadow<M>;

    /// The shadow, after waiting for the update in flight.
    fn deref(&self) -> &Shadow<M> {
        self.ready.get_or_init(|| {
            let shared = self.pending.as_ref().expect("a slot is ready or pending");
            wait(shared, true)
                .0
                .expect("the shadow is taken only by its last owner")
        })
    }
}

impl<M: Module> DerefMut for ShadowSlot<M> {
    /// The shadow, after waiting for the update in flight (its error is kept for
    /// [`ShadowSlot::sync`]).
    fn deref_mut(&mut self) -> &mut Shadow<M> {
        if let Some(shared) = self.pending.take() {
            let want = self.ready.get().is_none();
            let (shadow, result) = wait(&shared, want);
            if let Some(shadow) = shadow {
                let _ = self.ready.set(shadow);
            }
            if let Err(err) = result {
                self.error = Some(err);
            }
        }
        self.ready.get_mut().expect("a slot is ready or pending")
    }
}

impl<M: Module> Clone for ShadowSlot<M> {
    /// Shares an update in flight without waiting for it.
    fn clone(&self) -> Self {
        match (self.ready.get(), &self.pending) {
            (Some(shadow), _) => Self {
                ready: OnceLock::from(shadow.clone()),
                pending: None,
                error: self.error.clone(),
            },
            (None, pending) => Self {
                ready: OnceLock::new(),
                pending: pending.clone(),
                error: self.error.clone(),
            },
        }
    }
}
