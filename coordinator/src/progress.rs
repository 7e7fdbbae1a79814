//! What `run`/`watch` show a person: live progress on a terminal (tasks by state, running
//! steps with their elapsed time, what waits for a human and the command that clears it)
//! and a final summary.
//!
//! The text is a pure function of a [`View`] (tested without a terminal); [`Display`] feeds
//! it from the loop's published live view. It only reads `watch` snapshots, at a bounded
//! rate, so the loop never waits on it. On a terminal the status block is redrawn below the
//! log lines (log lines go through [`Display::log_writer`], which clears the block first);
//! without one, plain lines are printed once per event worth a person's attention.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperloop_shared::model::TaskStatus;
use hyperloop_shared::pipeline::{GateKind, StepKind};
use tokio::sync::watch;

use crate::control::{Live, TaskBrief};

/// Most redraws per second.
pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// A running step.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub task_id: String,
    pub role: String,
    pub round: u32,
    pub elapsed: Duration,
}

/// A task held at a gate only a person clears.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Waiting {
    pub task_id: String,
    pub gate: String,
}

/// Everything the display shows, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub elapsed: Duration,
    pub cycle: u64,
    pub tasks: Vec<TaskBrief>,
    pub running: Vec<Running>,
    pub waiting: Vec<Waiting>,
    /// Agent cost reported so far; `None` when no agent reported one.
    pub cost_usd: Option<f64>,
}

impl View {
    /// Builds the view from a live snapshot; `costs` carries each attempt's latest cost
    /// across snapshots (an attempt leaves the live view when it is reaped).
    pub fn from_live(
        live: &Live,
        elapsed: Duration,
        now_ms: u64,
        costs: &mut BTreeMap<u64, f64>,
    ) -> Self {
        let mut running = Vec::new();
        for attempt in live.workers.iter().flat_map(|w| &w.attempts) {
            if attempt.cost_usd > 0.0 {
                costs.insert(attempt.attempt, attempt.cost_usd);
            }
            running.push(Running {
                task_id: attempt.task_id.clone(),
                role: attempt.role.clone(),
                round: attempt.round,
                elapsed: Duration::from_millis(now_ms.saturating_sub(attempt.started_at_ms)),
            });
        }
        running.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let gates = live.project.as_ref().map(|p| &p.process.gates);
        let waiting = live
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::InProgress)
            .filter_map(|t| {
                let step = t.step.as_ref().filter(|s| s.kind == StepKind::Gate)?;
                // A command gate clears itself when its command passes; every other kind
                // waits for a person here.
                let checked = gates
                    .and_then(|g| g.get(&step.name))
                    .is_some_and(|g| matches!(g.kind, GateKind::Command { .. }));
                (!checked).then(|| Waiting {
                    task_id: t.id.clone(),
                    gate: step.name.clone(),
                })
            })
            .collect();
        View {
            elapsed,
            cycle: live.cycle,
            tasks: live.tasks.clone(),
            running,
            waiting,
            cost_usd: (!costs.is_empty()).then(|| costs.values().sum()),
        }
    }

    fn count(&self, status: TaskStatus) -> usize {
        self.tasks.iter().filter(|t| t.status == status).count()
    }

    /// Rounds worked, all tasks together (rounds are numbered from 0).
    fn rounds(&self) -> u32 {
        self.tasks
            .iter()
            .filter(|t| t.status != TaskStatus::NotStarted)
            .map(|t| t.round + 1)
            .sum()
    }
}

/// `1m 05s`, `12s`, `1h 02m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn tasks_line(view: &View) -> String {
    format!(
        "{} total: {} queued, {} in progress, {} complete, {} failed",
        view.tasks.len(),
        view.count(TaskStatus::NotStarted),
        view.count(TaskStatus::InProgress),
        view.count(TaskStatus::Complete),
        view.count(TaskStatus::Failed),
    )
}

/// The command that lets a task through its gate.
pub fn approve_command(task_id: &str) -> String {
    format!("hyperloopctl approve {task_id}")
}

