//! The step runner against real git repositories and real agent processes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{BASE_BRANCH, Fixture, alive, git, wait_for_file, write_result};
use hyperloop_proto::v1::{FailureCause, LogSource};
use hyperloop_shared::model::Verdict;
use hyperloop_worker::progress::progress_channel;
use hyperloop_worker::run_step;
use hyperloop_worker::step::INTAKE_TASK_ID;

const COMMIT_AND_PASS: &str = r#"set -e
prompt=$(cat)
git diff --quiet "$HYPERLOOP_BASE_BRANCH...HEAD" -- || true
echo "hello from $HYPERLOOP_TASK_ID" >> hello.txt
git add hello.txt
git -c user.name=Agent -c user.email=agent@example.invalid commit -q -m "Add hello" \
  -m "Spec-Ref: $HYPERLOOP_SPEC_REF
Task-Ref: $HYPERLOOP_TASK_ID"
echo "committed"
"#;

#[tokio::test]
async fn an_agent_that_commits_and_passes_gets_its_branch_pushed() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!(
            "{COMMIT_AND_PASS}{}",
            write_result("pass", "Prompt was: $prompt")
        ),
    );
    let (sink, mut stream) = progress_channel();
    let mut ctx = fx.ctx();
    ctx.progress = Some(sink);

    let report = run_step(&fx.assign(1, &script), &ctx).await;

    assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
    assert_eq!(report.failure_cause, FailureCause::Unspecified);
    assert_eq!(report.detail, "Prompt was: Implement specs/hello.md");
    let pushed = fx
        .origin_branch("hyperloop/task-007")
        .expect("branch pushed");
    assert_eq!(report.head_commit.as_deref(), Some(pushed.as_str()));
    assert_eq!(report.branch, "hyperloop/task-007");
    let message = git(&fx.origin, &["log", "-1", "--format=%B", &pushed]);
    assert!(message.contains("Task-Ref: task-007"), "{message}");
    assert!(
        message.contains(&format!("Spec-Ref: specs/hello.md@{}", fx.base_commit)),
        "{message}"
    );
    assert_eq!(
        git(&fx.origin, &["rev-parse", &format!("{pushed}^")]),
        fx.base_commit
    );
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());

    let mut lines = Vec::new();
    while let Ok(line) = stream.lines.try_recv() {
        lines.push(line);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.text == "committed" && l.source == LogSource::Stdout as i32),
        "{lines:?}"
    );
    assert!(lines.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn a_second_step_continues_from_the_pushed_branch() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!("{COMMIT_AND_PASS}{}", write_result("pass", "ok")),
    );
    let first = run_step(&fx.assign(1, &script), &fx.ctx()).await;
    let first_head = first.head_commit.clone().expect("pushed");
    let mut assign = fx.assign(2, &script);
    assign.round = 2;
    let second = run_step(&assign, &fx.ctx()).await;
    assert_eq!(second.verdict, Verdict::Pass, "{}", second.detail);
    let second_head = second.head_commit.expect("pushed");
    assert_ne!(second_head, first_head);
    assert_eq!(
        git(&fx.origin, &["rev-parse", &format!("{second_head}^")]),
        first_head
    );
    let hello = git(&fx.origin, &["show", &format!("{second_head}:hello.txt")]);
    assert_eq!(hello.lines().count(), 2);
}

#[tokio::test]
async fn a_step_without_commits_reports_the_existing_branch_head_and_pushes_nothing() {
    let fx = Fixture::new();
    let verifier = fx.script(
        "verify.sh",
        &format!(
            "git diff --stat {BASE_BRANCH}...HEAD >/dev/null || exit 3\n{}",
            write_result("fail", "- hello.txt is missing a test")
        ),
    );
    let report = run_step(&fx.assign(1, &verifier), &fx.ctx()).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(
        report.failure_cause,
        FailureCause::Unspecified,
        "{}",
        report.detail
    );
    assert_eq!(report.detail, "- hello.txt is missing a test");
    assert_eq!(report.head_commit, None);
    assert_eq!(fx.origin_branch("hyperloop/task-007"), None);
}

