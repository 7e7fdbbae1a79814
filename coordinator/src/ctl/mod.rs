//! `hyperloopctl`: the operator's read-only view of a repository's embedded state
//! (`--path DIR`), with no coordinator running. Each command loads one snapshot (state,
//! journal, and the composed pipeline to explain waiting tasks) and prints it as a
//! kubectl-style table or as JSON/YAML.
//!
//! - [`view`]: the data every command shows, built purely from a snapshot.
//! - [`table`]: aligned columns, ages, event summaries.
//!
//! Architecture Invariant: nothing here writes state. Commands that act (`approve`,
//! `cancel`, `drain`) or need a live coordinator (`logs`, `get workers`, `--server`) go
//! through the coordinator's admin API, which this build does not serve yet; they fail with
//! [`code::USAGE`] and say so (see [`needs_server`]).
//!
//! Assumption: a coordinator may be writing while we read. The state and the journal are
//! read separately, so the journal can be a few events ahead of the state; neither is ever
//! half-written (the store's batches are atomic).

pub mod remote;
pub mod table;
pub mod view;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hyperloop_shared::config::Overrides;
use hyperloop_shared::event::Event;
use hyperloop_shared::model::{SpecPath, TaskId, TaskStatus};
use hyperloop_shared::pipeline::Pipeline;
use hyperloop_shared::project::Project;
use serde::Serialize;

use self::table::{Table, age, short_id, summary};
use self::view::{Snapshot, SpecRow, TaskView};
use crate::adapters::git_store::GitStore;
use crate::cli::{Exit, code};
use crate::compose::{CacheDir, compose_project};
use crate::ports::state_store::{State, StateStore};
use crate::settings;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// Structured data for scripts (`jq`).
    Json,
    Yaml,
}

/// Where the state is read from.
#[derive(Debug, Clone)]
pub struct Target {
    /// The repository (its root).
    pub path: PathBuf,
    /// `-c FILE`; default `<path>/.hyperloop.yaml`. Read for the overlay and `max_workers`,
    /// which explain waiting tasks.
    pub config: Option<PathBuf>,
}

/// The read-only commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    GetTasks {
        /// Only tasks of this spec.
        spec: Option<String>,
    },
    GetSpecs,
    GetEvents {
        /// Only events after this sequence number (oldest first, paging forward); without it
        /// the newest `limit` events.
        since: Option<u64>,
        limit: usize,
    },
    DescribeTask(String),
    DescribeSpec(String),
}

/// Default `--limit` of `get events`.
pub const DEFAULT_EVENT_LIMIT: usize = 50;

/// The journal limit passed to the store. It only bounds what a writer keeps; a reader
/// never prunes, so any value works and the largest reads everything there is.
const READ_ONLY_JOURNAL_LIMIT: usize = usize::MAX;

/// Runs a read-only command against the embedded state of `target`.
pub fn run(target: &Target, format: Format, command: &Command) -> Exit {
    let loaded = match Loaded::read(target) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let snapshot = loaded.snapshot();
    let now = now_ms();
    match command {
        Command::Status => {
            let status = snapshot.status();
            emit(format, &status, || render_status(&status, now))
        }
        Command::GetTasks { spec } => {
            let spec = match spec.as_deref().map(SpecPath::parse).transpose() {
                Ok(s) => s,
                Err(e) => return Exit::usage(e.to_string()),
            };
            let tasks: Vec<TaskView> = snapshot
                .tasks()
                .into_iter()
                .filter(|t| spec.as_ref().is_none_or(|s| &t.task.spec_ref.path == s))
                .collect();
            let list = List::new("TaskList", &loaded.state, tasks);
            emit(format, &list, || render_tasks(&list.items))
        }
        Command::GetSpecs => {
            let list = List::new("SpecList", &loaded.state, snapshot.specs());
            emit(format, &list, || render_specs(&list.items))
        }
        Command::GetEvents { since, limit } => {
            let events: Vec<Event> = match since {
                Some(after) => loaded
                    .events
                    .iter()
                    .filter(|e| e.seq > *after)
                    .take(*limit)
                    .cloned()
                    .collect(),
                None => {
                    let from = loaded.events.len().saturating_sub(*limit);
                    loaded.events[from..].to_vec()
                }
            };
            let list = List::new("EventList", &loaded.state, events);
            emit(format, &list, || render_events(&list.items, now, ""))
        }
        Command::DescribeTask(id) => {
            let id = match parse_task_id(id) {
                Ok(id) => id,
                Err(exit) => return exit,
            };
            match snapshot.task(id) {
                Some(detail) => emit(format, &detail, || render_task(&detail, now)),
                None => runtime_error(format!(
                    "no task {id} in {}; list the tasks with `hyperloopctl get tasks`",
                    target.path.display()
                )),
            }
        }
        Command::DescribeSpec(path) => {
            let path = match SpecPath::parse(path) {
                Ok(p) => p,
                Err(e) => return Exit::usage(e.to_string()),
            };
            match snapshot.spec(&path) {
                Some(detail) => emit(format, &detail, || render_spec(&detail, now)),
                None => runtime_error(format!(
                    "no spec {path} in the state of {}: intake has not processed it and no task \
                     refers to it; list the specs with `hyperloopctl get specs`",
                    target.path.display()
                )),
            }
        }
    }
}

