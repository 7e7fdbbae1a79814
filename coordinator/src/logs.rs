//! [`LogHub`]: agent output as the leader's loop relays it, kept for `hyperloopctl logs`.
//!
//! Per task, a bounded buffer of the newest [`MAX_LINES_PER_TASK`] lines (across its
//! attempts) and a broadcast channel for followers; at most [`MAX_TASKS`] tasks are kept
//! (the least recently active go first), so memory stays bounded however long the run.
//!
//! Architecture Invariant: the loop never waits on a reader. Followers get a bounded
//! `broadcast` receiver; one that falls behind loses the oldest messages, which it sees as a
//! gap in the per-attempt `LogLine.seq` numbers (the admin API reports it).
//!
//! Assumption: the loop calls [`LogHub::started`] before relaying an attempt's lines. Lines
//! of an attempt it does not know (one dispatched by a previous leader) are dropped: the
//! buffer is per process, not part of the shared state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use hyperloop_proto::v1::{LogLine, StreamLogsResponse};
use tokio::sync::broadcast;

/// Lines kept per task (all attempts together).
pub const MAX_LINES_PER_TASK: usize = 2_000;
/// Tasks whose output is kept.
pub const MAX_TASKS: usize = 256;
/// Messages a follower may fall behind before it loses the oldest.
const FOLLOWER_BACKLOG: usize = 1_024;

/// Agent output of recent tasks, shared by the loop (writer) and the admin API (readers).
#[derive(Debug)]
pub struct LogHub {
    // std Mutex: held only for short, non-async bookkeeping.
    inner: Mutex<Inner>,
    max_lines: usize,
    max_tasks: usize,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: HashMap<String, TaskLog>,
    attempts: HashMap<u64, Attempt>,
    /// Activity clock for evicting the least recently active task.
    clock: u64,
}

#[derive(Debug, Clone)]
struct Attempt {
    task_id: String,
    step_path: String,
    role: String,
}

#[derive(Debug)]
struct TaskLog {
    /// Oldest first; each message carries one attempt's lines or its end.
    buffer: VecDeque<StreamLogsResponse>,
    lines: usize,
    sender: broadcast::Sender<StreamLogsResponse>,
    touched: u64,
}

impl TaskLog {
    fn new(touched: u64) -> Self {
        Self {
            buffer: VecDeque::new(),
            lines: 0,
            sender: broadcast::channel(FOLLOWER_BACKLOG).0,
            touched,
        }
    }

    fn push(&mut self, message: StreamLogsResponse, max_lines: usize) {
        self.lines += message.lines.len();
        // A follower that lags is the follower's problem (see the module docs).
        let _ = self.sender.send(message.clone());
        self.buffer.push_back(message);
        while self.lines > max_lines {
            let Some(front) = self.buffer.front_mut() else {
                break;
            };
            let excess = self.lines - max_lines;
            if front.lines.len() > excess {
                front.lines.drain(..excess);
                self.lines -= excess;
            } else {
                self.lines -= front.lines.len();
                self.buffer.pop_front();
            }
        }
    }

    /// The buffer, keeping only the newest `tail` lines (0: all); attempt ends are kept.
    fn backlog(&self, tail: usize) -> Vec<StreamLogsResponse> {
        let mut skip = if tail == 0 {
            0
        } else {
            self.lines.saturating_sub(tail)
        };
        let mut out = Vec::with_capacity(self.buffer.len());
        for message in &self.buffer {
            let mut message = message.clone();
            let cut = skip.min(message.lines.len());
            message.lines.drain(..cut);
            skip -= cut;
            if !message.lines.is_empty() || message.attempt_finished {
                out.push(message);
            }
        }
        out
    }
}

impl Default for LogHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LogHub {
    pub fn new() -> Self {
        Self::with_limits(MAX_LINES_PER_TASK, MAX_TASKS)
    }

