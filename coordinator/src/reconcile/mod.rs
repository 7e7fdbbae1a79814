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
#[cfg(any(test, feature = "testing"))]
pub mod harness;
mod jobs;
mod landing;
mod specs;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::compose::ProjectLoadError;
use hyperloop_proto::v1;
use hyperloop_shared::config::{AgentProgram, Config, MergeStrategy};
use hyperloop_shared::decide::{Dispatch, TaskSnapshot, decide};
use hyperloop_shared::event::{Event, EventKind, SpecChange as SpecChangeEvent};
use hyperloop_shared::gaps::{self, Coverage};
use hyperloop_shared::intake;
use hyperloop_shared::model::{
    AttemptId, Proposal, Review, SpecPath, SpecRef, Task, TaskId, TaskStatus, Verdict,
};
use hyperloop_shared::pipeline::{
    ActionKind, ActionOutcome, Change as StepChange, Limits, Next, Outcome, Transition,
};
use hyperloop_shared::project::Project;
use hyperloop_shared::prompt::{self, TaskContext};
use hyperloop_shared::retry::Retry;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::control::{Command, Live};
use crate::dispatch::{Registry, WorkerEvent};
use crate::logs::LogHub;
use crate::ports::lander::{LandError, LandOutcome, LandRequest, Lander, WorkRef};
use crate::ports::notifier::{Nobody, Notifier};
use crate::ports::spec_source::{BlobId, CommitId};
use crate::ports::spec_source::{SpecSource, SpecSourceError};
use crate::ports::state_store::{Assignment, Change, SpecRecord, State, StateStore, StoreError};
use landing::{GitOp, GitReply, GitWork};
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
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading specs failed: {0}")]
    Specs(#[from] SpecSourceError),
    #[error("composing the agents and pipeline failed: {0}")]
    Compose(#[from] ProjectLoadError),
}

/// Why a step could not be prepared for dispatch (it is planned again next cycle).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(
        "no agent template for role `{role}`; add a `kind: Agent` named {role} under \
         .hyperloop/agents/ (or keep the base one)"
    )]
    NoAgent { role: String },
    #[error("reading {spec} failed: {source}")]
    SpecUnreadable {
        spec: String,
        #[source]
        source: SpecSourceError,
    },
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
    pub clock: Clock,
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
    /// Told about every event once it is stored.
    pub notifier: Arc<dyn Notifier>,
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
            notifier: Arc::new(Nobody),
        }
    }
}

/// How a task came to stop: decides its event and whether its gap re-enters intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The pipeline failed it (or completed it, for non-failing transitions).
    Pipeline,
    /// An operator cancelled it (`hyperloopctl cancel`): the gap does not re-enter intake.
    Cancelled,
    /// Its spec was deleted: nothing is left to reconcile.
    SpecDeleted,
    /// A task it depends on failed: the gap re-enters intake with the whole plan.
    DependencyFailed,
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
    /// Landings and base-branch syncs, run off the loop.
    git: GitWork<L>,
    /// When the task with the earliest pending retry may run again (ms since the epoch).
    next_retry_ms: Option<u64>,
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
    /// When a base-branch sync ([`Lander::sync`]) was last queued.
    last_sync: Option<Instant>,
    commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    logs: Arc<LogHub>,
    deposed: CancellationToken,
    github: Option<GitHub>,
    notifier: Arc<dyn Notifier>,
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
    view: SpecView,
    /// Consecutive failed intake runs, and when the next may start (exponential backoff, so
    /// a broken PM does not spin).
    intake_failures: u32,
    intake_not_before: Option<Instant>,
    /// Counts progress toward convergence (a task finished, a gap closed, a spec given up);
    /// `max_cycles` bounds the cycles in a row that see none.
    progress: u64,
    progress_seen: u64,
    stalled_cycles: u32,
    /// Something happened since the last cycle that could let work move (a result, a worker
    /// joining or leaving, a spec change, a deferred landing to retry). Without it a cycle
    /// costs O(1): cost follows what changed, not how many tasks exist.
    wake: bool,
}

