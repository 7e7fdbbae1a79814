//! A first run on a fresh machine, end to end with the real coordinator binary and the
//! scripted agent: agents commit without any git identity in HOME, and an implementer that
//! passes without committing fails its round instead of reaching the verifier.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, scripted_agent};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> TestRepo {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\nmax_task_rounds: 3\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 20s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE, SCRIPTED_TAG]\n\
         \x20 git_identity: {{name: Fresh Bot, email: fresh-bot@example.invalid}}\n",
        scripted_agent().display()
    );
    TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config),
    ])
}

/// Runs the coordinator to its end with `home` as HOME (no .gitconfig) and agents in `mode`.
fn run(repo: &TestRepo, home: &Path, log: &Path, mode: &str) -> Output {
    std::fs::create_dir_all(home).expect("home");
    let mut child = Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .envs(hyperloop_tests::scripted_log(log))
        .env("SCRIPTED_MODE", mode)
        .env("SCRIPTED_TAG", "fresh")
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    // Read stderr concurrently so a chatty run never blocks on a full pipe.
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "coordinator did not finish within {RUN_TIMEOUT:?}:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: Vec::new(),
        stderr: reader.join().unwrap_or_default().into_bytes(),
    }
}

#[test]
fn agents_commit_and_their_work_lands_when_home_has_no_git_identity() {
    let repo = repo();
    let home = repo.dir.path().join("fresh-home");
    let log = repo.dir.path().join("steps.log");
    let out = run(&repo, &home, &log, "normal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!home.join(".gitconfig").exists());
    assert!(
        repo.files("main").contains(&"work/task-001.txt".to_owned()),
        "{stderr}"
    );
    // The agent's own commit (logged by the scripted agent) carries the configured identity.
    let steps = std::fs::read_to_string(&log).unwrap();
    let sha = steps
        .lines()
        .find_map(|l| l.strip_prefix("committed task-001 "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no commit logged:\n{steps}"));
    let author =
        hyperloop_tests::repo::git(&repo.checkout, &["log", "-1", "--format=%an <%ae>", sha]);
    assert_eq!(author.trim(), "Fresh Bot <fresh-bot@example.invalid>");
}

#[test]
fn an_implementer_that_passes_without_committing_fails_its_round_and_the_next_round_lands() {
    let repo = repo();
    let home = repo.dir.path().join("fresh-home");
    let log = repo.dir.path().join("steps.log");
    let out = run(&repo, &home, &log, "idle");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let steps = std::fs::read_to_string(&log).unwrap();
    // Round 0's empty pass never reached the verifier; round 1 committed and landed.
    assert!(!steps.contains("verifier task-001 0\n"), "{steps}");
    assert!(steps.contains("implementer task-001 1\n"), "{steps}");
    assert!(repo.files("main").contains(&"work/task-001.txt".to_owned()));
    let events = repo.events();
    assert!(
        events.iter().any(|e| e["event"] == "task_looped_back"),
        "{events:?}"
    );
}

#[test]
fn a_master_repository_lands_on_master_and_a_spec_left_uncommitted_is_named_at_start_and_not_worked_on()
 {
    let repo = repo();
    hyperloop_tests::repo::git(&repo.checkout, &["branch", "-q", "-m", "main", "master"]);
    std::fs::write(
        repo.checkout.join("specs/c.md"),
        "# C\n\nNot committed yet.\n",
    )
    .unwrap();

    // The dry run and the run agree: only the committed spec is worked on.
    let dry = Command::new(coordinator_bin())
        .args(["run", "--dry-run", "--path"])
        .arg(&repo.checkout)
        .env_remove("HYPERLOOP_PATH")
        .output()
        .expect("dry run");
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{plan}");
    assert!(
        plan.contains("## Specs (1 under specs/ on master)\n\n- specs/b.md\n"),
        "{plan}"
    );

    let home = repo.dir.path().join("fresh-home");
    let log = repo.dir.path().join("steps.log");
    let out = run(&repo, &home, &log, "normal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("target.base_branch is `master`, the branch this checkout is on"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "1 spec file(s) in the working tree are not committed on `master`, and hyperloop \
             works only on committed specs: specs/c.md (new); commit them on `master` to have \
             them worked on: git add specs/c.md && git commit -m 'Update specs'"
        ),
        "{stderr}"
    );
    assert!(
        repo.files("master")
            .contains(&"work/task-001.txt".to_owned())
    );
    let asked: Vec<serde_json::Value> = repo
        .events()
        .iter()
        .filter(|e| e["event"] == "intake_run")
        .flat_map(|e| e["changed_specs"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(asked, [serde_json::json!("specs/b.md")]);
}
