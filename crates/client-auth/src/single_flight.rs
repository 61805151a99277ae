//! One operation in flight per cache, run on its own task: the primitive behind the OAuth token
//! cache and the customer-token cache.
//!
//! [`SingleFlight::start`] spawns the operation on the current tokio runtime and hands it a
//! [`Completion`]; everyone who asks meanwhile gets a [`Waiter`] on the same outcome. The
//! operation is owned by its task, never by the request that started it, so dropping that
//! request changes nothing. The `Completion` exists before the task is spawned: if the task is
//! dropped unpolled (its runtime shut down), dropping the `Completion` frees the slot and the
//! waiters see [`Error::RefreshAborted`], so the next caller can start again.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::Error;

/// `future`'s output, or `None` if polling it panicked: for futures that run code of the
/// caller's (a token answer map, an assertion source, a transport), so that a panic there is
/// a failed operation like any other (backoff included) instead of an unwound task.
pub(crate) async fn caught<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Some(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(None),
        }
    })
    .await
}

/// At most one operation in flight; its outcome shared by every waiter.
pub(crate) struct SingleFlight<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    slot: Mutex<Option<Slot<T>>>,
    running: AtomicBool,
    next_id: AtomicU64,
    /// An operation older than this is taken for stranded (its runtime is no longer driven):
    /// the next caller starts a new one, and waiters stop waiting for it.
    max_age: Option<Duration>,
}

struct Slot<T> {
    id: u64,
    rx: watch::Receiver<Option<T>>,
    started: Instant,
}

impl<T> Slot<T> {
    fn waiter(&self, max_age: Option<Duration>) -> Waiter<T> {
        Waiter {
            id: self.id,
            rx: self.rx.clone(),
            deadline: max_age.and_then(|age| self.started.checked_add(age)),
        }
    }
}

impl<T> fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlight")
            .field("running", &self.inner.running.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> Clone for SingleFlight<T> {
    /// The same flight: clones share the slot.
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self::with_max_age(None)
    }
}

impl<T> SingleFlight<T> {
    /// A single flight whose operations count as stranded after `max_age` of real time.
    pub(crate) fn with_max_age(max_age: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                slot: Mutex::new(None),
                running: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                max_age,
            }),
        }
    }
}

impl<T> Inner<T> {
    fn stranded(&self, slot: &Slot<T>) -> bool {
        self.max_age.is_some_and(|age| slot.started.elapsed() > age)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Slot<T>>> {
        // Every critical section is a single assignment or clone: a poisoned lock is consistent.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, id: u64) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|s| s.id == id) {
            *slot = None;
            self.running.store(false, Ordering::Release);
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// Whether an operation is in flight (lock-free; a hint for hot paths).
    pub(crate) fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// A waiter on the operation in flight, if there is one.
    pub(crate) fn current(&self) -> Option<Waiter<T>> {
        let max_age = self.inner.max_age;
        self.inner
            .lock()
            .as_ref()
            .filter(|s| !self.inner.stranded(s))
            .map(|s| s.waiter(max_age))
    }

    /// Frees the slot of `waiter`'s operation now, if it still holds it: for the caller that
    /// started it and then failed before handing the operation its work, so that the next
    /// caller starts afresh instead of joining an operation that can only abort.
    pub(crate) fn abandon(&self, waiter: &Waiter<T>) {
        self.inner.release(waiter.id);
    }

    /// Joins the operation in flight, or spawns `operation` on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] when nothing is in flight and no runtime runs on this thread;
    /// nothing was started then.
    pub(crate) fn join_or_start<F>(
        &self,
        operation: impl FnOnce(Completion<T>) -> F,
    ) -> Result<Waiter<T>, Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (waiter, completion) = {
            let mut slot = self.inner.lock();
            if let Some(s) = slot.as_ref() {
                if !self.inner.stranded(s) {
                    return Ok(s.waiter(self.inner.max_age));
                }
                tracing::warn!(
                    "a refresh has not finished for longer than it may take (its runtime is no longer driven?); starting another"
                );
            }
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = watch::channel(None);
            let started = Slot {
                id,
                rx,
                started: Instant::now(),
            };
            let waiter = started.waiter(self.inner.max_age);
            *slot = Some(started);
            self.inner.running.store(true, Ordering::Release);
            let completion = Completion {
                tx: Some(tx),
                inner: Arc::clone(&self.inner),
                id,
            };
            (waiter, completion)
        };
        // Spawned outside the slot lock: a runtime that is shutting down drops the task at
        // once, and the completion's drop takes that lock to free the slot.
        handle.spawn(operation(completion));
        Ok(waiter)
    }
}

/// Handed to the operation: publishes its outcome and frees the slot. Dropped without
/// [`complete`](Self::complete), it frees the slot and the waiters see
/// [`Error::RefreshAborted`].
pub(crate) struct Completion<T> {
    tx: Option<watch::Sender<Option<T>>>,
    inner: Arc<Inner<T>>,
    id: u64,
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion").field("id", &self.id).finish()
    }
}