/// The answer for a live-only command run with `--path`.
pub fn needs_server(what: &str) -> Exit {
    Exit::usage(format!(
        "{what} needs a running coordinator, and none is running for this repository (a \
         running coordinator records its address in .git/hyperloop/endpoint.json): start one \
         with `hyperloop-coordinator watch`, or pass --server URL (or HYPERLOOP_SERVER) with \
         its address; only status, get specs|tasks|events and describe task|spec work from \
         the embedded state"
    ))
}

/// `task-007`, `task-7` or `7`.
fn parse_task_id(raw: &str) -> Result<TaskId, Exit> {
    let candidate = if raw.bytes().all(|b| b.is_ascii_digit()) && !raw.is_empty() {
        format!("task-{raw}")
    } else {
        raw.to_owned()
    };
    candidate
        .parse()
        .map_err(|e: hyperloop_shared::model::ModelError| Exit::usage(e.to_string()))
}

/// A list with the state revision it was read at.
#[derive(Serialize)]
struct List<T> {
    kind: &'static str,
    revision: u64,
    items: Vec<T>,
}

impl<T> List<T> {
    fn new(kind: &'static str, state: &State, items: Vec<T>) -> Self {
        Self {
            kind,
            revision: state.revision.0,
            items,
        }
    }
}

/// One consistent read of the repository.
struct Loaded {
    repository: String,
    state: State,
    events: Vec<Event>,
    pipeline: Result<(Pipeline, u32), String>,
}

impl Loaded {
    fn read(target: &Target) -> Result<Self, Exit> {
        let path = &target.path;
        if git2::Repository::open(path).is_err() {
            return Err(Exit::usage(format!(
                "{} is not a git repository; pass --path with the root of the repository \
                 hyperloop reconciles",
                path.display()
            )));
        }
        let store = GitStore::open(path, READ_ONLY_JOURNAL_LIMIT)
            .map_err(|e| Exit::usage(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| runtime_error(format!("cannot start the async runtime: {e}")))?;
        let (state, events) = runtime
            .block_on(async {
                let state = store.load().await?;
                let events = store.events(0, usize::MAX).await?;
                Ok::<_, crate::ports::state_store::StoreError>((state, events))
            })
            .map_err(|e| runtime_error(e.to_string()))?;
        if state.revision.0 == 0 {
            return Err(runtime_error(format!(
                "no hyperloop state in {}: run `hyperloop-coordinator run` first",
                path.display()
            )));
        }
        let repository = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string();
        Ok(Self {
            repository,
            state,
            events,
            pipeline: pipeline(path, target.config.as_deref()),
        })
    }

    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            repository: self.repository.clone(),
            state: &self.state,
            events: &self.events,
            pipeline: match &self.pipeline {
                Ok((p, _)) => Ok(p),
                Err(e) => Err(e),
            },
            // Without a coordinator, `max_workers` less what is assigned is what it would use.
            free_slots: match &self.pipeline {
                Ok((_, max_workers)) => {
                    (*max_workers as usize).saturating_sub(self.state.assignments.len())
                }
                Err(_) => 0,
            },
            workers: None,
        }
    }
}

