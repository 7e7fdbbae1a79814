//! What happens to tasks and gaps: results reaped, the one place a task's status changes
//! ([`Core::settle`]), gaps closed or counted as failed, deleted specs, gates and actions,
//! landing outcomes and the forge's news.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{EventKind, GateWait, SpecChange as SpecChangeEvent};

/// How an operator's approval of a merge starts its review (`hyperloopctl approve` of a task
/// whose `pr-merge` waits because `merge.auto_merge` is false).
pub(super) const MERGE_APPROVED: &str = "Approved the merge";
use crate::gaps::{self, Coverage};
use crate::intake;
use crate::landing::{LandRequest, Landed, WorkRef};
use crate::model::{SpecPath, Task, TaskId, TaskStatus, Verdict};
use crate::pipeline::{
    ActionKind, ActionOutcome, Change as StepChange, GateCheck, Next, Outcome, Transition,
};
use crate::prompt::FailedResult;
use crate::retry::Retry;
use crate::specs::BlobId;
use crate::state::{Assignment, Change, SpecRecord};
use crate::step::StepReport;

use super::{Core, Effect, ForgeAsk, ForgeNews, Job, REBASE_RESOLVER, Stop};

impl Core {
    // --- COLLECT -----------------------------------------------------------------------

    pub(super) fn collect(&mut self) -> u32 {
        let results = std::mem::take(&mut self.results);
        let mut reaped = 0;
        for (worker, report) in results {
            let attempt = report.attempt;
            // Acknowledged once its consequences are stored: a coordinator killed before
            // that hears the result again from the worker.
            self.after_persist.push(Effect::Ack {
                worker: worker.clone(),
                attempt,
            });
            self.after_persist.push(Effect::Forget(attempt));
            if self.leases.remove(&attempt).is_none() {
                self.event(
                    report.subject.parse().ok(),
                    EventKind::OrphanFound {
                        kind: "result".to_owned(),
                        name: format!("attempt {attempt} of {} from {worker}", report.subject),
                        action: "rejected: the attempt is no longer current".to_owned(),
                    },
                );
                continue;
            }
            if let Some(job) = self.jobs.remove(&attempt) {
                reaped += 1;
                self.reap_job(job, report);
                continue;
            }
            let Some(assignment) = self
                .state
                .assignments
                .values()
                .find(|a| a.attempt == attempt)
                .cloned()
            else {
                continue;
            };
            reaped += 1;
            self.reap_task(&assignment, &worker, &report);
        }
        reaped
    }

    fn reap_task(&mut self, assignment: &Assignment, worker: &str, report: &StepReport) {
        let owned;
        let report = match passed_without_commits(&assignment.role, report) {
            Some(failed) => {
                owned = failed;
                &owned
            }
            None => report,
        };
        let Some(mut task) = self.state.tasks.get(&assignment.task).cloned() else {
            return;
        };
        self.record(Change::DeleteAssignment(task.id));
        if let Some(branch) = &report.branch {
            task.branch = Some(branch.clone());
        }
        if report.head_commit.is_some() && self.settings.forge && task.pr.is_none() {
            self.after_persist
                .push(Effect::Forge(ForgeAsk::Pushed(task.id)));
        }
        self.event(
            Some(task.id),
            EventKind::ResultReaped {
                step: assignment.step.clone(),
                role: assignment.role.clone(),
                round: assignment.round,
                attempt: assignment.attempt.0,
                worker: worker.to_owned(),
                verdict: report.verdict,
                duration_ms: report.duration_ms(),
                usage: report.usage.sanitized(),
            },
        );
        if report.verdict == Verdict::Fail {
            let review = crate::model::Review {
                task_id: task.id,
                round: assignment.round,
                role: assignment.role.clone(),
                verdict: Verdict::Fail,
                detail: report.detail.clone(),
            };
            self.improvement_findings.push(FailedResult {
                spec_ref: task.spec_ref.clone(),
                review: review.clone(),
            });
            self.record(Change::AddReview(review));
        }
        if assignment.role == REBASE_RESOLVER {
            // The task stays at its merge action: a pass retries landing, a fail counts as a
            // failed attempt of that action.
            if report.verdict == Verdict::Fail {
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
            } else {
                self.put_task(task);
            }
            return;
        }
        if task.position.as_ref().map(ToString::to_string).as_deref() != Some(&assignment.step) {
            // A result for a step the task is no longer at (moved by an operator meanwhile).
            self.put_task(task);
            return;
        }
        self.apply_outcome(task, Outcome::Agent(report.verdict));
    }

