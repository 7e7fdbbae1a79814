//! Locked doors: what an outsider or a mistake cannot do to a running repository.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, test_home};
use hyperloop_tests::{alive, logged_pids, wait_with_limit};

#[test]
fn a_coordinator_whose_listen_address_is_busy_exits_2_naming_the_address_and_the_flag() {
    // Another repository's coordinator (here: any process) holds the port.
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = other.local_addr().expect("address").to_string();
    let repo = TestRepo::new(&[("specs/a.md", "# A\n\nA works.\n")]);
    let out = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", &addr])
        .env("HOME", test_home(repo.dir.path()))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("coordinator runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--listen"),
        "the error names the address and the flag:\n{stderr}"
    );
    let commits = hyperloop_tests::repo::git(&repo.checkout, &["rev-list", "--count", "main"]);
    assert_eq!(commits.trim(), "1", "nothing ran: no work landed");
}

#[test]
fn an_unusable_spec_is_given_up_alone_and_every_other_spec_is_reconciled() {
    let config = scripted_config("max_spec_bytes: 1024\n", "");
    let big = format!(
        "# Big\n\n{}\n",
        "The repository records big work. ".repeat(64)
    );
    let repo = TestRepo::new(&[
        (".hyperloop.yaml", &config),
        (
            "specs/good.md",
            "# Good\n\nThe repository records work for Good.\n",
        ),
        ("specs/big.md", &big),
    ]);
    // Latin-1 bytes: not UTF-8. Before, this one file stopped intake for every spec.
    std::fs::write(
        repo.checkout.join("specs/latin1.md"),
        b"# Caf\xe9\n\nNot UTF-8.\n",
    )
    .expect("write");
    hyperloop_tests::repo::git(&repo.checkout, &["add", "-A"]);
    hyperloop_tests::repo::git(&repo.checkout, &["commit", "-q", "-m", "A Latin-1 spec"]);
    let (code, stderr) = wait_with_limit(start(&repo, &[]), LIMIT);
    assert_eq!(code, Some(4), "the given-up specs are named:\n{stderr}");
    assert!(
        stderr.contains("specs/latin1.md cannot be used: it is not UTF-8 text"),
        "{stderr}"
    );
    assert!(
        stderr.contains("specs/big.md cannot be used: it is") && stderr.contains("max_spec_bytes"),
        "{stderr}"
    );
    let log = repo.log("main");
    assert!(
        log.contains("Spec-Ref: specs/good.md"),
        "the good spec was implemented and landed:\n{log}"
    );
}

/// How long a whole `run` of these small repositories may take.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `.hyperloop.yaml` for one local worker running the scripted agent, with `extra` settings
/// and `passthrough` (a variable name, or empty) handed to the agent.
fn scripted_config(extra: &str, passthrough: &str) -> String {
    let mut config = format!(
        "max_workers: 1\npoll_interval: 1s\n{extra}\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        hyperloop_tests::repo::scripted_agent().display()
    );
    if !passthrough.is_empty() {
        config.push_str(&format!("  env_passthrough: [{passthrough}]\n"));
    }
    config
}

/// `run` on `repo` on any free port, with `env` set and stderr piped.
fn start(repo: &TestRepo, env: &[(&str, &str)]) -> std::process::Child {
    run_command(repo)
        .envs(env.iter().copied())
        .spawn()
        .expect("coordinator starts")
}

