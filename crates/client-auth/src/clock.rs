//! Time, injected: a monotonic instant for decisions, UNIX time for stores, and a sleep.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::BoxFuture;

/// A source of time.
///
/// `now` drives every expiry decision (it must be monotonic); `unix_now` is what gets written to
/// a [`TokenStore`](crate::TokenStore), which may be shared with other processes; `sleep` is used
/// for retry delays.
///
/// Production code uses [`SystemClock`]. Tests use `ManualClock` (feature `test-util`) and move
/// time forward with `advance` instead of sleeping until a token expires.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current monotonic instant.
    fn now(&self) -> Instant;
    /// The current wall-clock time.
    fn unix_now(&self) -> SystemTime;
    /// A future that completes after `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn unix_now(&self) -> SystemTime {
        (**self).unix_now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(duration)
    }
}

/// The real clock: [`Instant::now`], [`SystemTime::now`] and `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(any(test, feature = "test-util"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "test-util"))]
mod manual {
    use super::*;
    use tokio::sync::watch;

    /// A clock that only moves when told to (feature `test-util`).
    ///
    /// Clones share the same time. `sleep` completes once [`advance`](Self::advance) has moved
    /// the clock past its deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use client_auth::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// let start = clock.now();
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!(clock.now() - start, Duration::from_secs(3600));
    /// ```
    #[derive(Debug, Clone)]
    pub struct ManualClock {
        base: Instant,
        base_unix: SystemTime,
        offset: Arc<watch::Sender<Duration>>,
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ManualClock {
        /// A clock starting at the real current time.
        pub fn new() -> Self {
            let (tx, _rx) = watch::channel(Duration::ZERO);
            Self {
                base: Instant::now(),
                base_unix: SystemTime::now(),
                offset: Arc::new(tx),
            }
        }

        /// Moves the clock forward and wakes the sleeps that are due.
        pub fn advance(&self, by: Duration) {
            self.offset.send_modify(|offset| *offset += by);
        }

        /// How far the clock has been advanced in all.
        pub fn elapsed(&self) -> Duration {
            *self.offset.borrow()
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.base + *self.offset.borrow()
        }
        fn unix_now(&self) -> SystemTime {
            self.base_unix + *self.offset.borrow()
        }
        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            let mut rx = self.offset.subscribe();
            let deadline = *rx.borrow() + duration;
            Box::pin(async move {
                // An error means every clock handle is gone: time can no longer move, so
                // finishing the sleep is the only way not to hang.
                let _ = rx.wait_for(|offset| *offset >= deadline).await;
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn manual_sleep_completes_only_after_advance_passes_its_deadline() {
            let clock = ManualClock::new();
            let sleep = clock.sleep(Duration::from_secs(10));
            let handle = tokio::spawn(sleep);
            tokio::task::yield_now().await;
            clock.advance(Duration::from_secs(5));
            tokio::task::yield_now().await;
            assert!(!handle.is_finished());
            clock.advance(Duration::from_secs(5));
            tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .expect("sleep should complete")
                .expect("task ok");
        }
    }
}
