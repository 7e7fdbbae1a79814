//! The reconcile loop's decisions as a pure state machine: [`Core::on`] takes one [`Input`]
//! and the current time and returns the [`Effect`]s to carry out, in order. The coordinator
//! is the driver: it turns worker messages, spec scans, operator commands, landing and forge
//! replies and timers into inputs, and carries effects out through its ports (state store,
//! dispatcher, lander, forge, notifier). Nothing here reads a clock or does I/O, so every
//! behaviour of the loop is a unit test (see `tests.rs` and its `check` helper).
//!
//! A cycle ([`Input::Tick`]) is COLLECT (reap results), INTAKE (deleted specs), ADVANCE
//! (gates and actions) and SPAWN (plan dispatches). Crash safety rests on the order of the
//! effects a tick returns: [`Effect::Persist`] holds the results' consequences, the advances
//! and the new assignments, and comes before any acknowledgement, dispatch or landing.

mod leases;
mod lifecycle;
mod spawn;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::Config;
use crate::event::{Event, EventKind};
use crate::gaps;
use crate::gates::GateStatus;
use crate::landing::{LandRequest, Landed};
use crate::model::{AttemptId, Review, SpecPath, Task, TaskId, TaskStatus, Verdict};
use crate::pipeline::Limits;
use crate::project::Project;
use crate::prompt::FailedResult;
use crate::specs::{BlobId, SpecChanges, SpecView};
use crate::state::{Change, State};
use crate::step::StepReport;

pub use leases::Lease;

/// The role sent to resolve a landing conflict; it runs outside the pipeline, with the task
/// parked at its merge action.
pub const REBASE_RESOLVER: &str = "rebase-resolver";
/// The role whose steps must produce commits: its pass without any is a failed round.
pub const IMPLEMENTER: &str = "implementer";
pub const PM: &str = "pm";
pub const PROCESS_IMPROVER: &str = "process-improver";

/// `run` gives up after this many intake failures in a row (`watch` keeps retrying): a PM
/// that fails repeatedly needs a human, not more attempts.
pub const MAX_INTAKE_FAILURES: u32 = 3;

/// How the loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Halt once no gap remains.
    Run,
    /// Never halt; wait for spec changes.
    Watch,
}

/// Why the loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    Converged {
        complete: usize,
        failed: usize,
    },
    /// Nothing more can be done, but these specs were given up (`path: reason` each);
    /// `hyperloopctl retry spec PATH` or a spec change brings them back.
    SpecsFailed {
        complete: usize,
        failed: usize,
        specs: Vec<String>,
    },
    Shutdown,
    MaxCycles(u32),
    /// `run` stopped because intake kept failing; the detail is the last finding.
    IntakeFailing(String),
    /// Leadership was lost; another coordinator carries on.
    Deposed,
    /// The base branch was rewritten outside hyperloop; the detail says what to do.
    BaseRewritten(String),
}

/// What the core is configured with, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub mode: Mode,
    /// Several coordinators share the state (etcd).
    pub distributed: bool,
    /// This coordinator's name in events.
    pub coordinator_id: String,
    pub term: u64,
    /// GitHub mode: gates and merges go through the forge ([`Effect::Forge`]).
    pub forge: bool,
    /// How long a new leader keeps stored assignments for their workers to reclaim.
    pub takeover_grace_ms: u64,
    /// Without the forge, gates with `command` leaves are checked on this host
    /// ([`Effect::CheckGate`]); the operator allowed it.
    pub check_gates: bool,
}

/// A worker as the dispatcher knows it, handed in with every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub capacity: u32,
    /// Finishing its steps; takes no new ones.
    pub draining: bool,
}

/// An attempt a (re)connecting worker still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub attempt: AttemptId,
    /// Finished; its result waits for an acknowledgement.
    pub reporting: bool,
}

/// An operator command the core answers (draining a worker is the dispatcher's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Clears the gate the task waits at (`gate`: only if it is that one).
    Approve {
        task: TaskId,
        gate: Option<String>,
        comment: String,
    },
    Cancel {
        task: TaskId,
        reason: String,
    },
    RetrySpec {
        path: SpecPath,
    },
}

/// The core's answer to an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Task(Box<Task>),
    Spec(SpecPath),
}

