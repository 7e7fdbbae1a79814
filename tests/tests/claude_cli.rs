//! The REAL Claude Code CLI, offline, against the scripted model server
//! (`hyperloop_tests::model_server`). The CLI really executes the scripted tool calls in a
//! temp git repository. The CLI is installed by `tests/setup`; without it these tests fail
//! and say so.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use hyperloop_shared::model::{TaskId, Verdict};
use hyperloop_shared::result_file::{Expected, RESULT_FILE_PATH, Subject, evaluate};
use hyperloop_tests::model_server::{
    Block, ClaudeRun, ClaudeSession, ModelServer, ResultFront, Script, Turn, claude_bin,
    claude_version,
};
use tempfile::TempDir;

/// Bound on one CLI run; a scripted session takes about a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temp dir holding `repo/` (a git repository with one commit) and `state/` (the CLI's
/// HOME and config).
fn temp_repo() -> TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir repo");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.name", "Hyperloop Test"]);
    git(&repo, &["config", "user.email", "test@hyperloop.invalid"]);
    std::fs::write(repo.join(".gitignore"), ".hyperloop/\n").expect("write .gitignore");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    tmp
}

fn session(server: &ModelServer, agent: &str, tmp: &TempDir, prompt: &str) -> ClaudeSession {
    let bin = claude_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let mut s = ClaudeSession::new(
        bin,
        tmp.path().join("repo"),
        server.base_url(agent),
        tmp.path().join("state"),
        prompt,
    );
    s.timeout = RUN_TIMEOUT;
    s
}

fn run(s: &ClaudeSession, server: &ModelServer) -> ClaudeRun {
    let run = s.run().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        run.status.is_some(),
        "claude did not finish within {RUN_TIMEOUT:?}\n{}\n{}",
        run.dump(),
        server.dump()
    );
    run
}

#[test]
fn claude_is_installed() {
    let bin = claude_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let version = claude_version(&bin).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        version.contains("Claude Code"),
        "unexpected version {version:?}"
    );
}

#[test]
fn scripted_session_writes_commits_and_passes() {
    let server = ModelServer::start().expect("start model server");
    let tmp = temp_repo();
    let repo = tmp.path().join("repo");
    let file = repo.join("src/greeting.txt");
    let front = ResultFront::new("task-007", 2, "implementer", "pass");
    server.set_script(
        "agent-7",
        Script::new()
            .turn(Turn::tools(vec![
                Block::text("I'll add the greeting."),
                Block::write_file(file.to_string_lossy(), "hello, hyperloop\n"),
            ]))
            .commit_all("Add greeting\n\nSpec-Ref: specs/greeting.md@0123abc\nTask-Ref: task-007")
            .write_result(
                &front,
                "Added the greeting.\n\n- src/greeting.txt holds it\n",
            )
            .done("Done: greeting added and committed."),
    );
    let prompt = "PROMPT-7f3a: implement specs/greeting.md for task-007";
    let run = run(&session(&server, "agent-7", &tmp, prompt), &server);
    let context = format!("{}\n{}", run.dump(), server.dump());

    // The runtime's success rule: exit 0 AND is_error == false.
    assert_eq!(run.code(), Some(0), "{context}");
    let result = run
        .result()
        .unwrap_or_else(|| panic!("no result line\n{context}"));
    assert_eq!(result["is_error"], false, "{context}");
    assert_eq!(result["num_turns"], 4, "{context}");
    let cost = result["total_cost_usd"].as_f64().expect("total_cost_usd");
    assert!(cost > 0.0, "cost {cost}");
    assert_eq!(result["result"], "Done: greeting added and committed.");
    assert!(run.succeeded());
    assert!(server.problems().is_empty(), "{context}");
    assert!(server.other_requests().is_empty(), "{context}");

    // (a) the file.
    assert_eq!(
        std::fs::read_to_string(&file).expect("greeting written"),
        "hello, hyperloop\n"
    );
    // (b) the commit with trailers, containing the file and not the result file.
    let message = git(&repo, &["log", "-1", "--format=%B"]);
    assert!(message.starts_with("Add greeting\n"), "{message}");
    let trailers = git(&repo, &["log", "-1", "--format=%(trailers:only,unfold)"]);
    assert!(
        trailers.contains("Spec-Ref: specs/greeting.md@0123abc")
            && trailers.contains("Task-Ref: task-007"),
        "{trailers}"
    );
    let files = git(&repo, &["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(files.trim(), "src/greeting.txt");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    // (c) the result file is a pass for exactly this step.
    let text = std::fs::read_to_string(repo.join(RESULT_FILE_PATH)).expect("result file");
    let outcome = evaluate(
        Some(&text),
        &Expected::new(Subject::Task(TaskId(7)), 2, "implementer"),
    );
    assert!(outcome.is_accepted(), "{:?}\n{text}", outcome.violations);
    assert_eq!(outcome.result.verdict, Verdict::Pass);
    assert!(outcome.result.detail.contains("Added the greeting."));

    // The server saw the prompt, then each tool's result.
    let requests = server.messages("agent-7");
    assert_eq!(requests.len(), 4, "{context}");
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r.turn, Some(i));
        assert_eq!(r.query.as_deref(), Some("beta=true"));
        assert!(
            r.user_text().contains(prompt),
            "request {i} lacks the prompt"
        );
        assert_eq!(r.tool_results().len(), i, "request {i}");
        assert!(r.tool_names().iter().any(|t| t == "Bash"));
        assert!(r.tool_names().iter().any(|t| t == "Write"));
    }
    assert!(
        requests[0]
            .system_text()
            .contains(&repo.to_string_lossy().into_owned())
    );
    let results = requests[3].tool_results();
    assert!(results.iter().all(|r| !r.is_error), "{results:?}");
    assert!(results[0].content.contains("greeting.txt"), "{results:?}");
}

