//! What the reconcile loop shares with the admin API (`hyperloopctl --server`):
//!
//! - [`Live`]: the loop's view of things that are not in the state store (connected workers,
//!   running attempts, leadership, the current composition), published on a `watch` channel
//!   whenever it changes. Reads of stored state go to the store itself.
//! - [`Command`]: operator actions (approve, cancel, retry a spec, drain), sent to the leader's loop, which
//!   applies them between cycles and answers on a oneshot channel, so every state change still
//!   happens in one place.
//!
//! Architecture Invariant: the admin API never writes state itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyperloop_proto::v1::AttemptPhase;
use hyperloop_shared::model::{SpecPath, Task, TaskId};
use hyperloop_shared::project::Project;
use tokio::sync::oneshot;

/// The coordinator leading the cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// The leader's `--advertise` URL (what workers and hyperloopctl dial).
    pub address: String,
    pub term: u64,
    pub since_ms: u64,
}

/// A step running on a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptView {
    pub attempt: u64,
    pub task_id: String,
    pub step_path: String,
    pub role: String,
    pub round: u32,
    pub worker: String,
    pub phase: AttemptPhase,
    pub started_at_ms: u64,
    pub deadline_ms: u64,
    pub turns: u32,
    pub cost_usd: f64,
}

/// A connected worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub name: String,
    pub worker_id: String,
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub last_heartbeat_ms: u64,
    pub connected_since_ms: u64,
    pub draining: bool,
    /// In-process (`--local-workers`).
    pub local: bool,
    pub attempts: Vec<AttemptView>,
}

/// The loop's live view. Cheap to clone (published as `Arc<Live>`).
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// This coordinator's identity (its advertise URL, or `single-host`).
    pub coordinator_id: String,
    /// `None` while no leader is known.
    pub leader: Option<LeaderView>,
    /// Whether this coordinator leads (mutations and logs are served only by the leader).
    pub leading: bool,
    pub workers: Vec<WorkerView>,
    pub cycle: u64,
    pub last_cycle_at_ms: u64,
    pub converged: bool,
    /// Tasks ready for an agent step that wait for a free worker slot.
    pub queued: usize,
    /// The composition the loop works with (to explain why tasks wait); `None` on a standby
    /// that has not composed yet.
    pub project: Option<Arc<Project>>,
    /// Every task in brief, for the terminal's progress display.
    pub tasks: Vec<TaskBrief>,
}

/// A task as the progress display shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBrief {
    pub id: String,
    pub status: hyperloop_shared::model::TaskStatus,
    pub round: u32,
    /// The step it is at while in progress (`gate: human-review`).
    pub step: Option<hyperloop_shared::pipeline::StepRef>,
}

pub use hyperloop_shared::reconcile::CommandError;

/// The loop's answer to a command.
pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// An operator action for the leader's loop.
#[derive(Debug)]
pub enum Command {
    /// Clears the gate the task waits at (`gate`: only if it is that one), recording the
    /// comment as a human review.
    Approve {
        task: TaskId,
        gate: Option<String>,
        comment: String,
        reply: Reply<Task>,
    },
    /// Stops the task: its running agent is cancelled and it fails with the reason.
    Cancel {
        task: TaskId,
        reason: String,
        reply: Reply<Task>,
    },
    /// Reconciles a given-up spec again: its failure count is cleared and intake sees it as
    /// new.
    RetrySpec {
        path: SpecPath,
        reply: Reply<SpecPath>,
    },
    /// Asks a worker to finish its steps, take no new ones and exit.
    Drain {
        worker: String,
        reply: Reply<WorkerView>,
    },
}