/// Why an operator command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No such task or worker.
    #[error("{0}")]
    NotFound(String),
    /// The command does not apply now (task not at a gate, already finished, ...).
    #[error("{0}")]
    FailedPrecondition(String),
}

/// What the forge (GitHub) said about a task, as far as the core cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeNews {
    /// The task's pull request exists (`opened`: just now).
    Pr {
        task: TaskId,
        number: u64,
        url: String,
        opened: bool,
    },
    GateCleared {
        task: TaskId,
        gate: String,
    },
    GateFailed {
        task: TaskId,
        gate: String,
        findings: Vec<String>,
    },
    /// The action at hand (mark ready, merge) is done.
    ActionDone {
        task: TaskId,
    },
    /// The merge action merged the pull request now, as `commit`.
    Merged {
        task: TaskId,
        commit: String,
    },
    /// The merge conflicts with the base branch.
    ActionConflict {
        task: TaskId,
    },
    /// A human merged the pull request.
    MergedByHuman {
        task: TaskId,
        branch: String,
        into: String,
        commit: String,
    },
    /// A human closed the pull request without merging; `finding` is what they said.
    Closed {
        task: TaskId,
        finding: String,
    },
    /// GitHub refused for good; the step at hand counts as failed.
    Refused {
        task: TaskId,
        error: String,
    },
}

/// Something the core asks the forge about a task; the driver paces the calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeAsk {
    /// The task pushed work: make sure it has a pull request.
    Pushed(TaskId),
    /// The task waits at a gate or an action: check it or do it.
    Advance(TaskId),
}

/// Everything that can happen to the loop.
#[derive(Debug, Clone)]
pub enum Input {
    /// Run a cycle with the workers as they are now.
    Tick(Tick),
    /// The base branch's specs changed (or its tip moved).
    Specs(SpecChanges),
    /// A worker reported a step's end.
    Result {
        worker: String,
        report: StepReport,
    },
    /// A worker asks whether `attempt` may still push its commits; answered at once with
    /// [`Effect::AnswerPush`].
    PushAsked {
        worker: String,
        attempt: AttemptId,
    },
    /// A worker will not run an attempt; it is planned again.
    Declined {
        attempt: AttemptId,
    },
    /// The driver prepared a dispatched order: the prompt's size, or why it could not.
    Dispatched {
        attempt: AttemptId,
        outcome: Result<u64, String>,
    },
    WorkerJoined {
        worker: String,
        capacity: u32,
        held: Vec<Held>,
    },
    /// A worker is gone; its attempts wait `grace_ms` for it to come back (0: lost now).
    WorkerLost {
        worker: String,
        reason: String,
        grace_ms: u64,
    },
    Command(Op),
    Landed {
        request: LandRequest,
        action: String,
        outcome: Landed,
    },
    Forge(ForgeNews),
    /// A gate check asked for with [`Effect::CheckGate`] finished (`Err`: it could not be
    /// run; it is asked again after `poll_interval`).
    GateChecked {
        task: TaskId,
        gate: String,
        outcome: Result<GateStatus, String>,
    },
    /// A spec's text cannot be used (not UTF-8, over `max_spec_bytes`): it is given up with
    /// the reason, its unfinished tasks stop, and the other specs go on.
    SpecUnusable {
        path: SpecPath,
        reason: String,
    },
    /// The project was composed again (after process improvements landed).
    Recomposed(Box<Project>),
    /// Something outside may have changed (a poll, a sync): look again.
    Wake,
    /// The loop stops for this reason.
    Stop(Halt),
}

#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub workers: Vec<Offer>,
    /// Forge calls are in flight (the loop must not call itself converged).
    pub forge_busy: bool,
}

/// Something for the driver to do. The driver carries effects out in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this batch atomically; nothing after it may happen unless it succeeded.
    Persist(Vec<Change>),
    /// The result of this attempt is stored: the worker may forget it.
    Ack {
        worker: String,
        attempt: AttemptId,
    },
    Cancel {
        worker: String,
        attempt: AttemptId,
        reason: String,
    },
    /// Tell the worker whether the attempt may push: only while it is current and held by
    /// that worker (`reason` says why not).
    AnswerPush {
        worker: String,
        attempt: AttemptId,
        granted: bool,
        reason: String,
    },
    /// Prepare (compose the prompt) and send; report back with [`Input::Dispatched`].
    Dispatch(Order),
    /// The attempt is over: close its log and live-view entry.
    Forget(AttemptId),
    Land {
        request: LandRequest,
        action: String,
    },
    Forge(ForgeAsk),
    /// Check where this gate stands for the task (its `command` leaves run on this host);
    /// report back with [`Input::GateChecked`].
    CheckGate {
        task: TaskId,
        gate: String,
    },
    /// Compose the project again and report back with [`Input::Recomposed`].
    Recompose,
    Answer(Result<Answer, CommandError>),
    /// Tick again no later than this (ms since the epoch).
    WakeAt(u64),
    Halt(Halt),
}

