//! Finding and running the real Claude Code CLI against the model server.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyperloop_worker::claude::{self, ClaudeLimits};
use serde_json::Value;

/// What to do when the CLI is missing.
pub const INSTALL_HINT: &str = "the Claude Code CLI is required: run `tests/setup` (it installs \
     npm @anthropic-ai/claude-code into ${HYPERLOOP_TOOLS:-$HOME/.cache/hyperloop-tools}/claude) \
     or set HYPERLOOP_CLAUDE_BIN to a `claude` binary";

/// The `claude` binary: `$HYPERLOOP_CLAUDE_BIN`, else where `tests/setup` installs it.
/// Errors (with [`INSTALL_HINT`]) when it is not there.
pub fn claude_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("HYPERLOOP_CLAUDE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let tools = match std::env::var_os("HYPERLOOP_TOOLS") {
                Some(t) if !t.is_empty() => PathBuf::from(t),
                _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/hyperloop-tools"),
            };
            tools.join("claude/node_modules/.bin/claude")
        }
    };
    if !path.is_file() {
        bail!("{} does not exist; {INSTALL_HINT}", path.display());
    }
    Ok(path)
}

/// `claude --version`, e.g. `2.1.330 (Claude Code)`.
pub fn claude_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} --version; {INSTALL_HINT}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): {}; {INSTALL_HINT}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The complete environment for an offline CLI run: `HOME` and the CLI's config, temp and
/// runtime directories under `state_dir`, the model server at `base_url`, no retries, no
/// other traffic, and `IS_SANDBOX=1` (bypassPermissions refuses to run as root without it).
/// `PATH` is passed through so the Bash tool finds `git`.
pub fn offline_env(base_url: &str, state_dir: &Path) -> Vec<(String, String)> {
    let dir = |name: &str| state_dir.join(name).to_string_lossy().into_owned();
    vec![
        ("HOME".into(), dir("home")),
        ("CLAUDE_CONFIG_DIR".into(), dir("config")),
        ("CLAUDE_CODE_TMPDIR".into(), dir("tmp")),
        ("XDG_RUNTIME_DIR".into(), dir("run")),
        ("TMPDIR".into(), dir("tmp")),
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("ANTHROPIC_BASE_URL".into(), base_url.into()),
        ("ANTHROPIC_API_KEY".into(), "test".into()),
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
            "1".into(),
        ),
        ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
        ("IS_SANDBOX".into(), "1".into()),
    ]
}

/// One run of `claude -p --output-format stream-json --verbose --permission-mode
/// bypassPermissions` in `cwd`, with the prompt on stdin (then closed), killed after
/// `timeout`.
#[derive(Debug, Clone)]
pub struct ClaudeSession {
    pub bin: PathBuf,
    pub cwd: PathBuf,
    pub base_url: String,
    /// Where HOME and the CLI's own directories go (created if missing).
    pub state_dir: PathBuf,
    pub prompt: String,
    pub extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// What a CLI run produced.
#[derive(Debug, Clone)]
pub struct ClaudeRun {
    /// `None` when the CLI was killed for exceeding the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// stdout's lines parsed as JSON (lines that are not JSON are skipped).
    pub events: Vec<Value>,
    pub elapsed: Duration,
}

impl ClaudeRun {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The final `{"type":"result",...}` line.
    pub fn result(&self) -> Option<&Value> {
        self.events.iter().rev().find(|e| e["type"] == "result")
    }

    /// The run succeeded the way the runtime must judge it: exit 0 AND `is_error == false`.
    pub fn succeeded(&self) -> bool {
        self.code() == Some(0) && self.result().and_then(|r| r["is_error"].as_bool()) == Some(false)
    }

    /// Everything, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

impl ClaudeSession {
    pub fn new(
        bin: PathBuf,
        cwd: impl Into<PathBuf>,
        base_url: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        prompt: impl Into<String>,
    ) -> Self {
        ClaudeSession {
            bin,
            cwd: cwd.into(),
            base_url: base_url.into(),
            state_dir: state_dir.into(),
            prompt: prompt.into(),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    pub fn run(&self) -> anyhow::Result<ClaudeRun> {
        for sub in ["home", "config", "tmp", "run"] {
            std::fs::create_dir_all(self.state_dir.join(sub))?;
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(claude::args(&ClaudeLimits::default()))
            .args(&self.extra_args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(offline_env(&self.base_url, &self.state_dir))
            .envs(self.extra_env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}; {INSTALL_HINT}", self.bin.display()))?;
        {
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin.write_all(self.prompt.as_bytes())?;
            // Dropping closes stdin: an open pipe stalls the CLI.
        }
        let mut stdout = child.stdout.take().context("stdout")?;
        let mut stderr = child.stderr.take().context("stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            s
        });
        let deadline = start + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        // The readers end when the CLI and anything it spawned close the pipes; a child
        // of the CLI that outlives it would hold them, so do not wait forever.
        let stdout = join_bounded(out_reader, Duration::from_secs(10));
        let stderr = join_bounded(err_reader, Duration::from_secs(10));
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(ClaudeRun {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            events,
            elapsed,
        })
    }
}

fn join_bounded(handle: std::thread::JoinHandle<Vec<u8>>, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if handle.is_finished() {
        handle.join().unwrap_or_default()
    } else {
        b"<output still open after the CLI exited>".to_vec()
    }
}
