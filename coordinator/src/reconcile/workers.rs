//! Workers and leases: joining, reconnecting, liveness, losing a worker, and the operator
//! commands and live view that go with them.
//!
//! Every dispatched step is a lease identified by its attempt id. A worker that loses its
//! stream keeps its leases for [`RECONNECT_GRACE`] (it may reconnect and name them in its
//! Hello); one that stops heartbeating for [`HEARTBEAT_TIMEOUT`] loses them at once. A new
//! leader treats every stored assignment the same way, for [`TAKEOVER_GRACE`]. A lost lease
//! puts its step back in the queue; a result that arrives for it later is acknowledged (so
//! the worker stops resending) and rejected.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::compose::ProjectLoadError;
use hyperloop_proto::v1::{self, AttemptPhase};
use hyperloop_shared::event::EventKind;
use hyperloop_shared::gaps;
use hyperloop_shared::model::{AttemptId, Review, SpecPath, Task, TaskId, Verdict};
use hyperloop_shared::pipeline::{GateCheck, Next, Outcome};
use hyperloop_shared::project::Project;

use super::{Reaped, Reconciler, parse_task};
use crate::control::{AttemptView, Command, CommandError, Live, WorkerView};
use crate::dispatch::{Joined, WorkerEvent};
use crate::grpc::HEARTBEAT_TIMEOUT;
use crate::ports::lander::Lander;
use crate::ports::spec_source::SpecSource;
use crate::ports::state_store::{Change, StateStore};

/// How long a worker whose stream dropped may take to reconnect and reclaim its steps.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);
/// How long a new leader waits for workers to reconnect and reclaim the steps they run
/// before giving those steps to others. Above a worker's reconnect backoff cap.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(6);

/// A dispatched attempt as the loop tracks it (tasks and jobs alike): what the live view
/// shows, plus its lease.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub view: AttemptView,
    /// Set while nobody holds it: the worker is gone and may still come back until then.
    pub orphaned_until: Option<Instant>,
}

impl Attempt {
    pub fn of(assign: &v1::Assign, worker: &str, now_ms: u64) -> Self {
        Attempt {
            view: AttemptView {
                attempt: assign.attempt_id,
                task_id: assign.task_id.clone(),
                step_path: assign.step_path.clone(),
                role: assign.role.clone(),
                round: assign.round,
                worker: worker.to_owned(),
                phase: AttemptPhase::Unspecified,
                started_at_ms: now_ms,
                deadline_ms: assign
                    .deadline
                    .as_ref()
                    .map_or(0, |t| u64::try_from(t.seconds).unwrap_or(0) * 1000),
                turns: 0,
                cost_usd: 0.0,
            },
            orphaned_until: None,
        }
    }
}

impl<S, P, L, C> Reconciler<S, P, L, C>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, ProjectLoadError>,
{
    pub(super) fn handle(&mut self, event: WorkerEvent) {
        self.live_dirty = true;
        match event {
            WorkerEvent::Joined(joined) => self.joined(*joined),
            WorkerEvent::Message {
                worker,
                conn,
                message,
            } => {
                if !self.registry.is_current(&worker, conn) {
                    return; // a replaced connection; the worker resends on its new one
                }
                let heartbeat = match &message {
                    v1::worker_message::Body::Heartbeat(hb) => Some(hb),
                    _ => None,
                };
                self.registry
                    .seen(&worker, heartbeat, self.ctx.clock.now_ms());
                self.message(worker, message);
            }
            WorkerEvent::Gone { worker, conn } => {
                let Some(held) = self.registry.leave(&worker, conn) else {
                    return;
                };
                self.wake = true;
                self.event(
                    None,
                    EventKind::WorkerLost {
                        worker: worker.clone(),
                        reason: "connection closed".to_owned(),
                    },
                );
                let until = Instant::now() + RECONNECT_GRACE;
                for attempt in held {
                    if let Some(a) = self.attempts.get_mut(&attempt) {
                        a.orphaned_until = Some(until);
                    }
                }
            }
        }
    }

