//! `CoordinatorHarness`: the reconcile loop in-process against in-memory adapters (state
//! store, spec source, lander) and workers the test plays itself, for tests that run under
//! tokio's paused time: no git, no processes, no sleeps. Start the runtime with
//! `#[tokio::test(start_paused = true)]`; the loop's timers then advance only when everything
//! waits, so backoffs and grace periods cost nothing and happen in a fixed order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyperloop_proto::v1;
use hyperloop_shared::config::Config;
use hyperloop_shared::event::Event;
use hyperloop_shared::model::{Proposal, TaskId, TaskStatus, Verdict};
use hyperloop_shared::project::Project;
use hyperloop_shared::state::State;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Clock, Context, Halt, Links, Mode, Reconciler, RunError};
use crate::adapters::memory_lander::MemoryLander;
use crate::adapters::memory_specs::MemorySpecSource;
use crate::adapters::memory_store::MemoryStore;
use crate::compose::ProjectLoadError;
use crate::control::{Command, CommandError};
use crate::dispatch::{Joined, Registry, WorkerEvent};
use crate::ports::notifier::Recorder;
use crate::ports::state_store::StateStore;

/// Deep enough that a test never blocks the loop on its inbox.
const INBOX: usize = 1024;
/// A fake worker's queue of coordinator messages; more than any test has in flight.
const WORKER_QUEUE: usize = 256;
/// How long an expectation waits (in paused time, so only as long as the loop is busy).
const PATIENCE: Duration = Duration::from_secs(600);

/// A worker played by the test.
struct FakeWorker {
    conn: u64,
    messages: mpsc::Receiver<v1::CoordinatorMessage>,
}

pub struct CoordinatorHarness {
    pub store: MemoryStore,
    pub specs: MemorySpecSource,
    pub lander: MemoryLander,
    notifier: Recorder,
    inbox: mpsc::Sender<WorkerEvent>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    running: Option<JoinHandle<Result<Halt, RunError>>>,
    workers: BTreeMap<String, FakeWorker>,
    next_conn: u64,
}

impl CoordinatorHarness {
    /// Starts the loop over `specs` (path, text) with the default agents and pipeline.
    ///
    /// # Panics
    /// If the loop cannot start (a bug in the harness or the loop).
    pub async fn start(specs: &[(&str, &str)], config: Config, mode: Mode) -> Self {
        let store = MemoryStore::new(100_000);
        let source = MemorySpecSource::new(specs);
        let lander = MemoryLander::default();
        let (inbox, rx) = mpsc::channel(INBOX);
        let (commands, commands_rx) = mpsc::channel(INBOX);
        let notifier = Recorder::default();
        let mut links = Links::detached();
        links.commands = Arc::new(tokio::sync::Mutex::new(commands_rx));
        links.notifier = Arc::new(notifier.clone());
        let ctx = Context {
            config,
            root: std::path::PathBuf::from("/nonexistent"),
            repo_url: "memory://repo".to_owned(),
            mode,
            distributed: false,
            coordinator_id: "harness".to_owned(),
            term: 1,
            clock: Clock::start(),
        };
        let dispatcher = Registry::new(rx, ctx.clock);
        let reconciler = Reconciler::new(
            ctx,
            store.clone(),
            source.clone(),
            lander.clone(),
            base_project,
            dispatcher,
            links,
        )
        .await
        .expect("the loop starts");
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(reconciler.run(shutdown.clone()));
        CoordinatorHarness {
            store,
            specs: source,
            lander,
            notifier,
            inbox,
            commands,
            shutdown,
            running: Some(running),
            workers: BTreeMap::new(),
            next_conn: 1,
        }
    }

    /// Connects a worker with `capacity` slots.
    pub async fn add_worker(&mut self, name: &str, capacity: u32) {
        let (sender, messages) = mpsc::channel(WORKER_QUEUE);
        let conn = self.next_conn;
        self.next_conn += 1;
        let joined = Joined {
            conn,
            registration: v1::Registration {
                name: name.to_owned(),
                instance_id: format!("{name}-{conn}"),
                capacity,
                labels: Default::default(),
                version: "harness".to_owned(),
            },
            held: Vec::new(),
            local: true,
            sender,
            close: CancellationToken::new(),
        };
        self.send(WorkerEvent::Joined(Box::new(joined))).await;
        self.workers
            .insert(name.to_owned(), FakeWorker { conn, messages });
    }

    /// The worker's connection drops (it may come back with [`Self::add_worker`]).
    pub async fn lose_worker(&mut self, name: &str) {
        let worker = self.workers.remove(name).expect("a connected worker");
        self.send(WorkerEvent::Gone {
            worker: name.to_owned(),
            conn: worker.conn,
        })
        .await;
    }

    /// The next step sent to `worker` (other messages are skipped).
    ///
    /// # Panics
    /// If none arrives while the loop has anything left to do, or the loop stopped.
    pub async fn next_assign(&mut self, worker: &str) -> v1::Assign {
        self.next_assign_unless_halted(worker)
            .await
            .unwrap_or_else(|| panic!("the loop stopped before sending {worker} a step"))
    }