/// The API failing (no retries) ends the run quickly with exit 1 AND `is_error: true`
/// (while `subtype` still says "success"), for an HTTP error status and for an error event
/// in the middle of a stream alike.
#[test]
fn api_error_fails_fast() {
    let server = ModelServer::start().expect("start model server");
    let cases = [
        ("http-500", Turn::http_500(), 500, "api_error"),
        ("http-529", Turn::overloaded(), 529, "overloaded_error"),
        (
            "stream-overloaded",
            Turn::overloaded_in_stream(),
            529,
            "overloaded_error",
        ),
    ];
    for (agent, fault, status, error_type) in cases {
        let tmp = temp_repo();
        server.set_script(agent, Script::new().bash("echo first turn").turn(fault));
        let run = run(&session(&server, agent, &tmp, "fail please"), &server);
        let context = format!("{agent}\n{}\n{}", run.dump(), server.dump());
        assert_eq!(run.code(), Some(1), "{context}");
        let result = run
            .result()
            .unwrap_or_else(|| panic!("no result\n{context}"));
        assert_eq!(result["is_error"], true, "{context}");
        assert_eq!(result["subtype"], "success", "{context}");
        assert_eq!(result["terminal_reason"], "api_error", "{context}");
        assert_eq!(result["api_error_status"], status, "{context}");
        assert_eq!(result["api_error_type"], error_type, "{context}");
        assert!(!run.succeeded());
        assert!(run.elapsed < Duration::from_secs(20), "{context}");
        // One request per turn, plus the CLI's non-streaming retry of a broken stream.
        let requests = server.messages(agent);
        let streamed: Vec<bool> = requests
            .iter()
            .map(|r| r.body.as_ref().is_some_and(|b| b["stream"] == true))
            .collect();
        if agent == "stream-overloaded" {
            assert_eq!(streamed, [true, true, false], "{context}");
        } else {
            assert_eq!(streamed, [true, true], "{context}");
        }
    }
    assert!(server.problems().is_empty(), "{}", server.dump());
}

/// Agents share one server and get their own scripts by the path prefix of their base URL.
#[test]
fn parallel_agents_get_their_own_scripts() {
    let server = ModelServer::start().expect("start model server");
    let agents = ["agent-a", "agent-b"];
    for agent in agents {
        server.set_script(
            agent,
            Script::new()
                .bash(format!("echo {agent} > who.txt"))
                .done(format!("{agent} done")),
        );
    }
    let runs: Vec<(TempDir, ClaudeRun)> = thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| {
                let server = &server;
                scope.spawn(move || {
                    let tmp = temp_repo();
                    let run = run(&session(server, agent, &tmp, agent), server);
                    (tmp, run)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("agent thread"))
            .collect()
    });
    for (agent, (tmp, run)) in agents.iter().zip(&runs) {
        assert!(run.succeeded(), "{}\n{}", run.dump(), server.dump());
        assert_eq!(
            run.result().expect("result")["result"],
            format!("{agent} done")
        );
        let who = std::fs::read_to_string(tmp.path().join("repo/who.txt")).expect("who.txt");
        assert_eq!(who.trim(), *agent);
        let requests = server.messages(agent);
        assert_eq!(requests.len(), 2);
        assert!(requests.iter().all(|r| r.user_text().contains(agent)));
    }
    assert!(server.problems().is_empty(), "{}", server.dump());
}

/// A model that never answers leaves the CLI waiting: the caller's timeout must end it.
#[test]
fn hanging_model_is_cut_off_by_the_timeout() {
    let server = ModelServer::start().expect("start model server");
    let tmp = temp_repo();
    server.set_script("hang", Script::new().turn(Turn::hang()));
    let mut s = session(&server, "hang", &tmp, "wait forever");
    s.timeout = Duration::from_secs(4);
    let run = s.run().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(run.status.is_none(), "{}", run.dump());
    assert!(run.result().is_none(), "{}", run.dump());
    assert_eq!(server.messages("hang").len(), 1, "{}", server.dump());
}

/// A script that runs out of turns is reported, and the CLI fails rather than hanging.
#[test]
fn exhausted_script_is_a_problem_and_a_failed_run() {
    let server = ModelServer::start().expect("start model server");
    let tmp = temp_repo();
    server.set_script("short", Script::new().bash("true"));
    let run = run(&session(&server, "short", &tmp, "go"), &server);
    assert_eq!(run.code(), Some(1), "{}", run.dump());
    assert!(!run.succeeded());
    let problems = server.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("no turn 1"), "{problems:?}");
}
