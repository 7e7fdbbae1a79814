//! `Election`: which coordinator leads. Exactly one candidate holds [`Leadership`] at a time;
//! the others wait in [`Election::campaign`] and answer workers and `hyperloopctl` with the
//! leader from [`Election::leader`].
//!
//! Guarantees every adapter gives (checked by `contract`):
//! - `campaign` returns to one candidate at a time; another returns only after the holder
//!   resigned, dropped its `Leadership` or lost it.
//! - `Leadership::lost` is cancelled as soon as the holder can no longer be sure it leads
//!   (and when it resigns), so the loop stops before a successor may start.
//! - Terms grow strictly from one leadership to the next; `leader()` reports the holder's
//!   value and term.
//! - Writes fenced on a leadership ([`Fence`]) fail once it has ended.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a leader's state-store writes are made conditional on: its election key and that
/// key's create revision (the leader key etcd's election service answers a campaign with).
/// When the leadership ends,
/// the key is deleted (create revision 0) or re-created by the next leader (a new create
/// revision), so every later fenced write of the deposed leader fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

/// The current leader as seen by anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// What the leader campaigned with: its advertised gRPC URL.
    pub value: String,
    pub term: u64,
}

/// Held while this candidate leads. Dropping it steps down as [`Leadership::resign`] does,
/// without waiting for the hand-over to finish.
#[derive(Debug)]
pub struct Leadership {
    /// Strictly greater than every earlier leadership's term of this election.
    pub term: u64,
    /// `None` where there is nothing to fence against (a single host).
    pub fence: Option<Fence>,
    /// Cancelled once leadership can no longer be guaranteed (its lease expired or could not
    /// be renewed in time, its key was deleted) or it was resigned: stop acting as leader.
    pub lost: CancellationToken,
    /// Cancelled to step down; the adapter then releases the leadership.
    step_down: CancellationToken,
    /// The adapter's task that releases the leadership once `step_down` fires.
    released: Option<JoinHandle<()>>,
}

impl Leadership {
    /// For adapters: a leadership that ends when `step_down` is cancelled (by
    /// [`Leadership::resign`] or drop) and whose hand-over is complete when `released`
    /// finishes.
    pub fn new(
        term: u64,
        fence: Option<Fence>,
        lost: CancellationToken,
        step_down: CancellationToken,
        released: Option<JoinHandle<()>>,
    ) -> Self {
        Self {
            term,
            fence,
            lost,
            step_down,
            released,
        }
    }

    /// Steps down and returns once another candidate can be elected.
    pub async fn resign(mut self) {
        self.step_down.cancel();
        if let Some(released) = self.released.take() {
            // A panicked release task has nothing left to hand over.
            let _ = released.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.step_down.cancel();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    #[error(
        "cannot reach etcd at {endpoints}: {reason}; check --etcd (etcd.endpoints) and that \
         etcd is running and reachable from this host"
    )]
    Unreachable { endpoints: String, reason: String },
    #[error(
        "etcd refused {operation}: {reason}; check the etcd user and password or client \
         certificate this coordinator uses"
    )]
    Denied {
        operation: &'static str,
        reason: String,
    },
    #[error("election {operation} failed: {reason}")]
    Backend {
        operation: &'static str,
        reason: String,
        transient: bool,
    },
}

impl ElectionError {
    /// Worth retrying as is (etcd unreachable or electing, a lease lost mid-campaign), as
    /// opposed to a configuration problem.
    pub fn is_transient(&self) -> bool {
        match self {
            ElectionError::Unreachable { .. } => true,
            ElectionError::Denied { .. } => false,
            ElectionError::Backend { transient, .. } => *transient,
        }
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod contract;

/// Leader election among the coordinators of one repository. Implementations are cheap to
/// share (`Clone` or behind `Arc`).
pub trait Election: Send + Sync + 'static {
    /// Blocks until this candidate leads, advertising `value` (its gRPC URL) to the others.
    fn campaign(
        &self,
        value: String,
    ) -> impl Future<Output = Result<Leadership, ElectionError>> + Send;

    /// The current leader, or `None` while there is none (an election in progress).
    fn leader(&self) -> impl Future<Output = Result<Option<LeaderInfo>, ElectionError>> + Send;
}