/// A planned dispatch.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub worker: String,
    pub attempt: AttemptId,
    pub work: Work,
}

/// What an order asks a worker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A task's agent step (or its rebase-resolver).
    Step {
        task: TaskId,
        role: String,
        step: String,
        round: u32,
    },
    /// The PM's intake for these specs (at this commit) and failed tasks.
    Intake {
        run: u32,
        commit: String,
        changed: Vec<(SpecPath, BlobId)>,
        failures: Vec<TaskId>,
    },
    /// The process-improver, with the failed results since its last run.
    Improvement {
        run: u32,
        findings: Vec<FailedResult>,
    },
}

impl Work {
    pub fn role(&self) -> &str {
        match self {
            Work::Step { role, .. } => role,
            Work::Intake { .. } => PM,
            Work::Improvement { .. } => PROCESS_IMPROVER,
        }
    }
}

/// A non-task run in flight, with what its result needs to be applied.
#[derive(Debug, Clone)]
enum Job {
    Intake {
        commit: String,
        changed: Vec<(SpecPath, BlobId)>,
        /// Every spec at `commit`: proposals may only name these.
        known: BTreeSet<SpecPath>,
        failures: Vec<TaskId>,
    },
    Improvement,
}

/// How a task came to stop: decides its event and whether its gap re-enters intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The pipeline failed it (or completed it, for non-failing transitions).
    Pipeline,
    /// An operator cancelled it: the gap does not re-enter intake.
    Cancelled,
    /// Its spec was deleted: nothing is left to reconcile.
    SpecDeleted,
    /// Its spec cannot be used as it is: nothing more is spent until the file changes.
    SpecUnusable,
    /// A task it depends on failed: the gap re-enters intake with the whole plan.
    DependencyFailed,
}

/// The loop's state and its decisions.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    project: Project,
    state: State,
    view: SpecView,
    /// The time of the input being handled (ms since the epoch).
    now: u64,
    /// Every dispatched attempt (task steps and jobs), with its lease.
    leases: BTreeMap<AttemptId, Lease>,
    /// Why recent attempts were taken away (and their task), so a refused push can say so
    /// (bounded).
    revoked: BTreeMap<AttemptId, (Option<TaskId>, String)>,
    /// Intake and process-improver runs in flight.
    jobs: BTreeMap<AttemptId, Job>,
    /// Results waiting for the next cycle.
    results: Vec<(String, StepReport)>,
    /// Tasks whose landing conflicted and that wait for a rebase-resolver slot.
    needs_rebase: BTreeSet<TaskId>,
    /// Tasks with a landing in flight, and whether process improvements are landing.
    landing: BTreeSet<TaskId>,
    improvements_landing: bool,
    /// When each task first asked to land (kept across retries and rebases), for the
    /// landing duration; in memory only, so a landing that spans a restart goes untimed.
    landing_since: BTreeMap<TaskId, u64>,
    /// Tasks ready for an agent that waited for a free worker slot at the last spawn.
    queued: usize,
    /// Worker slots offered at the last tick: more than before is a reason to dispatch, even
    /// without a join (a worker connected before this term's loop saw it join).
    offered: u64,
    /// Failed task results since the last process-improver run.
    improvement_findings: Vec<FailedResult>,
    /// Changes not yet handed out in a [`Effect::Persist`].
    changes: Vec<Change>,
    /// Journal entries that need no write of their own (a prompt's size): they go out with
    /// the next batch that is written anyway.
    deferred: Vec<Change>,
    /// Effects that must wait for the next persist (acknowledgements, landings).
    after_persist: Vec<Effect>,
    /// Consecutive failed intake runs, and when the next may start.
    intake_failures: u32,
    intake_not_before: Option<u64>,
    /// When the task with the earliest pending retry may run again.
    next_retry: Option<u64>,
    /// Tasks whose gate check is running, and when each waiting gate is checked next.
    gates_checking: BTreeSet<TaskId>,
    gates_next: BTreeMap<TaskId, u64>,
    /// Tasks whose merge waits for `hyperloopctl approve` (`merge.auto_merge: false`
    /// without GitHub), announced once each.
    merges_waiting: BTreeSet<TaskId>,
    /// Counts progress toward convergence; `max_cycles` bounds the cycles in a row without.
    progress: u64,
    progress_seen: u64,
    stalled_cycles: u32,
    last_cycle_at_ms: u64,
    /// Something happened that could let work move. Without it a cycle costs O(1).
    wake: bool,
}

