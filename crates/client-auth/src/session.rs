//! Session state, published on a `watch` channel.

use tokio::sync::watch;

/// Whether there is a session, and why.
///
/// ```
/// use client_auth::{SessionReason, SessionState, SessionWatch};
///
/// let session = SessionWatch::new(SessionState::Unknown);
/// let mut rx = session.subscribe();
/// session.set(SessionState::NoSession(SessionReason::Logout));
/// assert_eq!(*rx.borrow_and_update(), SessionState::NoSession(SessionReason::Logout));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// Not known yet (the store has not been read).
    Unknown,
    /// Tokens are present.
    Authenticated(SessionReason),
    /// No usable tokens: a sign-in is needed.
    NoSession(SessionReason),
}

impl SessionState {
    /// Whether this state holds a session.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, SessionState::Authenticated(_))
    }
}

/// Why the session state is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionReason {
    /// The store held no token.
    NoToken,
    /// The store held a token.
    FoundToken,
    /// Tokens were set after a sign-in.
    Authenticated,
    /// A refresh succeeded.
    Refreshed,
    /// `logout()` was called.
    Logout,
    /// The authorization server ended the session; the code says why (`invalid_grant`,
    /// `unauthorized_client`, `no_refresh_token`).
    Invalid(String),
    /// `clear()` was called.
    Cleared,
}

/// The sending side of the session channel, held by a provider. Receivers come from
/// [`subscribe`](Self::subscribe).
#[derive(Debug)]
pub struct SessionWatch {
    tx: watch::Sender<SessionState>,
}

impl SessionWatch {
    /// A channel holding `initial`.
    pub fn new(initial: SessionState) -> Self {
        let (tx, _rx) = watch::channel(initial);
        Self { tx }
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.tx.subscribe()
    }

    /// The current state.
    pub fn get(&self) -> SessionState {
        self.tx.borrow().clone()
    }

    /// Publishes `state` if it differs from the current one. Returns whether it changed.
    pub fn set(&self, state: SessionState) -> bool {
        let changed = self.tx.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state.clone();
                true
            }
        });
        if changed {
            tracing::debug!(session = ?state, "session state changed");
        }
        changed
    }
}