    /// Feeds an outcome to the pure executor and settles the transition.
    pub(super) fn apply_outcome(&mut self, task: Task, outcome: Outcome) {
        let Ok(Some(progress)) = task.progress() else {
            return;
        };
        let limits = self.limits();
        if let Ok(transition) = self
            .project
            .process
            .pipeline
            .apply(&progress, outcome, limits)
        {
            self.settle(task, &transition, Stop::Pipeline);
        }
    }

    /// Stops an unfinished task from outside the pipeline: its running step is cancelled and
    /// it fails with `reason`, dependents included.
    pub(super) fn stop_task(&mut self, id: TaskId, reason: String, stop: Stop) {
        let Some(task) = self.state.tasks.get(&id).cloned() else {
            return;
        };
        let Ok(transition) = Transition::stop(&task, reason.clone()) else {
            return; // already finished
        };
        if let Some(a) = self.state.assignments.get(&id).cloned() {
            self.revoked(a.attempt, Some(id), &reason);
            self.after_persist.push(Effect::Cancel {
                worker: a.worker.clone(),
                attempt: a.attempt,
                reason,
            });
            let forget = self.drop_attempt(a.attempt);
            self.after_persist.extend(forget);
        }
        self.needs_rebase.remove(&id);
        self.settle(task, &transition, stop);
    }

    /// The one place a task's status changes: writes the transition into the task, journals
    /// it, and carries out what a finished task implies (intake feedback, spec failure
    /// counting, dependents, the forge).
    pub(super) fn settle(&mut self, mut task: Task, transition: &Transition, stop: Stop) {
        let from = task
            .position
            .as_ref()
            .map(|p| p.step().to_string())
            .unwrap_or_default();
        transition.apply_to(&mut task);
        let to = transition
            .next
            .position()
            .map(|p| p.step().to_string())
            .unwrap_or_default();
        let id = task.id;
        match &transition.change {
            StepChange::Advanced { .. } | StepChange::Started => {
                let gate = self.gate_wait(&task);
                self.event(
                    Some(id),
                    EventKind::TaskAdvanced {
                        from_step: from,
                        to_step: to,
                        round: task.round,
                        gate,
                    },
                );
            }
            StepChange::LoopedBack { .. } => self.event(
                Some(id),
                EventKind::TaskLoopedBack {
                    from_step: from,
                    to_step: to,
                    round: task.round,
                },
            ),
            StepChange::Completed => {
                self.progress += 1;
                self.event(Some(id), EventKind::TaskCompleted { rounds: task.round });
            }
            StepChange::Failed => {
                let reason = task.failure.clone().unwrap_or_default();
                self.task_failed(&task, &reason, stop);
            }
            StepChange::Stayed | StepChange::ActionErrorCounted { .. } => {}
        }
        let failed = task.status == TaskStatus::Failed;
        self.put_task(task);
        if failed {
            self.fail_dependents(id);
        }
    }

    /// The gate `task` now waits at, if it does, with what clears it (for the notifiers).
    fn gate_wait(&self, task: &Task) -> Option<GateWait> {
        let process = &self.project.process;
        let next = process.pipeline.next_at(task.position.as_ref()?).ok()?;
        let Next::WaitAtGate { gate, .. } = next else {
            return None;
        };
        let def = process.gates.get(&gate)?;
        Some(GateWait {
            clears: crate::gates::clears(&def.kind, task.id),
            gate,
        })
    }