    fn joined(&mut self, joined: Joined) {
        self.wake = true;
        let worker = joined.registration.name.clone();
        let capacity = joined.registration.capacity.max(1);
        self.registry.join(&joined, self.ctx.clock.now_ms());
        self.event(
            None,
            EventKind::WorkerJoined {
                worker: worker.clone(),
                capacity,
            },
        );
        let held: Vec<&v1::HeldAttempt> = joined.held.iter().collect();
        // Reclaim what it still runs; what it no longer mentions is lost now.
        let mine: Vec<AttemptId> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.view.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        for attempt in mine {
            if let Some(h) = held.iter().find(|h| h.attempt_id == attempt.0) {
                self.registry.hold(&worker, attempt);
                if let Some(a) = self.attempts.get_mut(&attempt) {
                    a.orphaned_until = None;
                    a.view.phase = AttemptPhase::try_from(h.phase).unwrap_or_default();
                }
            } else {
                self.lose(attempt, &format!("{worker} reconnected without it"));
            }
        }
        for h in held {
            let attempt = AttemptId(h.attempt_id);
            if let Some(a) = self.attempts.get_mut(&attempt) {
                if a.view.worker != worker {
                    // Moved hosts under another name: it is this worker's now.
                    a.view.worker.clone_from(&worker);
                    a.orphaned_until = None;
                    self.registry.hold(&worker, attempt);
                    self.rebind_assignment(attempt, &worker);
                }
                continue;
            }
            // Not ours (any more): a running one is stopped; a finished one's result will
            // be resent, acknowledged and rejected.
            if h.phase != i32::from(AttemptPhase::Reporting) {
                self.registry.tell(
                    &worker,
                    v1::coordinator_message::Body::Cancel(v1::Cancel {
                        attempt_id: h.attempt_id,
                        reason: "this attempt was given to another worker".to_owned(),
                    }),
                );
            }
        }
    }

    fn rebind_assignment(&mut self, attempt: AttemptId, worker: &str) {
        let found = self
            .state
            .assignments
            .values()
            .find(|a| a.attempt == attempt)
            .cloned();
        if let Some(mut assignment) = found {
            assignment.worker = worker.to_owned();
            self.record(Change::PutAssignment(assignment));
        }
    }

    fn message(&mut self, worker: String, message: v1::worker_message::Body) {
        use v1::worker_message::Body;
        match message {
            Body::StepResult(result) => {
                self.wake = true;
                self.results.push(Reaped { worker, result });
            }
            Body::Accepted(a) => {
                if let Some(attempt) = self.attempts.get_mut(&AttemptId(a.attempt_id)) {
                    attempt.view.phase = AttemptPhase::Preparing;
                }
            }
            Body::Declined(d) => {
                tracing::info!(%worker, attempt = d.attempt_id, reason = %d.reason, "step declined; it will be dispatched again");
                self.registry.finished(&worker, AttemptId(d.attempt_id));
                self.drop_attempt(AttemptId(d.attempt_id));
                self.wake = true;
            }
            Body::Progress(p) => {
                if let Some(attempt) = self.attempts.get_mut(&AttemptId(p.attempt_id)) {
                    attempt.view.phase = AttemptPhase::Running;
                    attempt.view.turns = p.turns;
                    attempt.view.cost_usd = p.cost_usd;
                }
                self.logs.lines(p.attempt_id, p.lines);
            }
            Body::Heartbeat(hb) => {
                for h in hb.attempts {
                    if let Some(a) = self.attempts.get_mut(&AttemptId(h.attempt_id)) {
                        a.view.phase = AttemptPhase::try_from(h.phase).unwrap_or(a.view.phase);
                    }
                }
            }
            Body::Hello(_) => {}
        }
    }

