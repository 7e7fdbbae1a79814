//! The `GateEvaluator` contract and command-specific behaviour of [`CommandGates`], against
//! real repositories built with the git CLI.

mod support;

use std::time::{Duration, Instant};

use hyperloop_coordinator::adapters::command_gate::CommandGates;
use hyperloop_coordinator::ports::gate::contract::Harness;
use hyperloop_coordinator::ports::gate::{GateError, GateEvaluator, GateQuery, GateTarget};
use hyperloop_shared::gates::GateStatus;
use hyperloop_shared::model::TaskId;
use hyperloop_shared::pipeline::GateKind;
use support::{git, init_repo};
use tempfile::TempDir;

const TASK: TaskId = TaskId(7);

/// A checkout on `main` (a README) with branch `hyperloop/task-007` adding the file `ok`.
struct Repo {
    dir: TempDir,
    gates: CommandGates,
}

fn repo() -> Repo {
    let dir = init_repo();
    let root = dir.path();
    std::fs::write(root.join("README.md"), "hello\n").unwrap();
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "first"]);
    git(root, &["checkout", "-q", "-b", "hyperloop/task-007"]);
    std::fs::write(root.join("ok"), "").unwrap();
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "the task's work"]);
    git(root, &["checkout", "-q", "main"]);
    let gates = CommandGates::new(root);
    Repo { dir, gates }
}