    /// Journals a failed task and what follows: failure is feedback (the gap re-enters
    /// intake with this task's history) unless an operator or a deleted spec ended it on
    /// purpose, and a task failing on its own counts against its spec.
    fn task_failed(&mut self, task: &Task, reason: &str, stop: Stop) {
        self.progress += 1;
        let id = task.id;
        match stop {
            Stop::Pipeline => {
                self.add_review(
                    task,
                    "coordinator",
                    Verdict::Fail,
                    format!("The task failed: {reason}"),
                );
                self.event(
                    Some(id),
                    EventKind::TaskFailed {
                        reason: reason.to_owned(),
                    },
                );
            }
            Stop::DependencyFailed => self.event(
                Some(id),
                EventKind::TaskFailed {
                    reason: reason.to_owned(),
                },
            ),
            Stop::Cancelled | Stop::SpecDeleted | Stop::SpecUnusable => self.event(
                Some(id),
                EventKind::TaskCancelled {
                    reason: reason.to_owned(),
                },
            ),
        }
        if matches!(stop, Stop::Pipeline | Stop::DependencyFailed)
            && !self.state.meta.failed_since_intake.contains(&id)
        {
            self.state.meta.failed_since_intake.push(id);
            self.put_meta();
        }
        if stop == Stop::Pipeline {
            self.count_spec_failure(&task.spec_ref.path, reason);
        }
    }

