//! The reconcile loop: COLLECT (reap results, after-reap hooks), INTAKE (PM proposals for
//! changed specs and failed work), ADVANCE (gates and actions), SPAWN (dispatch runnable
//! steps). Event-driven: a result, a joined worker or a freed slot triggers the next cycle at
//! once; `poll_interval` only paces looking for external changes (new commits on the base
//! branch).
//!
//! Crash safety rests on ordering: an assignment is persisted before the step is sent, a
//! result's consequences are persisted before it is acknowledged, and landing is idempotent,
//! so after `kill -9` a restart redoes at most work that was never recorded as done.

mod github;
mod jobs;
mod specs;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyperloop_proto::v1;
use hyperloop_shared::config::{AgentProgram, Config, MergeStrategy};
use hyperloop_shared::decide::{Dispatch, TaskSnapshot, decide};
use hyperloop_shared::event::{Event, EventKind, SpecChange as SpecChangeEvent};
use hyperloop_shared::intake;
use hyperloop_shared::model::{
    AttemptId, Proposal, Review, SpecPath, SpecRef, Task, TaskId, TaskStatus, Verdict,
};
use hyperloop_shared::pipeline::{
    ActionKind, ActionOutcome, Change as StepChange, Limits, Next, Outcome,
};
use hyperloop_shared::project::Project;
use hyperloop_shared::prompt::{self, TaskContext};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::control::{Command, Live};
use crate::dispatch::{Registry, WorkerEvent};
use crate::logs::LogHub;
use crate::ports::lander::{LandOutcome, LandRequest, Lander, WorkRef};
use crate::ports::spec_source::CommitId;
use crate::ports::spec_source::SpecSource;
use crate::ports::state_store::{Assignment, Change, SpecRecord, State, StateStore, StoreError};
use specs::SpecView;

pub use github::GitHub;
pub use jobs::Job;
use workers::Attempt;
pub use workers::{RECONNECT_GRACE, TAKEOVER_GRACE};

/// Failed earlier tasks of a spec whose findings a new task's prompt shows.
const EARLIER_TASKS_SHOWN: usize = 3;
/// How often worker liveness and lease deadlines are checked.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// How long a transient state store failure (an etcd member down, a leader election inside
/// etcd) is retried before the loop gives up its term.
const STORE_RETRY_FOR: Duration = Duration::from_secs(15);

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
    Shutdown,
    MaxCycles(u32),
    /// `run` stopped because intake kept failing; the detail is the last finding.
    IntakeFailing(String),
    /// Leadership was lost; another coordinator carries on.
    Deposed,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading specs failed: {0}")]
    Specs(String),
    #[error("{0}")]
    Compose(String),
}

/// Everything the loop works with, fixed for its lifetime.
pub struct Context {
    pub config: Config,
    /// The coordinator's checkout.
    pub root: PathBuf,
    /// Where workers fetch from and push to.
    pub repo_url: String,
    pub mode: Mode,
    /// Several coordinators share the state (etcd): a new term waits for workers to reclaim
    /// their steps, and stopping sends workers to the next leader instead of draining them.
    pub distributed: bool,
    /// This coordinator's name in events (its advertise URL, or `single-host`).
    pub coordinator_id: String,
    pub term: u64,
}

/// The loop's connections to the admin API.
pub struct Links {
    pub live: watch::Sender<Arc<Live>>,
    /// Shared across terms: the admin API keeps one sender for the life of the process.
    pub commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    pub logs: Arc<LogHub>,
    /// Cancelled when leadership is lost: the loop stops without writing.
    pub deposed: CancellationToken,
    /// GitHub mode (`--repo`): pull requests instead of local merges.
    pub github: Option<GitHub>,
}

impl Links {
    /// Links nobody listens to (benchmarks and tests that drive the loop alone).
    pub fn detached() -> Self {
        let (live, _) = watch::channel(Arc::new(Live::default()));
        let (_, commands) = mpsc::channel(1);
        Links {
            live,
            commands: Arc::new(tokio::sync::Mutex::new(commands)),
            logs: Arc::new(LogHub::new()),
            deposed: CancellationToken::new(),
            github: None,
        }
    }
}

/// A step planned for a worker: its Assign, and the job it is when not a task step.
type Order = (String, v1::Assign, Option<Job>);

/// A result waiting to be reaped.
#[derive(Debug)]
struct Reaped {
    worker: String,
    result: v1::StepResult,
}

pub struct Reconciler<S, P, L, C> {
    ctx: Context,
    store: S,
    specs: P,
    lander: L,
    /// Recomposes the project after the process-improver changed overlays.
    compose: C,
    project: Project,
    /// The same composition, shared with the admin API.
    shared_project: Arc<Project>,
    state: State,
    registry: Registry,
    inbox: mpsc::Receiver<WorkerEvent>,
    /// Every dispatched attempt (task steps and jobs), for leases and the live view.
    attempts: BTreeMap<AttemptId, Attempt>,
    live: watch::Sender<Arc<Live>>,
    live_dirty: bool,
    last_cycle_at_ms: u64,
    /// When the base branch was last brought up to date ([`Lander::sync`]).
    last_sync: Option<Instant>,
    commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    logs: Arc<LogHub>,
    deposed: CancellationToken,
    github: Option<GitHub>,
    /// When GitHub was last polled for tasks at gates and actions.
    github_polled: Option<Instant>,
    results: Vec<Reaped>,
    /// Results reaped but not yet stored, acknowledged after the next persist.
    acks: Vec<(String, AttemptId)>,
    /// Intake and process-improver runs in flight (not task steps).
    jobs: BTreeMap<AttemptId, Job>,
    /// Tasks whose landing conflicted and that wait for a rebase-resolver slot.
    needs_rebase: BTreeSet<TaskId>,
    /// Failed task results since the last process-improver run.
    improvement_findings: Vec<prompt::FailedResult>,
    changes: Vec<Change>,
    cycles_with_work: u32,
    view: SpecView,
    /// Consecutive failed intake runs, and when the next may start (exponential backoff, so
    /// a broken PM does not spin).
    intake_failures: u32,
    intake_not_before: Option<Instant>,
    /// Something happened since the last cycle that could let work move (a result, a worker
    /// joining or leaving, a spec change, a deferred landing to retry). Without it a cycle
    /// costs O(1): cost follows what changed, not how many tasks exist.
    wake: bool,
}