#[tokio::test]
async fn a_garbage_result_file_fails_and_names_the_problem() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        "printf 'I did it!\\nverdict: pass\\n' > \"$HYPERLOOP_RESULT_FILE\"\n",
    );
    let report = run_step(&fx.assign(1, &script), &fx.ctx()).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.failure_cause, FailureCause::ResultMalformed);
    assert!(
        report.detail.contains("no front matter"),
        "{}",
        report.detail
    );
}

#[tokio::test]
async fn a_missing_or_stale_result_file_is_a_fail() {
    let fx = Fixture::new();
    let silent = fx.script("silent.sh", "exit 0\n");
    let report = run_step(&fx.assign(1, &silent), &fx.ctx()).await;
    assert_eq!(report.failure_cause, FailureCause::ResultMissing);
    assert_eq!(report.verdict, Verdict::Fail);

    let stale = fx.script(
        "stale.sh",
        "printf -- '---\\ntask_id: task-007\\nround: 0\\nrole: implementer\\nverdict: pass\\n---\\nold\\n' > \"$HYPERLOOP_RESULT_FILE\"\n",
    );
    let report = run_step(&fx.assign(2, &stale), &fx.ctx()).await;
    assert_eq!(
        report.failure_cause,
        FailureCause::ResultMismatch,
        "{}",
        report.detail
    );
    assert!(report.detail.contains("round"), "{}", report.detail);
}

#[tokio::test]
async fn a_nonzero_exit_fails_even_when_the_file_says_pass() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!(
            "{}echo 'boom: compiler exploded' >&2\nexit 1\n",
            write_result("pass", "all good")
        ),
    );
    let report = run_step(&fx.assign(1, &script), &fx.ctx()).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.failure_cause, FailureCause::NonzeroExit);
    assert!(
        report.detail.contains("exited with status 1"),
        "{}",
        report.detail
    );
    assert!(
        report.detail.contains("boom: compiler exploded"),
        "{}",
        report.detail
    );
    assert!(report.detail.contains("all good"), "{}", report.detail);
}

#[tokio::test]
async fn a_nonzero_exit_finding_ends_with_the_last_twenty_lines_of_the_agents_stdout() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        "for i in $(seq 1 30); do echo \"stdout line $i\"; done\n\
         echo 'error[E0425]: cannot find value `x`'\n\
         head -c 5000 /dev/zero | tr '\\0' y; echo\n\
         exit 101\n",
    );
    let report = run_step(&fx.assign(1, &script), &fx.ctx()).await;
    assert_eq!(report.failure_cause, FailureCause::NonzeroExit);
    let detail = &report.detail;
    assert!(
        detail.contains("Last lines of the agent's stdout"),
        "{detail}"
    );
    assert!(
        detail.contains("error[E0425]: cannot find value"),
        "{detail}"
    );
    assert!(detail.contains("stdout line 30"), "{detail}");
    // Bounded: 20 lines, so the 30 echoed lines lose their first 12.
    assert!(detail.contains("stdout line 13\n"), "{detail}");
    assert!(!detail.contains("stdout line 12\n"), "{detail}");
    // A long line is cut, not kept whole.
    assert!(!detail.contains(&"y".repeat(1000)), "{detail}");
}

#[tokio::test]
async fn an_agent_killed_by_a_signal_is_a_crash() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!("{}kill -SEGV $$\n", write_result("pass", "x")),
    );
    let report = run_step(&fx.assign(1, &script), &fx.ctx()).await;
    assert_eq!(
        report.failure_cause,
        FailureCause::AgentCrashed,
        "{}",
        report.detail
    );
    assert!(report.detail.contains("SIGSEGV"), "{}", report.detail);
}

