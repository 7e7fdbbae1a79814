//! The reconcile loop's driver. The decisions are [`Core`]'s (in `shared`, pure); this module
//! turns what happens outside into [`Input`]s — worker messages from the [`Dispatcher`], spec
//! scans, operator commands, landing and forge replies, timers — and carries the returned
//! [`Effect`]s out through the ports: the state store, the dispatcher, the lander (off the
//! loop, [`landing`]), the forge ([`github`]) and the notifier.
//!
//! Event-driven: a result, a joined worker or a freed slot triggers the next cycle at once;
//! `poll_interval` only paces looking for external changes (new commits on the base branch).
//!
//! Crash safety rests on ordering, which the core encodes in its effects: an assignment is
//! persisted before the step is sent, a result's consequences are persisted before it is
//! acknowledged and before any landing it leads to starts, and landing is idempotent, so
//! after `kill -9` a restart redoes at most work that was never recorded as done.

mod github;
#[cfg(any(test, feature = "testing"))]
pub mod harness;
mod landing;
mod prepare;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use hyperloop_proto::v1::AttemptPhase;
use hyperloop_shared::config::Config;
use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::gates::GateStatus;
use hyperloop_shared::model::{AttemptId, TaskId};
use hyperloop_shared::project::Project;
use hyperloop_shared::reconcile::{Answer, Core, Effect, Input, Op, Settings, Tick};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::adapters::command_gate::CommandGates;
use crate::compose::ProjectLoadError;
use crate::control::{AttemptView, Command, CommandError, Live, WorkerView};
use crate::logs::LogHub;
use crate::metrics::Metrics;
use crate::ports::dispatcher::{Dispatcher, Inbound};
use crate::ports::gate::{GateTarget, evaluate_gate};
use crate::ports::lander::{LandError, LandOutcome, Lander, PushStatus};
use crate::ports::notifier::{Nobody, Notifier};
use crate::ports::spec_source::{SpecSource, SpecSourceError};
use crate::ports::state_store::{Change, StateStore, StoreError};
use landing::{GitOp, GitReply, GitWork};
use prepare::Preparer;

pub use github::GitHub;
pub use hyperloop_shared::reconcile::{Halt, MAX_INTAKE_FAILURES, Mode};

/// How long a new leader waits for workers to reconnect and reclaim the steps they run
/// before giving those steps to others. Above a worker's reconnect backoff cap.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(6);
/// Gate check answers in flight: one per task at a gate at most, and the loop reads them at
/// once; more only makes a finished check wait less.
const GATE_REPLIES: usize = 64;
/// How often worker liveness and lease deadlines are checked.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// How long a transient state store failure (an etcd member down, a leader election inside
/// etcd) is retried before the loop gives up its term.
const STORE_RETRY_FOR: Duration = Duration::from_secs(15);

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
    #[error("{task} no longer exists")]
    TaskGone { task: TaskId },
    #[error("{spec} cannot be used: {why}")]
    SpecUnusable { spec: String, why: String },
    #[error("every spec of this intake was unusable and no failed task waits; nothing to ask")]
    NothingToAsk,
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
    /// Runs `command` gates on this host when GitHub does not (`--allow-command-gates`).
    pub gates: Option<CommandGates>,
    /// Takes the loop's timings (dispatch round trips) when metrics are kept.
    pub metrics: Option<Arc<Metrics>>,
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
            gates: None,
            metrics: None,
        }
    }
}

/// A finished gate check: the task, the gate, and where it stands.
type GateReply = (TaskId, String, Result<GateStatus, String>);

/// What the live view shows of a running attempt beyond its lease.
#[derive(Debug, Clone, Copy, Default)]
struct AttemptStatus {
    phase: AttemptPhase,
    turns: u32,
    cost_usd: f64,
    deadline_ms: u64,
    /// When the step was sent, until the worker's first word about it.
    sent_at: Option<Instant>,
}