/// The live block shown on a terminal, cargo style: a right-aligned verb, then details.
pub fn render_status(view: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {}  (cycle {}, {})",
        "Tasks",
        tasks_line(view),
        view.cycle,
        human(view.elapsed)
    );
    for r in &view.running {
        let _ = writeln!(
            out,
            "{:>12} {}  {}  round {}  {}",
            "Running",
            r.task_id,
            r.role,
            r.round,
            human(r.elapsed)
        );
    }
    for w in &view.waiting {
        let _ = writeln!(out, "{:>12} {}", "Waiting", waiting_text(w));
    }
    out
}

fn waiting_text(w: &Waiting) -> String {
    format!(
        "{} at gate `{}`: run `{}`",
        w.task_id,
        w.gate,
        approve_command(&w.task_id)
    )
}

/// A plain line for a task that starts waiting for a person (no terminal).
pub fn render_waiting_line(w: &Waiting) -> String {
    format!("waiting: {}\n", waiting_text(w))
}

/// The final summary: tasks, rounds, time, and cost when an agent reported one.
pub fn render_summary(view: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {}", "Tasks", tasks_line(view));
    let _ = writeln!(out, "{:>12} {}", "Rounds", view.rounds());
    let _ = writeln!(
        out,
        "{:>12} {} ({} cycles)",
        "Time",
        human(view.elapsed),
        view.cycle
    );
    if let Some(cost) = view.cost_usd {
        let _ = writeln!(out, "{:>12} ${cost:.2}", "Cost");
    }
    for w in &view.waiting {
        let _ = writeln!(out, "{:>12} {}", "Waiting", waiting_text(w));
    }
    out
}

/// The terminal (or not) that progress and log lines share.
#[derive(Debug)]
pub struct Display {
    terminal: bool,
    inner: Mutex<Screen>,
}

#[derive(Debug, Default)]
struct Screen {
    /// The status block as last drawn, and how many lines it took.
    block: String,
    drawn: usize,
}

