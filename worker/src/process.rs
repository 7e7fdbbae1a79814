//! Agent processes: spawn in their own process group, stream output with bounded lines,
//! enforce the time limit, and stop the whole group on timeout or cancel.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hyperloop_proto::v1::LogSource;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::progress::ProgressSink;
use crate::runtime::OutputParser;
use crate::shim::ShimArgs;

/// How long the agent gets to stop after SIGINT (Claude Code ends its session cleanly on
/// SIGINT) before SIGTERM. Short because cancel must take effect within a second (P9) and
/// a timed-out agent has already had its time.
pub const INTERRUPT_GRACE: Duration = Duration::from_millis(500);
/// How long after SIGTERM before SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the group to disappear after SIGKILL (the kernel needs
/// milliseconds; this only bounds a process stuck in uninterruptible sleep).
pub const KILL_WAIT: Duration = Duration::from_secs(1);
/// Poll interval while waiting for a signalled group to disappear.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long to keep reading output after the agent's process group is gone. Output pipes
/// can be held open by a grandchild that escaped the group (`setsid`); this stops such a
/// leak from holding the step forever.
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest stdout/stderr line kept whole for parsing. Claude Code's stream-json lines carry
/// whole tool results (a file read, a test log) and can reach megabytes; longer lines are
/// cut, which only loses a progress line, never the small final `result` line.
pub const MAX_OUTPUT_LINE_BYTES: usize = 8 * 1024 * 1024;
/// How many final stderr (and stdout) lines are kept for the finding of a failed step.
pub const STDERR_TAIL_LINES: usize = 20;
/// Longest line kept in a tail: a stream-json stdout line can be megabytes, and a finding
/// is read by a person and fed to the next agent's prompt.
pub const TAIL_LINE_CHARS: usize = 500;

/// What to run.
#[derive(Debug)]
pub(crate) struct Launch {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: BTreeMap<OsString, OsString>,
    pub cwd: PathBuf,
    pub stdin: String,
    /// Start the agent under this shim (see [`crate::shim`]); `None` starts it directly.
    pub shim: Option<PathBuf>,
    /// With a shim: confine the agent, writable only beneath these paths.
    pub confine: Option<Vec<PathBuf>>,
}

/// How the agent process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Exited(i32),
    Signalled(i32),
    TimedOut(Duration),
    Cancelled,
}

pub(crate) struct Finished {
    pub ended: Ended,
    /// `None` when the stdout reader did not finish within [`OUTPUT_DRAIN_TIMEOUT`].
    pub parser: Option<Box<dyn OutputParser>>,
    pub stderr_tail: Vec<String>,
    /// The agent's last stdout lines (each cut to [`TAIL_LINE_CHARS`]); empty when the
    /// stdout reader did not finish in time.
    pub stdout_tail: Vec<String>,
}

/// Keeps the newest [`STDERR_TAIL_LINES`] lines, each cut to [`TAIL_LINE_CHARS`].
#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: &str) {
        if self.0.len() == STDERR_TAIL_LINES {
            self.0.pop_front();
        }
        let mut kept: String = line.chars().take(TAIL_LINE_CHARS).collect();
        if kept.len() < line.len() {
            kept.push_str(" …");
        }
        self.0.push_back(kept);
    }
}