#[tokio::test]
async fn a_missing_agent_program_is_runtime_unavailable() {
    let fx = Fixture::new();
    let report = run_step(&fx.assign(1, &fx.path("does-not-exist.sh")), &fx.ctx()).await;
    assert_eq!(report.failure_cause, FailureCause::RuntimeUnavailable);
    assert!(
        report.detail.contains("could not be started"),
        "{}",
        report.detail
    );
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[tokio::test]
async fn an_unreachable_repository_is_a_workspace_failure_not_a_panic() {
    let fx = Fixture::new();
    let script = fx.script("agent.sh", &write_result("pass", "x"));
    let mut assign = fx.assign(1, &script);
    assign.repo_url = fx.path("nowhere.git").to_string_lossy().into_owned();
    let report = run_step(&assign, &fx.ctx()).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.failure_cause, FailureCause::Workspace);
    assert!(
        report.detail.contains("could not fetch"),
        "{}",
        report.detail
    );

    let mut assign = fx.assign(2, &script);
    assign.base_commit = "0123456789abcdef0123456789abcdef01234567".into();
    let report = run_step(&assign, &fx.ctx()).await;
    assert_eq!(report.failure_cause, FailureCause::Workspace);
    assert!(report.detail.contains("base commit"), "{}", report.detail);
}

#[tokio::test]
async fn uncommitted_changes_are_noted_but_not_committed() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!("echo scratch > notes.txt\n{}", write_result("pass", "done")),
    );
    let report = run_step(&fx.assign(1, &script), &fx.ctx()).await;
    assert_eq!(report.verdict, Verdict::Pass);
    assert!(report.detail.contains("uncommitted"), "{}", report.detail);
    assert!(report.detail.contains("notes.txt"), "{}", report.detail);
    assert_eq!(fx.origin_branch("hyperloop/task-007"), None);
}

#[tokio::test]
async fn a_hanging_agent_times_out_and_its_process_group_is_gone() {
    let fx = Fixture::new();
    let pids = fx.path("pids");
    let script = fx.script(
        "agent.sh",
        &format!("sleep 30 &\necho \"$$ $!\" > '{}'\nwait\n", pids.display()),
    );
    let mut assign = fx.assign(1, &script);
    assign.runtime.as_mut().unwrap().timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let started = Instant::now();
    let report = run_step(&assign, &fx.ctx()).await;
    assert_eq!(
        report.failure_cause,
        FailureCause::Timeout,
        "{}",
        report.detail
    );
    assert!(
        report.detail.contains("timed out after 1s"),
        "{}",
        report.detail
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        assert!(!alive(pid), "process {pid} of the agent's group survived");
    }
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[tokio::test]
async fn a_sub_second_timeout_is_reported_in_milliseconds_not_as_0s() {
    let fx = Fixture::new();
    let script = fx.script("agent.sh", "sleep 30\n");
    let mut assign = fx.assign(1, &script);
    assign.runtime.as_mut().unwrap().timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 144_000_000,
    });
    let (sink, mut stream) = progress_channel();
    let mut ctx = fx.ctx();
    ctx.progress = Some(sink);

    let report = run_step(&assign, &ctx).await;

    assert_eq!(
        report.failure_cause,
        FailureCause::Timeout,
        "{}",
        report.detail
    );
    assert!(
        report.detail.contains("timed out after 144ms"),
        "{}",
        report.detail
    );
    let start = stream.lines.try_recv().unwrap();
    assert!(start.text.ends_with("(timeout 144ms)"), "{}", start.text);
}