impl<T> Completion<T> {
    /// Frees the slot so that the next caller starts a new operation, without publishing yet
    /// (idempotent). Callers that must make "outcome visible" and "slot free" one step do this
    /// under their own lock, then [`complete`](Self::complete).
    pub(crate) fn release_slot(&self) {
        self.inner.release(self.id);
    }

    /// Frees the slot (if still held) and hands `value` to every waiter.
    pub(crate) fn complete(mut self, value: T) {
        self.release_slot();
        if let Some(tx) = self.tx.take() {
            // No receiver left is fine: nobody was waiting.
            let _ = tx.send(Some(value));
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.inner.release(self.id);
        }
    }
}

/// Waits for one operation's outcome.
pub(crate) struct Waiter<T> {
    /// The operation waited for.
    id: u64,
    rx: watch::Receiver<Option<T>>,
    /// Past this, the operation counts as stranded and the wait ends.
    deadline: Option<Instant>,
}

impl<T> fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").finish_non_exhaustive()
    }
}

impl<T: Clone> Waiter<T> {
    /// The outcome, or [`Error::RefreshAborted`] if the operation was dropped first or is
    /// stranded.
    pub(crate) async fn wait(mut self) -> Result<T, Error> {
        let outcome = self.rx.wait_for(Option::is_some);
        // The deadline needs tokio's timer: a waiter polled outside a runtime waits without it.
        let deadline = self
            .deadline
            .filter(|_| tokio::runtime::Handle::try_current().is_ok());
        let outcome = match deadline {
            None => outcome.await,
            Some(deadline) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), outcome)
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(Error::RefreshAborted),
                }
            }
        };
        match outcome {
            Ok(value) => value.clone().ok_or(Error::RefreshAborted),
            Err(_) => Err(Error::RefreshAborted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn callers_share_one_operation_and_its_outcome() {
        let flight = SingleFlight::<u32>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let calls = Arc::clone(&calls);
            flight
                .join_or_start(move |done| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = go_rx.await;
                    done.complete(7);
                })
                .unwrap()
        };
        let second = flight
            .join_or_start(|_done| async { panic!("a second operation must not start") })
            .unwrap();
        assert!(flight.is_running());
        go_tx.send(()).unwrap();
        assert_eq!(first.wait().await.unwrap(), 7);
        assert_eq!(second.wait().await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!flight.is_running());
        assert!(flight.current().is_none());
    }

    #[test]
    fn a_task_dropped_before_its_first_poll_frees_the_slot() {
        let flight = SingleFlight::<u32>::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        // Spawning on a runtime that has shut down drops the task unpolled.
        let _enter = handle.enter();
        let waiter = flight
            .join_or_start(|done| async move { done.complete(1) })
            .unwrap();
        assert!(!flight.is_running(), "the slot must be free again");
        let healthy = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            healthy.block_on(waiter.wait()),
            Err(Error::RefreshAborted)
        ));
        let again = healthy.block_on(async {
            flight
                .join_or_start(|done| async move { done.complete(2) })
                .unwrap()
                .wait()
                .await
        });
        assert_eq!(again.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_stranded_operation_is_replaced_and_its_waiters_released() {
        let flight = SingleFlight::<u32>::with_max_age(Some(Duration::from_millis(50)));
        let stuck = flight
            .join_or_start(|done| async move {
                std::future::pending::<()>().await;
                done.complete(1);
            })
            .unwrap();
        assert!(matches!(stuck.wait().await, Err(Error::RefreshAborted)));
        let fresh = flight
            .join_or_start(|done| async move { done.complete(2) })
            .unwrap();
        assert_eq!(fresh.wait().await.unwrap(), 2);
    }

    #[test]
    fn no_runtime_is_a_typed_error_and_starts_nothing() {
        let flight = SingleFlight::<u32>::default();
        let got = flight.join_or_start(|done| async move { done.complete(1) });
        assert!(matches!(got, Err(Error::NoRuntime)));
        assert!(!flight.is_running());
    }
}