/// The `run` command [`start`] spawns, for tests that add to its environment.
fn run_command(repo: &TestRepo) -> Command {
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_base_branch_rewritten_while_running_stops_the_run_before_anything_is_built_on_it() {
    let config = scripted_config("", "SCRIPTED_DELAY");
    let repo = TestRepo::new(&[
        (".hyperloop.yaml", &config),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ]);
    let git = |args: &[&str]| hyperloop_tests::repo::git(&repo.checkout, args);
    let before = git(&["rev-parse", "main"]).trim().to_owned();
    let child = start(&repo, &[("SCRIPTED_DELAY", "2")]);
    // While the implementer works, something outside hyperloop (a hostile agent with the
    // user's rights, a mistaken `reset --hard` + push) replaces main with unrelated history.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !repo
        .events()
        .iter()
        .any(|e| e["event"] == "step_dispatched" && e["role"] == "implementer")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the implementer never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let tree = git(&["mktree"]);
    let evil = git(&["commit-tree", tree.trim(), "-m", "unrelated history"]);
    git(&["update-ref", "refs/heads/main", evil.trim()]);

    let (code, stderr) = wait_with_limit(child, LIMIT);
    assert_eq!(code, Some(5), "{stderr}");
    let restore = format!("git update-ref refs/heads/main {before}");
    assert!(
        stderr.contains("was rewritten outside hyperloop") && stderr.contains(&restore),
        "the operator is told what happened and how to restore it:\n{stderr}"
    );
    assert_eq!(
        git(&["rev-parse", "main"]).trim(),
        evil.trim(),
        "nothing landed on it"
    );
    let events = repo.events();
    let dropped: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "task_cancelled" || e["event"] == "spec_changed")
        .collect();
    assert!(dropped.is_empty(), "no work was cancelled: {dropped:?}");
    assert!(
        !events.iter().any(|e| e["event"] == "merged"),
        "nothing landed while main was foreign"
    );

    // The operator restores main; the next run carries on and lands on the real history.
    git(&["update-ref", "refs/heads/main", &before]);
    let (code, stderr) = wait_with_limit(start(&repo, &[("SCRIPTED_DELAY", "2")]), LIMIT);
    assert_eq!(code, Some(0), "{stderr}");
    let log = repo.log("main");
    assert!(
        log.contains("Spec-Ref: specs/a.md") && log.contains("Initial specs"),
        "the work landed on the original history:\n{log}"
    );
}

#[test]
fn an_unconfined_agent_that_force_pushes_over_origins_main_is_caught_and_nothing_is_pushed_over_it()
{
    // Defence in depth: with Landlock off the push goes through, and the coordinator still
    // refuses to build on it.
    let config = scripted_config("", "SCRIPTED_MODE");
    let repo = TestRepo::new(&[
        (".hyperloop.yaml", &config),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ]);
    let git = |dir: &std::path::Path, args: &[&str]| hyperloop_tests::repo::git(dir, args);
    let run = |mode: &str| {
        let env = [("SCRIPTED_MODE", mode), ("HYPERLOOP_NO_CONFINE", "true")];
        wait_with_limit(start(&repo, &env), LIMIT)
    };
    let (code, stderr) = run("rewrite-origin");
    let origin_main = git(&repo.origin, &["log", "--format=%s", "main"]);
    assert_eq!(
        origin_main.trim(),
        "history replaced by an agent",
        "the attack really replaced origin's main, and nothing was pushed over it"
    );
    assert_eq!(code, Some(5), "{stderr}");
    let local = git(&repo.checkout, &["rev-parse", "main"]);
    let restore = format!("git push --force origin {}:refs/heads/main", local.trim());
    assert!(
        stderr.contains("was replaced outside hyperloop") && stderr.contains(&restore),
        "the operator is told what happened and how to restore it:\n{stderr}"
    );
    assert!(
        repo.log("main").contains("Spec-Ref: specs/a.md"),
        "the work is landed locally, not lost"
    );

    // The operator restores origin as told; the next run has nothing left to do.
    git(
        &repo.checkout,
        &["push", "-q", "--force", "origin", "main:refs/heads/main"],
    );
    let (code, stderr) = run("normal");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        git(&repo.origin, &["rev-parse", "main"]),
        git(&repo.checkout, &["rev-parse", "main"])
    );
}

/// The `attack-…` lines the scripted agent's attack mode logged.
fn attack_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("attack-"))
        .map(str::to_owned)
        .collect()
}

/// The five attacks of the scripted agent's `attack` mode.
const ATTACKS: usize = 5;

fn attack_repo() -> (TestRepo, std::path::PathBuf) {
    let repo = TestRepo::new(&[
        (
            ".hyperloop.yaml",
            &scripted_config("", "SCRIPTED_MODE, SCRIPTED_LOG"),
        ),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ]);
    std::fs::write(
        test_home(repo.dir.path()).join(".git-credentials"),
        "https://x-access-token:ghp_secret_for_tests@github.com\n",
    )
    .unwrap();
    let log = repo.dir.path().join("steps.log");
    (repo, log)
}