/// The first retry of a failed intake waits this long; each further failure doubles it, up
/// to [`INTAKE_BACKOFF_MAX`].
const INTAKE_BACKOFF_START: Duration = Duration::from_secs(1);
const INTAKE_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// `run` gives up after this many intake failures in a row (`watch` keeps retrying): a PM
/// that fails repeatedly needs a human, not more attempts.
pub const MAX_INTAKE_FAILURES: u32 = 3;

impl<S, P, L, C> Reconciler<S, P, L, C>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, String>,
{
    /// Loads state and prepares recovery. Assignments left from a previous run belong to
    /// workers that no longer exist (local workers die with their coordinator): they are
    /// dropped, and their tasks are dispatched again from the persisted position.
    pub async fn new(
        ctx: Context,
        store: S,
        specs: P,
        lander: L,
        compose: C,
        inbox: mpsc::Receiver<WorkerEvent>,
        links: Links,
    ) -> Result<Self, RunError> {
        let project = compose().map_err(RunError::Compose)?;
        let state = store.load().await?;
        let mut r = Reconciler {
            ctx,
            store,
            specs,
            lander,
            compose,
            shared_project: Arc::new(project.clone()),
            project,
            state,
            registry: Registry::default(),
            inbox,
            attempts: BTreeMap::new(),
            live: links.live,
            live_dirty: true,
            last_cycle_at_ms: 0,
            last_sync: None,
            commands: links.commands,
            logs: links.logs,
            deposed: links.deposed,
            github: links.github,
            github_polled: None,
            results: Vec::new(),
            acks: Vec::new(),
            jobs: BTreeMap::new(),
            needs_rebase: BTreeSet::new(),
            improvement_findings: Vec::new(),
            changes: Vec::new(),
            cycles_with_work: 0,
            view: SpecView::default(),
            intake_failures: 0,
            intake_not_before: None,
            wake: true,
        };
        r.refresh_specs()?;
        r.view.reconcile_records(&r.state.specs);
        r.recover();
        r.event(
            None,
            EventKind::CoordinatorStarted {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                mode: if r.ctx.distributed {
                    "distributed"
                } else {
                    "single-host"
                }
                .to_owned(),
            },
        );
        if r.ctx.distributed {
            r.event(
                None,
                EventKind::LeaderElected {
                    coordinator: r.ctx.coordinator_id.clone(),
                    term: r.ctx.term,
                },
            );
        }
        r.persist().await?;
        Ok(r)
    }

