//! `hyperloopctl --server URL`: the same commands over a coordinator's admin API, plus the
//! live ones (workers, logs, approve, cancel, drain). Responses are converted into the views
//! `--path` prints, so both modes share one rendering.

use std::fmt::Write as _;

use hyperloop_proto::v1::{self, admin_service_client::AdminServiceClient};
use hyperloop_shared::event::Event;
use hyperloop_shared::model::{Review, Task, TaskId};
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;

use crate::discovery::Repository;
use tonic::transport::Channel;

use super::table::{Table, age};
use super::view::{self, Counts, Dependency, SpecDetail, SpecRow, TaskDetail, TaskView};
use super::{
    Command, Format, emit, now_ms, or_dash, parse_task_id, render_events, render_spec,
    render_specs, render_task, render_tasks, runtime_error,
};
use crate::admin::convert::{event_from_wire, worker_from_wire};
use crate::cli::Exit;
use crate::control::WorkerView;
use crate::ports::state_store::Assignment;
use crate::tls::{ClientTls, connect};

/// What `--server` can do beyond the read-only commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Read(Command),
    GetWorkers,
    DescribeWorker(String),
    Logs {
        task: String,
        follow: bool,
    },
    Approve {
        task: String,
        gate: Option<String>,
        comment: String,
    },
    Cancel {
        task: String,
        reason: String,
    },
    Drain(String),
    RetrySpec(String),
}

