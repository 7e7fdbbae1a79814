//! `hyperloop.v1.AdminService`: the operator API behind `hyperloopctl --server`.
//!
//! Reads come from the state store (any coordinator answers them) and the loop's [`Live`]
//! view; mutations go to the leader's loop as [`Command`]s, and agent output comes from the
//! leader's [`LogHub`]. A standby refuses mutations and logs with FAILED_PRECONDITION naming
//! the leader's address.
//!
//! `WatchEvents` follows the journal by polling the store every [`WATCH_POLL`]: the store has
//! no change feed, and a fifth of a second is well within what an operator notices.

pub mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyperloop_proto::convert::{parse_task_id, parse_task_status};
use hyperloop_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use hyperloop_proto::v1::{self, WaitReason};
use hyperloop_shared::config::Config;
use hyperloop_shared::event::Event;
use hyperloop_shared::model::{SpecPath, TaskId, TaskStatus};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use self::convert::{attempt_to_wire, event_to_wire, timestamp, worker_to_wire};
use crate::control::{Command, CommandError, Live};
use crate::ctl::view::{LiveWorkers, Snapshot, WaitKind};
use crate::discovery::Gatekeeper;
use crate::logs::LogHub;
use crate::ports::state_store::{State, StateStore, StoreError};

/// How often `WatchEvents` polls the journal.
pub const WATCH_POLL: Duration = Duration::from_millis(200);
/// `ListEvents` without a limit, and its cap.
pub const DEFAULT_EVENTS: usize = 100;
pub const MAX_EVENTS: usize = 1_000;
/// The largest request the admin API decodes. Requests carry ids, names and a short
/// reason or comment; anything bigger is refused before it is read (RESOURCE_EXHAUSTED).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest reason or comment an operator may attach: it is journaled and shown to
/// agents, so it stays a note, not a document.
pub const MAX_NOTE_BYTES: usize = 4 * 1024;
/// The longest id, name or path in a request.
pub const MAX_NAME_BYTES: usize = 1024;
/// The request header that carries the operator token (`Bearer TOKEN`).
pub const AUTHORIZATION: &str = "authorization";

/// The admin API of one coordinator.
pub struct Admin<S> {
    store: Arc<S>,
    live: watch::Receiver<Arc<Live>>,
    commands: Option<mpsc::Sender<Command>>,
    logs: Arc<LogHub>,
    config: Arc<Config>,
}

/// The tonic service to add next to `WorkerService`. `commands` is `None` where no loop runs
/// (then every mutation is refused as on a standby); `config` says which labels each agent
/// role requires of a worker (to explain waits); `gatekeeper` turns away a `hyperloopctl`
/// that stands in another repository.
pub fn service<S: StateStore>(
    store: Arc<S>,
    live: watch::Receiver<Arc<Live>>,
    commands: Option<mpsc::Sender<Command>>,
    logs: Arc<LogHub>,
    config: Arc<Config>,
    gatekeeper: Gatekeeper,
) -> InterceptedService<AdminServiceServer<Admin<S>>, Gatekeeper> {
    let server = AdminServiceServer::new(Admin {
        store,
        live,
        commands,
        logs,
        config,
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    InterceptedService::new(server, gatekeeper)
}

/// `value` if it is at most `max` bytes, else INVALID_ARGUMENT naming the field and the limit.
fn bounded(field: &str, value: String, max: usize) -> Result<String, Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "`{field}` is {} bytes; at most {max} are accepted: shorten it",
            value.len()
        )));
    }
    Ok(value)
}

