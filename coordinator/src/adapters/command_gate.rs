//! [`CommandGates`]: the [`GateEvaluator`] that runs `command` gates on the coordinator's
//! host, each in a throwaway detached worktree of the task's head commit, and leaves every
//! other gate kind to a human (`hyperloopctl approve`): without GitHub nothing else can
//! decide a label, an approval or CI.
//!
//! The command gets an explicit environment (`PATH`, `HOME`, `LANG`, `TMPDIR` and
//! `HYPERLOOP_TASK`, `HYPERLOOP_GATE`, `HYPERLOOP_BRANCH`, `HYPERLOOP_COMMIT`), never the
//! coordinator's own (tokens, credentials), and runs in its own process group, which is
//! killed when the command ends or times out so nothing it started outlives the gate.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyperloop_shared::duration::human;
use hyperloop_shared::gates::{GateStatus, command_line};
use hyperloop_shared::pipeline::GateKind;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::adapters::git::cli::{failure, git};
use crate::ports::gate::{GateError, GateEvaluator, GateQuery};

/// The coordinator's variables a command inherits; everything else is left out.
const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];
/// How much of the end of a failed command's output its finding quotes.
const OUTPUT_TAIL_BYTES: u64 = 4096;
/// How often a running command is checked for exit or timeout.
const POLL: Duration = Duration::from_millis(20);

/// `(commit, run)` pairs that passed.
type Passed = Mutex<HashSet<(String, Vec<String>)>>;

pub struct CommandGates {
    repo: PathBuf,
    /// An `all` gate is asked again every poll while a sibling (a label, a review) still
    /// waits; running a passed suite again on the same commit would only burn the host's
    /// time. Failures are not kept: they end the wait.
    passed: Arc<Passed>,
}

impl CommandGates {
    /// Command gates checked out from `repo`, the coordinator's checkout (task commits are
    /// there: workers push them to it, or it fetched them).
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        CommandGates {
            repo: repo.into(),
            passed: Arc::default(),
        }
    }
}

impl GateEvaluator for CommandGates {
    async fn evaluate(&self, query: GateQuery) -> Result<GateStatus, GateError> {
        let (run, timeout) = match &query.kind {
            GateKind::Command { run, timeout } => (run.clone(), *timeout),
            GateKind::All { .. } => return Err(query.not_a_leaf()),
            GateKind::Manual => return Ok(query.awaiting_approval("waits for a human")),
            other => {
                let why = format!(
                    "(type {}) is decided on GitHub, which this coordinator does not use",
                    other.type_name()
                );
                return Ok(query.awaiting_approval(&why));
            }
        };
        let repo = self.repo.clone();
        let passed = self.passed.clone();
        let gate = query.gate.clone();
        // Blocking work (git, waiting for the command) on a blocking thread, which also
        // finishes its cleanup when the caller stops waiting.
        tokio::task::spawn_blocking(move || {
            evaluate_blocking(&repo, &query, &run, timeout, &passed)
        })
        .await
        .map_err(|e| GateError::Io {
            gate,
            what: "run the gate".to_owned(),
            reason: e.to_string(),
        })?
    }
}

fn evaluate_blocking(
    repo: &Path,
    query: &GateQuery,
    run: &[String],
    timeout: Duration,
    passed: &Passed,
) -> Result<GateStatus, GateError> {
    let target = &query.target;
    let rev = target
        .commit
        .as_deref()
        .or(target.branch.as_deref())
        .ok_or_else(|| GateError::NoWork {
            task: target.task,
            gate: query.gate.clone(),
        })?;
    let commit = resolve(repo, rev).map_err(|reason| GateError::UnknownRevision {
        task: target.task,
        gate: query.gate.clone(),
        rev: rev.to_owned(),
        repo: repo.display().to_string(),
        reason,
    })?;
    let key = (commit.clone(), run.to_vec());
    if passed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&key)
    {
        return Ok(GateStatus::Cleared);
    }
    let checkout = Checkout::add(repo, &commit).map_err(|reason| GateError::Io {
        gate: query.gate.clone(),
        what: format!("check out {commit} ({rev}) into a temporary worktree"),
        reason,
    })?;
    let status = run_command(checkout.dir.path(), query, &commit, run, timeout)?;
    if status == GateStatus::Cleared {
        passed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key);
    }
    Ok(status)
}