    /// Closes workers that stopped heartbeating and gives away leases whose grace ran out.
    /// O(workers + orphans), run a few times a second.
    pub(super) fn housekeeping(&mut self) {
        for (worker, held) in self.registry.expire(HEARTBEAT_TIMEOUT) {
            self.live_dirty = true;
            self.event(
                None,
                EventKind::WorkerLost {
                    worker: worker.clone(),
                    reason: format!(
                        "no heartbeat for {}s; its steps go to other workers",
                        HEARTBEAT_TIMEOUT.as_secs()
                    ),
                },
            );
            for attempt in held {
                self.lose(attempt, &format!("{worker} stopped heartbeating"));
            }
        }
        let now = Instant::now();
        let expired: Vec<(AttemptId, String)> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.orphaned_until.is_some_and(|t| t <= now))
            .map(|(id, a)| (*id, a.view.worker.clone()))
            .collect();
        for (attempt, worker) in expired {
            self.lose(attempt, &format!("{worker} did not come back in time"));
        }
    }

    /// The earliest orphan deadline, so the loop wakes for it.
    pub(super) fn next_orphan_deadline(&self) -> Option<Instant> {
        self.attempts
            .values()
            .filter_map(|a| a.orphaned_until)
            .min()
    }

    /// A lease is lost: its step goes back in the queue, and any result for it later is
    /// rejected.
    pub(super) fn lose(&mut self, attempt: AttemptId, why: &str) {
        let Some(a) = self.attempts.get(&attempt).cloned() else {
            return;
        };
        self.event(
            parse_task(&a.view.task_id),
            EventKind::OrphanFound {
                kind: "attempt".to_owned(),
                name: format!(
                    "attempt {attempt} ({} {}) on {}",
                    a.view.task_id, a.view.role, a.view.worker
                ),
                action: format!("{why}; dispatched again"),
            },
        );
        self.registry.finished(&a.view.worker, attempt);
        self.drop_attempt(attempt);
        self.wake = true;
    }

    /// Forgets an attempt: its assignment (the task becomes runnable at the same position)
    /// or its job (intake or improvement runs again when due).
    pub(super) fn drop_attempt(&mut self, attempt: AttemptId) {
        self.attempts.remove(&attempt);
        self.logs.finished(attempt.0);
        if self.jobs.remove(&attempt).is_some() {
            return;
        }
        let task = self
            .state
            .assignments
            .values()
            .find(|a| a.attempt == attempt)
            .map(|a| a.task);
        if let Some(task) = task {
            self.state.assignments.remove(&task);
            self.record(Change::DeleteAssignment(task));
        }
    }

    // --- operator commands ---------------------------------------------------------------

    pub(super) fn command(&mut self, command: Command) {
        self.wake = true;
        self.live_dirty = true;
        match command {
            Command::Approve {
                task,
                gate,
                comment,
                reply,
            } => {
                let _ = reply.send(self.approve(task, gate.as_deref(), &comment));
            }
            Command::Cancel {
                task,
                reason,
                reply,
            } => {
                let _ = reply.send(self.cancel(task, &reason));
            }
            Command::RetrySpec { path, reply } => {
                let _ = reply.send(self.retry_spec(path));
            }
            Command::Drain { worker, reply } => {
                let answer = if self
                    .registry
                    .drain(&worker, "drained by an operator (hyperloopctl drain)")
                {
                    self.worker_views()
                        .into_iter()
                        .find(|w| w.name == worker)
                        .ok_or_else(|| CommandError::NotFound(format!("worker {worker} left")))
                } else {
                    Err(CommandError::NotFound(format!(
                        "no worker named {worker} is connected; `hyperloopctl get workers` \
                         lists them"
                    )))
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn task_or_not_found(&self, id: TaskId) -> Result<Task, CommandError> {
        self.state.tasks.get(&id).cloned().ok_or_else(|| {
            CommandError::NotFound(format!(
                "there is no task {id}; `hyperloopctl get tasks` lists them"
            ))
        })
    }

    fn approve(
        &mut self,
        id: TaskId,
        gate: Option<&str>,
        comment: &str,
    ) -> Result<Task, CommandError> {
        let task = self.task_or_not_found(id)?;
        let waiting = task
            .position
            .as_ref()
            .and_then(|p| self.project.process.pipeline.next_at(p).ok());
        let Some(Next::WaitAtGate { gate: at, .. }) = waiting else {
            return Err(CommandError::FailedPrecondition(format!(
                "{id} is not waiting at a gate (status {}); only a task at a gate can be \
                 approved",
                task.status
            )));
        };
        if let Some(wanted) = gate
            && wanted != at
        {
            return Err(CommandError::FailedPrecondition(format!(
                "{id} waits at gate `{at}`, not `{wanted}`"
            )));
        }
        let text = if comment.trim().is_empty() {
            format!("Approved at gate `{at}` by an operator.")
        } else {
            format!("Approved at gate `{at}` by an operator: {comment}")
        };
        self.add_review(Review {
            task_id: id,
            round: task.round,
            role: "human".to_owned(),
            verdict: Verdict::Pass,
            detail: text,
        });
        self.event(
            Some(id),
            EventKind::GateCleared {
                gate: at,
                by: "hyperloopctl approve".to_owned(),
            },
        );
        self.apply_outcome(task, Outcome::Gate(GateCheck::Cleared));
        self.task_or_not_found(id)
    }

    /// An operator's cancel stops the task for good: it fails with the reason but does not
    /// re-enter intake (the operator decided against it; a spec change brings it back).
    fn cancel(&mut self, id: TaskId, reason: &str) -> Result<Task, CommandError> {
        let task = self.task_or_not_found(id)?;
        if task.status.is_terminal() {
            return Err(CommandError::FailedPrecondition(format!(
                "{id} is already {}; there is nothing to cancel",
                task.status
            )));
        }
        let reason = if reason.trim().is_empty() {
            "cancelled by an operator".to_owned()
        } else {
            format!("cancelled by an operator: {reason}")
        };
        self.stop_task(id, reason, super::Stop::Cancelled);
        self.task_or_not_found(id)
    }

    /// Clears a given-up spec's failures and its processed record, so the next intake sees
    /// it as new (with its earlier tasks' findings in the prompt).
    fn retry_spec(&mut self, path: SpecPath) -> Result<SpecPath, CommandError> {
        let Some(blob) = self.view.specs.get(&path).map(|b| b.0.clone()) else {
            return Err(CommandError::NotFound(format!(
                "there is no spec {path} on the base branch; `hyperloopctl get specs` lists them"
            )));
        };
        if gaps::given_up(&self.state.meta.spec_failures, &path, &blob).is_none() {
            return Err(CommandError::FailedPrecondition(format!(
                "{path} was not given up; only a spec that failed max_spec_failures times can \
                 be retried"
            )));
        }
        self.state.meta.spec_failures.remove(&path);
        let meta = self.state.meta.clone();
        self.record(Change::PutMeta(meta));
        if self.state.specs.contains_key(&path) {
            self.record(Change::DeleteSpec(path.clone()));
        }
        self.view.refresh(&path, &self.state.specs);
        self.event(
            None,
            EventKind::SpecRetried {
                path: path.to_string(),
            },
        );
        Ok(path)
    }

    // --- live view -----------------------------------------------------------------------

    fn worker_views(&self) -> Vec<WorkerView> {
        self.registry
            .views()
            .map(|w| WorkerView {
                name: w.registration.name.clone(),
                worker_id: format!("{}#{}", w.registration.name, w.conn),
                capacity: w.registration.capacity.max(1),
                labels: w.registration.labels.clone().into_iter().collect(),
                version: w.registration.version.clone(),
                last_heartbeat_ms: w.last_heartbeat_ms,
                connected_since_ms: w.connected_since_ms,
                draining: w.draining,
                local: w.local,
                attempts: w
                    .running
                    .iter()
                    .filter_map(|id| self.attempts.get(id).map(|a| a.view.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Publishes the live view if anything in it changed since the last time.
    pub(super) fn publish(&mut self) {
        if !self.live_dirty {
            return;
        }
        self.live_dirty = false;
        let project = self.shared_project.clone();
        let workers = self.worker_views();
        let converged = self.converged().is_some();
        let cycle = self.state.meta.cycle;
        let last_cycle_at_ms = self.last_cycle_at_ms;
        self.live.send_modify(|live| {
            *live = Arc::new(Live {
                workers,
                cycle,
                last_cycle_at_ms,
                converged,
                project: Some(project),
                ..(**live).clone()
            });
        });
    }
}