/// Runs the agent to completion, time limit or cancellation, feeding its stdout to `parser`.
/// Returns an error only when the process cannot be started.
pub(crate) async fn run(
    launch: Launch,
    parser: Box<dyn OutputParser>,
    sink: ProgressSink,
    limit: Duration,
    cancel: &CancellationToken,
) -> std::io::Result<Finished> {
    let mut cmd = match &launch.shim {
        Some(shim) => {
            // The shim would only report a missing program by its exit status; find out
            // here so it stays a failed start.
            if !findable(
                &launch.program,
                launch.env.get(OsStr::new("PATH")),
                &launch.cwd,
            ) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such executable",
                ));
            }
            let mut cmd = Command::new(shim);
            cmd.args(
                ShimArgs {
                    parent: std::process::id(),
                    confine: launch.confine.clone(),
                    probe: false,
                    program: launch.program.clone(),
                    args: launch.args.clone(),
                }
                .to_args(),
            );
            cmd
        }
        None => {
            let mut cmd = Command::new(&launch.program);
            cmd.args(&launch.args);
            cmd
        }
    };
    cmd.env_clear()
        .envs(&launch.env)
        .current_dir(&launch.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: signals reach everything the agent started, and a Ctrl-C at
        // the worker's terminal does not reach the agent behind our back.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    // Recorded beside the worktree so a worker restarted after `kill -9` can stop an agent
    // its predecessor left running (see `orphans::reap`).
    let record = pgid.and_then(|pgid| orphans::record(&launch.cwd, pgid));

    if let Some(mut stdin) = child.stdin.take() {
        let prompt = launch.stdin;
        tokio::spawn(async move {
            // An agent that exits without reading its prompt closes the pipe: not an error.
            let _ = stdin.write_all(prompt.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stdout = child.stdout.take().map(|out| {
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut parser = parser;
            let mut tail = Tail::default();
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            while let Ok(Some(_truncated)) =
                read_bounded_line(&mut reader, &mut buf, MAX_OUTPUT_LINE_BYTES).await
            {
                let line = String::from_utf8_lossy(&buf);
                parser.stdout_line(&line, &sink);
                tail.push(&line);
            }
            (parser, Vec::from(tail.0))
        })
    });
    let stderr = child.stderr.take().map(|err| {
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut tail = Tail::default();
            let mut reader = BufReader::new(err);
            let mut buf = Vec::new();
            while let Ok(Some(_)) =
                read_bounded_line(&mut reader, &mut buf, hyperloop_proto::MAX_LOG_LINE_BYTES).await
            {
                let line = String::from_utf8_lossy(&buf);
                sink.line(LogSource::Stderr, &line);
                tail.push(&line);
            }
            Vec::from(tail.0)
        })
    });

    enum Stop {
        Exited(std::io::Result<ExitStatus>),
        Limit,
        Cancel,
    }
    let stop = tokio::select! {
        status = child.wait() => Stop::Exited(status),
        () = tokio::time::sleep(limit) => Stop::Limit,
        () = cancel.cancelled() => Stop::Cancel,
    };
    let ended = match stop {
        Stop::Exited(Ok(status)) => from_status(status),
        // wait() fails only if the child was already reaped; treat as a crash.
        Stop::Exited(Err(_)) => Ended::Signalled(0),
        Stop::Limit | Stop::Cancel => {
            if let Some(pgid) = pgid {
                stop_group(pgid, Some(&mut child), Signal::SIGINT).await;
            }
            if matches!(stop, Stop::Limit) {
                Ended::TimedOut(limit)
            } else {
                Ended::Cancelled
            }
        }
    };
    // Whatever the agent left running in its group (a dev server, a watcher) goes too.
    if let Some(pgid) = pgid {
        stop_group(pgid, Some(&mut child), Signal::SIGTERM).await;
    }
    let _ = child.wait().await;
    if let Some(record) = record {
        let _ = std::fs::remove_file(record);
    }

    let (parser, stdout_tail) = match stdout {
        Some(task) => tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, task)
            .await
            .ok()
            .and_then(Result::ok)
            .map_or((None, Vec::new()), |(p, tail)| (Some(p), tail)),
        None => (None, Vec::new()),
    };
    let stderr_tail = match stderr {
        Some(task) => tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(Finished {
        ended,
        parser,
        stderr_tail,
        stdout_tail,
    })
}

/// Whether `program` names an executable file: a path (relative to `cwd`), or a name found
/// on `path`.
fn findable(program: &OsStr, path: Option<&OsString>, cwd: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let program = std::path::Path::new(program);
    if program.components().count() > 1 {
        return executable(&cwd.join(program));
    }
    path.is_some_and(|p| std::env::split_paths(p).any(|dir| executable(&dir.join(program))))
}

fn from_status(status: ExitStatus) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ended::Exited(code),
        (None, Some(sig)) => Ended::Signalled(sig),
        (None, None) => Ended::Signalled(0),
    }
}

