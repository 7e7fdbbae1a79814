//! Running the `git` CLI with a controlled environment.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// `git -C dir args...` with no inherited `GIT_*` variables, so a caller running inside a git
/// hook (where `GIT_DIR`/`GIT_INDEX_FILE` are set) cannot redirect us to another repository,
/// and never prompting on a terminal (a missing credential fails instead of hanging).
pub(crate) fn git<I, S>(dir: &Path, args: I) -> std::io::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0");
    cmd.output()
}

/// The trimmed stderr (or stdout, when stderr is empty) of a failed command.
pub(crate) fn failure(output: &Output) -> String {
    let err = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if err.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    } else {
        err
    }
}
