//! The git CLI, run with a controlled environment and a time limit.
//!
//! Every git operation of the worker goes through the CLI: clone/fetch/push must (they follow
//! the host's credential helpers, ssh config and `GIT_ASKPASS`; libgit2 cannot reach https
//! without openssl), and for the few local operations per step (worktree add/remove, rev-parse,
//! status) one process start costs ~1–3 ms, well below anything the agent does, so a second
//! git implementation (git2, 18 s of vendored C to build) buys nothing measurable here.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hyperloop_shared::duration::human;
use tokio::process::Command;

/// Limit for local git operations (rev-parse, worktree add/remove, status). They take
/// milliseconds; a minute only trips on a wedged file system or a stuck lock.
pub(crate) const LOCAL_GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Limit for network operations (clone, fetch, push). Generous because a first clone of a big
/// repository over a slow link takes minutes; it must stay below the coordinator's step
/// deadline so a stuck fetch becomes a reported failure rather than a lost lease.
pub(crate) const NETWORK_GIT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Variables that tell git *which repository* to act on (`git rev-parse --local-env-vars`).
/// Inherited from a worker started inside a git hook they would redirect every command to
/// the wrong repository, so they are removed. Credential-related variables (`GIT_ASKPASS`,
/// `GIT_SSH_COMMAND`, ...) stay: fetch and push need them.
const REPO_LOCAL_VARS: &[&str] = &[
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
];

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "could not run `git {args}` in {dir}: {source}; install git and make sure it is on \
         the worker's PATH"
    )]
    Spawn {
        args: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {args}` in {dir} failed ({status}): {stderr}")]
    Failed {
        args: String,
        dir: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("`git {args}` in {dir} did not finish within {}", human(*.limit))]
    TimedOut {
        args: String,
        dir: PathBuf,
        limit: Duration,
    },
}

/// Runs `git <args>` in `dir` and returns its stdout (trimmed of the final newline).
pub(crate) async fn run<S: AsRef<OsStr>>(
    dir: &Path,
    args: &[S],
    limit: Duration,
) -> Result<String, GitError> {
    let output = output(dir, args, limit).await?;
    finish(dir, render(args), output)
}

fn finish(dir: &Path, rendered: String, output: std::process::Output) -> Result<String, GitError> {
    if output.status.success() {
        let mut out = String::from_utf8_lossy(&output.stdout).into_owned();
        while out.ends_with('\n') {
            out.pop();
        }
        Ok(out)
    } else {
        Err(GitError::Failed {
            args: rendered,
            dir: dir.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `git <args>` with `input` on stdin (for `cat-file --batch-check`).
pub(crate) async fn run_with_input<S: AsRef<OsStr>>(
    dir: &Path,
    args: &[S],
    input: String,
    limit: Duration,
) -> Result<String, GitError> {
    let rendered = render(args);
    let mut cmd = command(dir, args);
    cmd.stdin(Stdio::piped());
    let work = async {
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt as _;
            stdin.write_all(input.as_bytes()).await?;
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(limit, work).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => {
            return Err(GitError::Spawn {
                args: rendered,
                dir: dir.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(GitError::TimedOut {
                args: rendered,
                dir: dir.to_owned(),
                limit,
            });
        }
    };
    finish(dir, rendered, output)
}

async fn output<S: AsRef<OsStr>>(
    dir: &Path,
    args: &[S],
    limit: Duration,
) -> Result<std::process::Output, GitError> {
    let mut cmd = command(dir, args);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(source)) => Err(GitError::Spawn {
            args: render(args),
            dir: dir.to_owned(),
            source,
        }),
        Err(_) => Err(GitError::TimedOut {
            args: render(args),
            dir: dir.to_owned(),
            limit,
        }),
    }
}

fn command<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Command {
    let mut cmd = Command::new("git");
    // No hooks and no fsmonitor: the worker's git never runs a program an agent could have
    // named (worktree files are the agent's; see `Workspace::reseal` for the pointers).
    cmd.args([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
    ])
    .args(args)
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Never wait for a password on a terminal nobody watches; helpers still run.
    .env("GIT_TERMINAL_PROMPT", "0")
    // Stable, parseable messages in errors.
    .env("LC_ALL", "C")
    .kill_on_drop(true);
    for var in REPO_LOCAL_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Renders argv for messages, hiding credentials embedded in URLs
/// (`https://user:token@host/...` becomes `https://***@host/...`).
fn render<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| redact_url(&a.as_ref().to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn redact_url(arg: &str) -> String {
    if let Some(scheme_end) = arg.find("://") {
        let rest = &arg[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}***{}", &arg[..scheme_end + 3], &rest[at..]);
        }
    }
    arg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_in_urls_are_hidden_from_messages() {
        assert_eq!(
            redact_url("https://x-access-token:ghp_secret@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact_url("file:///tmp/origin.git"),
            "file:///tmp/origin.git"
        );
        assert_eq!(redact_url("refs/heads/a@b"), "refs/heads/a@b");
    }
}