pub struct Reconciler<S, P, L, C, D> {
    ctx: Context,
    core: Core,
    store: S,
    specs: P,
    dispatcher: D,
    /// Landings and base-branch syncs, run off the loop.
    git: GitWork<L>,
    /// Recomposes the project after the process-improver changed overlays.
    compose: C,
    /// The composition, shared with the admin API.
    shared_project: Arc<Project>,
    /// Live-view details of attempts in flight.
    attempts: BTreeMap<AttemptId, AttemptStatus>,
    live: watch::Sender<Arc<Live>>,
    live_dirty: bool,
    /// When a base-branch sync was last queued, and GitHub last polled.
    last_sync: Option<Instant>,
    github_polled: Option<Instant>,
    commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    logs: Arc<LogHub>,
    deposed: CancellationToken,
    github: Option<GitHub>,
    notifier: Arc<dyn Notifier>,
    metrics: Option<Arc<Metrics>>,
    /// Gate checks run off the loop, answering on a channel.
    gates: Option<Arc<CommandGates>>,
    gate_replies: (mpsc::Sender<GateReply>, mpsc::Receiver<GateReply>),
    /// The core's next deadline (ms since the epoch).
    wake_at: Option<u64>,
    /// A halt the core asked for.
    halt: Option<Halt>,
    /// Cycles run so far (the `cycle` span's number).
    cycles: u64,
    /// The `task` span of each dispatched attempt, open until the core forgets the attempt.
    spans: BTreeMap<AttemptId, tracing::Span>,
}