fn sh(script: &str, timeout: Duration) -> GateKind {
    GateKind::Command {
        run: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        timeout,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Repo {
    fn at(&self, rev: &str) -> GateTarget {
        GateTarget {
            task: TASK,
            branch: Some(rev.to_owned()),
            commit: Some(git(self.dir.path(), &["rev-parse", rev])),
            pr: None,
        }
    }

    async fn evaluate(&self, kind: GateKind, target: GateTarget) -> Result<GateStatus, GateError> {
        let query = GateQuery {
            gate: "tests-green".to_owned(),
            kind,
            target,
        };
        self.gates.evaluate(query).await
    }
}

impl Harness for Repo {
    type Evaluator = CommandGates;

    fn evaluator(&self) -> &CommandGates {
        &self.gates
    }

    fn target(&self) -> GateTarget {
        self.at("hyperloop/task-007")
    }

    fn passing(&self, _: &str) -> GateKind {
        sh("test -f ok", MINUTE)
    }

    fn failing(&self, _: &str) -> GateKind {
        sh("echo 'missing: nope' >&2; test -f nope", MINUTE)
    }

    fn unknown(&self) -> GateTarget {
        GateTarget {
            commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
            ..self.target()
        }
    }

    fn residue(&self) -> Vec<String> {
        git(self.dir.path(), &["worktree", "list", "--porcelain"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

hyperloop_coordinator::gate_contract_tests!(repo);

fn finding(status: Result<GateStatus, GateError>) -> String {
    match status {
        Ok(GateStatus::Failed { findings }) => {
            assert_eq!(findings.len(), 1, "{findings:?}");
            findings[0].clone()
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_gate_clears_on_a_commit_with_the_file_and_fails_without_it_quoting_its_output() {
    let r = repo();
    let gate = sh("echo looking for ok; test -f ok", MINUTE);
    assert_eq!(
        r.evaluate(gate.clone(), r.at("hyperloop/task-007")).await,
        Ok(GateStatus::Cleared)
    );
    let failed = finding(r.evaluate(gate, r.at("main")).await);
    assert_eq!(
        failed,
        "gate `tests-green`: `sh -c 'echo looking for ok; test -f ok'` exited with 1; the end \
         of its output:\nlooking for ok"
    );
}

#[tokio::test]
async fn a_branch_alone_is_enough_and_a_missing_one_names_the_task() {
    let r = repo();
    let branch = |name: &str| GateTarget {
        task: TASK,
        branch: Some(name.to_owned()),
        commit: None,
        pr: None,
    };
    let gate = sh("test -f ok", MINUTE);
    assert_eq!(
        r.evaluate(gate.clone(), branch("hyperloop/task-007")).await,
        Ok(GateStatus::Cleared)
    );
    for missing in ["hyperloop/task-999", "--output=/tmp/x"] {
        let err = r.evaluate(gate.clone(), branch(missing)).await.unwrap_err();
        assert!(matches!(err, GateError::UnknownRevision { .. }), "{err:?}");
        assert!(err.to_string().contains("task-007"), "{err}");
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn only_the_long_end_of_the_output_is_quoted() {
    let r = repo();
    let gate = sh(
        "yes 'a long line of output' | head -c 100000; echo; echo THE END; exit 3",
        MINUTE,
    );
    let failed = finding(r.evaluate(gate, r.target()).await);
    assert!(
        failed.contains("exited with 3; the end of its output:\n…"),
        "{failed}"
    );
    assert!(failed.ends_with("THE END"), "{failed}");
    assert!(failed.len() < 4096 + 200, "{} bytes", failed.len());
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_everything_it_started() {
    let r = repo();
    let pids = tempfile::tempdir().unwrap();
    let pidfile = pids.path().join("background");
    // A background child of its own, which must die with the group.
    let script = format!(
        "sleep 30 & echo $! > {}; echo started; sleep 30",
        pidfile.display()
    );
    let before = r.residue();
    let started = Instant::now();
    let failed = finding(
        r.evaluate(sh(&script, Duration::from_secs(1)), r.target())
            .await,
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert!(
        failed.starts_with("gate `tests-green`: `sh -c ")
            && failed.contains("did not finish within its timeout of 1s and was killed")
            && failed.ends_with("output:\nstarted"),
        "{failed}"
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(
        !alive(pid.trim()),
        "the background sleep {pid} outlived the gate"
    );
    assert_eq!(
        r.residue(),
        before,
        "the worktree is removed after a timeout"
    );
}

/// Whether a process runs (a zombie waiting for its reaper does not count).
fn alive(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 2..].chars().next());
        match state {
            None | Some('Z' | 'X') => return false,
            Some(_) if Instant::now() > deadline => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[tokio::test]
async fn the_command_sees_only_its_explicit_environment() {
    let r = repo();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("env");
    let target = r.target();
    let gate = sh(&format!("env > {}", file.display()), MINUTE);
    assert_eq!(
        r.evaluate(gate, target.clone()).await,
        Ok(GateStatus::Cleared)
    );
    let env = std::fs::read_to_string(&file).unwrap();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    names.sort_unstable();
    // `sh` itself adds PWD (and some shells SHLVL and `_`); nothing else may come in.
    let allowed = [
        "HOME",
        "HYPERLOOP_BRANCH",
        "HYPERLOOP_COMMIT",
        "HYPERLOOP_GATE",
        "HYPERLOOP_TASK",
        "LANG",
        "OLDPWD",
        "PATH",
        "PWD",
        "SHLVL",
        "TMPDIR",
        "_",
    ];
    assert!(names.iter().all(|n| allowed.contains(n)), "{names:?}");
    let commit = target.commit.unwrap();
    for line in [
        "HYPERLOOP_TASK=task-007".to_owned(),
        "HYPERLOOP_GATE=tests-green".to_owned(),
        "HYPERLOOP_BRANCH=hyperloop/task-007".to_owned(),
        format!("HYPERLOOP_COMMIT={commit}"),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in:\n{env}");
    }
}

#[tokio::test]
async fn a_passed_command_is_not_run_again_on_the_same_commit() {
    let r = repo();
    let out = tempfile::tempdir().unwrap();
    let runs = out.path().join("runs");
    let gate = sh(&format!("echo run >> {}", runs.display()), MINUTE);
    for _ in 0..2 {
        assert_eq!(
            r.evaluate(gate.clone(), r.target()).await,
            Ok(GateStatus::Cleared)
        );
    }
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    // A failure is not remembered: the next evaluation runs again.
    let fails = sh(&format!("echo run >> {}; exit 1", runs.display()), MINUTE);
    for _ in 0..2 {
        finding(r.evaluate(fails.clone(), r.target()).await);
    }
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\nrun\n");
}

#[tokio::test]
async fn a_program_that_does_not_exist_is_an_error_naming_it() {
    let r = repo();
    let gate = GateKind::Command {
        run: vec!["no-such-program-hyperloop".to_owned()],
        timeout: MINUTE,
    };
    let err = r.evaluate(gate, r.target()).await.unwrap_err();
    assert!(matches!(err, GateError::Spawn { .. }), "{err:?}");
    assert!(
        err.to_string().contains("`no-such-program-hyperloop`"),
        "{err}"
    );
}

#[tokio::test]
async fn other_gate_kinds_wait_for_an_operator() {
    let r = repo();
    for kind in [
        GateKind::Label {
            label: "lgtm".to_owned(),
        },
        GateKind::PrApproval,
        GateKind::CiStatus,
    ] {
        match r.evaluate(kind.clone(), r.target()).await {
            Ok(GateStatus::Waiting { reasons }) => assert_eq!(
                reasons,
                [format!(
                    "gate `tests-green` (type {}) is decided on GitHub, which this coordinator \
                     does not use: run `hyperloopctl approve task-007` to let it pass",
                    kind.type_name()
                )]
            ),
            other => panic!("{kind:?}: {other:?}"),
        }
    }
}