#[test]
fn a_confined_agent_can_move_neither_main_nor_the_state_ref_nor_read_credentials_and_its_work_lands()
 {
    // The same attacks succeed without confinement: they are real.
    let (control, control_log) = attack_repo();
    let mut child = run_command(&control)
        .envs(hyperloop_tests::scripted_log(&control_log))
        .env("SCRIPTED_MODE", "attack")
        .env("HYPERLOOP_NO_CONFINE", "true")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while attack_lines(&control_log).len() < ATTACKS && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let unconfined = attack_lines(&control_log);
    assert_eq!(unconfined.len(), ATTACKS, "{unconfined:?}");
    assert!(
        unconfined.iter().all(|l| l.starts_with("attack-succeeded")),
        "without Landlock every attack works: {unconfined:#?}"
    );

    let (repo, log) = attack_repo();
    let git = |dir: &std::path::Path, args: &[&str]| hyperloop_tests::repo::git(dir, args);
    let child = run_command(&repo)
        .envs(hyperloop_tests::scripted_log(&log))
        .env("SCRIPTED_MODE", "attack")
        .spawn()
        .unwrap();
    let (code, stderr) = wait_with_limit(child, LIMIT);
    // Every implementer session of the run attacks.
    let confined = attack_lines(&log);
    assert!(
        !confined.is_empty() && confined.len().is_multiple_of(ATTACKS),
        "{confined:?}\n{stderr}"
    );
    assert!(
        confined.iter().all(|l| l.starts_with("attack-refused")),
        "a confined agent gets nowhere: {confined:#?}"
    );
    assert!(
        stderr.contains("agents are confined with Landlock"),
        "the worker says how agents are confined:\n{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(repo.log("main").contains("Spec-Ref: specs/a.md"));
    assert_eq!(
        git(&repo.origin, &["rev-parse", "main"]),
        git(&repo.checkout, &["rev-parse", "main"]),
        "origin's main is the landed work, not the agent's"
    );
    let mirror_config = std::fs::read_to_string(
        repo.checkout
            .join(".git/hyperloop/workers/local-0/mirror/config"),
    )
    .unwrap();
    assert!(!mirror_config.contains("hooksPath"), "{mirror_config}");
}

/// Waits up to `limit` for every pid to be gone; returns those still alive.
fn survivors(pids: &[i32], limit: std::time::Duration) -> Vec<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn kill_all(pids: &[i32]) {
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

#[test]
fn an_agent_and_the_daemon_it_started_with_setsid_die_when_the_coordinator_is_killed_with_sigkill()
{
    let repo = TestRepo::new(&[
        (
            ".hyperloop.yaml",
            &scripted_config("", "SCRIPTED_MODE, SCRIPTED_LOG"),
        ),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ]);
    let log = repo.dir.path().join("steps.log");
    let mut child = run_command(&repo)
        .envs(hyperloop_tests::scripted_log(&log))
        .env("SCRIPTED_MODE", "daemon")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while logged_pids(&log).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pids = logged_pids(&log);
    assert_eq!(pids.len(), 2, "the agent and its daemon started: {pids:?}");
    assert!(pids.iter().all(|p| alive(*p)));
    child.kill().unwrap(); // SIGKILL: nothing of the coordinator runs after this
    child.wait().unwrap();
    let left = survivors(&pids, std::time::Duration::from_secs(5));
    kill_all(&left);
    assert!(
        left.is_empty(),
        "still running after the coordinator died: {left:?}"
    );
}

#[test]
fn a_daemon_an_agent_started_with_setsid_dies_with_its_step() {
    let repo = TestRepo::new(&[
        (
            ".hyperloop.yaml",
            &scripted_config("", "SCRIPTED_MODE, SCRIPTED_LOG"),
        ),
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
    ]);
    let log = repo.dir.path().join("steps.log");
    let child = run_command(&repo)
        .envs(hyperloop_tests::scripted_log(&log))
        .env("SCRIPTED_MODE", "daemon-pass")
        .spawn()
        .unwrap();
    let (code, stderr) = wait_with_limit(child, LIMIT);
    assert_eq!(code, Some(0), "{stderr}");
    let pids = logged_pids(&log);
    assert!(!pids.is_empty(), "the agent started a daemon");
    let left = survivors(&pids, std::time::Duration::from_secs(2));
    kill_all(&left);
    assert!(left.is_empty(), "daemons outlived their step: {left:?}");
}
