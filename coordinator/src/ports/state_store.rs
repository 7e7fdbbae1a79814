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

use std::collections::BTreeMap;
use std::future::Future;

use hyperloop_shared::event::Event;
use hyperloop_shared::model::{AttemptId, Review, SpecPath, Task, TaskId};
use serde::{Deserialize, Serialize};

/// A store version. Increases by one with every successful [`StateStore::apply`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

/// The last version of a spec that intake processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub path: SpecPath,
    /// Git blob id of the spec text intake saw.
    pub blob: String,
    /// Commit the text was read at (what new tasks pin in their `spec_ref`).
    pub commit: String,
}

/// A step handed to a worker: a lease identified by its attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskId,
    pub attempt: AttemptId,
    /// The persisted pipeline position of the dispatched step.
    pub step: String,
    pub role: String,
    pub round: u32,
    pub worker: String,
    pub dispatched_at_ms: u64,
}

/// Counters and bookkeeping that must survive restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The next task id to assign (ids start at 1).
    pub next_task_id: u64,
    /// The next attempt id to assign.
    pub next_attempt: u64,
    /// Completed reconcile cycles.
    pub cycle: u64,
    /// Intake runs so far: the `round` an intake result file must carry.
    pub intake_round: u32,
    /// Process-improver runs so far.
    pub improvement_round: u32,
    /// Tasks that failed since the last intake (the gap re-enters intake with their history).
    #[serde(default)]
    pub failed_since_intake: Vec<TaskId>,
    /// Findings about the last intake's rejected proposals, shown to the next PM run.
    #[serde(default)]
    pub intake_rejections: Vec<String>,
    /// Rebase-resolver runs per task for its current landing conflict (bounded by
    /// `max_rebase_attempts`); cleared when the task lands or gives up.
    #[serde(default)]
    pub rebase_attempts: BTreeMap<TaskId, u32>,
}

/// Everything but the journal, as of `revision`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    pub revision: Revision,
    pub tasks: BTreeMap<TaskId, Task>,
    /// Per task, in the order recorded.
    pub reviews: BTreeMap<TaskId, Vec<Review>>,
    pub specs: BTreeMap<SpecPath, SpecRecord>,
    pub assignments: BTreeMap<TaskId, Assignment>,
    pub meta: Meta,
}

impl State {
    /// Applies one change as every store does (events are journaled, not part of `State`), so
    /// stores and their callers agree on what a batch means.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutTask(task) => {
                self.tasks.insert(task.id, task.clone());
            }
            Change::AddReview(review) => {
                self.reviews
                    .entry(review.task_id)
                    .or_default()
                    .push(review.clone());
            }
            Change::PutSpec(spec) => {
                self.specs.insert(spec.path.clone(), spec.clone());
            }
            Change::DeleteSpec(path) => {
                self.specs.remove(path);
            }
            Change::PutAssignment(assignment) => {
                self.assignments.insert(assignment.task, assignment.clone());
            }
            Change::DeleteAssignment(task) => {
                self.assignments.remove(task);
            }
            Change::PutMeta(meta) => self.meta = meta.clone(),
            Change::AppendEvent(_) => {}
        }
    }
}

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutTask(Task),
    /// Appends a review to its task's history.
    AddReview(Review),
    PutSpec(SpecRecord),
    DeleteSpec(SpecPath),
    PutAssignment(Assignment),
    DeleteAssignment(TaskId),
    PutMeta(Meta),
    /// Journals events; the store assigns their `seq` (the value passed in is ignored).
    AppendEvent(Event),
}

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