impl Core {
    /// Loads `state` with the specs at the base branch tip. Stored assignments become
    /// orphaned leases their workers may reclaim within the takeover grace; tasks on a
    /// pipeline that changed since are carried over to their new positions.
    pub fn start(
        settings: Settings,
        project: Project,
        state: State,
        specs: SpecChanges,
        now: u64,
    ) -> (Core, Vec<Effect>) {
        let mut core = Core {
            settings,
            project,
            state,
            view: SpecView::default(),
            now,
            leases: BTreeMap::new(),
            revoked: BTreeMap::new(),
            jobs: BTreeMap::new(),
            results: Vec::new(),
            needs_rebase: BTreeSet::new(),
            landing: BTreeSet::new(),
            improvements_landing: false,
            landing_since: BTreeMap::new(),
            queued: 0,
            offered: 0,
            improvement_findings: Vec::new(),
            changes: Vec::new(),
            deferred: Vec::new(),
            after_persist: Vec::new(),
            intake_failures: 0,
            intake_not_before: None,
            next_retry: None,
            gates_checking: BTreeSet::new(),
            gates_next: BTreeMap::new(),
            merges_waiting: BTreeSet::new(),
            progress: 0,
            progress_seen: 0,
            stalled_cycles: 0,
            last_cycle_at_ms: 0,
            wake: true,
        };
        core.view.apply(specs, &core.state.specs);
        core.view.reconcile_records(&core.state.specs);
        core.recover();
        core.event(
            None,
            EventKind::CoordinatorStarted {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                mode: if core.settings.distributed {
                    "distributed"
                } else {
                    "single-host"
                }
                .to_owned(),
            },
        );
        if core.settings.distributed {
            core.event(
                None,
                EventKind::LeaderElected {
                    coordinator: core.settings.coordinator_id.clone(),
                    term: core.settings.term,
                },
            );
        }
        let effects = core.flush();
        (core, effects)
    }

    /// Handles one input at `now` (ms since the epoch); returns what to do, in order.
    pub fn on(&mut self, input: Input, now: u64) -> Vec<Effect> {
        self.now = now;
        match input {
            Input::Tick(tick) => return self.tick(&tick),
            Input::Specs(changes) => {
                if !changes.changes.is_empty() {
                    self.wake = true;
                }
                self.view.apply(changes, &self.state.specs);
            }
            Input::Result { worker, report } => {
                self.wake = true;
                self.results.push((worker, report));
            }
            Input::PushAsked { worker, attempt } => return self.push_asked(&worker, attempt),
            Input::Declined { attempt } => {
                self.wake = true;
                return self.drop_attempt(attempt);
            }
            Input::Dispatched { attempt, outcome } => self.dispatched(attempt, outcome),
            Input::WorkerJoined {
                worker,
                capacity,
                held,
            } => return self.joined(&worker, capacity, &held),
            Input::WorkerLost {
                worker,
                reason,
                grace_ms,
            } => return self.worker_lost(&worker, &reason, grace_ms),
            Input::Command(op) => return self.command(op),
            Input::Landed {
                request,
                action,
                outcome,
            } => self.landed(&request, &action, outcome),
            Input::Forge(news) => self.forge_news(news),
            Input::GateChecked {
                task,
                gate,
                outcome,
            } => self.gate_checked(task, &gate, outcome),
            Input::SpecUnusable { path, reason } => self.spec_unusable(&path, &reason),
            Input::Recomposed(project) => self.project = *project,
            Input::Wake => self.wake = true,
            Input::Stop(halt) => return self.stop(&halt),
        }
        Vec::new()
    }

