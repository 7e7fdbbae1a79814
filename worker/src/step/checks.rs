//! The repository's checks (`.hyperloop/checks/*`, which the process-improver writes): after
//! an implementer or verifier reports pass, the worker runs every executable there itself,
//! from the worktree root, through the same shim and confinement as the agent, so that a
//! rule a check encodes holds whether or not the agent remembered to run it. The first
//! failing check turns the pass into a failed round whose finding carries its output.
//!
//! They run on the worker (not the coordinator) because the worktree with the agent's
//! commits exists only there, and under the agent's confinement because a check is code
//! anyone who can commit may write, exactly like the agent's own actions.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperloop_proto::v1::{FailureCause, LogSource};
use tokio_util::sync::CancellationToken;

use crate::process::{self, Ended, Launch};
use crate::progress::ProgressSink;
use crate::runtime::OutputParser;

/// Where checks live, relative to the repository root.
pub const CHECKS_DIR: &str = ".hyperloop/checks";

/// Roles whose pass is confirmed by the checks.
pub const CHECKED_ROLES: [&str; 2] = ["implementer", "verifier"];

/// How many final output lines of a failed check its finding quotes.
const OUTPUT_TAIL_LINES: usize = 40;

/// The executables in `worktree`'s checks folder, sorted by name. Hidden files (`.gitkeep`)
/// and files without an execute bit are not checks.
pub fn discover(worktree: &Path) -> Vec<PathBuf> {
    let mut checks: Vec<PathBuf> = std::fs::read_dir(worktree.join(CHECKS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && is_executable(p)
        })
        .collect();
    checks.sort();
    checks
}

/// The checks the process names (`checks:` for `role`), in the order given; a name that is
/// not an executable file in the checks folder fails the round with a finding saying so.
pub fn named(worktree: &Path, names: &[String], role: &str) -> Result<Vec<PathBuf>, String> {
    names
        .iter()
        .map(|name| {
            let path = worktree.join(CHECKS_DIR).join(name);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(format!(
                    "The agent reported pass, but check `{name}`, which the process runs after \
                     every `{role}` (`checks:`), is not an executable file at \
                     {CHECKS_DIR}/{name}; this round fails. Add it and make it executable \
                     (chmod +x), or remove it from `checks:` in the process definition."
                ))
            }
        })
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How a process is launched for a check: everything but the program as for the agent.
pub(crate) struct CheckLaunch {
    pub env: BTreeMap<OsString, OsString>,
    pub cwd: PathBuf,
    pub shim: Option<PathBuf>,
    pub confine: Option<Vec<PathBuf>>,
}

/// Runs `checks` in order, stopping at the first failure; returns its finding.
pub(crate) async fn run(
    checks: &[PathBuf],
    launch: &CheckLaunch,
    sink: &ProgressSink,
    limit: Duration,
    cancel: &CancellationToken,
) -> Option<(FailureCause, String)> {
    for check in checks {
        let name = check
            .strip_prefix(&launch.cwd)
            .unwrap_or(check)
            .display()
            .to_string();
        sink.line(LogSource::Worker, &format!("running check {name}"));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let parser = Box::new(Collect {
            lines: output.clone(),
        });
        let started = process::run(
            Launch {
                program: check.clone().into_os_string(),
                args: Vec::new(),
                env: launch.env.clone(),
                cwd: launch.cwd.clone(),
                stdin: String::new(),
                shim: launch.shim.clone(),
                confine: launch.confine.clone(),
            },
            parser,
            sink.clone(),
            limit,
            cancel,
        )
        .await;
        let finished = match started {
            Ok(f) => f,
            Err(e) => {
                return Some((
                    FailureCause::Unspecified,
                    format!(
                        "The agent reported pass, but check `{name}` could not be started \
                         ({e}); this round fails. Make it an executable with a valid `#!` \
                         line, or remove it from {CHECKS_DIR}/."
                    ),
                ));
            }
        };
        let how = match finished.ended {
            Ended::Exited(0) => continue,
            Ended::Exited(code) => format!("exited with status {code}"),
            Ended::Signalled(sig) => format!("was killed by signal {sig}"),
            Ended::TimedOut(limit) => format!(
                "did not finish within {}",
                hyperloop_shared::duration::human(limit)
            ),
            Ended::Cancelled => {
                return Some((
                    FailureCause::Cancelled,
                    "The step was cancelled while its checks ran.".to_owned(),
                ));
            }
        };
        let mut lines: Vec<String> = output
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        lines.extend(finished.stderr_tail);
        let start = lines.len().saturating_sub(OUTPUT_TAIL_LINES);
        let quoted = if lines.is_empty() {
            "(it printed nothing)".to_owned()
        } else {
            format!("```\n{}\n```", lines[start..].join("\n"))
        };
        // Unspecified cause: a failed verdict of the round, which loops back with this
        // finding like an agent's own fail.
        return Some((
            FailureCause::Unspecified,
            format!(
                "The agent reported pass, but check `{name}` {how}, so this round fails. Fix \
                 what it reports (run it from the repository root to reproduce). Its output \
                 (stdout, then the last lines of stderr):\n\n{quoted}"
            ),
        ));
    }
    None
}

/// Forwards a check's stdout to the progress log and keeps its last lines.
struct Collect {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl OutputParser for Collect {
    fn stdout_line(&mut self, line: &str, sink: &ProgressSink) {
        sink.line(LogSource::Stdout, line);
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == OUTPUT_TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_owned());
        }
    }

    fn exit_failure(&self, _code: i32) -> Option<(FailureCause, String)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn named_checks_come_in_the_order_given_and_a_missing_one_is_a_finding() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let checks = dir.path().join(CHECKS_DIR);
        std::fs::create_dir_all(&checks).unwrap();
        for name in ["a", "b", "plain"] {
            std::fs::write(checks.join(name), "#!/bin/sh\n").unwrap();
        }
        for name in ["a", "b"] {
            std::fs::set_permissions(checks.join(name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            named(dir.path(), &names(&["b", "a"]), "implementer").unwrap(),
            [checks.join("b"), checks.join("a")]
        );
        for missing in ["gone", "plain"] {
            let finding = named(dir.path(), &names(&["a", missing]), "reviewer").unwrap_err();
            assert!(
                finding.contains(&format!(
                    "check `{missing}`, which the process runs after every `reviewer` \
                     (`checks:`), is not an executable file at .hyperloop/checks/{missing}"
                )),
                "{finding}"
            );
        }
    }

    #[test]
    fn only_visible_executable_files_are_checks_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let checks = dir.path().join(CHECKS_DIR);
        std::fs::create_dir_all(checks.join("sub")).unwrap();
        for (name, mode) in [
            ("b-lint", 0o755),
            ("a-fmt", 0o700),
            ("notes.md", 0o644),
            (".gitkeep", 0o755),
        ] {
            let p = checks.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let found: Vec<String> = discover(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["a-fmt", "b-lint"]);
        assert!(discover(&dir.path().join("nowhere")).is_empty());
    }
}