    /// Tasks waiting on a failed task can never start: they fail too, naming the dependency,
    /// so intake can propose a different plan for the whole gap.
    fn fail_dependents(&mut self, failed: TaskId) {
        let dependents: Vec<(TaskId, SpecPath)> = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::NotStarted && t.deps.contains(&failed))
            .map(|t| (t.id, t.spec_ref.path.clone()))
            .collect();
        for (id, path) in dependents {
            // A dependent whose own spec is gone is cancelled for that, not failed.
            if self.view.specs.contains_key(&path) {
                let reason = format!("dependency {failed} failed, so this task cannot start");
                self.stop_task(id, reason, Stop::DependencyFailed);
            } else {
                let reason = format!("cancelled: spec {path} was deleted");
                self.stop_task(id, reason, Stop::SpecDeleted);
            }
        }
    }

    /// Records which gaps a successful intake closed: a spec is processed once accepted tasks
    /// cover it or the PM proposed nothing for it; one whose proposals were all rejected
    /// stays open (its rejections are shown to the next intake) and counts as a failure.
    /// Failed tasks leave the intake queue once their spec's gap is closed again.
    fn close_gaps(
        &mut self,
        changed: &[(SpecPath, BlobId)],
        failures: &[TaskId],
        commit: &str,
        outcome: &intake::Intake,
    ) {
        let failed_specs: BTreeMap<TaskId, SpecPath> = failures
            .iter()
            .filter_map(|id| {
                self.state
                    .tasks
                    .get(id)
                    .map(|t| (*id, t.spec_ref.path.clone()))
            })
            .collect();
        let asked: BTreeSet<SpecPath> = changed
            .iter()
            .map(|(p, _)| p.clone())
            .chain(failed_specs.values().cloned())
            .collect();
        let coverage = gaps::coverage(&asked, &outcome.created, &outcome.rejections);
        for (path, blob) in changed {
            if coverage.get(path).is_some_and(Coverage::closes) {
                self.progress += 1;
                self.record(Change::PutSpec(SpecRecord {
                    path: path.clone(),
                    blob: blob.0.clone(),
                    commit: commit.to_owned(),
                }));
                self.view.refresh(path, &self.state.specs);
            }
        }
        let closed: BTreeSet<TaskId> = failed_specs
            .iter()
            .filter(|(_, path)| coverage.get(*path).is_some_and(Coverage::closes))
            .map(|(id, _)| *id)
            .collect();
        self.state
            .meta
            .failed_since_intake
            .retain(|id| !closed.contains(id));
        for (path, c) in &coverage {
            if let Coverage::Open(why) = c {
                self.count_spec_failure(path, why);
            }
        }
    }

    /// Counts a failure against the spec's current version; at `max_spec_failures` the spec
    /// is given up and its failed tasks leave the intake queue.
    fn count_spec_failure(&mut self, path: &SpecPath, why: &str) {
        let Some(blob) = self.view.specs.get(path).map(|b| b.0.clone()) else {
            return;
        };
        let limit = self.settings.config.max_spec_failures;
        let given_up =
            gaps::count_failure(&mut self.state.meta.spec_failures, path, &blob, why, limit);
        if let Some(reason) = given_up {
            self.spec_given_up(path, reason);
        }
        self.put_meta();
    }

    /// A spec was given up: its failed tasks leave the intake queue, and it is journaled.
    fn spec_given_up(&mut self, path: &SpecPath, reason: String) {
        self.progress += 1;
        let tasks = &self.state.tasks;
        self.state
            .meta
            .failed_since_intake
            .retain(|t| tasks.get(t).is_none_or(|t| &t.spec_ref.path != path));
        self.event(
            None,
            EventKind::SpecFailed {
                path: path.to_string(),
                reason,
            },
        );
    }

    /// Stops every unfinished task of `path` with `reason`.
    fn stop_tasks_of(&mut self, path: &SpecPath, reason: &str, stop: Stop) {
        let doomed: Vec<TaskId> = self
            .state
            .tasks
            .values()
            .filter(|t| &t.spec_ref.path == path && !t.status.is_terminal())
            .map(|t| t.id)
            .collect();
        for id in doomed {
            self.stop_task(id, reason.to_owned(), stop);
        }
    }

    fn reap_job(&mut self, job: Job, report: StepReport) {
        match job {
            Job::Intake {
                commit,
                changed,
                known,
                failures,
            } => {
                let failures_considered = u32::try_from(failures.len()).unwrap_or(u32::MAX);
                self.state.meta.intake_round += 1;
                let mut created = Vec::new();
                let rejections: Vec<String>;
                if report.verdict == Verdict::Pass {
                    let outcome = intake::accept(
                        &report.proposals,
                        &known,
                        &self.state.tasks,
                        &commit,
                        self.state.meta.next_task_id.max(1),
                    );
                    if !outcome.created.is_empty() {
                        self.progress += 1;
                    }
                    for task in &outcome.created {
                        self.state.meta.next_task_id = task.id.0 + 1;
                        created.push(task.id);
                        self.event(
                            Some(task.id),
                            EventKind::TaskCreated {
                                title: task.title.clone(),
                                spec_ref: task.spec_ref.clone(),
                                deps: task.deps.clone(),
                            },
                        );
                        self.put_task(task.clone());
                    }
                    self.close_gaps(&changed, &failures, &commit, &outcome);
                    rejections = outcome.rejections.into_iter().map(|r| r.finding).collect();
                    self.intake_failures = 0;
                    self.intake_not_before = None;
                } else {
                    // Nothing closes: the same specs and failures are asked about again.
                    rejections = vec![format!("The previous intake run failed: {}", report.detail)];
                    self.intake_failures += 1;
                    let backoff = crate::retry::delay(self.intake_failures);
                    let backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                    self.intake_not_before = Some(self.now.saturating_add(backoff_ms));
                }
                self.event(
                    None,
                    EventKind::IntakeRun {
                        changed_specs: changed.iter().map(|(p, _)| p.to_string()).collect(),
                        failures_considered,
                        created,
                        rejected: rejections.clone(),
                    },
                );
                self.state.meta.intake_rejections = rejections;
                self.put_meta();
            }
            Job::Improvement => {
                self.state.meta.improvement_round += 1;
                self.put_meta();
                match (&report.verdict, &report.head_commit, &report.branch) {
                    (Verdict::Pass, Some(head), Some(branch)) => {
                        let request = LandRequest {
                            task: WorkRef::ProcessImprovement,
                            title: "Process improvements from failed rounds".to_owned(),
                            spec_ref: None,
                            branch: branch.clone(),
                            head: Some(crate::specs::CommitId(head.clone())),
                            strategy: crate::config::MergeStrategy::Squash,
                            delete_branch: true,
                        };
                        // Journaled as ProcessImproved once it landed.
                        self.improvements_landing = true;
                        self.after_persist.push(Effect::Land {
                            request,
                            action: String::new(),
                        });
                    }
                    _ => self.event(
                        None,
                        EventKind::ProcessImproved {
                            verdict: report.verdict,
                            commit: None,
                        },
                    ),
                }
            }
        }
    }

    // --- INTAKE --------------------------------------------------------------------------

    /// A spec whose text cannot be used is given up at its current version: an intake in
    /// flight does not count it as answered, its unfinished tasks stop, and nothing more is
    /// spent on it until the file changes. Other specs are not held up.
    pub(super) fn spec_unusable(&mut self, path: &SpecPath, why: &str) {
        self.wake = true;
        let Some(blob) = self.view.specs.get(path).map(|b| b.0.clone()) else {
            return;
        };
        for job in self.jobs.values_mut() {
            if let Job::Intake { changed, .. } = job {
                changed.retain(|(p, _)| p != path);
            }
        }
        if let Some(reason) = gaps::give_up(&mut self.state.meta.spec_failures, path, &blob, why) {
            self.put_meta();
            self.spec_given_up(path, reason);
        }
        let reason = format!("stopped: {path} cannot be used: {why}");
        self.stop_tasks_of(path, &reason, Stop::SpecUnusable);
    }

    /// A deleted spec cancels its unfinished tasks right away.
    pub(super) fn cancel_deleted_specs(&mut self) {
        let deleted: Vec<SpecPath> = self.view.deleted.iter().cloned().collect();
        for path in deleted {
            self.record(Change::DeleteSpec(path.clone()));
            self.view.refresh(&path, &self.state.specs);
            self.event(
                None,
                EventKind::SpecChanged {
                    path: path.to_string(),
                    change: SpecChangeEvent::Deleted,
                },
            );
            let reason = format!("cancelled: spec {path} was deleted");
            self.stop_tasks_of(&path, &reason, Stop::SpecDeleted);
        }
    }

    // --- ADVANCE -------------------------------------------------------------------------

    /// Moves tasks at actions (local landing) and hands tasks at gates and actions to the
    /// forge in GitHub mode. Returns how many actions started.
    pub(super) fn advance(&mut self) -> u32 {
        let mut advanced = 0;
        let mut at_gates = BTreeSet::new();
        let waiting: Vec<Task> = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::NotStarted || t.status == TaskStatus::InProgress)
            .filter(|t| !self.state.assignments.contains_key(&t.id))
            .filter(|t| !self.needs_rebase.contains(&t.id) && !self.landing.contains(&t.id))
            .cloned()
            .collect();
        for task in waiting {
            if let Some(retry) = task.retry.as_ref().filter(|r| !r.due(self.now)) {
                let at = retry.not_before_ms;
                self.next_retry = Some(self.next_retry.map_or(at, |t| t.min(at)));
                continue;
            }
            let Some(next) = task
                .position
                .as_ref()
                .and_then(|p| self.project.process.pipeline.next_at(p).ok())
            else {
                continue;
            };
            match next {
                Next::RunAction { .. } | Next::WaitAtGate { .. } if self.settings.forge => {
                    self.after_persist
                        .push(Effect::Forge(ForgeAsk::Advance(task.id)));
                }
                Next::RunAction { action, .. } if self.merge_needs_approval(&task, &action) => {
                    self.announce_merge_wait(task.id, &action);
                }
                Next::RunAction { action, .. } => {
                    self.merges_waiting.remove(&task.id);
                    advanced += 1;
                    self.run_action(task, &action);
                }
                Next::WaitAtGate { gate, .. } if self.settings.check_gates => {
                    at_gates.insert(task.id);
                    self.check_gate(task.id, gate);
                }
                _ => {}
            }
        }
        // Tasks that left their gate (approved, cancelled) are not checked again.
        self.gates_next.retain(|id, _| at_gates.contains(id));
        advanced
    }

    /// Asks for a check of a gate with `command` leaves, one at a time per task and at most
    /// once per `poll_interval`; other gates wait for `hyperloopctl approve`.
    fn check_gate(&mut self, task: TaskId, gate: String) {
        let runs_here =
            crate::gates::leaves(&gate, &self.project.process.gates).is_ok_and(|leaves| {
                leaves
                    .iter()
                    .any(|(_, kind)| matches!(kind, crate::pipeline::GateKind::Command { .. }))
            });
        if !runs_here
            || self.gates_checking.contains(&task)
            || self.gates_next.get(&task).is_some_and(|at| self.now < *at)
        {
            return;
        }
        self.gates_next.remove(&task);
        self.gates_checking.insert(task);
        self.after_persist.push(Effect::CheckGate { task, gate });
    }

    /// A gate check finished: a cleared gate lets the task on, a failed one loops it back
    /// with the findings, a waiting one is asked again after `poll_interval`.
    pub(super) fn gate_checked(
        &mut self,
        id: TaskId,
        gate: &str,
        outcome: Result<crate::gates::GateStatus, String>,
    ) {
        use crate::gates::GateStatus;
        self.gates_checking.remove(&id);
        let poll = u64::try_from(self.settings.config.poll_interval.as_millis()).unwrap_or(0);
        self.gates_next.insert(id, self.now.saturating_add(poll));
        let Some(task) = self.state.tasks.get(&id).cloned() else {
            return;
        };
        let next = task
            .position
            .as_ref()
            .and_then(|p| self.project.process.pipeline.next_at(p).ok());
        if !matches!(&next, Some(Next::WaitAtGate { gate: g, .. }) if g == gate) {
            return; // moved on meanwhile (approved by an operator, cancelled)
        }
        match outcome {
            Ok(GateStatus::Cleared) => {
                self.wake = true;
                self.event(
                    Some(id),
                    EventKind::GateCleared {
                        gate: gate.to_owned(),
                        by: "command".to_owned(),
                    },
                );
                self.apply_outcome(task, Outcome::Gate(GateCheck::Cleared));
            }
            Ok(GateStatus::Failed { findings }) => {
                self.wake = true;
                let role = format!("gate:{gate}");
                self.add_review(&task, &role, Verdict::Fail, findings.join("\n"));
                self.apply_outcome(task, Outcome::Gate(GateCheck::Failed));
            }
            Ok(GateStatus::Waiting { .. }) | Err(_) => {}
        }
    }

    /// Says once per task that its merge waits for an operator, and how to give it.
    fn announce_merge_wait(&mut self, id: TaskId, action: &str) {
        if !self.merges_waiting.insert(id) {
            return;
        }
        self.event(
            Some(id),
            EventKind::GateChecked {
                gate: format!(
                    "{action} (merge.auto_merge is false: run `hyperloopctl approve {id}` to \
                     merge)"
                ),
                cleared: false,
            },
        );
    }

    /// Without GitHub, `merge.auto_merge: false` makes a `pr-merge` action wait until an
    /// operator approves the merge for the task's current round.
    pub(super) fn merge_needs_approval(&self, task: &Task, action: &str) -> bool {
        !self.settings.config.merge.auto_merge
            && self.project.process.actions.get(action) == Some(&ActionKind::PrMerge)
            && !self.state.reviews.get(&task.id).is_some_and(|reviews| {
                reviews.iter().any(|r| {
                    r.round == task.round
                        && r.role == "human"
                        && r.detail.starts_with(MERGE_APPROVED)
                })
            })
    }

    fn run_action(&mut self, task: Task, action: &str) {
        // Without GitHub there is no draft PR to mark ready: the step passes as is.
        if self.project.process.actions.get(action) == Some(&ActionKind::MarkPrReady) {
            self.apply_outcome(task, Outcome::Action(ActionOutcome::Success));
            return;
        }
        let Some(branch) = task.branch.clone() else {
            self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
            return;
        };
        let merge = &self.settings.config.merge;
        let request = LandRequest {
            task: WorkRef::Task(task.id),
            title: format!("{} ({})", task.title, task.id),
            spec_ref: Some(task.spec_ref.clone()),
            branch,
            head: None,
            strategy: merge.strategy,
            delete_branch: merge.delete_branch,
        };
        self.landing.insert(task.id);
        self.landing_since.entry(task.id).or_insert(self.now);
        self.after_persist.push(Effect::Land {
            request,
            action: action.to_owned(),
        });
    }

    // --- landing -------------------------------------------------------------------------

    /// A landing finished: its task moves on (or waits to retry), or process improvements
    /// take effect.
    pub(super) fn landed(&mut self, request: &LandRequest, action: &str, outcome: Landed) {
        self.wake = true;
        match request.task {
            WorkRef::Task(id) => {
                self.landing.remove(&id);
                self.task_landed(id, request, action, outcome);
            }
            WorkRef::ProcessImprovement => {
                self.improvements_landing = false;
                let commit = match outcome {
                    Landed::Done { commit } => Some(commit.0),
                    _ => None,
                };
                // Every agent spawned from now on sees the new overlays.
                self.after_persist.push(Effect::Recompose);
                self.event(
                    None,
                    EventKind::ProcessImproved {
                        verdict: Verdict::Pass,
                        commit,
                    },
                );
            }
        }
    }

    fn task_landed(&mut self, id: TaskId, request: &LandRequest, action: &str, outcome: Landed) {
        // Conflicts and retries are part of landing; anything else ends it.
        let since = match outcome {
            Landed::Conflict { .. } | Landed::RetryLater { .. } => None,
            Landed::Done { .. } | Landed::Failed { .. } => self.landing_since.remove(&id),
        };
        if let Landed::Done { commit } = &outcome {
            if self.state.meta.rebase_attempts.remove(&id).is_some() {
                self.put_meta();
            }
            self.event(
                Some(id),
                EventKind::Merged {
                    branch: request.branch.clone(),
                    into: self.settings.config.target.base_branch.clone(),
                    commit: commit.0.clone(),
                    strategy: format!("{:?}", request.strategy).to_lowercase(),
                    duration_ms: since.map(|t| self.now.saturating_sub(t)),
                },
            );
        }
        // Stopped (cancelled, spec deleted) while its landing ran: the outcome is moot.
        let Some(task) = self
            .state
            .tasks
            .get(&id)
            .filter(|t| !t.status.is_terminal())
            .cloned()
        else {
            return;
        };
        match outcome {
            Landed::Done { .. } => {
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Success));
            }
            Landed::Conflict { files } => self.conflicted(task, action, &request.branch, files),
            Landed::RetryLater { reason } => self.retry_later(task, reason),
            Landed::Failed { reason } => {
                self.add_review(
                    &task,
                    "coordinator",
                    Verdict::Fail,
                    format!("`{action}` failed: {reason}"),
                );
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
            }
        }
    }

    /// A transient failure: the task stays at its action and tries again after the shared
    /// backoff, which is stored with the task so a restart keeps it.
    fn retry_later(&mut self, mut task: Task, reason: String) {
        let retry = Retry::failed(task.retry.as_ref(), reason, self.now);
        let at = retry.not_before_ms;
        self.next_retry = Some(self.next_retry.map_or(at, |t| t.min(at)));
        task.retry = Some(retry);
        self.put_task(task);
    }

    /// A landing conflicted with the base branch: the rebase-resolver gets the task, up to
    /// `max_rebase_attempts` times; then the action counts as failed.
    fn conflicted(&mut self, task: Task, action: &str, branch: &str, files: Vec<String>) {
        let used = self
            .state
            .meta
            .rebase_attempts
            .get(&task.id)
            .copied()
            .unwrap_or(0);
        self.event(
            Some(task.id),
            EventKind::RebaseConflict {
                branch: branch.to_owned(),
                attempt: used + 1,
                files: files.clone(),
            },
        );
        if used < self.settings.config.max_rebase_attempts {
            self.state.meta.rebase_attempts.insert(task.id, used + 1);
            self.needs_rebase.insert(task.id);
        } else {
            self.state.meta.rebase_attempts.remove(&task.id);
            let base_branch = &self.settings.config.target.base_branch;
            let what = if files.is_empty() {
                String::new()
            } else {
                format!(" in {}", files.join(", "))
            };
            let detail = format!(
                "`{action}` conflicted with {base_branch}{what} after {used} rebase attempt(s); \
                 the work must be redone on the current base",
            );
            self.add_review(&task, "coordinator", Verdict::Fail, detail);
            self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
        }
        self.put_meta();
    }

    // --- the forge -----------------------------------------------------------------------

    pub(super) fn forge_news(&mut self, news: ForgeNews) {
        self.wake = true;
        let id = match &news {
            ForgeNews::Pr { task, .. }
            | ForgeNews::GateCleared { task, .. }
            | ForgeNews::GateFailed { task, .. }
            | ForgeNews::ActionDone { task }
            | ForgeNews::Merged { task, .. }
            | ForgeNews::ActionConflict { task }
            | ForgeNews::MergedByHuman { task, .. }
            | ForgeNews::Closed { task, .. }
            | ForgeNews::Refused { task, .. } => *task,
        };
        let Some(mut task) = self.state.tasks.get(&id).cloned() else {
            return;
        };
        let next = task
            .position
            .as_ref()
            .and_then(|p| self.project.process.pipeline.next_at(p).ok());
        match news {
            ForgeNews::Pr {
                number,
                url,
                opened,
                ..
            } => {
                task.pr = Some(number.to_string());
                if opened {
                    self.event(Some(id), EventKind::PrCreated { number, url });
                }
                self.put_task(task);
            }
            ForgeNews::GateCleared { gate, .. } => {
                // Moved on meanwhile (approved by an operator, cancelled): nothing to do.
                if matches!(&next, Some(Next::WaitAtGate { gate: g, .. }) if *g == gate) {
                    self.event(
                        Some(id),
                        EventKind::GateCleared {
                            gate,
                            by: "github".to_owned(),
                        },
                    );
                    self.apply_outcome(task, Outcome::Gate(GateCheck::Cleared));
                }
            }
            ForgeNews::GateFailed { gate, findings, .. } => {
                if matches!(&next, Some(Next::WaitAtGate { gate: g, .. }) if *g == gate) {
                    let role = format!("gate:{gate}");
                    self.add_review(&task, &role, Verdict::Fail, findings.join("\n"));
                    self.apply_outcome(task, Outcome::Gate(GateCheck::Failed));
                }
            }
            ForgeNews::ActionDone { .. } => self.forge_landed(task, next.as_ref()),
            ForgeNews::Merged { commit, .. } => {
                self.event(
                    Some(id),
                    EventKind::Merged {
                        branch: task.branch.clone().unwrap_or_default(),
                        into: self.settings.config.target.base_branch.clone(),
                        commit,
                        strategy: format!("{:?}", self.settings.config.merge.strategy)
                            .to_lowercase(),
                        duration_ms: None,
                    },
                );
                self.forge_landed(task, next.as_ref());
            }
            ForgeNews::MergedByHuman {
                branch,
                into,
                commit,
                ..
            } => {
                self.event(
                    Some(id),
                    EventKind::Merged {
                        branch,
                        into,
                        commit,
                        strategy: "by a human".to_owned(),
                        duration_ms: None,
                    },
                );
                self.forge_landed(task, next.as_ref());
            }
            ForgeNews::ActionConflict { .. } => {
                if let Some(Next::RunAction { action, .. }) = next {
                    let branch = task.branch.clone().unwrap_or_default();
                    self.conflicted(task, &action, &branch, Vec::new());
                }
            }
            ForgeNews::Closed { finding, .. } => self.forge_closed(task, finding),
            ForgeNews::Refused { error, .. } => {
                self.add_review(&task, "coordinator", Verdict::Fail, error);
                if matches!(next, Some(Next::RunAction { .. })) {
                    self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
                }
            }
        }
    }

    /// The pull request is merged (by us or by a human): the action at hand succeeds, and a
    /// task still at a gate is done waiting too.
    fn forge_landed(&mut self, task: Task, next: Option<&Next>) {
        if self.state.meta.rebase_attempts.remove(&task.id).is_some() {
            self.put_meta();
        }
        let outcome = match next {
            Some(Next::RunAction { .. }) => Outcome::Action(ActionOutcome::Success),
            Some(Next::WaitAtGate { .. }) => Outcome::Gate(GateCheck::Cleared),
            _ => return,
        };
        self.apply_outcome(task, outcome);
    }

    /// A human closed the pull request: what they said becomes the finding, and the task
    /// fails through the pipeline's stop transition, so its gap goes back to intake.
    fn forge_closed(&mut self, task: Task, finding: String) {
        self.add_review(&task, "human", Verdict::Fail, finding);
        let reason = "its pull request was closed without merging".to_owned();
        self.stop_task(task.id, reason, Stop::Pipeline);
    }
}

/// An implementer's pass that left the task branch where it was is a failed round: the
/// verifier would review unchanged code and the task could loop until `max_cycles` with
/// nothing to show. Returns the report turned into that failure, or `None` to keep it.
pub(super) fn passed_without_commits(role: &str, report: &StepReport) -> Option<StepReport> {
    if role != super::IMPLEMENTER || report.verdict != Verdict::Pass || report.new_commits {
        return None;
    }
    let mut failed = report.clone();
    failed.verdict = Verdict::Fail;
    let branch = report.branch.as_deref().unwrap_or("the task branch");
    failed.detail = format!(
        "- The implementer reported pass but made no new commit on {branch}: its work must \
         be committed (`git add` and `git commit` in the worktree; uncommitted changes are \
         discarded). Its report said:\n{}",
        report.detail
    );
    Some(failed)
}