#[tokio::test]
async fn cancel_signals_the_agent_within_a_second() {
    let fx = Fixture::new();
    let pids = fx.path("pids");
    let mark = fx.path("interrupted");
    let script = fx.script(
        "agent.sh",
        &format!(
            "trap 'date +%s%N > \"{mark}\"; exit 130' INT\nsleep 30 &\necho \"$$ $!\" > '{pids}'\nwait\n",
            mark = mark.display(),
            pids = pids.display()
        ),
    );
    let assign = fx.assign(1, &script);
    let ctx = fx.ctx();
    let cancel = ctx.cancel.clone();
    let step = tokio::spawn(async move { run_step(&assign, &ctx).await });
    assert!(
        wait_for_file(&pids, Duration::from_secs(10)).await,
        "agent never started"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    assert!(
        wait_for_file(&mark, Duration::from_secs(1)).await,
        "no SIGINT within 1 s"
    );
    let signalled_after = cancelled_at.elapsed();
    let report = step.await.unwrap();
    assert!(
        signalled_after < Duration::from_secs(1),
        "{signalled_after:?}"
    );
    assert_eq!(
        report.failure_cause,
        FailureCause::Cancelled,
        "{}",
        report.detail
    );
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        assert!(!alive(pid), "process {pid} survived the cancel");
    }
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[tokio::test]
async fn the_agent_sees_exactly_the_allowed_environment() {
    let fx = Fixture::new();
    let dump = fx.path("env.txt");
    let script = fx.script(
        "agent.sh",
        &format!(
            "tr '\\0' '\\n' < /proc/$$/environ > '{}'\n{}",
            dump.display(),
            write_result("pass", "ok")
        ),
    );
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let host: Vec<(std::ffi::OsString, std::ffi::OsString)> = [
        ("PATH", path.as_str()),
        ("HOME", "/home/worker"),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("TZ", "UTC"),
        ("TERM", "dumb"),
        ("ANTHROPIC_API_KEY", "sk-test"),
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLOUD_ML_REGION", "us-east5"),
        ("AWS_REGION", "eu-west-1"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp.json"),
        ("GITHUB_TOKEN", "ghp_must_not_leak"),
        ("GIT_DIR", "/somewhere/else"),
        ("GIT_AUTHOR_NAME", "Host"),
        ("SSH_AUTH_SOCK", "/tmp/ssh"),
        ("USER", "worker"),
        ("MY_TOOL_TOKEN", "passed-through"),
        ("HYPERLOOP_ROLE", "spoofed"),
        ("HYPERLOOP_CLAUDE_BIN", "/opt/claude"),
    ]
    .iter()
    .map(|(k, v)| ((*k).into(), (*v).into()))
    .collect();
    let mut ctx = fx.ctx();
    ctx.host_env = Some(host);
    let mut assign = fx.assign(1, &script);
    let settings = assign.runtime.as_mut().unwrap();
    settings.env_passthrough = vec!["MY_TOOL_TOKEN".into(), "GIT_AUTHOR_NAME".into()];
    settings
        .extra_env
        .insert("FROM_COORDINATOR".into(), "yes".into());

    let report = run_step(&assign, &ctx).await;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);

    let text = std::fs::read_to_string(&dump).unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let names: BTreeSet<&str> = vars.keys().copied().collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TERM",
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_USE_VERTEX",
        "CLOUD_ML_REGION",
        "AWS_REGION",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "MY_TOOL_TOKEN",
        "FROM_COORDINATOR",
        "HYPERLOOP_TASK_ID",
        "HYPERLOOP_ROLE",
        "HYPERLOOP_ROUND",
        "HYPERLOOP_SPEC_REF",
        "HYPERLOOP_BRANCH",
        "HYPERLOOP_BASE_BRANCH",
        "HYPERLOOP_RESULT_FILE",
        "TMPDIR",
        "TMP",
        "TEMP",
        // HOME has no git identity: the worker's own, never the host's GIT_AUTHOR_NAME.
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected);
    assert_eq!(vars["GIT_AUTHOR_NAME"], "hyperloop agent");
    assert_eq!(vars["GIT_COMMITTER_EMAIL"], "agent@hyperloop.invalid");
    // A temp dir of its own, beside the worktrees, gone after the step.
    let tmp = std::path::Path::new(&vars["TMPDIR"]);
    assert!(tmp.ends_with("tmp/attempt-1"), "{tmp:?}");
    assert!(!tmp.exists());
    assert_eq!(vars["HYPERLOOP_ROLE"], "implementer");
    assert_eq!(vars["HYPERLOOP_TASK_ID"], "task-007");
    assert_eq!(vars["HYPERLOOP_ROUND"], "1");
    assert_eq!(vars["HYPERLOOP_BRANCH"], "hyperloop/task-007");
    assert_eq!(vars["HYPERLOOP_BASE_BRANCH"], BASE_BRANCH);
    assert_eq!(
        vars["HYPERLOOP_SPEC_REF"],
        format!("specs/hello.md@{}", fx.base_commit)
    );
    let result_file = std::path::Path::new(vars["HYPERLOOP_RESULT_FILE"]);
    assert!(result_file.is_absolute());
    assert!(result_file.ends_with(".hyperloop/result.md"));
}

