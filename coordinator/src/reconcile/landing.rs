//! Landing and base-branch syncs, off the loop. Merges and pushes block for as long as the
//! disk and the remote take, so they run on tokio's blocking pool and answer on a channel the
//! loop selects on. They run one at a time, in the order queued: they share one checkout.
//!
//! Ordering: work is only queued during a cycle and started after that cycle's state write,
//! so a finished step's result is stored before any landing it leads to can begin; a crash
//! mid-merge re-lands (idempotently) instead of re-running the step.

use std::collections::VecDeque;
use std::sync::Arc;

use hyperloop_shared::landing::Landed;
use tokio::sync::mpsc;

use crate::ports::lander::{LandError, LandOutcome, LandRequest, Lander};

/// Replies in flight: one git operation runs at a time, so one slot would do; a few more
/// let a reply from a finished operation never wait on the loop.
const REPLIES: usize = 4;

/// A queued git operation.
#[derive(Debug)]
pub(super) enum GitOp {
    /// Land a task's branch (`action` is the pipeline action that asked) or the
    /// process-improver's.
    Land {
        request: LandRequest,
        action: String,
    },
    /// Bring the base branch up to date ([`Lander::sync`]).
    Sync,
}

/// What a finished operation reports to the loop.
#[derive(Debug)]
pub(super) enum GitReply {
    Landed {
        request: LandRequest,
        action: String,
        outcome: Result<LandOutcome, LandError>,
    },
    Synced(Result<(), LandError>),
}

pub(super) struct GitWork<L> {
    lander: Arc<L>,
    queue: VecDeque<GitOp>,
    running: bool,
    /// A sync is queued or running: at most one at a time.
    syncing: bool,
    tx: mpsc::Sender<GitReply>,
    rx: mpsc::Receiver<GitReply>,
}

impl<L: Lander> GitWork<L> {
    pub(super) fn new(lander: L) -> Self {
        let (tx, rx) = mpsc::channel(REPLIES);
        GitWork {
            lander: Arc::new(lander),
            queue: VecDeque::new(),
            running: false,
            syncing: false,
            tx,
            rx,
        }
    }

    pub(super) fn queue(&mut self, op: GitOp) {
        if let GitOp::Sync = op {
            if self.syncing {
                return;
            }
            self.syncing = true;
        }
        self.queue.push_back(op);
    }

    /// Starts the next queued operation if none is running. Call after the state write.
    pub(super) fn start(&mut self) {
        if self.running {
            return;
        }
        let Some(op) = self.queue.pop_front() else {
            return;
        };
        self.running = true;
        let lander = Arc::clone(&self.lander);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let reply = tokio::task::spawn_blocking(move || perform(&*lander, op)).await;
            match reply {
                // The loop may have stopped; then nobody needs the answer.
                Ok(reply) => drop(tx.send(reply).await),
                Err(e) => tracing::error!(error = %e, "a git operation panicked"),
            }
        });
    }

    /// The next finished operation. Pending forever while nothing runs.
    pub(super) async fn reply(&mut self) -> GitReply {
        if !self.running {
            return std::future::pending().await;
        }
        match self.rx.recv().await {
            Some(reply) => {
                self.running = false;
                if let GitReply::Synced(_) = reply {
                    self.syncing = false;
                }
                reply
            }
            // The sender lives in `self`: the channel cannot close while we hold it.
            None => std::future::pending().await,
        }
    }
}

fn perform<L: Lander>(lander: &L, op: GitOp) -> GitReply {
    match op {
        GitOp::Land { request, action } => GitReply::Landed {
            outcome: lander.land(&request),
            request,
            action,
        },
        GitOp::Sync => GitReply::Synced(lander.sync()),
    }
}

/// A landing's outcome in the core's terms.
pub(super) fn landed(outcome: Result<LandOutcome, LandError>) -> Landed {
    match outcome {
        Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. }) => {
            Landed::Done {
                commit: landing.commit,
            }
        }
        Ok(LandOutcome::Conflict { files }) => Landed::Conflict { files },
        Ok(LandOutcome::Deferred { reason }) => Landed::RetryLater { reason },
        // A rewritten base halts the loop; the task waits to land once it is sorted out.
        Err(e) if e.is_transient() || matches!(e, LandError::Rewritten { .. }) => {
            Landed::RetryLater {
                reason: e.to_string(),
            }
        }
        Err(e) => Landed::Failed {
            reason: e.to_string(),
        },
    }
}
