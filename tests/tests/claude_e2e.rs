//! The REAL Claude Code CLI as hyperloop's implementer, end to end: the real
//! `hyperloop-coordinator` binary with in-process workers runs intake (the scripted `command`
//! PM), then the implementer step through the `claude` runtime against the scripted model
//! server (`hyperloop_tests::model_server`), then a passing `command` verifier and the local
//! merge into `main`. The CLI really writes the file, commits it and writes the result file.
//!
//! The CLI is installed by `tests/setup`; without it this test fails and says so.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::model_server::{ModelServer, ResultFront, Script, claude_bin};
use hyperloop_tests::repo::{TestRepo, coordinator_bin, git, scripted_agent};

const SPEC_B: &str = "# B\n\nThe repository records work for B. MARKER-B-4C21\n";
/// The model server path prefix of the implementer's `ANTHROPIC_BASE_URL`.
const AGENT: &str = "impl";
/// What the scripted model writes (via the CLI's Write tool, relative to the worktree).
const B_TXT: &str = "B is built, by the Claude Code CLI.\n";
/// Bounds one agent step; a scripted claude session takes about a second.
const STEP_TIMEOUT: &str = "60s";
/// Bounds the whole coordinator run: a hang fails the test instead of CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A `command` verifier that passes every step (the scripted agent's verifier fails
/// task-001 in round 0, which would ask the scripted model for a second session).
const PASSING_VERIFIER: &str = r#"#!/bin/sh
set -eu
cat > /dev/null
printf -- '---\ntask_id: %s\nround: %s\nrole: %s\nverdict: pass\n---\nLooks right.\n' \
  "$HYPERLOOP_TASK_ID" "$HYPERLOOP_ROUND" "$HYPERLOOP_ROLE" > "$HYPERLOOP_RESULT_FILE"
"#;

fn config(verifier: &Path) -> String {
    format!(
        "max_workers: 1\npoll_interval: 1s\nmax_task_rounds: 2\n\
         dashboard:\n  enabled: false\n  events_limit: 100000\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{scripted}\"]\n  timeout: {STEP_TIMEOUT}\n\
         \x20 env_passthrough: [IS_SANDBOX, TMPDIR, XDG_RUNTIME_DIR]\n\
         \x20 roles:\n\
         \x20   implementer:\n      runtime: claude\n\
         \x20   verifier:\n      command: [\"sh\", \"{verifier}\"]\n",
        scripted = scripted_agent().display(),
        verifier = verifier.display(),
    )
}

/// The coordinator with the offline environment the claude process needs: everything the
/// agent allow-list passes by default (`HOME`, `PATH`, `ANTHROPIC_*`, `CLAUDE_CODE_*`,
/// `CLAUDE_CONFIG_DIR`) plus `env_passthrough` (`IS_SANDBOX`, `TMPDIR`, `XDG_RUNTIME_DIR`).
/// Starts from an empty environment so nothing of the host's (a real API key, a real
/// `~/.claude`) can leak in.
fn coordinator(repo: &TestRepo, claude: &Path, base_url: &str) -> Command {
    let state = repo.dir.path().join("claude-state");
    let dir = |name: &str| -> PathBuf {
        let d = state.join(name);
        std::fs::create_dir_all(&d).expect("mkdir claude state");
        d
    };
    let home = dir("home");
    // HOME is a temp dir, so git needs an identity there for the agent's commit and the
    // coordinator's merge.
    std::fs::write(
        home.join(".gitconfig"),
        "[user]\n\tname = Claude E2E\n\temail = claude-e2e@example.invalid\n",
    )
    .expect("write .gitconfig");
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", dir("cache"))
        .env("TMPDIR", dir("tmp"))
        .env("XDG_RUNTIME_DIR", dir("run"))
        .env("CLAUDE_CONFIG_DIR", dir("config"))
        .env("CLAUDE_CODE_TMPDIR", dir("tmp"))
        .env("HYPERLOOP_CLAUDE_BIN", claude)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", "test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("IS_SANDBOX", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs the coordinator to its end, killing it and failing the test if it exceeds
/// [`RUN_TIMEOUT`]. Returns its output and how long it took.
fn run_bounded(mut cmd: Command) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    // Drain the pipes while waiting, so a chatty run cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "coordinator did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
    };
    (
        Output {
            status,
            stdout,
            stderr,
        },
        elapsed,
    )
}