/// The pipeline and worker slots the coordinator would use, composed as `run` does.
fn pipeline(root: &Path, config: Option<&Path>) -> Result<(Pipeline, u32), String> {
    let settings = settings::load(root, config, &Overrides::default())
        .map_err(|e| format!("the configuration is invalid: {e}"))?;
    let config = settings.config;
    let (composition, _) = compose_project(
        root,
        &config.overlay,
        config.base_ref.as_deref(),
        &CacheDir::from_env(),
    )
    .map_err(|e| format!("the project does not compose: {e}"))?;
    let project = Project::from_composition(&composition)
        .map_err(|e| format!("the project does not compose: {e}"))?;
    Ok((project.process.pipeline, config.runtime.max_workers))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn runtime_error(message: String) -> Exit {
    Exit {
        code: code::RUNTIME,
        stdout: String::new(),
        stderr: format!("error: {message}\n"),
    }
}

fn emit<T: Serialize>(format: Format, value: &T, table: impl FnOnce() -> String) -> Exit {
    let out = match format {
        Format::Table => Ok(table()),
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string()),
    };
    match out {
        Ok(stdout) => Exit::ok(stdout, String::new()),
        Err(e) => runtime_error(format!("cannot serialize the output: {e}")),
    }
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

fn render_tasks(tasks: &[TaskView]) -> String {
    if tasks.is_empty() {
        return "No tasks.\n".to_owned();
    }
    let mut t = Table::new(&["ID", "STATUS", "STEP", "ROUND", "SPEC", "TITLE"]);
    for v in tasks {
        t.row(vec![
            v.task.id.to_string(),
            v.task.status.to_string(),
            v.step_label().to_owned(),
            v.task.round.to_string(),
            v.task.spec_ref.path.to_string(),
            v.task.title.clone(),
        ]);
    }
    t.render()
}

fn render_specs(specs: &[SpecRow]) -> String {
    if specs.is_empty() {
        return "No specs.\n".to_owned();
    }
    let mut t = Table::new(&["PATH", "BLOB", "TASKS"]);
    for s in specs {
        t.row(vec![
            s.path.to_string(),
            or_dash(s.blob.as_deref().map(short_id)),
            tasks_cell(&s.tasks),
        ]);
    }
    t.render()
}

fn tasks_cell(counts: &view::Counts) -> String {
    match counts.total() {
        0 => "0".to_owned(),
        n => format!("{n} ({})", counts.describe()),
    }
}

fn render_events(events: &[Event], now: u64, indent: &str) -> String {
    if events.is_empty() {
        return format!("{indent}No events.\n");
    }
    let mut t = Table::new(&["SEQ", "AGE", "TASK", "EVENT", "DETAILS"]);
    for e in events {
        t.row(vec![
            e.seq.to_string(),
            age(now, e.at_ms),
            e.task.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            e.kind.name().to_owned(),
            summary(&e.kind),
        ]);
    }
    t.render_indented(indent)
}

fn render_status(s: &view::Status, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Repository:   {}", s.repository);
    let last = match &s.last_cycle {
        Some(e) => format!(
            "; last cycle {} ago: {}",
            age(now, e.at_ms),
            summary(&e.kind)
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "State:        revision {}, {} cycle(s) completed{last}",
        s.revision, s.cycles
    );
    let _ = writeln!(
        out,
        "Tasks:        {} total: {}",
        s.tasks.total(),
        s.tasks.describe()
    );
    if let Some(e) = &s.pipeline_error {
        let _ = writeln!(out, "Note:         {e}; waiting reasons are not shown");
    }

    let _ = writeln!(out, "\nIn progress:");
    if s.in_progress.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&["ID", "STEP", "ROUND", "NOW", "TITLE"]);
        for v in &s.in_progress {
            let now_doing = match (&v.worker, &v.waiting) {
                (Some(w), _) => format!("running on {w}"),
                (None, Some(why)) => why.clone(),
                (None, None) => "-".to_owned(),
            };
            t.row(vec![
                v.task.id.to_string(),
                v.step_label().to_owned(),
                v.task.round.to_string(),
                now_doing,
                v.task.title.clone(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }

    let _ = writeln!(out, "\nWaiting to start:");
    if s.waiting.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&["ID", "REASON", "TITLE"]);
        for v in &s.waiting {
            t.row(vec![
                v.task.id.to_string(),
                or_dash(v.waiting.as_deref()),
                v.task.title.clone(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }

    if !s.failed.is_empty() {
        let _ = writeln!(out, "\nFailed:");
        let mut t = Table::new(&["ID", "ROUND", "REASON", "TITLE"]);
        for v in &s.failed {
            t.row(vec![
                v.task.id.to_string(),
                v.task.round.to_string(),
                or_dash(v.task.failure.as_deref()),
                v.task.title.clone(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }

    let _ = writeln!(out, "\nAssignments:");
    if s.assignments.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&["TASK", "ATTEMPT", "ROLE", "ROUND", "WORKER", "AGE"]);
        for a in &s.assignments {
            t.row(vec![
                a.task.to_string(),
                a.attempt.to_string(),
                a.role.clone(),
                a.round.to_string(),
                a.worker.clone(),
                age(now, a.dispatched_at_ms),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }

    let _ = writeln!(out, "\nRecent events:");
    out.push_str(&render_events(&s.recent_events, now, "  "));
    out
}

fn render_task(d: &view::TaskDetail, now: u64) -> String {
    let task = &d.view.task;
    let mut out = String::new();
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = writeln!(out, "{:<14}{value}", format!("{name}:"));
    };
    field(&mut out, "Name", &task.id.to_string());
    field(&mut out, "Title", &task.title);
    field(&mut out, "Spec", task.spec_ref.path.as_str());
    field(&mut out, "Spec ref", &task.spec_ref.to_string());
    field(&mut out, "Status", &task.status.to_string());
    if let Some(p) = &task.position {
        field(
            &mut out,
            "Step",
            &format!("{} at {} ({p})", d.view.step_label(), p.path_label()),
        );
    }
    field(&mut out, "Round", &task.round.to_string());
    if task.action_attempts > 0 {
        field(&mut out, "Action errors", &task.action_attempts.to_string());
    }
    field(&mut out, "Branch", &or_dash(task.branch.as_deref()));
    field(&mut out, "PR", &or_dash(task.pr.as_deref()));
    let deps: Vec<String> = d
        .dependencies
        .iter()
        .map(|dep| match dep.status {
            Some(s) => format!("{} ({s})", dep.id),
            None => format!("{} (unknown task)", dep.id),
        })
        .collect();
    field(&mut out, "Depends on", &or_dash(Some(&deps.join(", "))));
    let dependents: Vec<String> = d.dependents.iter().map(ToString::to_string).collect();
    field(
        &mut out,
        "Needed by",
        &or_dash(Some(&dependents.join(", "))),
    );
    if let Some(a) = &d.assignment {
        field(
            &mut out,
            "Running",
            &format!(
                "{} on {} ({}, round {}, dispatched {} ago)",
                a.role,
                a.worker,
                a.attempt,
                a.round,
                age(now, a.dispatched_at_ms)
            ),
        );
    }
    if let Some(why) = &d.view.waiting {
        field(&mut out, "Waiting", why);
    }
    if let Some(f) = &task.failure {
        field(&mut out, "Failure", f);
    }

    let _ = writeln!(out, "Reviews:");
    if d.reviews.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let round_width = d.reviews.iter().map(|r| r.round.to_string().len()).max();
    let role_width = d.reviews.iter().map(|r| r.role.chars().count()).max();
    for r in &d.reviews {
        let _ = writeln!(
            out,
            "  Round {:<rw$}   {:<ow$}   {}",
            r.round,
            r.role,
            r.verdict,
            rw = round_width.unwrap_or(0),
            ow = role_width.unwrap_or(0),
        );
        for line in r.detail.trim_end().lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(out, "Events:");
    out.push_str(&render_events(&d.events, now, "  "));
    out
}

fn render_spec(d: &view::SpecDetail, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<14}{}", "Path:", d.row.path);
    let _ = writeln!(
        out,
        "{:<14}{}",
        "Blob:",
        d.row
            .blob
            .as_deref()
            .unwrap_or("- (not among the specs intake last saw: deleted?)")
    );
    let _ = writeln!(
        out,
        "{:<14}{}",
        "Read at:",
        or_dash(d.row.commit.as_deref())
    );
    let _ = writeln!(out, "{:<14}{}", "Tasks:", tasks_cell(&d.row.tasks));
    if !d.task_list.is_empty() {
        let mut t = Table::new(&["ID", "STATUS", "STEP", "ROUND", "TITLE"]);
        for v in &d.task_list {
            t.row(vec![
                v.task.id.to_string(),
                v.task.status.to_string(),
                v.step_label().to_owned(),
                v.task.round.to_string(),
                v.task.title.clone(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }
    let waiting: Vec<&TaskView> = d
        .task_list
        .iter()
        .filter(|v| v.waiting.is_some() && v.task.status == TaskStatus::NotStarted)
        .collect();
    if !waiting.is_empty() {
        let _ = writeln!(out, "Waiting:");
        for v in waiting {
            let _ = writeln!(
                out,
                "  {}: {}",
                v.task.id,
                v.waiting.as_deref().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(out, "Events:");
    out.push_str(&render_events(&d.events, now, "  "));
    out
}