    /// Smaller bounds, for tests of eviction.
    pub fn with_limits(max_lines: usize, max_tasks: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_lines: max_lines.max(1),
            max_tasks: max_tasks.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An attempt of `task_id` was dispatched; its lines follow under `attempt`.
    pub fn started(&self, task_id: &str, attempt: u64, step_path: &str, role: &str) {
        let mut inner = self.lock();
        inner.attempts.insert(
            attempt,
            Attempt {
                task_id: task_id.to_owned(),
                step_path: step_path.to_owned(),
                role: role.to_owned(),
            },
        );
        inner.task(task_id, self.max_tasks);
    }

    /// Output of a running attempt, as the worker sent it.
    pub fn lines(&self, attempt: u64, lines: Vec<LogLine>) {
        if lines.is_empty() {
            return;
        }
        self.push(attempt, lines, false);
    }

    /// The attempt ended (result, cancellation or lost worker); followers are told.
    pub fn finished(&self, attempt: u64) {
        self.push(attempt, Vec::new(), true);
        self.lock().attempts.remove(&attempt);
    }

    fn push(&self, attempt: u64, lines: Vec<LogLine>, finished: bool) {
        let mut inner = self.lock();
        let Some(meta) = inner.attempts.get(&attempt).cloned() else {
            return;
        };
        let message = StreamLogsResponse {
            attempt_id: attempt,
            step_path: meta.step_path,
            role: meta.role,
            lines,
            attempt_finished: finished,
        };
        inner
            .task(&meta.task_id, self.max_tasks)
            .push(message, self.max_lines);
    }

    /// What is buffered for `task_id` (only the newest `tail` lines; 0: all), and a receiver
    /// for everything after it: nothing is missed or repeated between the two.
    pub fn subscribe(
        &self,
        task_id: &str,
        tail: usize,
    ) -> (
        Vec<StreamLogsResponse>,
        broadcast::Receiver<StreamLogsResponse>,
    ) {
        let mut inner = self.lock();
        let log = inner.task(task_id, self.max_tasks);
        (log.backlog(tail), log.sender.subscribe())
    }
}

impl Inner {
    /// The log of `task_id`, created (evicting the least recently active task beyond
    /// `max_tasks`) if needed, and marked active.
    fn task(&mut self, task_id: &str, max_tasks: usize) -> &mut TaskLog {
        self.clock += 1;
        let clock = self.clock;
        if !self.tasks.contains_key(task_id) && self.tasks.len() >= max_tasks {
            // Evicting drops the sender, which ends that task's followers' streams.
            let oldest = self
                .tasks
                .iter()
                .min_by_key(|(_, log)| log.touched)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.tasks.remove(&id);
            }
        }
        let log = self
            .tasks
            .entry(task_id.to_owned())
            .or_insert_with(|| TaskLog::new(clock));
        log.touched = clock;
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperloop_proto::v1::LogSource;
    use tokio::sync::broadcast::error::TryRecvError;

    fn line(seq: u64) -> LogLine {
        LogLine {
            seq,
            source: LogSource::Stdout.into(),
            text: format!("line {seq}"),
            at: None,
        }
    }

    fn seqs(messages: &[StreamLogsResponse]) -> Vec<u64> {
        messages
            .iter()
            .flat_map(|m| m.lines.iter().map(|l| l.seq))
            .collect()
    }

    #[test]
    fn buffers_lines_per_task_and_marks_finished_attempts() {
        let hub = LogHub::new();
        hub.started("task-001", 7, "0/agent:implementer@ab", "implementer");
        hub.lines(7, vec![line(1), line(2)]);
        hub.finished(7);
        hub.started("task-002", 8, "0/agent:implementer@ab", "implementer");
        hub.lines(8, vec![line(1)]);

        let (backlog, _) = hub.subscribe("task-001", 0);
        assert_eq!(seqs(&backlog), [1, 2]);
        assert_eq!(backlog[0].attempt_id, 7);
        assert_eq!(backlog[0].role, "implementer");
        assert!(backlog.last().unwrap().attempt_finished);
        let (backlog, _) = hub.subscribe("task-002", 0);
        assert_eq!(seqs(&backlog), [1]);
    }

    #[test]
    fn tail_and_the_line_bound_keep_the_newest() {
        let hub = LogHub::with_limits(5, 10);
        hub.started("task-001", 1, "p", "r");
        hub.lines(1, (1..=4).map(line).collect());
        hub.lines(1, (5..=8).map(line).collect());
        let (backlog, _) = hub.subscribe("task-001", 0);
        assert_eq!(seqs(&backlog), [4, 5, 6, 7, 8]);
        let (backlog, _) = hub.subscribe("task-001", 2);
        assert_eq!(seqs(&backlog), [7, 8]);
    }

    #[test]
    fn the_least_recently_active_task_is_evicted() {
        let hub = LogHub::with_limits(100, 2);
        for (attempt, task) in [(1, "task-001"), (2, "task-002")] {
            hub.started(task, attempt, "p", "r");
            hub.lines(attempt, vec![line(1)]);
        }
        hub.lines(1, vec![line(2)]); // task-001 is now the more recent
        hub.started("task-003", 3, "p", "r");
        assert_eq!(seqs(&hub.subscribe("task-001", 0).0), [1, 2]);
        assert!(hub.lock().tasks.len() <= 2);
        assert!(!hub.lock().tasks.contains_key("task-002"));
    }

    #[test]
    fn followers_get_new_lines_and_unknown_attempts_are_dropped() {
        let hub = LogHub::new();
        let (backlog, mut rx) = hub.subscribe("task-001", 0);
        assert!(backlog.is_empty());
        hub.lines(99, vec![line(1)]); // never started here
        hub.started("task-001", 3, "p", "verifier");
        hub.lines(3, vec![line(1)]);
        hub.finished(3);
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.attempt_id, seqs(std::slice::from_ref(&first))),
            (3, vec![1])
        );
        assert!(rx.try_recv().unwrap().attempt_finished);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    #[test]
    fn a_slow_follower_lags_instead_of_blocking_the_writer() {
        let hub = LogHub::new();
        hub.started("task-001", 1, "p", "r");
        let (_, mut rx) = hub.subscribe("task-001", 0);
        for seq in 1..=(FOLLOWER_BACKLOG as u64 + 10) {
            hub.lines(1, vec![line(seq)]);
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(10))));
        assert_eq!(rx.try_recv().unwrap().lines[0].seq, 11);
    }
}