/// The commit `rev` names in `repo`, or why there is none.
fn resolve(repo: &Path, rev: &str) -> Result<String, String> {
    // Not an option in disguise: branch names and commit ids never start with `-`.
    if rev.starts_with('-') {
        return Err("not a branch or commit name".to_owned());
    }
    let peeled = format!("{rev}^{{commit}}");
    let out =
        git(repo, ["rev-parse", "--verify", "--quiet", &peeled]).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        let why = failure(&out);
        Err(if why.is_empty() {
            "no such branch or commit".to_owned()
        } else {
            why
        })
    }
}

/// A detached worktree of `repo` in a fresh temporary directory, removed when dropped.
struct Checkout<'a> {
    repo: &'a Path,
    dir: TempDir,
}

impl<'a> Checkout<'a> {
    fn add(repo: &'a Path, commit: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("hyperloop-gate-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let args = [
            OsStr::new("worktree"),
            OsStr::new("add"),
            OsStr::new("--quiet"),
            OsStr::new("--detach"),
            dir.path().as_os_str(),
            OsStr::new(commit),
        ];
        let out = git(repo, args).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Checkout { repo, dir })
        } else {
            Err(failure(&out))
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        // `--force`: the command may have left changed or untracked files. Should the
        // directory be gone already, `prune` drops its registration instead; the TempDir
        // removes whatever is left of the directory either way.
        let dir = self.dir.path().as_os_str();
        let args = [
            OsStr::new("worktree"),
            OsStr::new("remove"),
            OsStr::new("--force"),
            dir,
        ];
        let removed = git(self.repo, args).is_ok_and(|out| out.status.success());
        if !removed {
            let _ = git(self.repo, ["worktree", "prune"]);
        }
    }
}

/// Runs the gate's command in `dir` and judges how it ended.
fn run_command(
    dir: &Path,
    query: &GateQuery,
    commit: &str,
    run: &[String],
    timeout: Duration,
) -> Result<GateStatus, GateError> {
    let gate = &query.gate;
    let command = command_line(run);
    let io = |what: &str, e: std::io::Error| GateError::Io {
        gate: gate.clone(),
        what: what.to_owned(),
        reason: e.to_string(),
    };
    let spawn_error = |reason: String| GateError::Spawn {
        gate: gate.clone(),
        command: command.clone(),
        reason,
    };
    let (program, args) = run
        .split_first()
        .ok_or_else(|| spawn_error("the command is empty".to_owned()))?;
    // One file for stdout and stderr keeps their interleaving, and unlike a pipe it cannot
    // fill up or be held open by a process that escaped the group.
    let mut output = tempfile::tempfile().map_err(|e| io("create the output file", e))?;
    let stdio = || {
        output
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| io("share the output file", e))
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(
            INHERITED_ENV
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .env("HYPERLOOP_TASK", query.target.task.to_string())
        .env("HYPERLOOP_GATE", gate)
        .env(
            "HYPERLOOP_BRANCH",
            query.target.branch.as_deref().unwrap_or(""),
        )
        .env("HYPERLOOP_COMMIT", commit)
        .stdin(Stdio::null())
        .stdout(stdio()?)
        .stderr(stdio()?)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error(e.to_string()))?;
    // Pids fit in an i32 (the kernel's pid_max is at most 2^22).
    let leader = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + timeout;
    // WNOWAIT: an exited leader stays unreaped, so its pid (the group's id) cannot be reused
    // before the kill below, which then reaches only what the command started.
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let timed_out = loop {
        match waitid(Id::Pid(leader), peek) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(WaitStatus::StillAlive) => break true,
            // Exited, or waitid failed: `wait` below reports which.
            _ => break false,
        }
    };
    let _ = killpg(leader, Signal::SIGKILL);
    let status = child.wait().map_err(|e| io("wait for the command", e))?;
    if !timed_out && status.success() {
        return Ok(GateStatus::Cleared);
    }
    let ended = if timed_out {
        format!(
            "did not finish within its timeout of {} and was killed; make it faster or raise \
             the gate's `timeout`",
            human(timeout)
        )
    } else {
        exited(status)
    };
    let mut finding = format!("gate `{gate}`: `{command}` {ended}");
    let tail = output_tail(&mut output);
    if !tail.trim().is_empty() {
        finding.push_str(&format!("; the end of its output:\n{}", tail.trim_end()));
    }
    Ok(GateStatus::Failed {
        findings: vec![finding],
    })
}

fn exited(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of the output, `…`-prefixed when cut; empty if unreadable
/// (the exit status still tells the story).
fn output_tail(file: &mut File) -> String {
    let mut read = || -> std::io::Result<String> {
        let len = file.seek(SeekFrom::End(0))?;
        let start = len.saturating_sub(OUTPUT_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(if start > 0 {
            format!("…{text}")
        } else {
            text.into_owned()
        })
    };
    read().unwrap_or_default()
}
