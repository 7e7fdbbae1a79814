//! The reconcile state as values: tasks, reviews, processed specs, assignments and counters,
//! plus the [`Change`]s a batch is made of. Stores persist these; the reconcile core decides
//! on them. Defined here, not next to the store port, so the pure core never points up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::model::{AttemptId, Review, SpecPath, Task, TaskId};

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

impl Assignment {
    /// The same lease, given to `worker`.
    pub fn with_worker(&self, worker: &str) -> Assignment {
        Assignment {
            worker: worker.to_owned(),
            ..self.clone()
        }
    }
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
    /// Per spec, the failures counted against its current version and, once over
    /// `max_spec_failures`, why it was given up ([`crate::gaps`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spec_failures: BTreeMap<SpecPath, SpecFailures>,
}

/// Failures counted against one version (blob) of a spec: a task of it that failed on its own,
/// or an intake that left it uncovered (every proposal for it rejected).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SpecFailures {
    /// The spec's blob the count is for; a new version starts from zero.
    pub blob: String,
    pub count: u32,
    /// Set once the count reached the limit: the spec costs nothing more until it changes or
    /// an operator retries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
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