/// `run` gives up after this many intake failures in a row (`watch` keeps retrying): a PM
/// that fails repeatedly needs a human, not more attempts.
pub const MAX_INTAKE_FAILURES: u32 = 3;

impl<S, P, L, C> Reconciler<S, P, L, C>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, ProjectLoadError>,
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
        let project = compose()?;
        let state = store.load().await?;
        let mut r = Reconciler {
            ctx,
            store,
            specs,
            git: GitWork::new(lander),
            next_retry_ms: None,
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
            notifier: links.notifier,
            github_polled: None,
            results: Vec::new(),
            acks: Vec::new(),
            jobs: BTreeMap::new(),
            needs_rebase: BTreeSet::new(),
            improvement_findings: Vec::new(),
            changes: Vec::new(),
            view: SpecView::default(),
            intake_failures: 0,
            intake_not_before: None,
            progress: 0,
            progress_seen: 0,
            stalled_cycles: 0,
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
            if self.progress != self.progress_seen {
                self.progress_seen = self.progress;
                self.stalled_cycles = 0;
            } else if worked {
                self.stalled_cycles += 1;
            }
            if let Some(halt) = self.converged() {
                return self.halt(halt).await;
            }
            // Only `run` gives up on a loop that spins without progress; `watch` never does.
            if self.ctx.mode == Mode::Run && self.stalled_cycles >= self.ctx.config.max_cycles {
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
            if let Some(at) = self.next_retry_ms {
                idle = idle.min(Duration::from_millis(
                    at.saturating_sub(self.ctx.clock.now_ms()),
                ));
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
                reply = self.git.reply() => self.git_reply(reply),
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
            Halt::SpecsFailed { specs, .. } => (
                format!("{} spec(s) given up: {}", specs.len(), specs.join("; ")),
                4,
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
            || self.git.busy()
            || !self.state.meta.failed_since_intake.is_empty()
            || self.github.as_ref().is_some_and(GitHub::busy)
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
        if specs.is_empty() {
            Some(Halt::Converged { complete, failed })
        } else {
            Some(Halt::SpecsFailed {
                complete,
                failed,
                specs,
            })
        }
    }

    /// Up to `limit` specs whose gap is open and that were not given up: what intake still
    /// has to answer.
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

    /// One pass of COLLECT / INTAKE / ADVANCE / SPAWN. Returns whether anything happened.
    async fn cycle(&mut self) -> Result<bool, RunError> {
        if self
            .last_sync
            .is_none_or(|at| at.elapsed() >= self.ctx.config.poll_interval)
        {
            self.last_sync = Some(Instant::now());
            self.git.queue(GitOp::Sync);
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
        if self
            .next_retry_ms
            .is_some_and(|at| self.ctx.clock.now_ms() >= at)
        {
            self.next_retry_ms = None;
            self.wake = true;
        }
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
            self.last_cycle_at_ms = self.ctx.clock.now_ms();
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
        // assignments: only then is a result acknowledged, a step sent or a landing started
        // (so a crash mid-merge never makes a finished step run again).
        self.persist().await?;
        self.send_acks();
        self.send_orders(orders);
        self.git.start();
        Ok(worked)
    }

    /// Acknowledges the results whose consequences are now stored.
    fn send_acks(&mut self) {
        for (worker, attempt) in std::mem::take(&mut self.acks) {
            self.registry.tell(
                &worker,
                v1::coordinator_message::Body::ResultAck(v1::ResultAck {
                    attempt_id: attempt.0,
                }),
            );
        }
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
                    .and_then(|d| Duration::try_from(d).ok())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
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
    fn apply_outcome(&mut self, task: Task, outcome: Outcome) {
        let pipeline = &self.project.process.pipeline;
        let Ok(Some(progress)) = task.progress() else {
            return;
        };
        let limits = self.limits();
        match pipeline.apply(&progress, outcome, limits) {
            Ok(transition) => self.settle(task, &transition, Stop::Pipeline),
            Err(e) => tracing::warn!(task = %task.id, error = %e, "outcome could not be applied"),
        }
    }

    /// Stops an unfinished task from outside the pipeline: its running step is cancelled and
    /// it fails with `reason`, dependents included. Returns the stopped task.
    fn stop_task(&mut self, id: TaskId, reason: String, stop: Stop) -> Option<Task> {
        let task = self.state.tasks.get(&id)?.clone();
        let transition = match Transition::stop(&task, reason.clone()) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(task = %id, error = %e, "not stopped");
                return None;
            }
        };
        if let Some(a) = self.state.assignments.get(&id).cloned() {
            self.registry.tell(
                &a.worker,
                v1::coordinator_message::Body::Cancel(v1::Cancel {
                    attempt_id: a.attempt.0,
                    reason,
                }),
            );
            self.registry.finished(&a.worker, a.attempt);
            self.drop_attempt(a.attempt);
        }
        self.needs_rebase.remove(&id);
        self.settle(task, &transition, stop);
        self.state.tasks.get(&id).cloned()
    }

    /// The one place a task's status changes: writes the transition into the task, journals
    /// it, and carries out what a finished task implies (intake feedback, spec failure
    /// counting, dependents, GitHub).
    fn settle(&mut self, mut task: Task, transition: &Transition, stop: Stop) {
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
                self.progress += 1;
                self.event(Some(id), EventKind::TaskCompleted { rounds: task.round });
            }
            StepChange::Failed => {
                self.progress += 1;
                let reason = task.failure.clone().unwrap_or_default();
                match stop {
                    Stop::Pipeline => {
                        self.add_review(Review {
                            task_id: id,
                            round: task.round,
                            role: "coordinator".to_owned(),
                            verdict: Verdict::Fail,
                            detail: format!("The task failed: {reason}"),
                        });
                        self.event(
                            Some(id),
                            EventKind::TaskFailed {
                                reason: reason.clone(),
                            },
                        );
                        self.github_failed(&task);
                    }
                    Stop::DependencyFailed => self.event(
                        Some(id),
                        EventKind::TaskFailed {
                            reason: reason.clone(),
                        },
                    ),
                    Stop::Cancelled | Stop::SpecDeleted => self.event(
                        Some(id),
                        EventKind::TaskCancelled {
                            reason: reason.clone(),
                        },
                    ),
                }
                // Failure is feedback: the gap re-enters intake with this task's history,
                // unless an operator or a deleted spec ended it on purpose.
                if matches!(stop, Stop::Pipeline | Stop::DependencyFailed) {
                    self.task_failed(id);
                }
                if stop == Stop::Pipeline {
                    self.count_spec_failure(&task.spec_ref.path, &reason);
                }
            }
            StepChange::Stayed | StepChange::ActionErrorCounted { .. } => {}
        }
        let failed = task.status == TaskStatus::Failed;
        self.put_task(task);
        if failed {
            self.fail_dependents(id);
        }
    }

    fn task_failed(&mut self, id: TaskId) {
        if !self.state.meta.failed_since_intake.contains(&id) {
            self.state.meta.failed_since_intake.push(id);
            let meta = self.state.meta.clone();
            self.record(Change::PutMeta(meta));
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
        let limit = self.ctx.config.max_spec_failures;
        let given_up =
            gaps::count_failure(&mut self.state.meta.spec_failures, path, &blob, why, limit);
        if let Some(reason) = given_up {
            self.progress += 1;
            let tasks = &self.state.tasks;
            self.state
                .meta
                .failed_since_intake
                .retain(|t| tasks.get(t).is_none_or(|t| &t.spec_ref.path != path));
            tracing::warn!(spec = %path, %reason, "spec given up");
            self.event(
                None,
                EventKind::SpecFailed {
                    path: path.to_string(),
                    reason,
                },
            );
        }
        let meta = self.state.meta.clone();
        self.record(Change::PutMeta(meta));
    }

    /// Tasks waiting on a failed task can never start: they fail too, naming the dependency,
    /// so intake can propose a different plan for the whole gap.
    fn fail_dependents(&mut self, failed: TaskId) {
        let dependents: Vec<TaskId> = self
            .state
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::NotStarted && t.deps.contains(&failed))
            .map(|t| t.id)
            .collect();
        for id in dependents {
            let Some(path) = self.state.tasks.get(&id).map(|t| t.spec_ref.path.clone()) else {
                continue;
            };
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

    fn reap_job(&mut self, job: Job, worker: &str, result: v1::StepResult) {
        let (verdict, detail) = verdict_of(&result);
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
                    rejections.push(format!("The previous intake run failed: {detail}"));
                    self.intake_failures += 1;
                    let backoff = hyperloop_shared::retry::delay(self.intake_failures);
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
                tracing::info!(%worker, %verdict, "process improver finished");
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
                    // Journaled as ProcessImproved once it landed.
                    self.git.queue(GitOp::Land {
                        request,
                        action: String::new(),
                    });
                } else {
                    self.event(
                        None,
                        EventKind::ProcessImproved {
                            verdict,
                            commit: None,
                        },
                    );
                }
            }
        }
    }

    // --- INTAKE --------------------------------------------------------------------------

    /// Brings the spec view up to the base branch tip (O(1) when nothing changed).
    fn refresh_specs(&mut self) -> Result<(), RunError> {
        let changes = self.specs.changes(self.view.version.as_ref())?;
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
            let doomed: Vec<TaskId> = self
                .state
                .tasks
                .values()
                .filter(|t| t.spec_ref.path == path && !t.status.is_terminal())
                .map(|t| t.id)
                .collect();
            for id in doomed {
                let reason = format!("cancelled: spec {path} was deleted");
                self.stop_task(id, reason, Stop::SpecDeleted);
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
        let changed = self.open_specs(self.ctx.config.max_specs_per_intake as usize);
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
            .filter(|t| !self.needs_rebase.contains(&t.id) && !self.git.is_landing(t.id))
            .cloned()
            .collect();
        let now = self.ctx.clock.now_ms();
        for task in waiting {
            if let Some(retry) = task.retry.as_ref().filter(|r| !r.due(now)) {
                let at = retry.not_before_ms;
                self.next_retry_ms = Some(self.next_retry_ms.map_or(at, |t| t.min(at)));
                continue;
            }
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
        self.git.queue(GitOp::Land {
            request,
            action: action.to_owned(),
        });
    }

    /// A git operation finished: a landing's outcome moves its task on (or schedules a retry);
    /// a sync may have brought spec changes.
    fn git_reply(&mut self, reply: GitReply) {
        self.wake = true;
        match reply {
            GitReply::Synced(Ok(())) => {}
            GitReply::Synced(Err(e)) => {
                tracing::warn!(error = %e, "could not bring the base branch up to date; retrying later")
            }
            GitReply::Landed {
                request,
                action,
                outcome,
            } => match request.task {
                WorkRef::Task(id) => self.task_landed(id, &request, &action, outcome),
                WorkRef::ProcessImprovement => self.improvements_landed(outcome),
            },
        }
    }

    fn task_landed(
        &mut self,
        id: TaskId,
        request: &LandRequest,
        action: &str,
        outcome: Result<LandOutcome, LandError>,
    ) {
        let branch = request.branch.clone();
        if let Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. }) =
            &outcome
        {
            if self.state.meta.rebase_attempts.remove(&id).is_some() {
                let meta = self.state.meta.clone();
                self.record(Change::PutMeta(meta));
            }
            self.event(
                Some(id),
                EventKind::Merged {
                    branch: branch.clone(),
                    into: self.ctx.config.target.base_branch.clone(),
                    commit: landing.commit.0.clone(),
                    strategy: format!("{:?}", request.strategy).to_lowercase(),
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
            Ok(LandOutcome::Landed(_) | LandOutcome::AlreadyLanded { .. }) => {
                self.apply_outcome(task, Outcome::Action(ActionOutcome::Success));
            }
            Ok(LandOutcome::Conflict { files }) => self.conflicted(task, action, &branch, files),
            Ok(LandOutcome::Deferred { reason }) => self.retry_later(task, reason),
            Err(e) if e.is_transient() => self.retry_later(task, e.to_string()),
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

    /// A transient failure: the task stays at its action and tries again after the shared
    /// backoff, which is stored with the task so a restart keeps it.
    fn retry_later(&mut self, mut task: Task, reason: String) {
        let retry = Retry::failed(task.retry.as_ref(), reason, self.ctx.clock.now_ms());
        tracing::info!(task = %task.id, reason = %retry.reason, failures = retry.failures, "landing will be retried");
        let at = retry.not_before_ms;
        self.next_retry_ms = Some(self.next_retry_ms.map_or(at, |t| t.min(at)));
        task.retry = Some(retry);
        self.put_task(task);
    }

    fn improvements_landed(&mut self, outcome: Result<LandOutcome, LandError>) {
        let commit = match outcome {
            Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. }) => {
                Some(landing.commit.0)
            }
            Ok(other) => {
                tracing::warn!(?other, "process improvements did not land");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "process improvements did not land");
                None
            }
        };
        // Every agent spawned from now on sees the new overlays.
        match (self.compose)() {
            Ok(project) => self.project = project,
            Err(e) => {
                tracing::warn!(error = %e, "recomposing after process improvements failed; keeping the previous composition")
            }
        }
        self.event(
            None,
            EventKind::ProcessImproved {
                verdict: Verdict::Pass,
                commit,
            },
        );
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
                            failures: self.state.meta.failed_since_intake.clone(),
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
                    dispatched_tasks.push((id, assignment.with_worker(&worker)));
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
                self.settle(task.clone(), &pipeline.start(), Stop::Pipeline);
                let Some(started) = self.state.tasks.get(&id).cloned() else {
                    continue;
                };
                task = started;
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
                    dispatched_tasks.push((id, assignment.with_worker(&worker)));
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
                            reason: e.to_string(),
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
            self.attempts.insert(
                attempt,
                Attempt::of(&assign, &worker, self.ctx.clock.now_ms()),
            );
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
    ) -> Result<(v1::Assign, Assignment), PrepareError> {
        let template = self
            .project
            .agents
            .get(role)
            .ok_or_else(|| PrepareError::NoAgent {
                role: role.to_owned(),
            })?;
        let spec_text =
            self.specs
                .read(&task.spec_ref)
                .map_err(|source| PrepareError::SpecUnreadable {
                    spec: task.spec_ref.to_string(),
                    source,
                })?;
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
            dispatched_at_ms: self.ctx.clock.now_ms(),
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
        let deadline = UNIX_EPOCH + Duration::from_millis(self.ctx.clock.now_ms()) + agent.timeout;
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
            at_ms: self.ctx.clock.now_ms(),
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
                Ok((revision, journaled)) => {
                    self.state.revision = revision;
                    if !journaled.is_empty() {
                        self.notifier.notify(&journaled);
                    }
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

/// The loop's one clock. Monotonic time is tokio's (tests pause and advance it); wall-clock
/// milliseconds, for events and persisted deadlines, are read once at the start and advanced
/// by it, so both move together.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_ms: u64,
}

impl Clock {
    pub fn start() -> Self {
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            anchor: Instant::now(),
            anchor_ms,
        }
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.anchor.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.anchor_ms.saturating_add(elapsed)
    }
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