/// Signals the process group, escalating `first` → SIGTERM → SIGKILL until no live
/// process is left in it. Reaps the leader (`child`) along the way.
pub(crate) async fn stop_group(pgid: Pid, mut child: Option<&mut Child>, first: Signal) {
    let ladder: &[(Signal, Duration)] = match first {
        Signal::SIGINT => &[
            (Signal::SIGINT, INTERRUPT_GRACE),
            (Signal::SIGTERM, TERMINATE_GRACE),
            (Signal::SIGKILL, KILL_WAIT),
        ],
        _ => &[
            (Signal::SIGTERM, TERMINATE_GRACE),
            (Signal::SIGKILL, KILL_WAIT),
        ],
    };
    for &(signal, grace) in ladder {
        if let Some(c) = child.as_deref_mut() {
            let _ = c.try_wait();
        }
        if !group_alive(pgid) {
            return;
        }
        if killpg(pgid, signal).is_err() {
            return; // ESRCH: the group is gone
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if let Some(c) = child.as_deref_mut() {
                let _ = c.try_wait();
            }
            if !group_alive(pgid) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
    }
}

/// Whether any process of the group is alive. Zombies do not count: an orphaned
/// grandchild stays a zombie until init reaps it (some container inits never do), and a
/// zombie holds nothing.
pub fn group_alive(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killpg(pgid, None).is_ok();
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some((state, _, pgrp)) = name.parse().ok().and_then(crate::shim::stat_fields)
            && pgrp == pgid.as_raw()
            && state != 'Z'
            && state != 'X'
        {
            return true;
        }
    }
    false
}

/// Reads one line (without its `\n`) into `buf`, keeping at most `cap` bytes and
/// discarding the rest of an overlong line. `Ok(None)` at end of input; otherwise whether
/// the line was truncated.
pub(crate) async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut truncated = false;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any.then_some(truncated));
        }
        read_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        let room = cap.saturating_sub(buf.len());
        if chunk.len() > room {
            truncated = true;
            buf.extend_from_slice(&chunk[..room]);
        } else {
            buf.extend_from_slice(chunk);
        }
        let consumed = newline.map_or(available.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(truncated));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlong_lines_are_cut_and_the_rest_of_the_line_skipped() {
        let input = format!("short\n{}\nlast", "x".repeat(100));
        let mut reader = BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut reader, &mut buf, 10).await.unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_bounded_line(&mut reader, &mut buf, 10).await.unwrap(),
            Some(true)
        );
        assert_eq!(buf, b"xxxxxxxxxx");
        assert_eq!(
            read_bounded_line(&mut reader, &mut buf, 10).await.unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"last");
        assert_eq!(
            read_bounded_line(&mut reader, &mut buf, 10).await.unwrap(),
            None
        );
    }
}

/// Agent process groups that outlive their worker (the worker was killed with `kill -9`):
/// each running agent is recorded in `<worktree>.agent` as `<pgid> <start time>`; the next
/// worker start kills the groups still alive whose leader has the same start time (so a
/// reused pid is never hit).
pub(crate) mod orphans {
    use std::path::{Path, PathBuf};

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;

    fn record_path(worktree: &Path) -> PathBuf {
        worktree.with_extension("agent")
    }

    /// The kernel's start time of `pid` (field 22 of /proc/PID/stat), in clock ticks.
    fn start_time(pid: i32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces; fields after it are plain.
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split_whitespace().nth(19).map(str::to_owned)
    }

    pub(crate) fn record(worktree: &Path, pgid: Pid) -> Option<PathBuf> {
        let path = record_path(worktree);
        let started = start_time(pgid.as_raw())?;
        std::fs::write(&path, format!("{} {started}\n", pgid.as_raw())).ok()?;
        Some(path)
    }

    /// Kills the recorded agent groups in `dir` that are still alive; returns how many.
    pub(crate) fn reap(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("agent") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut fields = text.split_whitespace();
            if let (Some(pgid), Some(started)) = (
                fields.next().and_then(|p| p.parse::<i32>().ok()),
                fields.next(),
            ) && start_time(pgid).as_deref() == Some(started)
                && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
            {
                tracing::warn!(pgid, "stopped an agent left running by an earlier worker");
                killed += 1;
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }
}