#[test]
fn claude_implementer_writes_commits_and_lands_on_main() {
    // Fail (not skip) when the CLI is missing: the message says how to install it.
    let claude = claude_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let server = ModelServer::start().expect("start the model server");
    server.set_script(
        AGENT,
        Script::new()
            .write_file("b.txt", B_TXT)
            .bash(
                "git add -A && git commit -q -m \"Build B\" -m \"Spec-Ref: $HYPERLOOP_SPEC_REF\" \
                 -m \"Task-Ref: task-001\"",
            )
            .write_result(
                &ResultFront::new("task-001", 0, "implementer", "pass"),
                "Built B.\n\n- b.txt records the work\n",
            )
            .done("Done: B is built and committed."),
    );

    let tools = tempfile::tempdir().expect("temp dir");
    let verifier = tools.path().join("passing-verifier.sh");
    std::fs::write(&verifier, PASSING_VERIFIER).expect("write the verifier");
    let repo = TestRepo::new(&[
        ("specs/b.md", SPEC_B),
        (".hyperloop.yaml", &config(&verifier)),
    ]);

    let (out, elapsed) = run_bounded(coordinator(&repo, &claude, &server.base_url(AGENT)));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let context = format!(
        "coordinator stderr:\n{stderr}\n--- model server:\n{}",
        server.dump()
    );
    assert_eq!(out.status.code(), Some(0), "{context}");
    eprintln!("coordinator converged in {elapsed:?}");

    // The journal: the implementer's result was reaped as a pass, and the task merged.
    let events = repo.events();
    // The reviews hold each failed step's detail (the CLI's stderr, say).
    let dump = || {
        let mut text: Vec<String> = events.iter().map(ToString::to_string).collect();
        text.push("--- reviews:".into());
        text.extend(repo.state_texts("reviews/"));
        format!("{}\n--- model server:\n{}", text.join("\n"), server.dump())
    };
    assert!(
        events.iter().any(|e| e["event"] == "result_reaped"
            && e["task"] == "task-001"
            && e["role"] == "implementer"
            && e["round"] == 0
            && e["verdict"] == "pass"),
        "no passing implementer result_reaped:\n{}",
        dump()
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "result_reaped" && e["verdict"] == "fail"),
        "a step failed:\n{}",
        dump()
    );
    assert_eq!(
        events.iter().filter(|e| e["event"] == "merged").count(),
        1,
        "one merge:\n{}",
        dump()
    );
    let halted = events
        .iter()
        .rev()
        .find(|e| e["event"] == "coordinator_halted")
        .unwrap_or_else(|| panic!("no coordinator_halted:\n{}", dump()));
    assert_eq!(
        halted["reason"],
        "converged: 1 task(s) complete, 0 failed",
        "{}",
        dump()
    );

    // One scripted session of four turns, every request answered from the script.
    assert!(server.problems().is_empty(), "{context}");
    let requests = server.messages(AGENT);
    assert_eq!(requests.len(), 4, "{context}");
    // The CLI got hyperloop's composed implementer prompt: the spec text and the task.
    let prompt = requests[0].user_text();
    assert!(
        prompt.contains("MARKER-B-4C21") && prompt.contains("task-001"),
        "the implementer prompt lacks the spec text or the task id:\n{prompt}"
    );
    // Every tool call worked (the commit found its identity and the HYPERLOOP_* context).
    let results = requests[3].tool_results();
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results.iter().all(|r| !r.is_error), "{results:?}");

    // The work landed on main.
    let files = repo.files("main");
    assert!(
        files.contains(&"b.txt".to_owned()),
        "b.txt missing from main: {files:?}\n{context}"
    );
    assert_eq!(
        git(&repo.checkout, &["show", "main:b.txt"]),
        B_TXT.trim_end()
    );
    assert!(
        !files.iter().any(|f| f.starts_with(".hyperloop/")),
        "the result file must not be committed: {files:?}"
    );

    // The landing commit carries both trailers.
    let spec_commit = git(
        &repo.checkout,
        &["log", "-1", "--format=%H", "main", "--", "specs/b.md"],
    );
    let landed = git(
        &repo.checkout,
        &["log", "--format=%H", "--grep", "Task-Ref: task-001", "main"],
    );
    assert!(
        !landed.is_empty(),
        "no commit on main carries Task-Ref: task-001\n{}",
        repo.log("main")
    );
    let landed = landed.lines().next().expect("a commit").to_owned();
    let trailers = git(
        &repo.checkout,
        &["log", "-1", "--format=%(trailers:only,unfold)", &landed],
    );
    assert!(
        trailers.contains(&format!("Spec-Ref: specs/b.md@{spec_commit}"))
            && trailers.contains("Task-Ref: task-001"),
        "trailers of {landed}:\n{trailers}\n{}",
        repo.log("main")
    );
    let touched = git(
        &repo.checkout,
        &[
            "log",
            "--format=",
            "--name-only",
            "--grep",
            "Task-Ref: task-001",
            "main",
        ],
    );
    assert!(touched.lines().any(|f| f == "b.txt"), "{touched}");
    // Landed as one commit named after the task (the agent's "Build B" squashed into it).
    let subject = git(&repo.checkout, &["log", "-1", "--format=%s", &landed]);
    assert!(subject.starts_with("Build B"), "{subject}");

    assert!(elapsed < RUN_TIMEOUT);
}