impl<S, P, L, C, D> Reconciler<S, P, L, C, D>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, ProjectLoadError>,
    D: Dispatcher,
{
    /// Loads state and the specs and starts the core. Assignments left from a previous run
    /// become orphaned leases their workers may reclaim within [`TAKEOVER_GRACE`].
    pub async fn new(
        ctx: Context,
        store: S,
        specs: P,
        lander: L,
        compose: C,
        dispatcher: D,
        links: Links,
    ) -> Result<Self, RunError> {
        let project = compose()?;
        let state = store.load().await?;
        let changes = specs.changes(None)?;
        for skipped in &changes.skipped {
            tracing::warn!(%skipped, "spec skipped");
        }
        let settings = Settings {
            config: ctx.config.clone(),
            mode: ctx.mode,
            distributed: ctx.distributed,
            coordinator_id: ctx.coordinator_id.clone(),
            term: ctx.term,
            forge: links.github.is_some(),
            check_gates: links.github.is_none() && links.gates.is_some(),
            takeover_grace_ms: u64::try_from(TAKEOVER_GRACE.as_millis()).unwrap_or(u64::MAX),
        };
        let now = ctx.clock.now_ms();
        let (core, effects) = Core::start(settings, project.clone(), state, changes, now);
        let mut r = Reconciler {
            ctx,
            core,
            store,
            specs,
            dispatcher,
            git: GitWork::new(lander),
            compose,
            shared_project: Arc::new(project),
            attempts: BTreeMap::new(),
            live: links.live,
            live_dirty: true,
            last_sync: None,
            github_polled: None,
            commands: links.commands,
            logs: links.logs,
            deposed: links.deposed,
            github: links.github,
            notifier: links.notifier,
            metrics: links.metrics,
            gates: links.gates.map(Arc::new),
            gate_replies: mpsc::channel(GATE_REPLIES),
            wake_at: None,
            halt: None,
            cycles: 0,
            spans: BTreeMap::new(),
        };
        r.carry_out(effects).await?;
        Ok(r)
    }

    /// One reconcile cycle, for benchmarks and tests that drive the loop step by step.
    /// Returns whether anything was written.
    ///
    /// # Errors
    /// As [`Reconciler::run`].
    #[doc(hidden)]
    pub async fn tick(&mut self) -> Result<bool, RunError> {
        let revision = self.core.state().revision;
        self.cycle().await?;
        Ok(self.core.state().revision != revision)
    }

    /// Runs until convergence (`Mode::Run`), shutdown or `max_cycles`.
    ///
    /// # Errors
    /// A state store failure (state is never written past a failed write) or unreadable specs.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Halt, RunError> {
        let commands = self.commands.clone();
        let mut commands = commands.lock().await;
        loop {
            // A halt found while handling the last input stops the loop before it decides
            // anything more.
            if let Some(halt) = self.halt.take() {
                return self.stop(halt).await;
            }
            self.cycle().await?;
            if let Some(halt) = self.halt.take() {
                return self.stop(halt).await;
            }
            self.publish();
            let now = self.ctx.clock.now_ms();
            let mut idle = self.ctx.config.poll_interval;
            if let Some(at) = self.wake_at {
                idle = idle.min(Duration::from_millis(at.saturating_sub(now)));
            }
            if !self.dispatcher.is_empty() {
                idle = idle.min(HOUSEKEEPING_EVERY);
            }
            tokio::select! {
                () = shutdown.cancelled() => return self.stop(Halt::Shutdown).await,
                () = self.deposed.cancelled() => return Ok(Halt::Deposed),
                inbound = self.dispatcher.next() => match inbound {
                    Some(inbound) => self.inbound(inbound).await?,
                    None => return self.stop(Halt::Shutdown).await,
                },
                Some(command) = commands.recv() => self.command(command).await?,
                Some(reply) = async {
                    match self.github.as_mut() {
                        Some(github) => github.reply().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let news = self.github.as_mut().and_then(|g| g.news(reply, &self.core));
                    let input = news.map_or(Input::Wake, Input::Forge);
                    self.input(input).await?;
                }
                reply = self.git.reply() => self.git_reply(reply).await?,
                Some((task, gate, outcome)) = self.gate_replies.1.recv() => {
                    if let Err(e) = &outcome {
                        tracing::warn!(%task, %gate, error = %e, "gate check failed; checking again later");
                    }
                    self.input(Input::GateChecked { task, gate, outcome }).await?;
                }
                () = tokio::time::sleep(idle) => {}
            }
            // Merge wake-ups: take everything already queued before deciding again.
            while let Some(inbound) = self.dispatcher.try_next() {
                self.inbound(inbound).await?;
            }
            for lost in self.dispatcher.expire() {
                self.inbound(lost).await?;
            }
        }
    }

    /// Journals the halt (cancelling running steps on shutdown) and tells workers.
    async fn stop(mut self, halt: Halt) -> Result<Halt, RunError> {
        if halt == Halt::Deposed {
            return Ok(halt);
        }
        self.input(Input::Stop(halt.clone())).await?;
        // The final state, for the summary `run` ends with.
        self.live_dirty = true;
        self.publish();
        // With standbys, workers move on to the next leader instead of exiting.
        if !self.ctx.distributed {
            self.dispatcher.drain_all("coordinator stopped");
        }
        Ok(halt)
    }

    /// One pass of the core's cycle, with the specs and workers as they are now, in a `cycle`
    /// span: the steps it dispatches get their `task` spans under it.
    async fn cycle(&mut self) -> Result<(), RunError> {
        self.cycles += 1;
        let span = tracing::info_span!("cycle", cycle = self.cycles);
        tracing::Instrument::instrument(self.decide(), span).await
    }

    async fn decide(&mut self) -> Result<(), RunError> {
        if self
            .last_sync
            .is_none_or(|at| at.elapsed() >= self.ctx.config.poll_interval)
        {
            self.last_sync = Some(Instant::now());
            self.git.queue(GitOp::Sync);
        }
        let changes = match self.specs.changes(self.core.view().version.as_ref()) {
            Ok(changes) => changes,
            // Nothing is built on, landed onto or cancelled because of it: the loop stops.
            Err(e @ SpecSourceError::Rewritten { .. }) => {
                tracing::error!(error = %e, "base branch rewritten; stopping");
                self.halt = Some(Halt::BaseRewritten(e.to_string()));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if Some(&changes.version) != self.core.view().version.as_ref() || !changes.is_unchanged() {
            for skipped in &changes.skipped {
                tracing::warn!(%skipped, "spec skipped");
            }
            self.input(Input::Specs(changes)).await?;
        }
        if self.github.is_some()
            && self
                .github_polled
                .is_none_or(|at| at.elapsed() >= self.ctx.config.poll_interval)
        {
            // Gates and merges depend on GitHub, which has no push channel to us.
            self.github_polled = Some(Instant::now());
            self.input(Input::Wake).await?;
        }
        let tick = Tick {
            workers: self.dispatcher.offers(),
            forge_busy: self.github.as_ref().is_some_and(GitHub::busy),
        };
        let revision = self.core.state().revision;
        self.input(Input::Tick(tick)).await?;
        self.live_dirty |= self.core.state().revision != revision;
        self.git.start();
        Ok(())
    }

    async fn inbound(&mut self, inbound: Inbound) -> Result<(), RunError> {
        self.live_dirty = true;
        let input = match inbound {
            Inbound::Joined {
                worker,
                capacity,
                held,
            } => Input::WorkerJoined {
                worker,
                capacity,
                held,
            },
            Inbound::Lost {
                worker,
                reason,
                grace,
            } => Input::WorkerLost {
                worker,
                reason,
                grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            },
            Inbound::Result { worker, report } => {
                if let Some(span) = self.spans.get(&report.attempt) {
                    span.record("verdict", format!("{:?}", report.verdict).to_lowercase());
                }
                Input::Result { worker, report }
            }
            Inbound::PushAsked { worker, attempt } => Input::PushAsked { worker, attempt },
            Inbound::Declined {
                worker,
                attempt,
                reason,
            } => {
                tracing::info!(%worker, %attempt, %reason, "step declined; it will be dispatched again");
                Input::Declined { attempt }
            }
            Inbound::Progress {
                attempt,
                phase,
                usage,
                lines,
            } => {
                if let Some(status) = self.attempts.get_mut(&attempt) {
                    if let (Some(sent), Some(metrics)) = (status.sent_at.take(), &self.metrics) {
                        metrics.dispatched(sent.elapsed().as_secs_f64());
                    }
                    status.phase = phase;
                    if let Some((turns, cost_usd)) = usage {
                        status.turns = turns;
                        status.cost_usd = cost_usd;
                    }
                }
                if !lines.is_empty() {
                    self.logs.lines(attempt.0, lines);
                }
                return Ok(());
            }
        };
        self.input(input).await
    }

    async fn command(&mut self, command: Command) -> Result<(), RunError> {
        self.live_dirty = true;
        let (op, reply) = match command {
            Command::Approve {
                task,
                gate,
                comment,
                reply,
            } => (
                Op::Approve {
                    task,
                    gate,
                    comment,
                },
                Replier::Task(reply),
            ),
            Command::Cancel {
                task,
                reason,
                reply,
            } => (Op::Cancel { task, reason }, Replier::Task(reply)),
            Command::RetrySpec { path, reply } => (Op::RetrySpec { path }, Replier::Spec(reply)),
            Command::Drain { worker, reply } => {
                let answer = if self
                    .dispatcher
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
                return Ok(());
            }
        };
        let effects = self.core.on(Input::Command(op), self.ctx.clock.now_ms());
        let mut answer = None;
        let mut rest = Vec::new();
        for effect in effects {
            match effect {
                Effect::Answer(a) => answer = Some(a),
                other => rest.push(other),
            }
        }
        // The answer goes out only once what the command changed is stored.
        self.carry_out(rest).await?;
        if let Some(answer) = answer {
            reply.send(answer);
        }
        Ok(())
    }

    async fn git_reply(&mut self, reply: GitReply) -> Result<(), RunError> {
        let input = match reply {
            GitReply::Synced(Ok(())) => Input::Wake,
            GitReply::Synced(Err(e @ LandError::Rewritten { .. })) => {
                tracing::error!(error = %e, "origin's base branch rewritten; stopping");
                self.halt = Some(Halt::BaseRewritten(e.to_string()));
                Input::Wake
            }
            GitReply::Synced(Err(e)) => {
                tracing::warn!(error = %e, "could not bring the base branch up to date; retrying later");
                Input::Wake
            }
            GitReply::Landed {
                request,
                action,
                outcome,
            } => {
                if let Err(e) = &outcome {
                    tracing::warn!(task = %request.task, error = %e, "landing failed");
                }
                // Nothing was landed; the loop stops before anything is built on the rewrite.
                if let Err(e @ LandError::Rewritten { .. }) = &outcome {
                    self.halt = Some(Halt::BaseRewritten(e.to_string()));
                }
                // Landed here, but origin's branch was replaced: stop before pushing more.
                if let Ok(LandOutcome::Landed(landing) | LandOutcome::AlreadyLanded { landing, .. }) =
                    &outcome
                    && let PushStatus::OriginRewritten {
                        branch,
                        origin_tip,
                        local_tip,
                    } = &landing.push
                {
                    self.halt = Some(Halt::BaseRewritten(format!(
                        "origin's {branch} was replaced outside hyperloop by a history that \
                         shares nothing with this repository's (origin has {origin_tip}, here \
                         is {local_tip}); the work is landed here and nothing was pushed over \
                         it. If that was not intended, restore origin with `git push --force \
                         origin {local_tip}:refs/heads/{branch}` and run again"
                    )));
                }
                Input::Landed {
                    request,
                    action,
                    outcome: landing::landed(outcome),
                }
            }
        };
        self.input(input).await
    }

    /// Hands one input to the core and carries out what it says.
    async fn input(&mut self, input: Input) -> Result<(), RunError> {
        let effects = self.core.on(input, self.ctx.clock.now_ms());
        self.carry_out(effects).await
    }

    /// Carries out effects in order. A failed persist stops everything after it.
    async fn carry_out(&mut self, effects: Vec<Effect>) -> Result<(), RunError> {
        let mut prepared = Vec::new();
        for effect in effects {
            match effect {
                Effect::Persist(changes) => self.persist(changes).await?,
                Effect::Ack { worker, attempt } => self.dispatcher.ack(&worker, attempt),
                Effect::Cancel {
                    worker,
                    attempt,
                    reason,
                } => self.dispatcher.cancel(&worker, attempt, &reason),
                Effect::AnswerPush {
                    worker,
                    attempt,
                    granted,
                    reason,
                } => {
                    if granted {
                        tracing::debug!(%worker, %attempt, "push granted");
                    } else {
                        tracing::warn!(%worker, %attempt, %reason, "push refused");
                    }
                    self.dispatcher
                        .answer_push(&worker, attempt, granted, &reason);
                }
                Effect::Dispatch(order) => {
                    let mut preparer = Preparer {
                        specs: &self.specs,
                        config: &self.ctx.config,
                        repo_url: &self.ctx.repo_url,
                        now_ms: self.ctx.clock.now_ms(),
                        unusable: Vec::new(),
                    };
                    let prepared_order = preparer.prepare(&self.core, &order);
                    for (path, reason) in std::mem::take(&mut preparer.unusable) {
                        tracing::warn!(spec = %path, %reason, "spec cannot be used; given up");
                        prepared.push(Input::SpecUnusable { path, reason });
                    }
                    let outcome = match prepared_order {
                        Ok(mut step) => {
                            // Open until the core forgets the attempt; the worker's `step` span
                            // joins it through the trace context sent with the step.
                            let span = tracing::info_span!(
                                "task",
                                task_id = %step.subject,
                                role = %step.role,
                                round = step.round,
                                step = %step.step,
                                attempt = order.attempt.0,
                                worker = %order.worker,
                                verdict = tracing::field::Empty,
                            );
                            step.trace_context = hyperloop_worker::otel::context_of(&span);
                            self.spans.insert(order.attempt, span);
                            let bytes = step.prompt.len() as u64;
                            self.attempts.insert(
                                order.attempt,
                                AttemptStatus {
                                    deadline_ms: step.deadline_ms,
                                    sent_at: Some(Instant::now()),
                                    ..AttemptStatus::default()
                                },
                            );
                            self.logs.started(
                                &step.subject,
                                step.attempt.0,
                                &step.step,
                                &step.role,
                            );
                            match self.dispatcher.send(&order.worker, step) {
                                Ok(()) => Ok(bytes),
                                Err(e) => Err(format!("dispatch to {} failed: {e}", order.worker)),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(reason) = &outcome {
                        self.spans.remove(&order.attempt);
                        tracing::warn!(attempt = %order.attempt, %reason, "step not dispatched; it will be planned again");
                    }
                    prepared.push(Input::Dispatched {
                        attempt: order.attempt,
                        outcome,
                    });
                }
                Effect::Forget(attempt) => {
                    self.attempts.remove(&attempt);
                    self.spans.remove(&attempt);
                    self.logs.finished(attempt.0);
                }
                Effect::Land { request, action } => self.git.queue(GitOp::Land { request, action }),
                Effect::Forge(ask) => {
                    if let Some(github) = self.github.as_mut() {
                        github.ask(&ask, &self.core);
                    }
                }
                Effect::CheckGate { task, gate } => self.check_gate(task, gate),
                Effect::Recompose => match (self.compose)() {
                    Ok(project) => {
                        self.shared_project = Arc::new(project.clone());
                        prepared.push(Input::Recomposed(Box::new(project)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "recomposing after process improvements failed; keeping the previous composition")
                    }
                },
                Effect::Answer(_) => {}
                Effect::WakeAt(at) => self.wake_at = Some(at),
                Effect::Halt(halt) => self.halt = Some(halt),
            }
        }
        // What preparing learned goes back to the core (journaled with the next write).
        for input in prepared {
            let more = self.core.on(input, self.ctx.clock.now_ms());
            Box::pin(self.carry_out(more)).await?;
        }
        Ok(())
    }

    /// Runs a gate check off the loop; its answer comes back on `gate_replies`.
    fn check_gate(&self, task: TaskId, gate: String) {
        let Some(gates) = self.gates.clone() else {
            return;
        };
        let target = GateTarget {
            task,
            branch: self
                .core
                .state()
                .tasks
                .get(&task)
                .and_then(|t| t.branch.clone()),
            commit: None,
            pr: None,
        };
        let defs = self.core.project().process.gates.clone();
        let replies = self.gate_replies.0.clone();
        tokio::spawn(async move {
            let outcome = evaluate_gate(&*gates, &defs, &gate, &target)
                .await
                .map_err(|e| e.to_string());
            // The loop may have stopped; then nobody needs the answer.
            let _ = replies.send((task, gate, outcome)).await;
        });
    }

    /// Writes a batch in one conditional write, retrying transient store failures.
    async fn persist(&mut self, changes: Vec<Change>) -> Result<(), RunError> {
        let give_up = Instant::now() + STORE_RETRY_FOR;
        let mut backoff = Duration::from_millis(100);
        let revision = self.core.state().revision;
        loop {
            match self.store.apply(revision, changes.clone()).await {
                Ok((revision, journaled)) => {
                    self.core.stored(revision);
                    log_events(&journaled);
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

    // --- live view -----------------------------------------------------------------------

    fn worker_views(&self) -> Vec<WorkerView> {
        let mut workers = self.dispatcher.workers();
        for w in &mut workers {
            w.attempts = self
                .core
                .leases()
                .iter()
                .filter(|(_, l)| l.worker == w.name && l.orphaned_until.is_none())
                .map(|(id, l)| {
                    let status = self.attempts.get(id).copied().unwrap_or_default();
                    AttemptView {
                        attempt: id.0,
                        task_id: l.subject.clone(),
                        step_path: l.step.clone(),
                        role: l.role.clone(),
                        round: l.round,
                        worker: l.worker.clone(),
                        phase: status.phase,
                        started_at_ms: l.started_at_ms,
                        deadline_ms: status.deadline_ms,
                        turns: status.turns,
                        cost_usd: status.cost_usd,
                    }
                })
                .collect();
        }
        workers
    }

    /// Publishes the live view if anything in it changed since the last time.
    fn publish(&mut self) {
        if !self.live_dirty {
            return;
        }
        self.live_dirty = false;
        let project = self.shared_project.clone();
        let workers = self.worker_views();
        let converged = self
            .core
            .converged(self.github.as_ref().is_some_and(GitHub::busy));
        let cycle = self.core.state().meta.cycle;
        let last_cycle_at_ms = self.core.last_cycle_at_ms();
        let queued = self.core.queued();
        let tasks = self
            .core
            .state()
            .tasks
            .values()
            .map(|t| crate::control::TaskBrief {
                id: t.id.to_string(),
                status: t.status,
                round: t.round,
                step: t.position.as_ref().map(|p| p.step().clone()),
            })
            .collect();
        self.live.send_modify(|live| {
            *live = Arc::new(Live {
                workers,
                tasks,
                cycle,
                last_cycle_at_ms,
                converged,
                queued,
                project: Some(project),
                ..(**live).clone()
            });
        });
    }
}

/// Where a command's answer goes.
enum Replier {
    Task(crate::control::Reply<hyperloop_shared::model::Task>),
    Spec(crate::control::Reply<hyperloop_shared::model::SpecPath>),
}

impl Replier {
    fn send(self, answer: Result<Answer, CommandError>) {
        match (self, answer) {
            (Replier::Task(reply), Ok(Answer::Task(task))) => drop(reply.send(Ok(*task))),
            (Replier::Spec(reply), Ok(Answer::Spec(path))) => drop(reply.send(Ok(path))),
            (Replier::Task(reply), Err(e)) => drop(reply.send(Err(e))),
            (Replier::Spec(reply), Err(e)) => drop(reply.send(Err(e))),
            (_, Ok(other)) => tracing::error!(?other, "a command got an answer of the wrong kind"),
        }
    }
}

/// Every stored event, in the log too, its typed fields flat (see `logfmt`).
fn log_events(events: &[Event]) {
    use hyperloop_worker::logfmt::flatten_event;
    for e in events {
        let name = e.kind.name();
        let task = e.task.map(|t| t.to_string());
        let kind = serde_json::to_value(&e.kind).unwrap_or_default();
        let fields: serde_json::Map<String, serde_json::Value> =
            flatten_event(task.as_deref(), &kind).into_iter().collect();
        let fields = serde_json::Value::Object(fields);
        // What went wrong is a warning, as in the seed's sample; the rest is progress.
        let warn = matches!(
            e.kind,
            EventKind::TaskLoopedBack { .. }
                | EventKind::TaskFailed { .. }
                | EventKind::SpawnFailed { .. }
                | EventKind::SpecFailed { .. }
                | EventKind::RebaseConflict { .. }
                | EventKind::WorkerLost { .. }
        );
        if warn {
            tracing::warn!(event = name, event_fields = %fields);
        } else {
            tracing::info!(event = name, event_fields = %fields);
        }
    }
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