/// Runs `command` against the coordinator at `server`; `token` is the operator token that
/// commands need on a coordinator that is not on loopback.
/// `repository` is the one hyperloopctl stands in, which the coordinator checks it serves.
pub fn run(
    server: &str,
    tls: &ClientTls,
    token: Option<&str>,
    repository: Option<Repository>,
    format: Format,
    command: Remote,
) -> Exit {
    let stamp = match token.map(|t| format!("Bearer {t}").parse()).transpose() {
        Ok(bearer) => Stamp { bearer, repository },
        Err(_) => {
            return Exit::usage(
                "--token holds characters a request header cannot carry; use the token as \
                 printed"
                    .to_owned(),
            );
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return runtime_error(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async {
        let channel = match connect(server, tls).await {
            Ok(c) => c,
            Err(e @ crate::tls::ConnectError::Settings(_)) => return Exit::usage(e.to_string()),
            Err(e) => return runtime_error(e.to_string()),
        };
        let client = AdminServiceClient::with_interceptor(channel, stamp);
        match execute(server, client, format, command).await {
            Ok(exit) | Err(exit) => exit,
        }
    })
}

/// NOT_FOUND, INVALID_ARGUMENT and FAILED_PRECONDITION are the operator's to fix (exit 2);
/// anything else is a runtime failure. A dropped connection is usually a refused handshake
/// (mutual TLS without a client certificate) or a coordinator that went away.
fn status_exit(server: &str) -> impl Fn(tonic::Status) -> Exit + '_ {
    use tonic::Code;
    move |s| match s.code() {
        Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::Unauthenticated
        | Code::PermissionDenied => Exit::usage(s.message().to_owned()),
        // The connection broke under the call: no answer from the coordinator itself. The
        // transport error's chain says why (a Status's own Display is debug-formatted).
        Code::Unknown | Code::Cancelled => runtime_error(format!(
            "the connection to the coordinator at {server} failed ({}); if it requires \
                 mutual TLS pass --tls-cert and --tls-key, otherwise check that it is running",
            std::error::Error::source(&s)
                .map_or_else(|| s.message().to_owned(), crate::tls::error_chain)
        )),
        _ => runtime_error(format!(
            "{} (from {server}): {}",
            s.code().description(),
            s.message()
        )),
    }
}

fn bad_reply(e: impl std::fmt::Display) -> Exit {
    runtime_error(format!("the coordinator sent an invalid reply: {e}"))
}

fn task_view(t: v1::Task) -> Result<TaskView, Exit> {
    let task = Task::try_from(t).map_err(bad_reply)?;
    Ok(TaskView {
        step: task
            .position
            .as_ref()
            .map(|p| format!("{}:{}", p.step().kind, p.step().name)),
        worker: None,
        waiting: None,
        wait_reason: None,
        task,
    })
}

fn events(wire: Vec<v1::Event>) -> Result<Vec<Event>, Exit> {
    let mut out = Vec::with_capacity(wire.len());
    for e in wire {
        out.extend(event_from_wire(e).map_err(bad_reply)?);
    }
    Ok(out)
}

fn newest(mut events: Vec<Event>, n: usize) -> Vec<Event> {
    let from = events.len().saturating_sub(n);
    events.drain(..from);
    events
}

/// A worker as `-o json|yaml` prints it.
#[derive(Serialize)]
struct WorkerRow {
    name: String,
    worker_id: String,
    capacity: u32,
    load: usize,
    labels: std::collections::BTreeMap<String, String>,
    version: String,
    last_heartbeat_ms: u64,
    connected_since_ms: u64,
    draining: bool,
    local: bool,
    attempts: Vec<AttemptRow>,
}

#[derive(Serialize)]
struct AttemptRow {
    attempt: u64,
    task: String,
    step: String,
    role: String,
    round: u32,
    phase: &'static str,
    started_at_ms: u64,
}

impl From<&WorkerView> for WorkerRow {
    fn from(w: &WorkerView) -> Self {
        Self {
            name: w.name.clone(),
            worker_id: w.worker_id.clone(),
            capacity: w.capacity,
            load: w.attempts.len(),
            labels: w.labels.clone(),
            version: w.version.clone(),
            last_heartbeat_ms: w.last_heartbeat_ms,
            connected_since_ms: w.connected_since_ms,
            draining: w.draining,
            local: w.local,
            attempts: w
                .attempts
                .iter()
                .map(|a| AttemptRow {
                    attempt: a.attempt,
                    task: a.task_id.clone(),
                    step: a.step_path.clone(),
                    role: a.role.clone(),
                    round: a.round,
                    phase: a.phase.as_str_name(),
                    started_at_ms: a.started_at_ms,
                })
                .collect(),
        }
    }
}

fn rows(workers: &[WorkerView]) -> Vec<WorkerRow> {
    workers.iter().map(WorkerRow::from).collect()
}

/// `status` over the admin API: the leader and workers come first.
#[derive(Serialize)]
struct ServerStatus {
    coordinator: String,
    leader: Option<String>,
    cycle: u64,
    converged: bool,
    tasks: Counts,
    #[serde(serialize_with = "serialize_workers")]
    workers: Vec<WorkerView>,
    waiting: Vec<WaitingRow>,
}

fn serialize_workers<S: serde::Serializer>(w: &[WorkerView], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(rows(w))
}

#[derive(Serialize)]
struct WaitingRow {
    task: String,
    reason: String,
    detail: String,
}

fn counts(c: v1::TaskCounts) -> Counts {
    Counts {
        not_started: c.not_started as usize,
        in_progress: c.in_progress as usize,
        complete: c.complete as usize,
        failed: c.failed as usize,
    }
}

fn render_workers(workers: &[WorkerView], now: u64, indent: &str) -> String {
    if workers.is_empty() {
        return format!("{indent}No workers connected.\n");
    }
    let mut t = Table::new(&["NAME", "LOAD", "LABELS", "HEARTBEAT", "STATE", "VERSION"]);
    for w in workers {
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row(vec![
            w.name.clone(),
            format!("{}/{}", w.attempts.len(), w.capacity),
            or_dash(Some(&labels.join(","))),
            format!("{} ago", age(now, w.last_heartbeat_ms)),
            match (w.draining, w.local) {
                (true, _) => "draining",
                (false, true) => "local",
                (false, false) => "ready",
            }
            .to_owned(),
            w.version.clone(),
        ]);
    }
    t.render_indented(indent)
}

fn render_status(s: &ServerStatus, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Coordinator:  {}", s.coordinator);
    let _ = writeln!(
        out,
        "Leader:       {}",
        s.leader.as_deref().unwrap_or("none (election in progress)")
    );
    let _ = writeln!(
        out,
        "Cycle:        {}{}",
        s.cycle,
        if s.converged { " (converged)" } else { "" }
    );
    let _ = writeln!(
        out,
        "Tasks:        {} total: {}",
        s.tasks.total(),
        s.tasks.describe()
    );
    let _ = writeln!(out, "\nWorkers:");
    out.push_str(&render_workers(&s.workers, now, "  "));
    let _ = writeln!(out, "\nWaiting:");
    if s.waiting.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&["ID", "REASON", "DETAIL"]);
        for w in &s.waiting {
            t.row(vec![w.task.clone(), w.reason.clone(), w.detail.clone()]);
        }
        out.push_str(&t.render_indented("  "));
    }
    out
}

