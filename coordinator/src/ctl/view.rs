//! What `hyperloopctl` shows, as plain serializable data built from one state snapshot.
//! Pure (time comes in as `now_ms`), so the tables and `-o json|yaml` share one source and
//! the explanations can be tested without I/O.

use std::collections::BTreeMap;

use hyperloop_shared::decide::{Dispatch, Idle, Stage, TaskSnapshot, decide};
use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::{Review, SpecPath, Task, TaskId, TaskStatus};
use hyperloop_shared::pipeline::{Pipeline, StepKind};
use serde::Serialize;

use crate::control::WorkerView;
use crate::ports::state_store::{Assignment, SpecRecord, State};

/// Events `status` shows from the end of the journal.
pub const STATUS_EVENTS: usize = 10;
/// Events `describe` shows for one task or spec (the newest).
pub const DESCRIBE_EVENTS: usize = 20;

/// Everything a command reads: the state, the journal and, when the project composes, the
/// pipeline that explains why tasks wait.
pub struct Snapshot<'a> {
    pub repository: String,
    pub state: &'a State,
    /// The whole journal, oldest first.
    pub events: &'a [Event],
    /// The current pipeline, or why the project could not be composed.
    pub pipeline: Result<&'a Pipeline, &'a str>,
    /// Worker slots free for new steps.
    pub free_slots: usize,
    /// The connected workers, when a live coordinator answers (`--server`): lets the
    /// explanation tell "no worker has the labels" and "dispatched, not yet accepted" apart.
    pub workers: Option<LiveWorkers<'a>>,
}

/// The connected workers and the labels each agent role requires of them.
#[derive(Clone, Copy)]
pub struct LiveWorkers<'a> {
    pub workers: &'a [WorkerView],
    pub labels_for: &'a dyn Fn(&str) -> BTreeMap<String, String>,
}

impl LiveWorkers<'_> {
    /// `None` when some connected worker carries every label `role` requires; otherwise
    /// what is missing.
    fn unmatched(&self, role: &str) -> Option<String> {
        let required = (self.labels_for)(role);
        let fits = |w: &WorkerView| required.iter().all(|(k, v)| w.labels.get(k) == Some(v));
        if self.workers.iter().any(|w| !w.draining && fits(w)) {
            return None;
        }
        let labels: Vec<String> = required.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(if labels.is_empty() {
            format!("no worker connected to run `{role}`")
        } else {
            format!(
                "no connected worker has the labels `{role}` requires ({})",
                labels.join(", ")
            )
        })
    }

    fn running(&self, attempt: u64) -> bool {
        self.workers
            .iter()
            .any(|w| w.attempts.iter().any(|a| a.attempt == attempt))
    }
}

/// The kind of reason a task waits (`hyperloop.v1.WaitReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitKind {
    Dependencies,
    Capacity,
    NoMatchingWorker,
    Gate,
    Backoff,
    Dispatching,
    /// Runnable (dispatched at the next cycle), or a stale position being relocated.
    Other,
}

/// Why a task is not running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub reason: WaitKind,
    pub detail: String,
}

/// Task counts by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Counts {
    pub not_started: usize,
    pub in_progress: usize,
    pub complete: usize,
    pub failed: usize,
}

impl Counts {
    pub fn add(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::NotStarted => self.not_started += 1,
            TaskStatus::InProgress => self.in_progress += 1,
            TaskStatus::Complete => self.complete += 1,
            TaskStatus::Failed => self.failed += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.not_started + self.in_progress + self.complete + self.failed
    }

    /// `2 in-progress, 1 complete`, or `none`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.not_started, "not-started"),
            (self.in_progress, "in-progress"),
            (self.complete, "complete"),
            (self.failed, "failed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, s)| format!("{n} {s}"))
        .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// A task with what the operator wants next to it: its step, its worker, why it waits.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    /// The step it is at, `kind:name` (e.g. `agent:verifier`), while in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The worker running its current step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Why a non-terminal task without a worker is not running (absent when the pipeline
    /// could not be composed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<WaitKind>,
}

impl TaskView {
    pub fn step_label(&self) -> &str {
        self.step.as_deref().unwrap_or("-")
    }
}

/// `hyperloopctl status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub repository: String,
    pub revision: u64,
    /// Completed reconcile cycles.
    pub cycles: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_cycle: Option<Event>,
    pub tasks: Counts,
    /// Why waiting reasons are missing, when the project could not be composed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_error: Option<String>,
    pub in_progress: Vec<TaskView>,
    /// Not-started tasks, with why they have not started.
    pub waiting: Vec<TaskView>,
    pub failed: Vec<TaskView>,
    pub assignments: Vec<Assignment>,
    pub recent_events: Vec<Event>,
}

