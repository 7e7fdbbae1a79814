//! Leases and operator commands.
//!
//! Every dispatched step is a lease identified by its attempt id. A worker that loses its
//! stream keeps its leases for a grace period (it may reconnect and name them); one that is
//! declared dead loses them at once. A new leader treats every stored assignment the same
//! way. A lost lease puts its step back in the queue; a result that arrives for it later is
//! acknowledged (so the worker stops resending) and rejected.

use crate::event::EventKind;
use crate::gaps;
use crate::model::{AttemptId, SpecPath, Task, TaskId, Verdict};
use crate::pipeline::{GateCheck, Next, Outcome};
use crate::state::{Assignment, Change};

use super::lifecycle::MERGE_APPROVED;
use super::{Answer, CommandError, Core, Effect, Held, Op, Stop};

/// How many revoked attempts keep their reason for a push asked after the revocation; a
/// push asked later still is refused, only with a vaguer reason.
const REVOKED_REMEMBERED: usize = 1024;

/// A dispatched attempt as the core tracks it (task steps and jobs alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub worker: String,
    /// The task, or `None` for intake and process-improver runs.
    pub task: Option<TaskId>,
    /// The task id or job name, for messages.
    pub subject: String,
    pub step: String,
    pub role: String,
    pub round: u32,
    pub started_at_ms: u64,
    /// Set while nobody holds it: the worker is gone and may still come back until then.
    pub orphaned_until: Option<u64>,
}

impl Lease {
    fn of(a: &Assignment) -> Lease {
        Lease {
            worker: a.worker.clone(),
            task: Some(a.task),
            subject: a.task.to_string(),
            step: a.step.clone(),
            role: a.role.clone(),
            round: a.round,
            started_at_ms: a.dispatched_at_ms,
            orphaned_until: None,
        }
    }
}

impl Core {
    /// Stored assignments become orphaned leases; a pipeline edited while tasks were on it
    /// carries each position over explicitly.
    pub(super) fn recover(&mut self) {
        let until = self.now + self.settings.takeover_grace_ms;
        let orphaned: Vec<Assignment> = self.state.assignments.values().cloned().collect();
        for a in &orphaned {
            let mut lease = Lease::of(a);
            lease.orphaned_until = Some(until);
            self.leases.insert(a.attempt, lease);
        }
        let pipeline = self.project.process.pipeline.clone();
        let mut relocated = Vec::new();
        for task in self.state.tasks.values() {
            let Ok(Some(progress)) = task.progress() else {
                continue;
            };
            let relocation = pipeline.relocate(&progress);
            if relocation.progress != progress {
                let mut t = task.clone();
                t.position = Some(relocation.progress.position.clone());
                t.round = relocation.progress.round;
                t.action_attempts = relocation.progress.action_attempts;
                relocated.push((t, relocation.finding()));
            }
        }
        for (task, finding) in relocated {
            if let Some(detail) = finding {
                self.add_review(&task, "coordinator", Verdict::Fail, detail);
            }
            self.put_task(task);
        }
        self.event(
            None,
            EventKind::Recovery {
                tasks_loaded: u32::try_from(self.state.tasks.len()).unwrap_or(u32::MAX),
                attempts_resumed: 0,
                attempts_orphaned: u32::try_from(orphaned.len()).unwrap_or(u32::MAX),
            },
        );
    }

    /// A worker (re)joined: it reclaims what it still runs; what it no longer mentions is
    /// lost now; what it runs but is not ours any more is stopped.
    pub(super) fn joined(&mut self, worker: &str, capacity: u32, held: &[Held]) -> Vec<Effect> {
        self.wake = true;
        self.event(
            None,
            EventKind::WorkerJoined {
                worker: worker.to_owned(),
                capacity: capacity.max(1),
            },
        );
        let mut effects = Vec::new();
        let mine: Vec<AttemptId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        for attempt in mine {
            if held.iter().any(|h| h.attempt == attempt) {
                if let Some(l) = self.leases.get_mut(&attempt) {
                    l.orphaned_until = None;
                }
            } else {
                effects.extend(self.lose(attempt, &format!("{worker} reconnected without it")));
            }
        }
        for h in held {
            if let Some(l) = self.leases.get_mut(&h.attempt) {
                if l.worker != worker {
                    // Moved hosts under another name: it is this worker's now.
                    l.worker = worker.to_owned();
                    l.orphaned_until = None;
                    self.rebind_assignment(h.attempt, worker);
                }
                continue;
            }
            // Not ours (any more): a running one is stopped; a finished one's result will
            // be resent, acknowledged and rejected.
            if !h.reporting {
                effects.push(Effect::Cancel {
                    worker: worker.to_owned(),
                    attempt: h.attempt,
                    reason: "this attempt was given to another worker".to_owned(),
                });
            }
        }
        effects
    }