fn render_worker(w: &WorkerView, now: u64) -> String {
    let mut out = render_workers(std::slice::from_ref(w), now, "");
    let _ = writeln!(out, "Attempts:");
    if w.attempts.is_empty() {
        let _ = writeln!(out, "  none");
        return out;
    }
    let mut t = Table::new(&["TASK", "ATTEMPT", "ROLE", "ROUND", "PHASE", "AGE"]);
    for a in &w.attempts {
        t.row(vec![
            a.task_id.clone(),
            a.attempt.to_string(),
            a.role.clone(),
            a.round.to_string(),
            a.phase.as_str_name().to_owned(),
            age(now, a.started_at_ms),
        ]);
    }
    out.push_str(&t.render_indented("  "));
    out
}

type Client = AdminServiceClient<InterceptedService<Channel, Stamp>>;

/// Adds the operator token (`--token`) and the repository hyperloopctl stands in to every
/// request.
#[derive(Clone)]
struct Stamp {
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    repository: Option<Repository>,
}

impl tonic::service::Interceptor for Stamp {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.bearer {
            request
                .metadata_mut()
                .insert(crate::admin::AUTHORIZATION, value.clone());
        }
        if let Some(repository) = &self.repository {
            repository.stamp(request.metadata_mut());
        }
        Ok(request)
    }
}

async fn all_tasks(server: &str, client: &mut Client, spec: String) -> Result<Vec<TaskView>, Exit> {
    let r = client
        .list_tasks(v1::ListTasksRequest {
            statuses: vec![],
            spec_path: spec,
        })
        .await
        .map_err(status_exit(server))?;
    r.into_inner().tasks.into_iter().map(task_view).collect()
}

async fn journal(
    server: &str,
    client: &mut Client,
    after: u64,
    limit: u32,
) -> Result<Vec<Event>, Exit> {
    let r = client
        .list_events(v1::ListEventsRequest {
            after_seq: after,
            limit,
            task_id: String::new(),
        })
        .await
        .map_err(status_exit(server))?;
    events(r.into_inner().events)
}

fn task_id_arg(raw: &str) -> Result<String, Exit> {
    parse_task_id(raw).map(|id| id.to_string())
}