impl Screen {
    fn clear(&mut self, out: &mut impl std::io::Write) {
        if self.drawn > 0 {
            // Up to the block's first line, then erase to the end of the screen.
            let _ = write!(out, "\r\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }
    fn draw(&mut self, out: &mut impl std::io::Write) {
        let _ = out.write_all(self.block.as_bytes());
        self.drawn = self.block.lines().count();
    }
}

impl Display {
    /// `terminal`: stderr is a terminal, so the block is drawn and redrawn.
    pub fn new(terminal: bool) -> Arc<Self> {
        Arc::new(Display {
            terminal,
            inner: Mutex::new(Screen::default()),
        })
    }

    pub fn terminal(&self) -> bool {
        self.terminal
    }

    fn screen(&self) -> std::sync::MutexGuard<'_, Screen> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a log line (or any text) above the status block.
    pub fn print(&self, text: &[u8]) {
        let mut screen = self.screen();
        let mut err = std::io::stderr().lock();
        if self.terminal {
            screen.clear(&mut err);
        }
        let _ = err.write_all(text);
        if self.terminal {
            screen.draw(&mut err);
        }
        let _ = err.flush();
    }

    /// Replaces the status block (terminal only).
    fn set_block(&self, block: String) {
        if !self.terminal {
            return;
        }
        let mut screen = self.screen();
        if screen.block == block {
            return;
        }
        let mut err = std::io::stderr().lock();
        screen.clear(&mut err);
        screen.block = block;
        screen.draw(&mut err);
        let _ = err.flush();
    }

    /// Removes the status block, for the summary to take its place.
    fn finish(&self) {
        let mut screen = self.screen();
        let mut err = std::io::stderr().lock();
        screen.clear(&mut err);
        screen.block.clear();
        let _ = err.flush();
    }

    /// A `MakeWriter` for the log subscriber: each line goes through [`Display::print`].
    pub fn log_writer(self: &Arc<Self>) -> LogWriter {
        LogWriter(self.clone())
    }

    /// Follows the live view until `stop`, then prints the summary. Returns when done.
    pub async fn follow(
        self: Arc<Self>,
        live: watch::Receiver<Arc<Live>>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let started = std::time::Instant::now();
        let mut costs = BTreeMap::new();
        let mut announced: BTreeSet<Waiting> = BTreeSet::new();
        // Redrawn per tick, not per change: a burst of changes costs one redraw.
        let mut tick = tokio::time::interval(REDRAW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let snapshot = |costs: &mut BTreeMap<u64, f64>, live: &watch::Receiver<Arc<Live>>| {
            let current = live.borrow().clone();
            View::from_live(&current, started.elapsed(), now_ms(), costs)
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let view = snapshot(&mut costs, &live);
            if self.terminal {
                self.set_block(render_status(&view));
            } else {
                for w in &view.waiting {
                    if announced.insert(w.clone()) {
                        self.print(render_waiting_line(w).as_bytes());
                    }
                }
            }
        }
        let view = snapshot(&mut costs, &live);
        self.finish();
        self.print(render_summary(&view).as_bytes());
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// See [`Display::log_writer`].
#[derive(Debug, Clone)]
pub struct LogWriter(Arc<Display>);

/// Buffers one formatted log event and hands it to the display when dropped.
#[derive(Debug)]
pub struct LineBuffer {
    display: Arc<Display>,
    buf: Vec<u8>,
}

impl std::io::Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.display.print(&self.buf);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer {
            display: self.0.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_shared::pipeline::StepRef;

    fn task(id: &str, status: TaskStatus, round: u32, step: Option<StepRef>) -> TaskBrief {
        TaskBrief {
            id: id.to_owned(),
            status,
            round,
            step,
        }
    }

    fn view() -> View {
        View {
            elapsed: Duration::from_secs(184),
            cycle: 12,
            tasks: vec![
                task("task-001", TaskStatus::Complete, 1, None),
                task(
                    "task-002",
                    TaskStatus::InProgress,
                    0,
                    Some(StepRef::new(StepKind::Agent, "implementer")),
                ),
                task(
                    "task-003",
                    TaskStatus::InProgress,
                    0,
                    Some(StepRef::new(StepKind::Gate, "human-review")),
                ),
                task("task-004", TaskStatus::NotStarted, 0, None),
            ],
            running: vec![Running {
                task_id: "task-002".into(),
                role: "implementer".into(),
                round: 0,
                elapsed: Duration::from_secs(72),
            }],
            waiting: vec![Waiting {
                task_id: "task-003".into(),
                gate: "human-review".into(),
            }],
            cost_usd: Some(1.234),
        }
    }

    #[test]
    fn the_status_block_shows_tasks_by_state_running_steps_and_the_command_a_human_runs() {
        assert_eq!(
            render_status(&view()),
            "       Tasks 4 total: 1 queued, 2 in progress, 1 complete, 0 failed  (cycle 12, 3m 04s)\n\
             \x20    Running task-002  implementer  round 0  1m 12s\n\
             \x20    Waiting task-003 at gate `human-review`: run `hyperloopctl approve task-003`\n"
        );
    }

    #[test]
    fn the_summary_counts_tasks_rounds_time_and_cost() {
        assert_eq!(
            render_summary(&view()),
            "       Tasks 4 total: 1 queued, 2 in progress, 1 complete, 0 failed\n\
             \x20     Rounds 4\n\
             \x20       Time 3m 04s (12 cycles)\n\
             \x20       Cost $1.23\n\
             \x20    Waiting task-003 at gate `human-review`: run `hyperloopctl approve task-003`\n"
        );
    }

    #[test]
    fn the_summary_leaves_cost_out_when_no_agent_reported_one() {
        let v = View {
            cost_usd: None,
            ..view()
        };
        assert!(!render_summary(&v).contains("Cost"));
    }

    #[test]
    fn a_task_at_a_gate_in_the_live_view_waits_for_a_human_but_a_running_one_does_not() {
        let live = Live {
            tasks: view().tasks,
            ..Live::default()
        };
        let v = View::from_live(&live, Duration::ZERO, 0, &mut BTreeMap::new());
        assert_eq!(
            v.waiting,
            vec![Waiting {
                task_id: "task-003".into(),
                gate: "human-review".into()
            }]
        );
        assert_eq!(v.cost_usd, None);
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human(Duration::from_secs(9)), "9s");
        assert_eq!(human(Duration::from_secs(65)), "1m 05s");
        assert_eq!(human(Duration::from_secs(3720)), "1h 02m");
    }
}