impl<S> Admin<S> {
    /// Whether `request` may steer the loop or read agent output (the operator role): with
    /// an operator token configured it must carry it; without one, only clients on loopback
    /// or authenticated by mutual TLS may. Reads of state need no credential.
    fn operator<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if let Some(token) = &self.config.admin_token {
            let expected = format!("Bearer {}", token.expose());
            let given = request
                .metadata()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Ok(());
            }
            return Err(Status::unauthenticated(
                "this needs the operator token: pass --token (or set HYPERLOOP_ADMIN_TOKEN) to \
                 hyperloopctl",
            ));
        }
        let mutual_tls = self.config.tls.client_ca.is_some();
        if mutual_tls || self.config.listen.ip().is_loopback() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "this coordinator listens on {} without an operator credential, so it only answers \
             reads: start it with --admin-token (or HYPERLOOP_ADMIN_TOKEN) or mutual TLS \
             (--tls-client-ca) to allow commands",
            self.config.listen
        )))
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn store_error(e: StoreError) -> Status {
    if e.is_transient() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

fn command_error(e: CommandError) -> Status {
    match e {
        CommandError::NotFound(m) => Status::not_found(m),
        CommandError::FailedPrecondition(m) => Status::failed_precondition(m),
    }
}

fn task_id(field: &str, raw: &str) -> Result<TaskId, Status> {
    parse_task_id(field, raw).map_err(Status::from)
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl<S: StateStore> Admin<S> {
    fn live(&self) -> Arc<Live> {
        self.live.borrow().clone()
    }

    /// The command channel of the leading loop, or why this coordinator cannot act.
    fn leader_only(&self, what: &str) -> Result<&mpsc::Sender<Command>, Status> {
        let live = self.live();
        match (&self.commands, live.leading, &live.leader) {
            (Some(tx), true, _) => Ok(tx),
            (_, _, Some(leader)) => Err(Status::failed_precondition(format!(
                "this coordinator ({}) is a standby and cannot {what}; the leader is at {url}; \
                 run hyperloopctl --server {url} ...",
                live.coordinator_id,
                url = leader.address
            ))),
            (_, _, None) => Err(Status::unavailable(format!(
                "no coordinator leads right now (election in progress), so nothing can {what}; \
                 retry in a few seconds"
            ))),
        }
    }

    async fn command<T>(
        &self,
        what: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, Status> {
        let tx = self.leader_only(what)?;
        let (reply, answer) = oneshot::channel();
        let gone =
            || Status::unavailable("the coordinator's loop stopped; retry against the new leader");
        tx.send(make(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?.map_err(command_error)
    }

    async fn state(&self) -> Result<State, Status> {
        self.store.load().await.map_err(store_error)
    }

    async fn journal(&self, after: u64) -> Result<Vec<Event>, Status> {
        self.store
            .events(after, usize::MAX)
            .await
            .map_err(store_error)
    }

    /// The `ctl` view over the stored state and the live workers.
    fn with_snapshot<T>(
        &self,
        state: &State,
        events: &[Event],
        f: impl FnOnce(&Snapshot<'_>) -> T,
    ) -> T {
        let live = self.live();
        let labels_for = |role: &str| self.config.agent_for(role).labels;
        let free_slots = live
            .workers
            .iter()
            .filter(|w| !w.draining)
            .map(|w| (w.capacity as usize).saturating_sub(w.attempts.len()))
            .sum();
        let snapshot = Snapshot {
            repository: live.coordinator_id.clone(),
            state,
            events,
            pipeline: live
                .project
                .as_ref()
                .map(|p| &p.process.pipeline)
                .ok_or("the coordinator has not composed the project yet"),
            free_slots,
            workers: Some(LiveWorkers {
                workers: &live.workers,
                labels_for: &labels_for,
            }),
        };
        f(&snapshot)
    }

    fn spec_info(state: &State, path: &SpecPath) -> v1::SpecInfo {
        let record = state.specs.get(path);
        v1::SpecInfo {
            path: path.to_string(),
            blob_id: record.map(|r| r.blob.clone()).unwrap_or_default(),
            commit: record.map(|r| r.commit.clone()).unwrap_or_default(),
            task_ids: state
                .tasks
                .values()
                .filter(|t| &t.spec_ref.path == path)
                .map(|t| t.id.to_string())
                .collect(),
            changed: false,
        }
    }

    fn worker(&self, name: &str) -> Result<v1::WorkerInfo, Status> {
        self.live()
            .workers
            .iter()
            .find(|w| w.name == name)
            .map(worker_to_wire)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no worker `{name}` is connected; list them with `hyperloopctl get workers`"
                ))
            })
    }
}

fn wait_reason(kind: WaitKind) -> WaitReason {
    match kind {
        WaitKind::Dependencies => WaitReason::Dependencies,
        WaitKind::Capacity => WaitReason::Capacity,
        WaitKind::NoMatchingWorker => WaitReason::NoMatchingWorker,
        WaitKind::Gate => WaitReason::Gate,
        WaitKind::Backoff => WaitReason::Backoff,
        WaitKind::Dispatching => WaitReason::Dispatching,
        WaitKind::Other => WaitReason::Unspecified,
    }
}

#[tonic::async_trait]
impl<S: StateStore> AdminService for Admin<S> {
    async fn get_status(
        &self,
        _: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let state = self.state().await?;
        let live = self.live();
        let waiting = self.with_snapshot(&state, &[], |s| s.waiting_reasons());
        let mut counts = v1::TaskCounts::default();
        for t in state.tasks.values() {
            match t.status {
                TaskStatus::NotStarted => counts.not_started += 1,
                TaskStatus::InProgress => counts.in_progress += 1,
                TaskStatus::Complete => counts.complete += 1,
                TaskStatus::Failed => counts.failed += 1,
            }
        }
        Ok(Response::new(v1::GetStatusResponse {
            leader: live.leader.as_ref().map(|l| v1::LeaderInfo {
                coordinator_id: l.address.clone(),
                address: l.address.clone(),
                term: l.term,
                since: timestamp(l.since_ms),
            }),
            coordinator_id: live.coordinator_id.clone(),
            coordinator_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: hyperloop_proto::PROTOCOL_VERSION,
            workers: live.workers.iter().map(worker_to_wire).collect(),
            task_counts: Some(counts),
            waiting: waiting
                .into_iter()
                .map(|(id, w)| v1::WaitingTask {
                    task_id: id.to_string(),
                    step_path: state.tasks[&id]
                        .position
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    reason: wait_reason(w.reason).into(),
                    detail: w.detail,
                })
                .collect(),
            cycle: live.cycle,
            last_cycle_at: timestamp(live.last_cycle_at_ms),
            converged: live.converged,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let statuses = r
            .statuses
            .iter()
            .enumerate()
            .map(|(i, s)| parse_task_status(&format!("statuses[{i}]"), *s))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = (!r.spec_path.is_empty())
            .then(|| SpecPath::parse(&r.spec_path))
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("`spec_path`: {e}")))?;
        let state = self.state().await?;
        let tasks = state
            .tasks
            .into_values()
            .filter(|t| statuses.is_empty() || statuses.contains(&t.status))
            .filter(|t| spec.as_ref().is_none_or(|s| &t.spec_ref.path == s))
            .map(v1::Task::from)
            .collect();
        Ok(Response::new(v1::ListTasksResponse { tasks }))
    }

    async fn get_task(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::GetTaskResponse>, Status> {
        let id = task_id("task_id", &request.into_inner().task_id)?;
        let mut state = self.state().await?;
        let task = state.tasks.remove(&id).ok_or_else(|| {
            Status::not_found(format!(
                "no task {id}; list the tasks with `hyperloopctl get tasks`"
            ))
        })?;
        let mut reviews = state.reviews.remove(&id).unwrap_or_default();
        reviews.sort_by_key(|r| r.round);
        let history = self
            .journal(0)
            .await?
            .iter()
            .filter(|e| e.task == Some(id))
            .map(event_to_wire)
            .collect();
        let name = id.to_string();
        let attempt = self
            .live()
            .workers
            .iter()
            .flat_map(|w| &w.attempts)
            .find(|a| a.task_id == name)
            .map(attempt_to_wire);
        Ok(Response::new(v1::GetTaskResponse {
            task: Some(task.into()),
            reviews: reviews.into_iter().map(Into::into).collect(),
            history,
            attempt,
            last_prompt: String::new(),
        }))
    }

    async fn list_specs(
        &self,
        _: Request<v1::ListSpecsRequest>,
    ) -> Result<Response<v1::ListSpecsResponse>, Status> {
        let state = self.state().await?;
        let specs = self
            .with_snapshot(&state, &[], |s| s.specs())
            .iter()
            .map(|row| Self::spec_info(&state, &row.path))
            .collect();
        Ok(Response::new(v1::ListSpecsResponse { specs }))
    }

    async fn get_spec(
        &self,
        request: Request<v1::GetSpecRequest>,
    ) -> Result<Response<v1::GetSpecResponse>, Status> {
        let raw = request.into_inner().path;
        let path =
            SpecPath::parse(&raw).map_err(|e| Status::invalid_argument(format!("`path`: {e}")))?;
        let state = self.state().await?;
        let spec = Self::spec_info(&state, &path);
        if spec.blob_id.is_empty() && spec.task_ids.is_empty() {
            return Err(Status::not_found(format!(
                "no spec {path}: intake has not processed it and no task refers to it; list the \
                 specs with `hyperloopctl get specs`"
            )));
        }
        let tasks = state
            .tasks
            .into_values()
            .filter(|t| t.spec_ref.path == path)
            .map(Into::into)
            .collect();
        Ok(Response::new(v1::GetSpecResponse {
            spec: Some(spec),
            tasks,
        }))
    }

    async fn list_workers(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let workers = self.live().workers.iter().map(worker_to_wire).collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn get_worker(
        &self,
        request: Request<v1::GetWorkerRequest>,
    ) -> Result<Response<v1::GetWorkerResponse>, Status> {
        let worker = self.worker(&request.into_inner().name)?;
        Ok(Response::new(v1::GetWorkerResponse {
            worker: Some(worker),
        }))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let r = request.into_inner();
        let task = (!r.task_id.is_empty())
            .then(|| task_id("task_id", &r.task_id))
            .transpose()?;
        let limit = match r.limit as usize {
            0 => DEFAULT_EVENTS,
            n => n.min(MAX_EVENTS),
        };
        let all = self.journal(0).await?;
        let events = all
            .iter()
            .filter(|e| e.seq > r.after_seq && task.is_none_or(|t| e.task == Some(t)))
            .take(limit)
            .map(event_to_wire)
            .collect();
        Ok(Response::new(v1::ListEventsResponse {
            events,
            first_seq: all.first().map_or(0, |e| e.seq),
            last_seq: all.last().map_or(0, |e| e.seq),
        }))
    }

    type WatchEventsStream = Stream_<v1::WatchEventsResponse>;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = request.into_inner();
        let task = (!r.task_id.is_empty())
            .then(|| task_id("task_id", &r.task_id))
            .transpose()?;
        let (tx, rx) = mpsc::channel(64);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let mut after = r.after_seq;
            loop {
                let events = match store.events(after, MAX_EVENTS).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(store_error(e))).await;
                        return;
                    }
                };
                for e in &events {
                    // A gap means the journal evicted events before this watcher read them.
                    let missed = e.seq.saturating_sub(after + 1);
                    after = e.seq;
                    if task.is_some_and(|t| e.task != Some(t)) {
                        continue;
                    }
                    let message = v1::WatchEventsResponse {
                        event: Some(event_to_wire(e)),
                        missed,
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if events.len() < MAX_EVENTS {
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_POLL) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type StreamLogsStream = Stream_<v1::StreamLogsResponse>;

    async fn stream_logs(
        &self,
        request: Request<v1::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        self.operator(&request)?;
        let r = request.into_inner();
        let id = task_id("task_id", &r.task_id)?;
        self.leader_only("stream agent output")?;
        // A finished task runs no more steps: following it ends with its backlog.
        let follow = r.follow
            && !self
                .state()
                .await?
                .tasks
                .get(&id)
                .is_some_and(|t| t.status.is_terminal());
        let (backlog, mut live) = self.logs.subscribe(&id.to_string(), r.tail as usize);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for message in backlog {
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let message = tokio::select! {
                    m = live.recv() => m,
                    () = tx.closed() => return,
                };
                match message {
                    // `-f` follows the step that runs (or the next one) to its end.
                    Ok(m) => {
                        let ended = m.attempt_finished;
                        if tx.send(Ok(m)).await.is_err() || ended {
                            return;
                        }
                    }
                    // The follower sees the loss as a gap in the lines' `seq`.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn approve_task(
        &self,
        request: Request<v1::ApproveTaskRequest>,
    ) -> Result<Response<v1::ApproveTaskResponse>, Status> {
        self.operator(&request)?;
        let r = request.into_inner();
        let task = task_id("task_id", &r.task_id)?;
        let gate = bounded("gate", r.gate, MAX_NAME_BYTES)?;
        let gate = (!gate.is_empty()).then_some(gate);
        let comment = bounded("comment", r.comment, MAX_NOTE_BYTES)?;
        let done = self
            .command("approve tasks", |reply| Command::Approve {
                task,
                gate,
                comment,
                reply,
            })
            .await?;
        Ok(Response::new(v1::ApproveTaskResponse {
            task: Some(done.into()),
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<v1::CancelTaskRequest>,
    ) -> Result<Response<v1::CancelTaskResponse>, Status> {
        self.operator(&request)?;
        let r = request.into_inner();
        let task = task_id("task_id", &r.task_id)?;
        let reason = bounded("reason", r.reason, MAX_NOTE_BYTES)?;
        let done = self
            .command("cancel tasks", |reply| Command::Cancel {
                task,
                reason,
                reply,
            })
            .await?;
        Ok(Response::new(v1::CancelTaskResponse {
            task: Some(done.into()),
        }))
    }

    async fn retry_spec(
        &self,
        request: Request<v1::RetrySpecRequest>,
    ) -> Result<Response<v1::RetrySpecResponse>, Status> {
        self.operator(&request)?;
        let r = request.into_inner();
        let path = bounded("path", r.path, MAX_NAME_BYTES)?;
        let path = SpecPath::parse(&path).map_err(|e| {
            Status::invalid_argument(format!(
                "path: {e}; give the spec's repository-relative path, e.g. specs/auth.md"
            ))
        })?;
        let done = self
            .command("retry specs", |reply| Command::RetrySpec { path, reply })
            .await?;
        Ok(Response::new(v1::RetrySpecResponse {
            path: done.to_string(),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        self.operator(&request)?;
        let worker = bounded("name", request.into_inner().name, MAX_NAME_BYTES)?;
        if worker.is_empty() {
            return Err(Status::invalid_argument(
                "`name`: the worker to drain is required",
            ));
        }
        let done = self
            .command("drain workers", |reply| Command::Drain { worker, reply })
            .await?;
        Ok(Response::new(v1::DrainWorkerResponse {
            worker: Some(worker_to_wire(&done)),
        }))
    }
}