async fn execute(
    server: &str,
    mut client: Client,
    format: Format,
    command: Remote,
) -> Result<Exit, Exit> {
    let now = now_ms();
    let exit = match command {
        Remote::Read(Command::Status) => {
            let s = client
                .get_status(v1::GetStatusRequest {})
                .await
                .map_err(status_exit(server))?
                .into_inner();
            let status = ServerStatus {
                coordinator: s.coordinator_id,
                leader: s.leader.map(|l| l.address),
                cycle: s.cycle,
                converged: s.converged,
                tasks: counts(s.task_counts.unwrap_or_default()),
                workers: s.workers.into_iter().map(worker_from_wire).collect(),
                waiting: s
                    .waiting
                    .into_iter()
                    .map(|w| WaitingRow {
                        reason: w
                            .reason()
                            .as_str_name()
                            .trim_start_matches("WAIT_REASON_")
                            .to_ascii_lowercase(),
                        task: w.task_id,
                        detail: w.detail,
                    })
                    .collect(),
            };
            emit(format, &status, || render_status(&status, now))
        }
        Remote::Read(Command::GetTasks { spec }) => {
            let tasks = all_tasks(server, &mut client, spec.unwrap_or_default()).await?;
            emit(format, &tasks, || render_tasks(&tasks))
        }
        Remote::Read(Command::GetSpecs) => {
            let specs = client
                .list_specs(v1::ListSpecsRequest {})
                .await
                .map_err(status_exit(server))?
                .into_inner()
                .specs;
            let tasks = all_tasks(server, &mut client, String::new()).await?;
            let rows: Vec<SpecRow> = specs
                .into_iter()
                .map(|s| spec_row(s, &tasks))
                .collect::<Result<_, _>>()?;
            emit(format, &rows, || render_specs(&rows))
        }
        Remote::Read(Command::GetEvents { since, limit }) => {
            let limit32 = u32::try_from(limit).unwrap_or(u32::MAX);
            let list = match since {
                Some(after) => journal(server, &mut client, after, limit32).await?,
                None => newest(journal(server, &mut client, 0, u32::MAX).await?, limit),
            };
            emit(format, &list, || render_events(&list, now, ""))
        }
        Remote::Read(Command::DescribeTask(raw)) => {
            let id = task_id_arg(&raw)?;
            let r = client
                .get_task(v1::GetTaskRequest { task_id: id })
                .await
                .map_err(status_exit(server))?
                .into_inner();
            let all = all_tasks(server, &mut client, String::new()).await?;
            let mut view = task_view(r.task.ok_or_else(|| bad_reply("no task"))?)?;
            view.worker = r.attempt.as_ref().map(|a| a.worker.clone());
            let id = view.task.id;
            let detail = TaskDetail {
                dependencies: view
                    .task
                    .deps
                    .iter()
                    .map(|d| Dependency {
                        id: *d,
                        status: all.iter().find(|v| v.task.id == *d).map(|v| v.task.status),
                    })
                    .collect(),
                dependents: all
                    .iter()
                    .filter(|v| v.task.deps.contains(&id))
                    .map(|v| v.task.id)
                    .collect(),
                assignment: r.attempt.map(|a| Assignment {
                    task: id,
                    attempt: hyperloop_shared::model::AttemptId(a.attempt_id),
                    step: a.step_path,
                    role: a.role,
                    round: a.round,
                    worker: a.worker,
                    dispatched_at_ms: crate::admin::convert::millis(a.started_at.as_ref()),
                }),
                reviews: r
                    .reviews
                    .into_iter()
                    .map(Review::try_from)
                    .collect::<Result<_, _>>()
                    .map_err(bad_reply)?,
                events: newest(events(r.history)?, view::DESCRIBE_EVENTS),
                view,
            };
            emit(format, &detail, || render_task(&detail, now))
        }
        Remote::Read(Command::DescribeSpec(path)) => {
            let r = client
                .get_spec(v1::GetSpecRequest { path })
                .await
                .map_err(status_exit(server))?
                .into_inner();
            let task_list: Vec<TaskView> = r
                .tasks
                .into_iter()
                .map(task_view)
                .collect::<Result<_, _>>()?;
            let row = spec_row(r.spec.ok_or_else(|| bad_reply("no spec"))?, &task_list)?;
            let ids: Vec<TaskId> = task_list.iter().map(|v| v.task.id).collect();
            let events = journal(server, &mut client, 0, u32::MAX)
                .await?
                .into_iter()
                .filter(|e| e.task.is_some_and(|t| ids.contains(&t)))
                .collect();
            let detail = SpecDetail {
                row,
                task_list,
                events: newest(events, view::DESCRIBE_EVENTS),
            };
            emit(format, &detail, || render_spec(&detail, now))
        }
        Remote::GetWorkers => {
            let workers: Vec<WorkerView> = client
                .list_workers(v1::ListWorkersRequest {})
                .await
                .map_err(status_exit(server))?
                .into_inner()
                .workers
                .into_iter()
                .map(worker_from_wire)
                .collect();
            emit(format, &rows(&workers), || {
                render_workers(&workers, now, "")
            })
        }
        Remote::DescribeWorker(name) => {
            let w = client
                .get_worker(v1::GetWorkerRequest { name })
                .await
                .map_err(status_exit(server))?
                .into_inner()
                .worker
                .map(worker_from_wire)
                .ok_or_else(|| bad_reply("no worker"))?;
            emit(format, &WorkerRow::from(&w), || render_worker(&w, now))
        }
        Remote::Logs { task, follow } => logs(server, client, &task_id_arg(&task)?, follow).await?,
        Remote::Approve {
            task,
            gate,
            comment,
        } => {
            let r = client
                .approve_task(v1::ApproveTaskRequest {
                    task_id: task_id_arg(&task)?,
                    gate: gate.unwrap_or_default(),
                    comment,
                })
                .await
                .map_err(status_exit(server))?;
            let view = task_view(r.into_inner().task.ok_or_else(|| bad_reply("no task"))?)?;
            emit(format, &view, || format!("{} approved\n", view.task.id))
        }
        Remote::Cancel { task, reason } => {
            let r = client
                .cancel_task(v1::CancelTaskRequest {
                    task_id: task_id_arg(&task)?,
                    reason,
                })
                .await
                .map_err(status_exit(server))?;
            let view = task_view(r.into_inner().task.ok_or_else(|| bad_reply("no task"))?)?;
            emit(format, &view, || format!("{} cancelled\n", view.task.id))
        }
        Remote::RetrySpec(path) => {
            let r = client
                .retry_spec(v1::RetrySpecRequest { path })
                .await
                .map_err(status_exit(server))?
                .into_inner();
            Exit::ok(
                format!("{} will be reconciled again\n", r.path),
                String::new(),
            )
        }
        Remote::Drain(name) => {
            let w = client
                .drain_worker(v1::DrainWorkerRequest { name })
                .await
                .map_err(status_exit(server))?
                .into_inner()
                .worker
                .map(worker_from_wire)
                .ok_or_else(|| bad_reply("no worker"))?;
            emit(format, &WorkerRow::from(&w), || {
                format!("worker {} draining\n", w.name)
            })
        }
    };
    Ok(exit)
}

