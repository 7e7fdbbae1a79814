//! A local pipeline with a gate: the task waits there (holding no worker) until an operator
//! runs `hyperloopctl approve`, whose comment becomes a review; then it lands. The
//! `mark-pr-ready` action before the gate passes without landing anything (no PR locally).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::exits_ok;
use hyperloop_tests::repo::{
    TestRepo, coordinator_bin, process_overlay, scripted_agent, test_home,
};

const LIMIT: Duration = Duration::from_secs(120);

/// `hyperloopctl ARGS` standing in `checkout`: it finds the repository's coordinator itself.
fn hyperloopctl(checkout: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(coordinator_bin().with_file_name("hyperloopctl"))
        .args(args)
        .current_dir(checkout)
        .env_remove("HYPERLOOP_SERVER")
        .env_remove("HYPERLOOP_PATH")
        .output()
        .expect("hyperloopctl runs")
}

#[test]
fn a_gate_waits_for_hyperloopctl_approve_and_the_comment_becomes_a_review() {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\ndashboard:\n  enabled: false\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        scripted_agent().display()
    );
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config),
        (
            ".hyperloop/agents/kustomization.yaml",
            &process_overlay(
                "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n\
                 - action: ready\n- gate: lgtm\n- action: merge-pr\nactions:\n  ready:\n\
                 \x20   type: mark-pr-ready\ngates:\n  lgtm:\n    type: label\n",
            ),
        ),
    ]);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let coordinator = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");

    // Approving before the task reaches the gate is refused (exit 2, saying why); keep
    // trying until it waits there.
    let started = Instant::now();
    let mut refusals = Vec::new();
    loop {
        let out = hyperloopctl(
            &repo.checkout,
            &["approve", "task-001", "--comment", "ship it, A-OK-5Z"],
        );
        if out.status.success() {
            break;
        }
        refusals.push((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
        assert!(
            started.elapsed() < LIMIT,
            "the task never reached its gate; last answers: {:?}",
            &refusals[refusals.len().saturating_sub(3)..]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        refusals
            .iter()
            .any(|(code, err)| *code == Some(2) && err.contains("not waiting at a gate")),
        "an early approve should be refused, naming why: {:?}",
        &refusals[..refusals.len().min(3)]
    );

    exits_ok(coordinator, LIMIT);
    assert!(
        repo.files("main").contains(&"work/task-001.txt".to_owned()),
        "{:?}",
        repo.files("main")
    );
    let seq_of = |name: &str| {
        repo.events()
            .iter()
            .find(|e| e["event"] == name)
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {name} event"))
    };
    assert!(
        seq_of("merged") > seq_of("gate_cleared"),
        "the work landed before the gate was approved"
    );
    let reviews = repo.state_texts("reviews/").join("\n");
    assert!(
        reviews.contains("A-OK-5Z"),
        "the comment is not a review: {reviews}"
    );
}

#[test]
fn without_auto_merge_a_local_merge_waits_for_hyperloopctl_approve() {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\ndashboard:\n  enabled: false\n\
         merge:\n  auto_merge: false\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        scripted_agent().display()
    );
    // The default pipeline: implement, verify, merge-pr; no gate.
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config),
    ]);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let coordinator = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");

    // Wait until the merge is announced as waiting for approval.
    let started = Instant::now();
    while !repo.events().iter().any(|e| {
        e["event"] == "gate_checked"
            && e["gate"]
                .as_str()
                .is_some_and(|g| g.contains("hyperloopctl approve task-001"))
    }) {
        assert!(
            started.elapsed() < LIMIT,
            "the merge never waited: {:?}",
            repo.events()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing lands while it waits.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !repo.files("main").contains(&"work/task-001.txt".to_owned()),
        "merged without approval"
    );
    let out = hyperloopctl(
        &repo.checkout,
        &["approve", "task-001", "--comment", "merge it, M-9"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    exits_ok(coordinator, LIMIT);
    assert!(
        repo.files("main").contains(&"work/task-001.txt".to_owned()),
        "{:?}",
        repo.files("main")
    );
    let reviews = repo.state_texts("reviews/").join("\n");
    assert!(
        reviews.contains("Approved the merge (`merge-pr`) by an operator: merge it, M-9"),
        "{reviews}"
    );
}
