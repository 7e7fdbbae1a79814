//! Helpers shared by the coordinator's integration tests that drive real repositories.
//!
//! Each test crate includes this with `mod support;` and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `git -C dir args` with `who` (at example.invalid) as author and committer, asserts
/// that it succeeds and returns its stdout as printed.
pub fn git_as(who: &str, dir: &Path, args: &[&str]) -> String {
    let email = format!("{who}@example.invalid");
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", who)
        .env("GIT_AUTHOR_EMAIL", &email)
        .env("GIT_COMMITTER_NAME", who)
        .env("GIT_COMMITTER_EMAIL", &email)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("git prints UTF-8")
}

/// [`git_as`] with the identity `t`, its stdout trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_as("t", dir, args).trim().to_owned()
}

/// An empty repository on `main` in a new temp dir.
pub fn init_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    dir
}

/// A command's stdout, asserting it exited 0 (the failure shows its stderr).
pub fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr, asserting it exited with `code`.
pub fn failed(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