fn spec_row(s: v1::SpecInfo, tasks: &[TaskView]) -> Result<SpecRow, Exit> {
    let path = hyperloop_shared::model::SpecPath::parse(&s.path).map_err(bad_reply)?;
    let mut counts = Counts::default();
    for v in tasks.iter().filter(|v| v.task.spec_ref.path == path) {
        counts.add(v.task.status);
    }
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(SpecRow {
        path,
        blob: some(s.blob_id),
        commit: some(s.commit),
        tasks: counts,
    })
}

/// Prints agent output as it arrives, one line per `LogLine`, noting lines lost (a gap in an
/// attempt's `seq`) and the end of each attempt. Returns when the stream ends.
async fn logs(server: &str, mut client: Client, task: &str, follow: bool) -> Result<Exit, Exit> {
    use std::io::Write as _;
    let mut stream = client
        .stream_logs(v1::StreamLogsRequest {
            task_id: task.to_owned(),
            follow,
            tail: 0,
        })
        .await
        .map_err(status_exit(server))?
        .into_inner();
    let mut last: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut stdout = std::io::stdout();
    // Whether the last message ended a step: how a follower tells "the step ended" (the
    // coordinator closes the stream then) from "the coordinator went away".
    let mut ended = false;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) if !follow || ended => break,
            Ok(None) => {
                return Err(runtime_error(format!(
                    "the coordinator at {server} stopped before the step of {task} ended"
                )));
            }
            Err(s) if follow => {
                return Err(runtime_error(format!(
                    "lost the coordinator at {server} while following {task} ({}); is it \
                     still running?",
                    std::error::Error::source(&s)
                        .map_or_else(|| s.message().to_owned(), crate::tls::error_chain)
                )));
            }
            Err(s) => return Err(status_exit(server)(s)),
        };
        ended = message.attempt_finished;
        let mut out = String::new();
        let prev = last.entry(message.attempt_id).or_insert(0);
        for line in &message.lines {
            if *prev > 0 && line.seq > *prev + 1 {
                let _ = writeln!(
                    out,
                    "[{} attempt-{}] ... {} line(s) dropped (the coordinator's buffer or this \
                     follower fell behind)",
                    message.role,
                    message.attempt_id,
                    line.seq - *prev - 1
                );
            }
            *prev = line.seq;
            let _ = writeln!(
                out,
                "[{} attempt-{}] {}",
                message.role, message.attempt_id, line.text
            );
        }
        if message.attempt_finished {
            let _ = writeln!(
                out,
                "[{} attempt-{}] finished",
                message.role, message.attempt_id
            );
        }
        // Written as it arrives (not collected into the Exit) so `-f` streams.
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
    let note = if follow {
        format!("{task}: the step ended; no more output to follow\n")
    } else {
        String::new()
    };
    Ok(Exit::ok(String::new(), note))
}
