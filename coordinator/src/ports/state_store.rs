//! `StateStore`: where reconcile state lives (tasks, reviews, processed specs, assignments,
//! counters and the event journal). Embedded (a git ref in the repository) by default, etcd
//! for several coordinators.
//!
//! Guarantees every adapter gives (checked by `contract::check_all`):
//! - `apply` is atomic: after a crash (`kill -9` included) either all of a batch is visible
//!   or none of it.
//! - `apply` is conditional: it succeeds only if the store is still at `expected`, so a
//!   writer working from a stale view (or a deposed leader) fails instead of overwriting.
//! - The journal keeps the newest `journal_limit` events; sequence numbers never repeat.

use std::future::Future;

use hyperloop_shared::event::Event;
pub use hyperloop_shared::state::{Assignment, Change, Meta, Revision, SpecRecord, State};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state changed underneath this coordinator (expected revision {expected:?}, found \
         {found:?}); another coordinator may be writing to the same state"
    )]
    Conflict { expected: Revision, found: Revision },
    #[error(
        "state record {key} is unreadable: {reason}; restore it from the state history or remove it"
    )]
    Corrupt { key: String, reason: String },
    #[error("state store {operation} failed: {reason}")]
    Backend {
        operation: &'static str,
        reason: String,
        transient: bool,
    },
}

impl StoreError {
    /// Worth retrying as is (a network blip), as opposed to a conflict or corruption.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                transient: true,
                ..
            }
        )
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod contract;

/// The reconcile state. Implementations are cheap to share (`Clone` or behind `Arc`).
pub trait StateStore: Send + Sync + 'static {
    /// Reads the whole state (not the journal).
    fn load(&self) -> impl Future<Output = Result<State, StoreError>> + Send;

    /// Applies `changes` atomically if the store is still at `expected`, returning the new
    /// revision and the events as journaled (with their sequence numbers).
    fn apply(
        &self,
        expected: Revision,
        changes: Vec<Change>,
    ) -> impl Future<Output = Result<(Revision, Vec<Event>), StoreError>> + Send;

    /// Journaled events with `seq > after`, oldest first, at most `limit`.
    fn events(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
}