    /// Stored assignments become orphaned leases: their workers may reconnect and reclaim
    /// them within [`TAKEOVER_GRACE`] (in-process workers of a previous run rejoin at once
    /// without them, which gives them up immediately).
    fn recover(&mut self) {
        let until = Instant::now() + TAKEOVER_GRACE;
        let orphaned: Vec<Assignment> = self.state.assignments.values().cloned().collect();
        for a in &orphaned {
            self.attempts.insert(
                a.attempt,
                Attempt {
                    view: crate::control::AttemptView {
                        attempt: a.attempt.0,
                        task_id: a.task.to_string(),
                        step_path: a.step.clone(),
                        role: a.role.clone(),
                        round: a.round,
                        worker: a.worker.clone(),
                        phase: v1::AttemptPhase::Unspecified,
                        started_at_ms: a.dispatched_at_ms,
                        deadline_ms: 0,
                        turns: 0,
                        cost_usd: 0.0,
                    },
                    orphaned_until: Some(until),
                },
            );
        }
        // A pipeline edited while tasks were on it: carry each position over explicitly.
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
                self.record(Change::AddReview(Review {
                    task_id: task.id,
                    round: task.round,
                    role: "coordinator".to_owned(),
                    verdict: Verdict::Fail,
                    detail,
                }));
            }
            self.put_task(task);
        }
        let tasks_loaded = u32::try_from(self.state.tasks.len()).unwrap_or(u32::MAX);
        self.event(
            None,
            EventKind::Recovery {
                tasks_loaded,
                attempts_resumed: 0,
                attempts_orphaned: u32::try_from(orphaned.len()).unwrap_or(u32::MAX),
            },
        );
    }

    /// One reconcile cycle, for benchmarks and tests that drive the loop step by step.
    /// Returns whether anything happened.
    ///
    /// # Errors
    /// As [`Reconciler::run`].
    #[doc(hidden)]
    pub async fn tick(&mut self) -> Result<bool, RunError> {
        self.cycle().await
    }

    /// Runs until convergence (`Mode::Run`), shutdown or `max_cycles`.
    ///
    /// # Errors
    /// A state store failure (state is never written past a failed write) or unreadable specs.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Halt, RunError> {
        let commands = self.commands.clone();
        let mut commands = commands.lock().await;
        loop {
            let worked = self.cycle().await?;
            if worked {
                self.cycles_with_work += 1;
            }
            if let Some(halt) = self.converged() {
                return self.halt(halt).await;
            }
            if self.cycles_with_work >= self.ctx.config.max_cycles {
                let max = self.ctx.config.max_cycles;
                return self.halt(Halt::MaxCycles(max)).await;
            }
            if self.ctx.mode == Mode::Run
                && self.intake_failures >= MAX_INTAKE_FAILURES
                && self.jobs.is_empty()
            {
                let detail = self.state.meta.intake_rejections.join("; ");
                return self.halt(Halt::IntakeFailing(detail)).await;
            }
            self.publish();
            let mut idle = self.ctx.config.poll_interval;
            if let Some(at) = self.intake_not_before {
                idle = idle.min(at.saturating_duration_since(Instant::now()));
            }
            if !self.registry.is_empty() || self.next_orphan_deadline().is_some() {
                idle = idle.min(HOUSEKEEPING_EVERY);
            }
            tokio::select! {
                () = shutdown.cancelled() => return self.halt(Halt::Shutdown).await,
                () = self.deposed.cancelled() => return Ok(Halt::Deposed),
                event = self.inbox.recv() => match event {
                    Some(event) => self.handle(event),
                    None => return self.halt(Halt::Shutdown).await,
                },
                Some(command) = commands.recv() => self.command(command),
                Some(reply) = async {
                    match self.github.as_mut() {
                        Some(github) => github.reply().await,
                        None => std::future::pending().await,
                    }
                } => self.github_reply(reply),
                () = tokio::time::sleep(idle) => {}
            }
            // Merge wake-ups: take everything already queued before deciding again.
            while let Ok(event) = self.inbox.try_recv() {
                self.handle(event);
            }
            self.housekeeping();
        }
    }

    async fn halt(mut self, halt: Halt) -> Result<Halt, RunError> {
        if halt == Halt::Shutdown {
            for (task, a) in &self.state.assignments {
                self.registry.tell(
                    &a.worker,
                    v1::coordinator_message::Body::Cancel(v1::Cancel {
                        attempt_id: a.attempt.0,
                        reason: format!("coordinator shutting down; {task} resumes on restart"),
                    }),
                );
            }
        }
        // With standbys, workers move on to the next leader instead of exiting.
        if !self.ctx.distributed {
            self.registry.drain_all("coordinator stopped");
        }
        let (reason, exit_code) = match &halt {
            Halt::Converged { complete, failed } => (
                format!("converged: {complete} task(s) complete, {failed} failed"),
                0,
            ),
            Halt::Shutdown => ("shutdown requested".to_owned(), 0),
            Halt::MaxCycles(n) => (format!("stopped after max_cycles ({n})"), 3),
            Halt::IntakeFailing(detail) => (format!("intake keeps failing: {detail}"), 1),
            Halt::Deposed => return Ok(halt),
        };
        self.event(None, EventKind::CoordinatorHalted { reason, exit_code });
        self.persist().await?;
        Ok(halt)
    }

    fn converged(&self) -> Option<Halt> {
        if self.ctx.mode == Mode::Watch
            || !self.state.assignments.is_empty()
            || !self.jobs.is_empty()
            || !self.results.is_empty()
            || !self.needs_rebase.is_empty()
            || !self.state.meta.failed_since_intake.is_empty()
            || self.github.as_ref().is_some_and(GitHub::busy)
        {
            return None;
        }
        if self.state.tasks.values().any(|t| !t.status.is_terminal()) {
            return None;
        }
        // Every spec at the base branch tip has been through intake.
        if !self.view.pending.is_empty() || !self.view.deleted.is_empty() {
            return None;
        }
        let failed = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Failed)
            .count();
        Some(Halt::Converged {
            complete: self.state.tasks.len() - failed,
            failed,
        })
    }

    /// One pass of COLLECT / INTAKE / ADVANCE / SPAWN. Returns whether anything happened.
    async fn cycle(&mut self) -> Result<bool, RunError> {
        if self
            .last_sync
            .is_none_or(|at| at.elapsed() >= self.ctx.config.poll_interval)
        {
            self.last_sync = Some(Instant::now());
            if let Err(e) = self.lander.sync() {
                tracing::warn!(error = %e, "could not bring the base branch up to date; retrying later");
            }
        }
        self.refresh_specs()?;
        if self.github.is_some()
            && self
                .github_polled
                .is_none_or(|at| at.elapsed() >= self.ctx.config.poll_interval)
        {
            // Gates and merges depend on GitHub, which has no push channel to us.
            self.github_polled = Some(Instant::now());
            self.wake = true;
        }
        let intake_due = self
            .intake_not_before
            .is_some_and(|at| Instant::now() >= at);
        if !self.wake && self.results.is_empty() && !intake_due {
            return Ok(false);
        }
        self.wake = false;
        let reaped = self.collect();
        self.cancel_deleted_specs();
        let advanced = self.advance();
        let orders = self.spawn();
        let dispatched = u32::try_from(orders.len()).unwrap_or(u32::MAX);
        let worked = reaped + advanced + dispatched > 0;
        if worked {
            self.live_dirty = true;
            self.last_cycle_at_ms = now_ms();
            self.state.meta.cycle += 1;
            let meta = self.state.meta.clone();
            self.record(Change::PutMeta(meta));
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
        // One atomic write holds the results' consequences, the advances and the new
        // assignments: only then is a result acknowledged or a step sent.
        self.persist().await?;
        for (worker, attempt) in std::mem::take(&mut self.acks) {
            self.registry.tell(
                &worker,
                v1::coordinator_message::Body::ResultAck(v1::ResultAck {
                    attempt_id: attempt.0,
                }),
            );
        }
        self.send_orders(orders);
        Ok(worked)
    }

    // --- COLLECT -----------------------------------------------------------------------

    fn collect(&mut self) -> u32 {
        let results = std::mem::take(&mut self.results);
        let mut reaped = 0;
        for Reaped { worker, result } in results {
            let attempt = AttemptId(result.attempt_id);
            self.registry.finished(&worker, attempt);
            if self.attempts.remove(&attempt).is_none() {
                self.registry.tell(
                    &worker,
                    v1::coordinator_message::Body::ResultAck(v1::ResultAck {
                        attempt_id: attempt.0,
                    }),
                );
                tracing::warn!(%attempt, %worker, task = %result.task_id, "rejected a late result: the attempt is no longer current (its step was given to another worker)");
                self.event(
                    parse_task(&result.task_id),
                    EventKind::OrphanFound {
                        kind: "result".to_owned(),
                        name: format!("attempt {attempt} of {} from {worker}", result.task_id),
                        action: "rejected: the attempt is no longer current".to_owned(),
                    },
                );
                continue;
            }
            self.logs.finished(attempt.0);
            // Acknowledged once its consequences are stored: a coordinator killed before
            // that hears the result again from the worker.
            self.acks.push((worker.clone(), attempt));
            if let Some(job) = self.jobs.remove(&attempt) {
                reaped += 1;
                self.reap_job(job, &worker, result);
                continue;
            }
            let Some(assignment) = self
                .state
                .assignments
                .values()
                .find(|a| a.attempt == attempt)
                .cloned()
            else {
                tracing::warn!(%attempt, %worker, "rejected a result for an attempt that is no longer current");
                continue;
            };
            reaped += 1;
            self.reap_task(&assignment, &worker, &result);
        }
        reaped
    }

    fn reap_task(&mut self, assignment: &Assignment, worker: &str, result: &v1::StepResult) {
        let Some(mut task) = self.state.tasks.get(&assignment.task).cloned() else {
            return;
        };
        self.record(Change::DeleteAssignment(task.id));
        self.state.assignments.remove(&task.id);
        let (verdict, detail) = verdict_of(result);
        if !result.branch.is_empty() {
            task.branch = Some(result.branch.clone());
        }
        if !result.head_commit.is_empty() {
            self.github_after_push(&task);
        }
        self.event(
            Some(task.id),
            EventKind::ResultReaped {
                step: assignment.step.clone(),
                role: assignment.role.clone(),
                round: assignment.round,
                attempt: assignment.attempt.0,
                worker: worker.to_owned(),
                verdict,
                duration_ms: result
                    .duration
                    .as_ref()
                    .map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0) * 1000),
            },
        );
        if verdict == Verdict::Fail {
            let review = Review {
                task_id: task.id,
                round: assignment.round,
                role: assignment.role.clone(),
                verdict,
                detail: detail.clone(),
            };
            self.improvement_findings.push(prompt::FailedResult {
                spec_ref: task.spec_ref.clone(),
                review: review.clone(),
            });
            self.add_review(review);
        }
        if assignment.role == jobs::REBASE_RESOLVER {
            // The task stays at its merge action: a pass retries landing, a fail counts as a
            // failed attempt of that action.
            if verdict == Verdict::Fail {
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
            } else {
                self.put_task(task);
            }
            return;
        }
        if task.position.as_ref().map(ToString::to_string).as_deref() != Some(&assignment.step) {
            tracing::warn!(task = %task.id, "result for a step the task is no longer at; ignored");
            self.put_task(task);
            return;
        }
        self.apply_outcome(task, Outcome::Agent(verdict));
    }

    /// Feeds an outcome to the pure executor and records the transition.
    fn apply_outcome(&mut self, mut task: Task, outcome: Outcome) {
        let pipeline = &self.project.process.pipeline;
        let Ok(Some(progress)) = task.progress() else {
            return;
        };
        let limits = self.limits();
        let transition = match pipeline.apply(&progress, outcome, limits) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "outcome could not be applied");
                return;
            }
        };
        let from = progress.position.step().to_string();
        transition.apply_to(&mut task);
        let to = transition
            .next
            .position()
            .map(|p| p.step().to_string())
            .unwrap_or_default();
        let id = task.id;
        match &transition.change {
            StepChange::Advanced { .. } | StepChange::Started => self.event(
                Some(id),
                EventKind::TaskAdvanced {
                    from_step: from,
                    to_step: to,
                },
            ),
            StepChange::LoopedBack { .. } => self.event(
                Some(id),
                EventKind::TaskLoopedBack {
                    from_step: from,
                    to_step: to,
                    round: task.round,
                },
            ),
            StepChange::Completed => {
                self.event(Some(id), EventKind::TaskCompleted { rounds: task.round })
            }
            StepChange::Failed => {
                let reason = task.failure.clone().unwrap_or_default();
                self.add_review(Review {
                    task_id: id,
                    round: task.round,
                    role: "coordinator".to_owned(),
                    verdict: Verdict::Fail,
                    detail: format!("The task failed: {reason}"),
                });
                self.event(Some(id), EventKind::TaskFailed { reason });
                self.task_failed(id);
                self.github_failed(&task);
            }
            StepChange::Stayed | StepChange::ActionErrorCounted { .. } => {}
        }
        let cascade = task.status == TaskStatus::Failed;
        self.put_task(task);
        if cascade {
            self.fail_dependents(id);
        }
    }

    /// Failure is feedback: the gap re-enters intake with this task's history.
    fn task_failed(&mut self, id: TaskId) {
        if !self.state.meta.failed_since_intake.contains(&id) {
            self.state.meta.failed_since_intake.push(id);
            let meta = self.state.meta.clone();
            self.record(Change::PutMeta(meta));
        }
    }

    /// Tasks waiting on a failed task can never start: they fail too, naming the dependency,
    /// so intake can propose a different plan for the whole gap.
    fn fail_dependents(&mut self, failed: TaskId) {
        let mut queue = vec![failed];
        while let Some(dep) = queue.pop() {
            let dependents: Vec<Task> = self
                .state
                .tasks
                .values()
                .filter(|t| t.status == TaskStatus::NotStarted && t.deps.contains(&dep))
                .cloned()
                .collect();
            for mut task in dependents {
                let reason = format!("dependency {dep} failed, so this task cannot start");
                task.status = TaskStatus::Failed;
                task.failure = Some(reason.clone());
                self.event(Some(task.id), EventKind::TaskFailed { reason });
                queue.push(task.id);
                self.task_failed(task.id);
                self.put_task(task);
            }
        }
    }

    fn reap_job(&mut self, job: Job, worker: &str, result: v1::StepResult) {
        let (verdict, detail) = verdict_of(&result);
        match job {
            Job::Intake {
                commit,
                changed,
                known,
            } => {
                let failures_considered =
                    u32::try_from(self.state.meta.failed_since_intake.len()).unwrap_or(u32::MAX);
                self.state.meta.intake_round += 1;
                let mut created = Vec::new();
                let mut rejections = Vec::new();
                if verdict == Verdict::Pass {
                    let proposals: Vec<Proposal> = result
                        .proposals
                        .iter()
                        .filter_map(|p| Proposal::try_from(p.clone()).ok())
                        .collect();
                    let outcome = intake::accept(
                        &proposals,
                        &known,
                        &self.state.tasks,
                        &commit,
                        self.state.meta.next_task_id.max(1),
                    );
                    for task in outcome.created {
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
                        self.put_task(task);
                    }
                    rejections = outcome.rejections;
                    // The processed versions are recorded only when intake succeeded, so a
                    // failed intake is retried with the same changes.
                    for (path, blob) in &changed {
                        let record = SpecRecord {
                            path: path.clone(),
                            blob: blob.0.clone(),
                            commit: commit.clone(),
                        };
                        self.record(Change::PutSpec(record));
                        self.view.refresh(path, &self.state.specs);
                    }
                    self.state.meta.failed_since_intake.clear();
                    self.intake_failures = 0;
                    self.intake_not_before = None;
                } else {
                    rejections.push(format!("The previous intake run failed: {detail}"));
                    self.intake_failures += 1;
                    let backoff = INTAKE_BACKOFF_START
                        .saturating_mul(1 << self.intake_failures.saturating_sub(1).min(16))
                        .min(INTAKE_BACKOFF_MAX);
                    self.intake_not_before = Some(Instant::now() + backoff);
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
                let meta = self.state.meta.clone();
                self.record(Change::PutMeta(meta));
            }
            Job::Improvement { .. } => {
                self.state.meta.improvement_round += 1;
                let meta = self.state.meta.clone();
                self.record(Change::PutMeta(meta));
                let mut commit = None;
                if verdict == Verdict::Pass && !result.head_commit.is_empty() {
                    let request = LandRequest {
                        task: WorkRef::ProcessImprovement,
                        title: "Process improvements from failed rounds".to_owned(),
                        spec_ref: None,
                        branch: result.branch.clone(),
                        head: Some(CommitId(result.head_commit.clone())),
                        strategy: MergeStrategy::Squash,
                        delete_branch: true,
                    };
                    match self.lander.land(&request) {
                        Ok(LandOutcome::Landed(landing)) => commit = Some(landing.commit.0),
                        Ok(other) => {
                            tracing::warn!(?other, "process improvements did not land");
                        }
                        Err(e) => tracing::warn!(error = %e, "process improvements did not land"),
                    }
                    // Every agent spawned from now on sees the new overlays.
                    match (self.compose)() {
                        Ok(project) => self.project = project,
                        Err(e) => {
                            tracing::warn!(error = %e, "recomposing after process improvements failed; keeping the previous composition")
                        }
                    }
                }
                tracing::info!(%worker, %verdict, "process improver finished");
                self.event(None, EventKind::ProcessImproved { verdict, commit });
            }
        }
    }

    // --- INTAKE --------------------------------------------------------------------------

    /// Brings the spec view up to the base branch tip (O(1) when nothing changed).
    fn refresh_specs(&mut self) -> Result<(), RunError> {
        let changes = self
            .specs
            .changes(self.view.version.as_ref())
            .map_err(|e| RunError::Specs(e.to_string()))?;
        for change in &changes.changes {
            let kind = match change {
                crate::ports::spec_source::SpecChange::Added { .. } => SpecChangeEvent::Added,
                crate::ports::spec_source::SpecChange::Modified { .. } => SpecChangeEvent::Modified,
                crate::ports::spec_source::SpecChange::Deleted { .. } => SpecChangeEvent::Deleted,
            };
            tracing::debug!(path = %change.path(), ?kind, "spec changed");
            self.wake = true;
        }
        self.view.apply(changes, &self.state.specs);
        Ok(())
    }

    /// A deleted spec cancels its unfinished tasks right away.
    fn cancel_deleted_specs(&mut self) {
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
            let doomed: Vec<Task> = self
                .state
                .tasks
                .values()
                .filter(|t| t.spec_ref.path == path && !t.status.is_terminal())
                .cloned()
                .collect();
            for mut task in doomed {
                if let Some(a) = self.state.assignments.remove(&task.id) {
                    self.registry.tell(
                        &a.worker,
                        v1::coordinator_message::Body::Cancel(v1::Cancel {
                            attempt_id: a.attempt.0,
                            reason: format!("spec {path} was deleted"),
                        }),
                    );
                    self.record(Change::DeleteAssignment(task.id));
                }
                let reason = format!("cancelled: spec {path} was deleted");
                task.status = TaskStatus::Failed;
                task.position = None;
                task.failure = Some(reason.clone());
                self.event(Some(task.id), EventKind::TaskCancelled { reason });
                self.put_task(task);
            }
        }
    }

    /// The specs intake should look at now, if intake is due: new or changed specs, or tasks
    /// that failed since the last intake.
    fn intake_wanted(&self) -> Option<Vec<SpecPath>> {
        if self.jobs.values().any(|j| matches!(j, Job::Intake { .. }))
            || self.intake_not_before.is_some_and(|at| Instant::now() < at)
        {
            return None;
        }
        let changed: Vec<SpecPath> = self.view.pending.iter().cloned().collect();
        (!changed.is_empty() || !self.state.meta.failed_since_intake.is_empty()).then_some(changed)
    }

    // --- ADVANCE -------------------------------------------------------------------------

    fn advance(&mut self) -> u32 {
        let mut advanced = 0;
        let pipeline = self.project.process.pipeline.clone();
        let waiting: Vec<Task> = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::NotStarted || t.status == TaskStatus::InProgress)
            .filter(|t| !self.state.assignments.contains_key(&t.id))
            .filter(|t| !self.needs_rebase.contains(&t.id))
            .cloned()
            .collect();
        for task in waiting {
            let next = match task.position.as_ref() {
                None if task.status == TaskStatus::NotStarted => continue,
                None => continue,
                Some(p) => match pipeline.next_at(p) {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            };
            if self.github.is_some() {
                if matches!(next, Next::RunAction { .. } | Next::WaitAtGate { .. })
                    && self.github_advance(&task, &next)
                {
                    advanced += 1;
                }
            } else if let Next::RunAction { action, .. } = next {
                advanced += 1;
                self.run_action(task, &action);
            }
        }
        advanced
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
        let request = LandRequest {
            task: WorkRef::Task(task.id),
            title: format!("{} ({})", task.title, task.id),
            spec_ref: Some(task.spec_ref.clone()),
            branch: branch.clone(),
            head: None,
            strategy: self.ctx.config.merge.strategy,
            delete_branch: self.ctx.config.merge.delete_branch,
        };
        let base_branch = self.ctx.config.target.base_branch.clone();
        match self.lander.land(&request) {
            Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. }) => {
                let commit = landing.commit.0;
                if self.state.meta.rebase_attempts.remove(&task.id).is_some() {
                    let meta = self.state.meta.clone();
                    self.record(Change::PutMeta(meta));
                }
                self.event(
                    Some(task.id),
                    EventKind::Merged {
                        branch,
                        into: base_branch,
                        commit,
                        strategy: format!("{:?}", request.strategy).to_lowercase(),
                    },
                );
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Success));
            }
            Ok(LandOutcome::Conflict { files }) => self.conflicted(task, action, &branch, files),
            Ok(LandOutcome::Deferred { reason }) => {
                tracing::info!(task = %task.id, %reason, "landing deferred; will retry");
                self.wake = true;
            }
            Err(e) if e.is_transient() => {
                self.wake = true;
                tracing::warn!(task = %task.id, error = %e, "landing will be retried");
            }
            Err(e) => {
                self.add_review(Review {
                    task_id: task.id,
                    round: task.round,
                    role: "coordinator".to_owned(),
                    verdict: Verdict::Fail,
                    detail: format!("`{action}` failed: {e}"),
                });
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
            }
        }
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
        if used < self.ctx.config.max_rebase_attempts {
            self.state.meta.rebase_attempts.insert(task.id, used + 1);
            self.needs_rebase.insert(task.id);
        } else {
            self.state.meta.rebase_attempts.remove(&task.id);
            let base_branch = self.ctx.config.target.base_branch.clone();
            let what = if files.is_empty() {
                String::new()
            } else {
                format!(" in {}", files.join(", "))
            };
            self.add_review(Review {
                task_id: task.id,
                round: task.round,
                role: "coordinator".to_owned(),
                verdict: Verdict::Fail,
                detail: format!(
                    "`{action}` conflicted with {base_branch}{what} after {used} rebase \
                     attempt(s); the work must be redone on the current base",
                ),
            });
            self.apply_outcome(task, Outcome::Action(ActionOutcome::Error));
        }
        let meta = self.state.meta.clone();
        self.record(Change::PutMeta(meta));
    }

    // --- SPAWN ---------------------------------------------------------------------------

    /// Plans this cycle's dispatches and records their assignments; the caller persists them
    /// and then sends them ([`Reconciler::send_orders`]).
    fn spawn(&mut self) -> Vec<Order> {
        let mut orders: Vec<Order> = Vec::new();
        let mut free = self.registry.free_slots();

        // Intake first: new work cannot be planned without it.
        if free > 0
            && let Some(changed) = self.intake_wanted()
            && let Some(worker) = self.pick_excluding(&orders, jobs::PM)
        {
            let attempt = self.next_attempt();
            let assign = self.intake_assign(&changed, attempt);
            match assign {
                Ok(assign) => {
                    free -= 1;
                    self.intake_not_before = None;
                    orders.push((
                        worker,
                        assign,
                        Some(Job::Intake {
                            commit: self.view.commit().to_owned(),
                            changed: changed
                                .iter()
                                .filter_map(|p| {
                                    self.view.specs.get(p).map(|b| (p.clone(), b.clone()))
                                })
                                .collect(),
                            known: self.view.specs.keys().cloned().collect(),
                        }),
                    ));
                }
                Err(e) => tracing::warn!(error = %e, "intake could not be prepared"),
            }
        }
        // The after-reap hook: failed results since the last run feed the process-improver.
        if free > 0
            && !self.improvement_findings.is_empty()
            && !self.project.process.hooks.after_reap.is_empty()
            && !self
                .jobs
                .values()
                .any(|j| matches!(j, Job::Improvement { .. }))
            && let Some(worker) = self.pick_excluding(&orders, jobs::PROCESS_IMPROVER)
        {
            let attempt = self.next_attempt();
            let findings = std::mem::take(&mut self.improvement_findings);
            if let Ok(assign) = self.improvement_assign(&findings, attempt) {
                free -= 1;
                orders.push((worker, assign, Some(Job::Improvement { findings })));
            }
        }

        // Conflicted landings get a rebase-resolver before new work.
        let rebase: Vec<TaskId> = self.needs_rebase.iter().copied().collect();
        let mut dispatched_tasks: Vec<(TaskId, Assignment)> = Vec::new();
        for id in rebase {
            if free == 0 {
                break;
            }
            let Some(task) = self.state.tasks.get(&id).cloned() else {
                self.needs_rebase.remove(&id);
                continue;
            };
            let Some(worker) = self.pick_excluding(&orders, jobs::REBASE_RESOLVER) else {
                break;
            };
            let attempt = self.next_attempt();
            match self.task_assign(&task, jobs::REBASE_RESOLVER, attempt) {
                Ok((assign, assignment)) => {
                    free -= 1;
                    self.needs_rebase.remove(&id);
                    dispatched_tasks.push((id, assignment.clone_with_worker(&worker)));
                    orders.push((worker, assign, None));
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "rebase-resolver could not be prepared")
                }
            }
        }

        // decide() over the pipeline.
        let pipeline = self.project.process.pipeline.clone();
        let tasks: Vec<Task> = self.state.tasks.values().cloned().collect();
        let snapshots: Vec<TaskSnapshot<'_>> = tasks
            .iter()
            .filter_map(|t| {
                let busy = self.state.assignments.contains_key(&t.id)
                    || self.needs_rebase.contains(&t.id)
                    || dispatched_tasks.iter().any(|(id, _)| *id == t.id);
                TaskSnapshot::of(t, &pipeline, busy).ok()
            })
            .collect();
        let decisions = decide(&snapshots, free);
        let mut starts = Vec::new();
        for d in decisions.dispatch {
            match d {
                Dispatch::Resume { task, .. } => starts.push(task),
                Dispatch::Start { task, .. } => starts.push(task),
            }
        }
        drop(snapshots);
        for id in starts {
            let Some(mut task) = self.state.tasks.get(&id).cloned() else {
                continue;
            };
            if task.position.is_none() {
                let transition = pipeline.start();
                transition.apply_to(&mut task);
                self.event(
                    Some(id),
                    EventKind::TaskAdvanced {
                        from_step: String::new(),
                        to_step: transition
                            .next
                            .position()
                            .map(|p| p.step().to_string())
                            .unwrap_or_default(),
                    },
                );
                self.put_task(task.clone());
            }
            let Some(Next::RunAgent { role, .. }) = task
                .position
                .as_ref()
                .and_then(|p| pipeline.next_at(p).ok())
            else {
                continue; // a gate or an action: ADVANCE handles it, no worker needed
            };
            // No free worker carries the labels this role needs: it waits, others may go.
            let Some(worker) = self.pick_excluding(&orders, &role) else {
                continue;
            };
            let attempt = self.next_attempt();
            match self.task_assign(&task, &role, attempt) {
                Ok((assign, assignment)) => {
                    dispatched_tasks.push((id, assignment.clone_with_worker(&worker)));
                    orders.push((worker, assign, None));
                }
                Err(e) => {
                    self.event(
                        Some(id),
                        EventKind::SpawnFailed {
                            step: task
                                .position
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            role,
                            reason: e.clone(),
                        },
                    );
                }
            }
        }

        if orders.is_empty() {
            return orders;
        }
        for (id, assignment) in &dispatched_tasks {
            self.state.assignments.insert(*id, assignment.clone());
            self.record(Change::PutAssignment(assignment.clone()));
        }
        let meta = self.state.meta.clone();
        self.record(Change::PutMeta(meta));
        for (worker, assign, _) in &orders {
            self.event(
                parse_task(&assign.task_id),
                EventKind::StepDispatched {
                    step: assign.step_path.clone(),
                    role: assign.role.clone(),
                    round: assign.round,
                    attempt: assign.attempt_id,
                    worker: worker.clone(),
                },
            );
        }
        orders
    }

    /// Sends planned steps to their workers (after their assignments are stored). A worker
    /// that cannot take one gives it back: the assignment is dropped and it is planned again.
    fn send_orders(&mut self, orders: Vec<Order>) {
        for (worker, assign, job) in orders {
            let attempt = AttemptId(assign.attempt_id);
            self.attempts.insert(attempt, Attempt::of(&assign, &worker));
            self.logs
                .started(&assign.task_id, attempt.0, &assign.step_path, &assign.role);
            if let Err(e) = self.registry.send_assign(&worker, assign) {
                self.attempts.remove(&attempt);
                tracing::warn!(%worker, error = %e, "dispatch failed; the step will be dispatched again");
                self.drop_attempt(attempt);
                continue;
            }
            if let Some(job) = job {
                self.jobs.insert(attempt, job);
            }
        }
    }

    /// A worker with a slot left after the orders already planned in this cycle (the
    /// registry only counts them once they are sent).
    fn pick_excluding(&self, orders: &[Order], role: &str) -> Option<String> {
        let required = self.ctx.config.agent_for(role).labels;
        self.registry.pick(&required, |name| {
            orders.iter().filter(|(w, _, _)| w == name).count()
        })
    }

    fn next_attempt(&mut self) -> AttemptId {
        self.state.meta.next_attempt = self.state.meta.next_attempt.max(1);
        let attempt = AttemptId(self.state.meta.next_attempt);
        self.state.meta.next_attempt += 1;
        attempt
    }

    /// Builds the Assign for a task step and the assignment record to persist for it.
    fn task_assign(
        &mut self,
        task: &Task,
        role: &str,
        attempt: AttemptId,
    ) -> Result<(v1::Assign, Assignment), String> {
        let template = self.project.agents.get(role).ok_or_else(|| {
            format!("no agent template for role `{role}`; add a kind: Agent named {role}")
        })?;
        let spec_text = self
            .specs
            .read(&task.spec_ref)
            .map_err(|e| format!("reading {} failed: {e}", task.spec_ref))?;
        let branch = task
            .branch
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.ctx.config.branch_prefix, task.id));
        let reviews = self
            .state
            .reviews
            .get(&task.id)
            .cloned()
            .unwrap_or_default();
        let earlier = self.earlier_findings(task);
        let composed = prompt::task_prompt(
            template,
            &TaskContext {
                task_id: task.id,
                title: &task.title,
                round: task.round,
                spec_ref: &task.spec_ref,
                spec_text: &spec_text,
                branch: &branch,
                base_branch: &self.ctx.config.target.base_branch,
                reviews: &reviews,
                earlier: &earlier,
            },
        );
        let step = task
            .position
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        self.event(
            Some(task.id),
            EventKind::PromptComposed {
                role: role.to_owned(),
                round: task.round,
                bytes: composed.text.len() as u64,
            },
        );
        let assign = self.assign(
            attempt,
            task.id.to_string(),
            &step,
            role,
            task.round,
            composed.text,
            Some(&task.spec_ref),
            &branch,
        );
        let assignment = Assignment {
            task: task.id,
            attempt,
            step,
            role: role.to_owned(),
            round: task.round,
            worker: String::new(),
            dispatched_at_ms: now_ms(),
        };
        Ok((assign, assignment))
    }

    /// Reviews of the newest failed tasks for the same spec that came before `task` (at most
    /// [`EARLIER_TASKS_SHOWN`]), so a new attempt knows why earlier ones were rejected.
    fn earlier_findings(&self, task: &Task) -> Vec<Review> {
        self.state
            .tasks
            .range(..task.id)
            .rev()
            .filter(|(_, t)| {
                t.status == TaskStatus::Failed && t.spec_ref.path == task.spec_ref.path
            })
            .take(EARLIER_TASKS_SHOWN)
            .flat_map(|(id, _)| self.state.reviews.get(id).cloned().unwrap_or_default())
            .collect()
    }

    #[allow(clippy::too_many_arguments)] // mirrors the Assign message's fields
    fn assign(
        &self,
        attempt: AttemptId,
        task_id: String,
        step: &str,
        role: &str,
        round: u32,
        prompt: String,
        spec_ref: Option<&SpecRef>,
        branch: &str,
    ) -> v1::Assign {
        let agent = self.ctx.config.agent_for(role);
        let (kind, command) = match &agent.program {
            AgentProgram::Claude => (v1::RuntimeKind::Claude, Vec::new()),
            AgentProgram::Command(argv) => (v1::RuntimeKind::Command, argv.clone()),
        };
        let deadline = SystemTime::now() + agent.timeout;
        v1::Assign {
            attempt_id: attempt.0,
            task_id,
            step_path: step.to_owned(),
            role: role.to_owned(),
            round,
            prompt,
            spec_ref: spec_ref.map(|s| v1::SpecRef::from(s.clone())),
            repo_url: self.ctx.repo_url.clone(),
            base_branch: self.ctx.config.target.base_branch.clone(),
            base_commit: self.view.commit().to_owned(),
            branch: branch.to_owned(),
            runtime: Some(v1::RuntimeSettings {
                kind: kind.into(),
                command,
                model: agent.model.clone().unwrap_or_default(),
                max_turns: agent.max_turns,
                timeout: Some(duration_to_proto(agent.timeout)),
                budget_usd: agent.budget_usd,
                env_passthrough: agent.env_passthrough.clone(),
                extra_env: Default::default(),
            }),
            deadline: Some(prost_types::Timestamp::from(deadline)),
            trace_context: Default::default(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_task_rounds: self.ctx.config.max_task_rounds,
            max_action_attempts: self.ctx.config.max_action_attempts,
        }
    }

    // --- state bookkeeping ---------------------------------------------------------------

    /// Applies a change to the in-memory state and queues it for the next persist, so the
    /// two never disagree.
    fn record(&mut self, change: Change) {
        self.state.apply(&change);
        self.changes.push(change);
    }

    fn put_task(&mut self, task: Task) {
        self.record(Change::PutTask(task));
    }

    fn add_review(&mut self, review: Review) {
        self.record(Change::AddReview(review));
    }

    fn event(&mut self, task: Option<TaskId>, kind: EventKind) {
        let name = kind.name();
        match task {
            Some(task) => tracing::info!(event = name, task = %task, details = ?kind),
            None => tracing::info!(event = name, details = ?kind),
        }
        self.record(Change::AppendEvent(Event {
            seq: 0,
            at_ms: now_ms(),
            task,
            kind,
        }));
    }

    /// Writes the accumulated changes in one conditional batch.
    async fn persist(&mut self) -> Result<(), RunError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        let give_up = Instant::now() + STORE_RETRY_FOR;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.apply(self.state.revision, changes.clone()).await {
                Ok((revision, _)) => {
                    self.state.revision = revision;
                    return Ok(());
                }
                Err(e) if e.is_transient() && Instant::now() < give_up => {
                    if self.deposed.is_cancelled() {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, "state store write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn verdict_of(result: &v1::StepResult) -> (Verdict, String) {
    match result.result.as_ref() {
        Some(r) => match hyperloop_proto::convert::parse_verdict("verdict", r.verdict) {
            Ok(v) => (v, r.detail.clone()),
            Err(e) => (
                Verdict::Fail,
                format!("the worker sent an unusable result: {e}"),
            ),
        },
        None => (
            Verdict::Fail,
            "the worker sent a result without a verdict".to_owned(),
        ),
    }
}

fn parse_task(id: &str) -> Option<TaskId> {
    id.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Assignment {
    fn clone_with_worker(&self, worker: &str) -> Assignment {
        Assignment {
            worker: worker.to_owned(),
            ..self.clone()
        }
    }
}
