//! A `command` gate on a single host: the coordinator runs it from a checkout of the task's
//! branch. Red sends the task back to the implementer with the command's output as the
//! finding; green lets it land. Without `--allow-command-gates` the run is refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use hyperloop_tests::exits_ok;
use hyperloop_tests::repo::{
    TestRepo, coordinator_bin, process_overlay, scripted_agent, test_home,
};

const LIMIT: Duration = Duration::from_secs(120);

/// Red on its first run, green after (it counts its runs in a file outside the checkout).
const SUITE: &str = "n=$(cat \"$COUNT\" 2>/dev/null || echo 0); echo $((n+1)) > \"$COUNT\"; \
                     test -n \"$HYPERLOOP_BRANCH\" || exit 3; \
                     [ \"$n\" -ge 1 ] || { echo \"suite red: 1 failure in $HYPERLOOP_GATE\"; exit 1; }";

fn repo(count_file: &str) -> TestRepo {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        scripted_agent().display()
    );
    // The gate's environment is explicit: the counter's path is written into the command.
    let suite = SUITE.replace("$COUNT", count_file).replace('"', "\\\"");
    let process = format!(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n\
         \x20 - gate: suite\n- action: merge-pr\ngates:\n  suite:\n    type: command\n\
         \x20   run: [\"sh\", \"-c\", \"{suite}\"]\n    timeout: 20s\n"
    );
    TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config),
        (
            ".hyperloop/agents/kustomization.yaml",
            &process_overlay(&process),
        ),
    ])
}

fn coordinator(repo: &TestRepo, extra: &[&str]) -> Command {
    let mut c = Command::new(coordinator_bin());
    c.args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

#[test]
fn a_red_command_gate_sends_the_task_back_with_its_output_and_a_green_one_lets_it_land() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let count = scratch.path().join("runs");
    let repo = repo(&count.display().to_string());
    let child = coordinator(&repo, &["--allow-command-gates"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    exits_ok(child, LIMIT);

    let runs: u32 = std::fs::read_to_string(&count)
        .expect("the gate ran")
        .trim()
        .parse()
        .expect("a count");
    let names: Vec<String> = repo
        .events()
        .iter()
        .map(|e| format!("{} {}", e["event"], e["reason"]))
        .collect();
    assert_eq!(runs, 2, "red once, then green once: {names:#?}");
    assert!(
        repo.log("main").contains("Task-Ref: task-001"),
        "the task landed after the gate went green:\n{}",
        repo.log("main")
    );
    let reviews = repo.state_texts("reviews/").join("\n");
    assert!(
        reviews.contains("suite red: 1 failure in suite") && reviews.contains("gate:suite"),
        "the red run's output is the finding of the gate's review:\n{reviews}"
    );
    let events = repo.events();
    let cleared_by_command = events
        .iter()
        .any(|e| e["event"] == "gate_cleared" && e["by"] == "command");
    assert!(cleared_by_command, "a gate_cleared event by the command");
    let worktrees = hyperloop_tests::repo::git(&repo.checkout, &["worktree", "list"]);
    assert_eq!(
        worktrees.lines().count(),
        1,
        "no gate checkout left behind:\n{worktrees}"
    );
}

#[test]
fn without_allow_command_gates_a_process_with_a_command_gate_is_refused_naming_the_flag() {
    let repo = repo("/nonexistent/runs");
    let out = coordinator(&repo, &[])
        .stderr(Stdio::piped())
        .output()
        .expect("coordinator runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gate `suite` is a command gate")
            && stderr.contains("--allow-command-gates"),
        "the refusal names the gate and the flag:\n{stderr}"
    );
}