    fn rebind_assignment(&mut self, attempt: AttemptId, worker: &str) {
        let found = self
            .state
            .assignments
            .values()
            .find(|a| a.attempt == attempt)
            .cloned();
        if let Some(assignment) = found {
            self.record(Change::PutAssignment(assignment.with_worker(worker)));
        }
    }

    /// A worker is gone: with a grace period its leases wait for it, without one they are
    /// lost now.
    pub(super) fn worker_lost(&mut self, worker: &str, reason: &str, grace_ms: u64) -> Vec<Effect> {
        self.wake = true;
        self.event(
            None,
            EventKind::WorkerLost {
                worker: worker.to_owned(),
                reason: reason.to_owned(),
            },
        );
        let held: Vec<AttemptId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.worker == worker && l.orphaned_until.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut effects = Vec::new();
        for attempt in held {
            if grace_ms == 0 {
                effects.extend(self.lose(attempt, &format!("{worker} {reason}")));
            } else if let Some(l) = self.leases.get_mut(&attempt) {
                l.orphaned_until = Some(self.now + grace_ms);
            }
        }
        effects
    }

    /// Leases whose grace ran out are lost.
    pub(super) fn expire_leases(&mut self) -> Vec<Effect> {
        let now = self.now;
        let expired: Vec<(AttemptId, String)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.orphaned_until.is_some_and(|t| t <= now))
            .map(|(id, l)| (*id, l.worker.clone()))
            .collect();
        let mut effects = Vec::new();
        for (attempt, worker) in expired {
            effects.extend(self.lose(attempt, &format!("{worker} did not come back in time")));
        }
        effects
    }

    /// A lease is lost: its step goes back in the queue.
    fn lose(&mut self, attempt: AttemptId, why: &str) -> Vec<Effect> {
        let Some(l) = self.leases.get(&attempt).cloned() else {
            return Vec::new();
        };
        self.revoked(attempt, l.task, why);
        self.event(
            l.task,
            EventKind::OrphanFound {
                kind: "attempt".to_owned(),
                name: format!(
                    "attempt {attempt} ({} {}) on {}",
                    l.subject, l.role, l.worker
                ),
                action: format!("{why}; dispatched again"),
            },
        );
        self.wake = true;
        self.drop_attempt(attempt)
    }

    /// Remembers why `attempt` was taken from its worker, for a push it may still ask for.
    pub(super) fn revoked(&mut self, attempt: AttemptId, task: Option<TaskId>, why: &str) {
        self.revoked.insert(attempt, (task, why.to_owned()));
        while self.revoked.len() > REVOKED_REMEMBERED {
            self.revoked.pop_first();
        }
    }

    /// The push fence: a worker may push only for an attempt that is current and held by it.
    /// Once the lease was lost, cancelled or moved, the old worker must not push over the work
    /// of whoever holds the task now. How long a grant holds is the dispatcher's to say (it
    /// knows how soon it could declare the worker lost). A refusal is journaled with the
    /// next write.
    pub(super) fn push_asked(&mut self, worker: &str, attempt: AttemptId) -> Vec<Effect> {
        let refusal = match self.leases.get(&attempt) {
            Some(l) if l.worker != worker => Some((
                l.task,
                format!("{attempt} is held by {}, not by {worker}", l.worker),
            )),
            Some(l) if l.orphaned_until.is_some() => Some((
                l.task,
                format!("{attempt} waits for {} to reconnect", l.worker),
            )),
            Some(_) => None,
            None => Some(match self.revoked.get(&attempt) {
                Some((task, why)) => (*task, format!("{attempt} was revoked: {why}")),
                None => (
                    None,
                    format!(
                        "{attempt} is not current (it was revoked, or it already \
                         finished)"
                    ),
                ),
            }),
        };
        let Some((task, reason)) = refusal else {
            return vec![Effect::AnswerPush {
                worker: worker.to_owned(),
                attempt,
                granted: true,
                reason: String::new(),
            }];
        };
        let event = self.event_at(
            task,
            EventKind::OrphanFound {
                kind: "push".to_owned(),
                name: format!("{attempt} from {worker}"),
                action: format!("refused: {reason}"),
            },
        );
        self.deferred.push(event);
        vec![Effect::AnswerPush {
            worker: worker.to_owned(),
            attempt,
            granted: false,
            reason,
        }]
    }

    /// Forgets an attempt: its assignment (the task becomes runnable at the same position)
    /// or its job (intake or improvement runs again when due).
    pub(super) fn drop_attempt(&mut self, attempt: AttemptId) -> Vec<Effect> {
        self.leases.remove(&attempt);
        let forget = vec![Effect::Forget(attempt)];
        if self.jobs.remove(&attempt).is_some() {
            return forget;
        }
        let task = self
            .state
            .assignments
            .values()
            .find(|a| a.attempt == attempt)
            .map(|a| a.task);
        if let Some(task) = task {
            self.record(Change::DeleteAssignment(task));
        }
        forget
    }

    /// The driver prepared an order: journal the prompt, or put the step back.
    pub(super) fn dispatched(&mut self, attempt: AttemptId, outcome: Result<u64, String>) {
        let Some(l) = self.leases.get(&attempt).cloned() else {
            return;
        };
        match outcome {
            Ok(bytes) => {
                let event = self.event_at(
                    l.task,
                    EventKind::PromptComposed {
                        role: l.role,
                        round: l.round,
                        bytes,
                    },
                );
                self.deferred.push(event);
            }
            Err(reason) => {
                self.event(
                    l.task,
                    EventKind::SpawnFailed {
                        step: l.step.clone(),
                        role: l.role.clone(),
                        reason,
                    },
                );
                let forget = self.drop_attempt(attempt);
                self.after_persist.extend(forget);
                self.wake = true;
            }
        }
    }

    // --- operator commands ---------------------------------------------------------------

    /// Answers a command once what it changed is stored.
    pub(super) fn command(&mut self, op: Op) -> Vec<Effect> {
        self.wake = true;
        let answer = match op {
            Op::Approve {
                task,
                gate,
                comment,
            } => self.approve(task, gate.as_deref(), &comment),
            Op::Cancel { task, reason } => self.cancel(task, &reason),
            Op::RetrySpec { path } => self.retry_spec(path).map(Answer::Spec),
        };
        let mut effects = self.flush();
        effects.push(Effect::Answer(answer));
        effects
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
    ) -> Result<Answer, CommandError> {
        let task = self.task_or_not_found(id)?;
        let waiting = task
            .position
            .as_ref()
            .and_then(|p| self.project.process.pipeline.next_at(p).ok());
        if let Some(Next::RunAction { action, .. }) = &waiting
            && !self.settings.forge
            && self.merge_needs_approval(&task, action)
        {
            let text = if comment.trim().is_empty() {
                format!("{MERGE_APPROVED} (`{action}`) by an operator.")
            } else {
                format!("{MERGE_APPROVED} (`{action}`) by an operator: {comment}")
            };
            self.add_review(&task, "human", Verdict::Pass, text);
            self.event(
                Some(id),
                EventKind::GateCleared {
                    gate: action.clone(),
                    by: "hyperloopctl approve".to_owned(),
                },
            );
            self.wake = true;
            return self
                .task_or_not_found(id)
                .map(|t| Answer::Task(Box::new(t)));
        }
        let Some(Next::WaitAtGate { gate: at, .. }) = waiting else {
            return Err(CommandError::FailedPrecondition(format!(
                "{id} is not waiting at a gate or an unapproved merge (status {}); only those \
                 can be approved",
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
        self.add_review(&task, "human", Verdict::Pass, text);
        self.event(
            Some(id),
            EventKind::GateCleared {
                gate: at,
                by: "hyperloopctl approve".to_owned(),
            },
        );
        self.apply_outcome(task, Outcome::Gate(GateCheck::Cleared));
        self.task_or_not_found(id)
            .map(|t| Answer::Task(Box::new(t)))
    }

    /// An operator's cancel stops the task for good: it fails with the reason but does not
    /// re-enter intake (the operator decided against it; a spec change brings it back).
    fn cancel(&mut self, id: TaskId, reason: &str) -> Result<Answer, CommandError> {
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
        self.stop_task(id, reason, Stop::Cancelled);
        self.task_or_not_found(id)
            .map(|t| Answer::Task(Box::new(t)))
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
        self.put_meta();
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
}