/// One row of `get specs`: a spec intake processed, or one that tasks still point at.
#[derive(Debug, Clone, Serialize)]
pub struct SpecRow {
    pub path: SpecPath,
    /// Git blob id intake last processed; absent for a spec only tasks refer to (deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub tasks: Counts,
}

/// `describe task ID`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub view: TaskView,
    /// Each dependency with its status (`None`: no such task).
    pub dependencies: Vec<Dependency>,
    pub dependents: Vec<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// In round order; within a round, in the order recorded.
    pub reviews: Vec<Review>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub id: TaskId,
    pub status: Option<TaskStatus>,
}

/// `describe spec PATH`.
#[derive(Debug, Clone, Serialize)]
pub struct SpecDetail {
    #[serde(flatten)]
    pub row: SpecRow,
    pub task_list: Vec<TaskView>,
    pub events: Vec<Event>,
}

impl Snapshot<'_> {
    /// Every task as a [`TaskView`], in id order.
    pub fn tasks(&self) -> Vec<TaskView> {
        let mut waiting = self.waiting_reasons();
        self.state
            .tasks
            .values()
            .map(|task| {
                let worker = self
                    .state
                    .assignments
                    .get(&task.id)
                    .map(|a| a.worker.clone());
                let waiting = waiting.remove(&task.id);
                TaskView {
                    step: task
                        .position
                        .as_ref()
                        .map(|p| format!("{}:{}", p.step().kind, p.step().name)),
                    wait_reason: waiting.as_ref().map(|w| w.reason),
                    waiting: waiting.map(|w| w.detail),
                    worker,
                    task: task.clone(),
                }
            })
            .collect()
    }

    /// For each non-terminal task without a worker (or whose step a worker has not accepted
    /// yet): why it is not running, as `decide()` would see it now. Empty when the pipeline
    /// is unknown.
    pub fn waiting_reasons(&self) -> BTreeMap<TaskId, Waiting> {
        let Ok(pipeline) = self.pipeline else {
            return BTreeMap::new();
        };
        let wait = |reason, detail: String| Waiting { reason, detail };
        let mut reasons = BTreeMap::new();
        let mut snapshots = Vec::with_capacity(self.state.tasks.len());
        for task in self.state.tasks.values() {
            let busy = self.state.assignments.contains_key(&task.id);
            match TaskSnapshot::of(task, pipeline, busy) {
                Ok(s) => snapshots.push(s),
                Err(e) => {
                    let detail = format!(
                        "its position does not fit the current pipeline ({e}); the \
                         coordinator relocates it when it starts"
                    );
                    reasons.insert(task.id, wait(WaitKind::Other, detail));
                }
            }
        }
        let first = pipeline.first_position();
        // The role a task's next agent step needs a worker for, if any.
        let role_of = |stage: Option<Stage<'_>>| match stage? {
            Stage::AgentReady { role } => Some(role.to_owned()),
            Stage::NotStarted {
                first_step: StepKind::Agent,
            } => Some(first.step().name.clone()),
            _ => None,
        };
        let stage_of = |id: TaskId| snapshots.iter().find(|s| s.id == id).map(|s| s.stage);
        let unmatched = |id: TaskId| {
            let live = self.workers?;
            live.unmatched(&role_of(stage_of(id))?)
        };
        let decisions = decide(&snapshots, self.free_slots);
        for d in decisions.dispatch {
            let (id, role) = match d {
                Dispatch::Resume { task, role } => (task, Some(role.to_owned())),
                Dispatch::Start { task, .. } => (task, role_of(stage_of(task))),
            };
            let missing = self
                .workers
                .zip(role)
                .and_then(|(live, role)| live.unmatched(&role));
            let reason = match missing {
                Some(detail) => wait(WaitKind::NoMatchingWorker, detail),
                None => wait(
                    WaitKind::Other,
                    "runnable: the coordinator dispatches it at its next cycle".to_owned(),
                ),
            };
            reasons.insert(id, reason);
        }
        for (id, idle) in decisions.idle {
            let kind = match idle {
                Idle::WaitingOnDeps(_)
                | Idle::DependencyFailed(_)
                | Idle::DependencyBlocked(_)
                | Idle::UnknownDeps(_)
                | Idle::OnCycle(_) => WaitKind::Dependencies,
                Idle::NoCapacity => match unmatched(id) {
                    Some(detail) => {
                        reasons.insert(id, wait(WaitKind::NoMatchingWorker, detail));
                        continue;
                    }
                    None => WaitKind::Capacity,
                },
                Idle::AtGate(_) => WaitKind::Gate,
                Idle::ActionPending(_)
                    if self
                        .state
                        .tasks
                        .get(&id)
                        .is_some_and(|t| t.action_attempts > 0) =>
                {
                    WaitKind::Backoff
                }
                Idle::ActionPending(_) => WaitKind::Other,
            };
            reasons.insert(id, wait(kind, idle.to_string()));
        }
        if let Some(live) = self.workers {
            for a in self.state.assignments.values() {
                if !live.running(a.attempt.0) {
                    let detail = format!(
                        "{} dispatched to {} ({}), not yet accepted",
                        a.role, a.worker, a.attempt
                    );
                    reasons.insert(a.task, wait(WaitKind::Dispatching, detail));
                }
            }
        }
        reasons
    }

    pub fn status(&self) -> Status {
        let mut counts = Counts::default();
        let (mut in_progress, mut waiting, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for view in self.tasks() {
            counts.add(view.task.status);
            match view.task.status {
                TaskStatus::InProgress => in_progress.push(view),
                TaskStatus::NotStarted => waiting.push(view),
                TaskStatus::Failed => failed.push(view),
                TaskStatus::Complete => {}
            }
        }
        let tail = self.events.len().saturating_sub(STATUS_EVENTS);
        Status {
            repository: self.repository.clone(),
            revision: self.state.revision.0,
            cycles: self.state.meta.cycle,
            last_cycle: self
                .events
                .iter()
                .rev()
                .find(|e| matches!(e.kind, EventKind::CycleCompleted { .. }))
                .cloned(),
            tasks: counts,
            pipeline_error: self.pipeline.err().map(str::to_owned),
            in_progress,
            waiting,
            failed,
            assignments: self.state.assignments.values().cloned().collect(),
            recent_events: self.events[tail..].to_vec(),
        }
    }

    /// Every spec intake processed plus every spec a task points at, by path.
    pub fn specs(&self) -> Vec<SpecRow> {
        let mut rows: BTreeMap<SpecPath, SpecRow> = self
            .state
            .specs
            .values()
            .map(|s: &SpecRecord| {
                let row = SpecRow {
                    path: s.path.clone(),
                    blob: Some(s.blob.clone()),
                    commit: Some(s.commit.clone()),
                    tasks: Counts::default(),
                };
                (s.path.clone(), row)
            })
            .collect();
        for task in self.state.tasks.values() {
            let path = &task.spec_ref.path;
            rows.entry(path.clone())
                .or_insert_with(|| SpecRow {
                    path: path.clone(),
                    blob: None,
                    commit: None,
                    tasks: Counts::default(),
                })
                .tasks
                .add(task.status);
        }
        rows.into_values().collect()
    }

    pub fn task(&self, id: TaskId) -> Option<TaskDetail> {
        let view = self.tasks().into_iter().find(|v| v.task.id == id)?;
        let dependencies = view
            .task
            .deps
            .iter()
            .map(|d| Dependency {
                id: *d,
                status: self.state.tasks.get(d).map(|t| t.status),
            })
            .collect();
        let dependents = self
            .state
            .tasks
            .values()
            .filter(|t| t.deps.contains(&id))
            .map(|t| t.id)
            .collect();
        let mut reviews = self.state.reviews.get(&id).cloned().unwrap_or_default();
        // Stable: reviews of one round keep the order they were recorded in.
        reviews.sort_by_key(|r| r.round);
        Some(TaskDetail {
            view,
            dependencies,
            dependents,
            assignment: self.state.assignments.get(&id).cloned(),
            reviews,
            events: newest(self.events.iter().filter(|e| e.task == Some(id))),
        })
    }

    pub fn spec(&self, path: &SpecPath) -> Option<SpecDetail> {
        let row = self.specs().into_iter().find(|r| &r.path == path)?;
        let task_list: Vec<TaskView> = self
            .tasks()
            .into_iter()
            .filter(|v| &v.task.spec_ref.path == path)
            .collect();
        let events = newest(self.events.iter().filter(|e| {
            match &e.kind {
                EventKind::SpecChanged { path: p, .. } => p == path.as_str(),
                _ => e
                    .task
                    .is_some_and(|t| task_list.iter().any(|v| v.task.id == t)),
            }
        }));
        Some(SpecDetail {
            row,
            task_list,
            events,
        })
    }
}

/// The newest [`DESCRIBE_EVENTS`] of `events`, oldest first.
fn newest<'e>(events: impl DoubleEndedIterator<Item = &'e Event>) -> Vec<Event> {
    let mut out: Vec<Event> = events.rev().take(DESCRIBE_EVENTS).cloned().collect();
    out.reverse();
    out
}