    /// The driver stored the last batch: the state is at `revision` now.
    pub fn stored(&mut self, revision: crate::state::Revision) {
        self.state.revision = revision;
    }

    // --- read access for the driver -----------------------------------------------------

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    pub fn view(&self) -> &SpecView {
        &self.view
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn leases(&self) -> &BTreeMap<AttemptId, Lease> {
        &self.leases
    }

    pub fn last_cycle_at_ms(&self) -> u64 {
        self.last_cycle_at_ms
    }

    /// Tasks ready for an agent that waited for a free worker slot at the last dispatch.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the loop would halt as converged now (`forge_busy`: GitHub calls in flight).
    pub fn converged(&self, forge_busy: bool) -> bool {
        self.convergence(forge_busy).is_some()
    }

    // --- the cycle ----------------------------------------------------------------------

    fn tick(&mut self, tick: &Tick) -> Vec<Effect> {
        let offered: u64 = tick
            .workers
            .iter()
            .filter(|w| !w.draining)
            .map(|w| u64::from(w.capacity))
            .sum();
        if offered > self.offered {
            self.wake = true;
        }
        self.offered = offered;
        let intake_due = self.intake_not_before.is_some_and(|at| self.now >= at);
        if self.next_retry.is_some_and(|at| self.now >= at) {
            self.next_retry = None;
            self.wake = true;
        }
        if self.gates_next.values().any(|at| self.now >= *at) {
            self.wake = true;
        }
        let lost = self.expire_leases();
        self.after_persist.extend(lost);
        let mut worked = false;
        let mut orders = Vec::new();
        if self.wake || !self.results.is_empty() || intake_due {
            self.wake = false;
            let reaped = self.collect();
            self.cancel_deleted_specs();
            let advanced = self.advance();
            orders = self.spawn(&tick.workers);
            let dispatched = u32::try_from(orders.len()).unwrap_or(u32::MAX);
            worked = reaped + advanced + dispatched > 0;
            if worked {
                self.last_cycle_at_ms = self.now;
                self.state.meta.cycle += 1;
                self.put_meta();
                self.event(
                    None,
                    EventKind::CycleCompleted {
                        cycle: self.state.meta.cycle,
                        reaped,
                        advanced,
                        dispatched,
                    },
                );
            }
        }
        if self.progress != self.progress_seen {
            self.progress_seen = self.progress;
            self.stalled_cycles = 0;
        } else if worked {
            self.stalled_cycles += 1;
        }
        let mut effects = self.flush();
        effects.extend(orders.into_iter().map(Effect::Dispatch));
        if let Some(at) = self.next_wake() {
            effects.push(Effect::WakeAt(at));
        }
        if let Some(halt) = self.halt_due(tick.forge_busy) {
            effects.push(Effect::Halt(halt));
        }
        effects
    }

    /// The changes so far as one batch, then what had to wait for it.
    fn flush(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if !self.changes.is_empty() {
            // What was deferred happened first: it keeps its place in the journal.
            let mut batch = std::mem::take(&mut self.deferred);
            batch.append(&mut self.changes);
            effects.push(Effect::Persist(batch));
        }
        effects.append(&mut self.after_persist);
        effects
    }

    /// The earliest time something is due without any input: an intake backoff, a task's
    /// retry, or a lease's grace.
    fn next_wake(&self) -> Option<u64> {
        [
            self.intake_not_before,
            self.next_retry,
            self.leases.values().filter_map(|l| l.orphaned_until).min(),
            self.gates_next.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn halt_due(&self, forge_busy: bool) -> Option<Halt> {
        if let Some(halt) = self.convergence(forge_busy) {
            return Some(halt);
        }
        if self.settings.mode != Mode::Run {
            return None;
        }
        // Only `run` gives up on a loop that spins without progress; `watch` never does.
        if self.stalled_cycles >= self.settings.config.max_cycles {
            return Some(Halt::MaxCycles(self.settings.config.max_cycles));
        }
        if self.intake_failures >= MAX_INTAKE_FAILURES && self.jobs.is_empty() {
            return Some(Halt::IntakeFailing(
                self.state.meta.intake_rejections.join("; "),
            ));
        }
        None
    }

    fn convergence(&self, forge_busy: bool) -> Option<Halt> {
        if self.settings.mode == Mode::Watch
            || forge_busy
            || !self.state.assignments.is_empty()
            || !self.jobs.is_empty()
            || !self.results.is_empty()
            || !self.needs_rebase.is_empty()
            || !self.landing.is_empty()
            || self.improvements_landing
            || !self.state.meta.failed_since_intake.is_empty()
        {
            return None;
        }
        if self.state.tasks.values().any(|t| !t.status.is_terminal()) {
            return None;
        }
        // Every spec at the base branch tip has been through intake, or was given up.
        if !self.view.deleted.is_empty() || !self.open_specs(1).is_empty() {
            return None;
        }
        let failed = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Failed)
            .count();
        let complete = self.state.tasks.len() - failed;
        let specs = self.given_up_specs();
        Some(if specs.is_empty() {
            Halt::Converged { complete, failed }
        } else {
            Halt::SpecsFailed {
                complete,
                failed,
                specs,
            }
        })
    }

    /// The loop stops: running steps are cancelled on shutdown (they resume on restart), and
    /// the halt is journaled.
    fn stop(&mut self, halt: &Halt) -> Vec<Effect> {
        let mut effects = Vec::new();
        if *halt == Halt::Shutdown {
            for (task, a) in &self.state.assignments {
                effects.push(Effect::Cancel {
                    worker: a.worker.clone(),
                    attempt: a.attempt,
                    reason: format!("coordinator shutting down; {task} resumes on restart"),
                });
            }
        }
        let (reason, exit_code) = match halt {
            Halt::Converged { complete, failed } => (
                format!("converged: {complete} task(s) complete, {failed} failed"),
                0,
            ),
            Halt::SpecsFailed { specs, .. } => (
                format!("{} spec(s) given up: {}", specs.len(), specs.join("; ")),
                4,
            ),
            Halt::Shutdown => ("shutdown requested".to_owned(), 0),
            Halt::MaxCycles(n) => (format!("stopped after max_cycles ({n})"), 3),
            Halt::IntakeFailing(detail) => (format!("intake keeps failing: {detail}"), 1),
            Halt::BaseRewritten(detail) => (detail.clone(), 5),
            Halt::Deposed => return effects,
        };
        self.event(None, EventKind::CoordinatorHalted { reason, exit_code });
        effects.extend(self.flush());
        effects
    }

    /// Up to `limit` specs whose gap is open and that were not given up.
    fn open_specs(&self, limit: usize) -> Vec<SpecPath> {
        gaps::intake_batch(
            &self.view.pending,
            &self.state.meta.spec_failures,
            |p| self.view.specs.get(p).map(|b| b.0.as_str()),
            limit,
        )
    }

    /// Specs given up at their current version, as `path: reason`.
    fn given_up_specs(&self) -> Vec<String> {
        self.state
            .meta
            .spec_failures
            .iter()
            .filter(|(path, f)| self.view.specs.get(*path).is_some_and(|b| b.0 == f.blob))
            .filter_map(|(path, f)| f.failed.as_ref().map(|why| format!("{path}: {why}")))
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            max_task_rounds: self.settings.config.max_task_rounds,
            max_action_attempts: self.settings.config.max_action_attempts,
        }
    }

    // --- state bookkeeping ----------------------------------------------------------------

    /// Applies a change to the state and queues it for the next persist, so the two never
    /// disagree.
    fn record(&mut self, change: Change) {
        self.state.apply(&change);
        self.changes.push(change);
    }

    fn put_task(&mut self, task: Task) {
        self.record(Change::PutTask(task));
    }

    fn put_meta(&mut self) {
        let meta = self.state.meta.clone();
        self.record(Change::PutMeta(meta));
    }

    fn add_review(&mut self, task: &Task, role: &str, verdict: Verdict, detail: String) {
        self.record(Change::AddReview(Review {
            task_id: task.id,
            round: task.round,
            role: role.to_owned(),
            verdict,
            detail,
        }));
    }

    fn event(&mut self, task: Option<TaskId>, kind: EventKind) {
        let event = self.event_at(task, kind);
        self.record(event);
    }

    fn event_at(&self, task: Option<TaskId>, kind: EventKind) -> Change {
        Change::AppendEvent(Event {
            seq: 0,
            at_ms: self.now,
            task,
            kind,
        })
    }
}