#[tokio::test]
async fn intake_returns_the_pm_proposals() {
    let fx = Fixture::new();
    let script = fx.script(
        "pm.sh",
        "cat > \"$HYPERLOOP_RESULT_FILE\" <<'EOR'\n---\ntask_id: intake\nround: 4\nrole: pm\nverdict: pass\ntasks:\n  - key: hello\n    title: Say hello\n    spec: specs/hello.md\n    deps: []\n  - title: Test hello\n    spec: specs/hello.md\n    deps: [hello]\n---\nTwo tasks.\nEOR\n",
    );
    let mut assign = fx.assign(1, &script);
    assign.task_id = INTAKE_TASK_ID.into();
    assign.role = "pm".into();
    assign.round = 4;
    assign.branch.clear();
    assign.spec_ref = None;
    let report = run_step(&assign, &fx.ctx()).await;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
    assert_eq!(report.proposals.len(), 2);
    assert_eq!(report.proposals[1].deps, ["hello"]);
    let wire = report.to_wire();
    assert_eq!(wire.proposals.len(), 2);
    assert_eq!(wire.head_commit, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_steps_leave_no_worktree_behind() {
    // Four at a time, as a worker of capacity 4 would run them, each on its own task branch
    // and half of them committing, so the shared mirror sees concurrent use.
    const CONCURRENCY: u64 = 4;
    let fx = std::sync::Arc::new(Fixture::new());
    let committer = fx.script(
        "commit.sh",
        &format!("{COMMIT_AND_PASS}{}", write_result("pass", "ok")),
    );
    let passer = fx.script("pass.sh", &write_result("pass", "ok"));
    let started = Instant::now();
    for batch in 0..100 / CONCURRENCY {
        let mut steps = tokio::task::JoinSet::new();
        for i in 0..CONCURRENCY {
            let attempt = batch * CONCURRENCY + i + 1;
            let fx = fx.clone();
            let script = if attempt.is_multiple_of(2) {
                &committer
            } else {
                &passer
            }
            .clone();
            steps.spawn(async move {
                let mut assign = fx.assign(attempt, &script);
                assign.task_id = format!("task-{attempt:03}");
                assign.branch = format!("hyperloop/task-{attempt:03}");
                run_step(&assign, &fx.ctx()).await
            });
        }
        while let Some(report) = steps.join_next().await {
            let report = report.unwrap();
            assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
            assert_eq!(
                report.head_commit.is_some(),
                report.attempt_id.is_multiple_of(2)
            );
        }
    }
    eprintln!("100 steps, 4 at a time: {:?}", started.elapsed());
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
    let branches = git(fx.workspace.mirror_dir(), &["branch", "--list"]);
    assert_eq!(
        branches.trim().trim_start_matches("* "),
        BASE_BRANCH,
        "{branches}"
    );
    // The mirror plus at most the bounded pool of parked worktrees: disk does not grow.
    let worktrees = git(fx.workspace.mirror_dir(), &["worktree", "list"]);
    assert!(
        worktrees.lines().count() <= 1 + hyperloop_worker::workspace::MAX_SPARE_WORKTREES,
        "{worktrees}"
    );
    let pushed = git(&fx.origin, &["branch", "--list", "hyperloop/*"]);
    assert_eq!(pushed.lines().count(), 50);
}