    /// The next step sent to `worker`, or `None` once the loop has stopped (its workers'
    /// streams close with it).
    ///
    /// # Panics
    /// If nothing arrives while the loop has anything left to do.
    pub async fn next_assign_unless_halted(&mut self, worker: &str) -> Option<v1::Assign> {
        let w = self.workers.get_mut(worker).expect("a connected worker");
        let wait = async {
            loop {
                match w.messages.recv().await.map(|m| m.body) {
                    Some(Some(v1::coordinator_message::Body::Assign(a))) => return Some(a),
                    Some(_) => {}
                    None => return None,
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no step was sent to {worker}"))
    }

    /// The steps already sent to `worker` and not yet taken, without waiting.
    pub fn pending_assigns(&mut self, worker: &str) -> Vec<v1::Assign> {
        let w = self.workers.get_mut(worker).expect("a connected worker");
        let mut pending = Vec::new();
        while let Ok(m) = w.messages.try_recv() {
            if let Some(v1::coordinator_message::Body::Assign(a)) = m.body {
                pending.push(a);
            }
        }
        pending
    }

    /// Reports `assign` finished with `verdict` (and, for intake, `proposals`), after
    /// `took` of agent time.
    pub async fn finish(
        &mut self,
        worker: &str,
        assign: &v1::Assign,
        verdict: Verdict,
        detail: &str,
        proposals: &[Proposal],
        took: Duration,
    ) {
        let conn = self.workers.get(worker).expect("a connected worker").conn;
        let result = v1::StepResult {
            attempt_id: assign.attempt_id,
            task_id: assign.task_id.clone(),
            step_path: assign.step_path.clone(),
            result: Some(v1::WorkerResult {
                verdict: v1::Verdict::from(verdict).into(),
                detail: detail.to_owned(),
            }),
            head_commit: if verdict == Verdict::Pass {
                format!("{:040x}", assign.attempt_id)
            } else {
                String::new()
            },
            branch: assign.branch.clone(),
            new_commits: verdict == Verdict::Pass,
            duration: Some(prost_types::Duration {
                seconds: i64::try_from(took.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(took.subsec_nanos()).unwrap_or(0),
            }),
            proposals: proposals.iter().cloned().map(Into::into).collect(),
            ..Default::default()
        };
        self.send(WorkerEvent::Message {
            worker: worker.to_owned(),
            conn,
            message: v1::worker_message::Body::StepResult(result),
        })
        .await;
    }

    /// `worker` asks whether `attempt` may push; returns the loop's answer.
    ///
    /// # Panics
    /// If no answer arrives while the loop has anything left to do.
    pub async fn ask_push(&mut self, worker: &str, attempt: u64) -> v1::PushAnswer {
        let conn = self.workers.get(worker).expect("a connected worker").conn;
        self.send(WorkerEvent::Message {
            worker: worker.to_owned(),
            conn,
            message: v1::worker_message::Body::PushRequest(v1::PushRequest {
                attempt_id: attempt,
                head_commit: format!("{attempt:040x}"),
            }),
        })
        .await;
        let w = self.workers.get_mut(worker).expect("a connected worker");
        let wait = async {
            loop {
                match w.messages.recv().await.map(|m| m.body) {
                    Some(Some(v1::coordinator_message::Body::PushAnswer(a)))
                        if a.attempt_id == attempt =>
                    {
                        return a;
                    }
                    Some(_) => {}
                    None => panic!("the loop stopped before answering {worker}"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("{worker}'s push was not answered"))
    }

    /// The stored state.
    pub async fn state(&self) -> State {
        self.store.load().await.expect("the memory store loads")
    }

    /// The journal, oldest first.
    pub async fn events(&self) -> Vec<Event> {
        self.store
            .events(0, usize::MAX)
            .await
            .expect("the memory store reads")
    }

    /// What the loop's notifier was told, in order.
    pub fn notified(&self) -> Vec<Event> {
        self.notifier.events()
    }

    /// Waits until `task` is stored with `status`.
    ///
    /// # Panics
    /// If it does not get there while the loop has anything left to do.
    pub async fn await_task_state(&self, task: TaskId, status: TaskStatus) {
        let wait = async {
            loop {
                if self
                    .state()
                    .await
                    .tasks
                    .get(&task)
                    .is_some_and(|t| t.status == status)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!(
                "{task} never became {status}: {:?}",
                self.state().await.tasks.get(&task)
            );
        }
    }

    /// Sends an operator command built around its reply channel and returns the answer.
    pub async fn command<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(build(tx))
            .await
            .expect("the loop takes commands");
        rx.await.expect("the loop answers")
    }

    /// Waits for the loop to halt on its own.
    ///
    /// # Panics
    /// If it keeps running while it has nothing left to do.
    pub async fn halted(&mut self) -> Result<Halt, RunError> {
        let running = self.running.take().expect("the loop is running");
        tokio::time::timeout(PATIENCE, running)
            .await
            .expect("the loop halts")
            .expect("the loop does not panic")
    }

    /// Whether the loop is still running.
    pub fn is_running(&self) -> bool {
        self.running.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Stops the loop as SIGTERM would.
    pub async fn stop(&mut self) -> Result<Halt, RunError> {
        self.shutdown.cancel();
        self.halted().await
    }

    /// Delivers to the loop; once it has stopped, like a worker's message on a closed
    /// stream, the event is lost.
    async fn send(&self, event: WorkerEvent) {
        let _ = self.inbox.send(event).await;
    }
}

/// The default agents and pipeline, as a project without overlays composes them.
/// The embedded base agents and pipeline, composed as `run` would with no overlay.
pub fn base_project() -> Result<Project, ProjectLoadError> {
    let (composition, _) = crate::compose::compose_project(
        std::path::Path::new("/nonexistent"),
        ".hyperloop/agents/",
        None,
        &crate::compose::CacheDir::new(std::env::temp_dir()),
    )?;
    Ok(Project::from_composition(&composition)?)
}
