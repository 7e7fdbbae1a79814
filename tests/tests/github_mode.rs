//! GitHub mode end to end: the real coordinator with in-process workers, the scripted agent,
//! and the fake GitHub (every request and response checked against GitHub's published
//! OpenAPI description), whose merges land in the real bare `origin`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::github::{CheckState, FakeGitHub, ReviewState};
use hyperloop_tests::repo::{
    TestRepo, coordinator_bin, git, process_overlay, scripted_agent, test_home,
};
use hyperloop_tests::{exits_ok, free_port};

const LIMIT: Duration = Duration::from_secs(60);
const REPO: &str = "acme/widgets";

/// loop(implementer, verifier), then the `lgtm` label gate, then merge.
fn lgtm_overlay() -> String {
    process_overlay(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n- gate: lgtm\n\
         - action: merge-pr\ngates:\n  lgtm:\n    type: label\n",
    )
}

fn start(repo: &TestRepo, github: &FakeGitHub, mode: &str) -> Child {
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\ndashboard:\n  enabled: false\n\
         notifications:\n  type: github-comment\n\
         github:\n  api_url: {}\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE]\n",
        github.base_url(),
        scripted_agent().display()
    );
    start_with(repo, &config, mode)
}

/// The coordinator on `repo` in GitHub mode with `config` as its `.hyperloop.yaml`.
fn start_with(repo: &TestRepo, config: &str, mode: &str) -> Child {
    std::fs::write(repo.checkout.join(".hyperloop.yaml"), config).expect("config");
    Command::new(coordinator_bin())
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args([
            "--repo",
            REPO,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("HOME", test_home(repo.dir.path()))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env("GITHUB_TOKEN", "ghp_fake_token_for_tests_9Q")
        .envs(hyperloop_tests::scripted_log(
            repo.dir.path().join("steps.log"),
        ))
        .env("SCRIPTED_MODE", mode)
        .env_remove("GH_TOKEN")
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts")
}

/// A repository with one spec and `overlay`, the fake GitHub over its `origin`, and the
/// coordinator started on it with the scripted agent in `mode`.
fn scene(overlay: &str, mode: &str) -> (TestRepo, FakeGitHub, Child) {
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop/agents/kustomization.yaml", overlay),
    ]);
    let github = FakeGitHub::start(REPO).expect("fake GitHub");
    github.set_git_repo(&repo.origin);
    let coordinator = start(&repo, &github, mode);
    (repo, github, coordinator)
}

/// Waits for the first pull request's gate notice and returns its number.
fn first_pr_at_gate(coordinator: &mut Child, github: &FakeGitHub, what: &str) -> u64 {
    wait_for(what, coordinator, github, || {
        github
            .pull_numbers()
            .first()
            .is_some_and(|n| !github.comments(*n).is_empty())
    });
    github.pull_numbers()[0]
}

/// Waits until `done`; on timeout stops the coordinator and fails with everything seen.
fn wait_for(
    what: &str,
    coordinator: &mut Child,
    github: &FakeGitHub,
    mut done: impl FnMut() -> bool,
) {
    let started = Instant::now();
    while !done() {
        let exited = coordinator.try_wait().expect("wait").is_some();
        if exited || started.elapsed() > LIMIT {
            let _ = coordinator.kill();
            let mut stderr = String::new();
            if let Some(mut err) = coordinator.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            let requests: Vec<String> =
                github.requests().iter().map(|r| format!("{r:?}")).collect();
            panic!(
                "gave up waiting for {what} (coordinator exited: {exited})\n\
                 violations: {:?}\nrequests:\n{}\ncoordinator stderr:\n{stderr}",
                github.violations(),
                requests.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_task_becomes_a_draft_pr_waits_for_lgtm_and_is_merged() {
    let (repo, github, mut coordinator) = scene(&lgtm_overlay(), "normal");

    wait_for(
        "the pull request to wait at the lgtm gate",
        &mut coordinator,
        &github,
        || {
            github.pull_numbers().first().is_some_and(|n| {
                github
                    .labels(*n)
                    .iter()
                    .any(|l| l == "hyperloop/needs-approval")
            })
        },
    );
    let n = github.pull_numbers()[0];
    let pr = github.pull(n);
    assert_eq!(pr["draft"], true, "{pr}");
    assert_eq!(pr["head"]["ref"], "hyperloop/task-001", "{pr}");
    assert!(
        pr["title"]
            .as_str()
            .unwrap_or_default()
            .contains("task-001"),
        "{pr}"
    );
    let labels = github.labels(n);
    assert!(
        labels.iter().any(|l| l == "hyperloop/task-001"),
        "{labels:?}"
    );
    wait_for("the gate notice", &mut coordinator, &github, || {
        !github.comments(n).is_empty()
    });
    let comments = github.comments(n);
    assert!(
        comments[0].1.contains("lgtm") && comments[0].1.contains("hyperloop:task-001:gate:lgtm"),
        "{comments:?}"
    );

    github.add_label(n, "lgtm", "reviewer");
    let stderr = exits_ok(coordinator, LIMIT);

    assert_eq!(github.pull_numbers(), vec![n], "exactly one pull request");
    assert_eq!(github.pull(n)["merged"], true);
    assert!(
        !github
            .labels(n)
            .iter()
            .any(|l| l == "hyperloop/needs-approval"),
        "the needs-approval label stays after the gate cleared"
    );
    assert_eq!(github.comments(n).len(), 1, "one notice per gate entry");
    let files = git(&repo.origin, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.contains("work/task-001.txt"), "{files}");
    let message = git(&repo.origin, &["log", "-1", "--format=%B", "main"]);
    assert!(message.contains("Task-Ref: task-001"), "{message}");
    assert!(message.contains("Spec-Ref: specs/b.md@"), "{message}");
    // The merge is journaled (and so told to every notification sink) with its commit.
    let merged: Vec<_> = repo
        .events()
        .into_iter()
        .filter(|e| e["event"] == "merged")
        .collect();
    assert_eq!(merged.len(), 1, "{merged:?}");
    let head = git(&repo.origin, &["rev-parse", "main"]);
    assert_eq!(merged[0]["commit"], head.trim(), "{merged:?}");
    assert_eq!(merged[0]["task"], "task-001");
    assert!(
        !stderr.contains("ghp_fake_token_for_tests_9Q"),
        "the token leaked into the logs"
    );
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A human closes the pull request with comments: the task fails with them as a finding, the
/// gap goes back to the PM, whose prompt carries them, and the new task's pull request lands.
#[test]
fn a_pr_closed_with_comments_sends_them_back_to_the_pm() {
    let (repo, github, mut coordinator) = scene(&lgtm_overlay(), "redo");
    let at_gate = |n: u64| {
        github
            .labels(n)
            .iter()
            .any(|l| l == "hyperloop/needs-approval")
    };
    wait_for(
        "the first pull request at its gate",
        &mut coordinator,
        &github,
        || github.pull_numbers().first().is_some_and(|n| at_gate(*n)),
    );
    let first = github.pull_numbers()[0];
    github.add_comment(
        first,
        "alice",
        "Please render it as a table, not a list (TABLE-7Q).",
    );
    github.close(first);

    wait_for(
        "a second pull request at its gate",
        &mut coordinator,
        &github,
        || github.pull_numbers().len() == 2 && at_gate(github.pull_numbers()[1]),
    );
    let second = github.pull_numbers()[1];
    assert_eq!(github.pull(second)["head"]["ref"], "hyperloop/task-002");
    github.add_label(second, "lgtm", "reviewer");
    exits_ok(coordinator, LIMIT);

    let steps = std::fs::read_to_string(repo.dir.path().join("steps.log")).unwrap_or_default();
    assert!(
        steps.contains("pm-saw TABLE-7Q"),
        "the PM never saw the reviewer's comment:\n{steps}"
    );
    assert!(
        steps.contains("implementer-saw TABLE-7Q task-002"),
        "the new task's prompt lacks the reviewer's comment:\n{steps}"
    );
    assert_eq!(github.pull(first)["merged"], false);
    assert!(
        github
            .comments(first)
            .iter()
            .any(|(_, body)| body.contains("task-001 failed")),
        "the failed task did not say so on its pull request: {:?}",
        github.comments(first)
    );
    assert_eq!(github.pull(second)["merged"], true);
    let history = git(&repo.origin, &["log", "--format=%B", "main"]);
    assert!(history.contains("Task-Ref: task-002"), "{history}");
    assert!(!history.contains("Task-Ref: task-001"), "{history}");
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A coordinator killed (`kill -9`) while a task waits at a gate, then restarted: it finds the
/// pull request, its label and its notice, and adds none of them again.
#[test]
fn a_restart_at_a_gate_duplicates_no_pr_label_or_comment() {
    let (repo, github, mut first) = scene(&lgtm_overlay(), "normal");
    wait_for("the notice at the gate", &mut first, &github, || {
        github
            .pull_numbers()
            .first()
            .is_some_and(|n| !github.comments(*n).is_empty())
    });
    let _ = first.kill();
    let _ = first.wait();
    let n = github.pull_numbers()[0];
    let polls = |github: &FakeGitHub| {
        github
            .requests()
            .iter()
            .filter(|r| format!("{r:?}").contains(&format!("/pulls/{n}")))
            .count()
    };
    let before = polls(&github);

    let mut second = start(&repo, &github, "normal");
    // Several gate checks by the new coordinator before the label comes.
    wait_for(
        "the restarted coordinator to check the gate",
        &mut second,
        &github,
        || polls(&github) >= before + 3,
    );
    github.add_label(n, "lgtm", "reviewer");
    exits_ok(second, LIMIT);

    assert_eq!(
        github.pull_numbers(),
        vec![n],
        "a second pull request was opened"
    );
    assert_eq!(
        github.comments(n).len(),
        1,
        "the gate notice was posted twice"
    );
    assert_eq!(github.pull(n)["merged"], true);
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// The comments come from the notifier, from the events the first coordinator stored: a
/// restarted one, which never saw the pull request opened, finds it by the task's branch to
/// say there that the task failed, and posts the gate notice no second time.
#[test]
fn after_a_restart_the_failure_is_told_on_the_pull_request_the_first_run_opened() {
    let (repo, github, mut first) = scene(&lgtm_overlay(), "redo");
    let n = first_pr_at_gate(&mut first, &github, "the gate notice");
    let _ = first.kill();
    let _ = first.wait();
    let restarted_at = github.requests().len();

    let mut second = start(&repo, &github, "redo");
    let polls = |github: &FakeGitHub| {
        github
            .requests()
            .iter()
            .filter(|r| r.uri.ends_with(&format!("/pulls/{n}")))
            .count()
    };
    let before = polls(&github);
    wait_for(
        "the restarted coordinator to check the gate",
        &mut second,
        &github,
        || polls(&github) > before,
    );
    github.close(n);
    wait_for("the failure comment", &mut second, &github, || {
        github
            .comments(n)
            .iter()
            .any(|(_, body)| body.contains("task-001 failed"))
    });
    let _ = second.kill();
    let _ = second.wait();

    let comments = github.comments(n);
    let told = |what: &str| comments.iter().filter(|(_, b)| b.contains(what)).count();
    assert_eq!(told("waits at gate `lgtm`"), 1, "{comments:?}");
    assert_eq!(told("task-001 failed"), 1, "{comments:?}");
    assert!(
        comments[1].1.contains("goes back to the PM") && comments[1].1.contains(":error:task:"),
        "{comments:?}"
    );
    assert!(
        github.requests()[restarted_at..]
            .iter()
            .any(|r| r.uri.contains("/pulls?head=acme%3Ahyperloop%2Ftask-001")),
        "the restarted coordinator did not look the pull request up by its branch"
    );
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// Without `notifications.type: github-comment` a gate still labels the pull request, and
/// nothing comments on it.
#[test]
fn without_github_comments_a_gate_labels_but_says_nothing() {
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop/agents/kustomization.yaml", &lgtm_overlay()),
    ]);
    let github = FakeGitHub::start(REPO).expect("fake GitHub");
    github.set_git_repo(&repo.origin);
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\ndashboard:\n  enabled: false\n\
         github:\n  api_url: {}\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        github.base_url(),
        scripted_agent().display()
    );
    let mut coordinator = start_with(&repo, &config, "normal");
    wait_for("the gate's label", &mut coordinator, &github, || {
        github.pull_numbers().first().is_some_and(|n| {
            github
                .labels(*n)
                .iter()
                .any(|l| l == "hyperloop/needs-approval")
        })
    });
    let n = github.pull_numbers()[0];
    github.add_label(n, "lgtm", "reviewer");
    exits_ok(coordinator, LIMIT);
    assert_eq!(github.pull(n)["merged"], true);
    assert_eq!(github.comments(n), Vec::<(String, String)>::new());
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A human merges the pull request while the task waits at its gate: that counts as landed.
#[test]
fn a_pr_merged_by_a_human_completes_the_task() {
    let (repo, github, mut coordinator) = scene(&lgtm_overlay(), "normal");
    let n = first_pr_at_gate(&mut coordinator, &github, "the pull request at its gate");
    github
        .merge_as_human(n, "bob", "squash")
        .expect("human merge");
    exits_ok(coordinator, LIMIT);

    let files = git(&repo.origin, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.contains("work/task-001.txt"), "{files}");
    let state = repo.state_texts("tasks/").join("\n");
    assert!(state.contains("\"complete\""), "task not complete: {state}");
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// GitHub answers with secondary rate limits: the coordinator waits as told (Retry-After)
/// and carries on.
#[test]
fn a_secondary_rate_limit_is_waited_out() {
    let (_repo, github, mut coordinator) = scene(&lgtm_overlay(), "normal");
    let n = first_pr_at_gate(&mut coordinator, &github, "the pull request at its gate");
    github.rate_limit_next(2, 1);
    github.add_label(n, "lgtm", "reviewer");
    exits_ok(coordinator, LIMIT);

    let requests = github.requests();
    let limited: Vec<usize> = (0..requests.len())
        .filter(|i| requests[*i].status == 403)
        .collect();
    assert_eq!(limited.len(), 2, "{requests:?}");
    let last = *limited.last().expect("two");
    let next = requests
        .get(last + 1)
        .expect("a request after the rate limit");
    assert!(
        next.at.duration_since(requests[last].at) >= Duration::from_millis(900),
        "retried {:?} after a 403 that said to wait 1 s",
        next.at.duration_since(requests[last].at)
    );
    assert_eq!(github.pull(n)["merged"], true);
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A `ci-status` gate inside the loop: a failing check sends the task round again with the
/// failure as a finding; once the new head's checks pass, the work is merged.
#[test]
fn a_failing_check_loops_back_and_a_passing_one_lets_it_merge() {
    let overlay = process_overlay(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n  - gate: ci\n\
         - action: merge-pr\ngates:\n  ci:\n    type: ci-status\n",
    );
    let (repo, github, mut coordinator) = scene(&overlay, "normal");
    wait_for("the task at its CI gate", &mut coordinator, &github, || {
        github
            .pull_numbers()
            .first()
            .is_some_and(|n| !github.comments(*n).is_empty())
    });
    let n = github.pull_numbers()[0];
    let failed_head = github.head_sha(n);
    github.set_check_run(&failed_head, "build (BUILD-4X)", CheckState::Failure);
    wait_for(
        "the next round at the CI gate",
        &mut coordinator,
        &github,
        || github.comments(n).len() >= 2 && github.head_sha(n) != failed_head,
    );
    github.set_check_run(&github.head_sha(n), "build (BUILD-4X)", CheckState::Success);
    exits_ok(coordinator, LIMIT);

    assert_eq!(github.pull(n)["merged"], true);
    let reviews = repo.state_texts("reviews/").join("\n");
    assert!(
        reviews.contains("BUILD-4X"),
        "the failing check is not a finding: {reviews}"
    );
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A `pr-approval` gate requests its reviewers, ignores an approval of an older commit, and
/// clears with an approval of the current head.
#[test]
fn an_approval_gate_needs_a_fresh_approval() {
    let overlay = process_overlay(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n- gate: review\n\
         - action: merge-pr\ngates:\n  review:\n    type: pr-approval\n    reviewers: [carol]\n",
    );
    let (_repo, github, mut coordinator) = scene(&overlay, "normal");
    let n = first_pr_at_gate(&mut coordinator, &github, "the task at its review gate");
    // The comment is a notification and the review request part of the gate: either may
    // come first.
    wait_for("the review request", &mut coordinator, &github, || {
        github.requested_reviewers(n) == ["carol"]
    });
    let notice = &github.comments(n)[0].1;
    assert!(
        notice.contains("approve the pull request"),
        "the notice does not say what clears the gate: {notice}"
    );
    github.submit_review(
        n,
        "carol",
        ReviewState::Approved,
        Some("1111111111111111111111111111111111111111"),
    );
    let gate_checks = |github: &FakeGitHub| {
        github
            .requests()
            .iter()
            .filter(|r| r.uri.contains(&format!("/pulls/{n}/reviews")))
            .count()
    };
    let before = gate_checks(&github);
    wait_for("two more gate checks", &mut coordinator, &github, || {
        gate_checks(&github) >= before + 2
    });
    assert_eq!(
        github.pull(n)["merged"],
        false,
        "merged on a stale approval"
    );
    assert!(
        github.conditional_hits() > 0,
        "polling an unchanged pull request should cost conditional requests only"
    );
    github.submit_review(n, "carol", ReviewState::Approved, None);
    exits_ok(coordinator, LIMIT);
    assert_eq!(github.pull(n)["merged"], true);
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// `mark-pr-ready` takes the pull request out of draft (GraphQL); an `all` gate then clears
/// only when every gate it requires does.
#[test]
fn an_all_gate_waits_for_every_child() {
    let overlay = process_overlay(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n- action: ready\n\
         - gate: both\n- action: merge-pr\nactions:\n  ready:\n    type: mark-pr-ready\n\
         gates:\n  both:\n    type: all\n    require: [lgtm, ci]\n\
         \x20 lgtm:\n    type: label\n  ci:\n    type: ci-status\n",
    );
    let (_repo, github, mut coordinator) = scene(&overlay, "normal");
    wait_for("the task at its gate", &mut coordinator, &github, || {
        github
            .pull_numbers()
            .first()
            .is_some_and(|n| !github.comments(*n).is_empty())
    });
    let n = github.pull_numbers()[0];
    assert_eq!(
        github.pull(n)["draft"],
        false,
        "mark-pr-ready ran before the gate"
    );
    github.add_label(n, "lgtm", "reviewer");
    let status_checks = |github: &FakeGitHub| {
        github
            .requests()
            .iter()
            .filter(|r| r.uri.contains("/status"))
            .count()
    };
    let before = status_checks(&github);
    wait_for("two more gate checks", &mut coordinator, &github, || {
        status_checks(&github) >= before + 2
    });
    assert_eq!(github.pull(n)["merged"], false, "merged without CI");
    github.set_status(&github.head_sha(n), "ci/build", CheckState::Success);
    exits_ok(coordinator, LIMIT);
    assert_eq!(github.pull(n)["merged"], true);
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// Pull requests that conflict with work merged before them go to the rebase-resolver, whose
/// push makes them mergeable; every task lands through GitHub.
#[test]
fn a_conflicting_pr_goes_to_the_rebase_resolver_and_then_merges() {
    let overlay = process_overlay(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n- action: merge-pr\n",
    );
    let repo = TestRepo::new(&[
        ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop/agents/kustomization.yaml", &overlay),
    ]);
    let github = FakeGitHub::start(REPO).expect("fake GitHub");
    github.set_git_repo(&repo.origin);
    let config = format!(
        "max_workers: 2\npoll_interval: 1s\ndashboard:\n  enabled: false\n\
         notifications:\n  type: github-comment\n\
         github:\n  api_url: {}\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n\
         \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE]\n",
        github.base_url(),
        scripted_agent().display()
    );
    let coordinator = start_with(&repo, &config, "conflict");
    exits_ok(coordinator, LIMIT);

    let steps = std::fs::read_to_string(repo.dir.path().join("steps.log")).unwrap_or_default();
    assert!(
        steps.contains("rebase-resolver"),
        "no conflict was resolved:\n{steps}"
    );
    let numbers = github.pull_numbers();
    assert_eq!(numbers.len(), 3, "one pull request per task");
    for n in numbers {
        assert_eq!(github.pull(n)["merged"], true, "#{n} not merged");
    }
    let files = git(&repo.origin, &["ls-tree", "-r", "--name-only", "main"]);
    for task in ["task-001", "task-002", "task-003"] {
        assert!(files.contains(&format!("work/{task}.txt")), "{files}");
    }
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// With `merge.auto_merge: false` the merge waits for a human, whose merge completes the task.
#[test]
fn without_auto_merge_a_human_merges() {
    let overlay = process_overlay(
        "pipeline:\n- loop:\n  - agent: implementer\n  - agent: verifier\n- action: merge-pr\n",
    );
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop/agents/kustomization.yaml", &overlay),
    ]);
    let github = FakeGitHub::start(REPO).expect("fake GitHub");
    github.set_git_repo(&repo.origin);
    let config = format!(
        "max_workers: 1\npoll_interval: 1s\ndashboard:\n  enabled: false\n\
         merge:\n  auto_merge: false\ngithub:\n  api_url: {}\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 30s\n",
        github.base_url(),
        scripted_agent().display()
    );
    let mut coordinator = start_with(&repo, &config, "normal");
    let polls = |github: &FakeGitHub| {
        github
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.uri.ends_with("/pulls/1"))
            .count()
    };
    wait_for(
        "the merge action to wait",
        &mut coordinator,
        &github,
        || polls(&github) >= 3,
    );
    assert_eq!(github.pull(1)["merged"], false, "merged without a human");
    assert!(
        !github.requests().iter().any(|r| r.method == "PUT"),
        "hyperloop tried to merge"
    );
    github
        .merge_as_human(1, "bob", "merge")
        .expect("human merge");
    exits_ok(coordinator, LIMIT);
    let files = git(&repo.origin, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.contains("work/task-001.txt"), "{files}");
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A pull request GitHub reports as behind its base is brought up to date through the API
/// before it is merged.
#[test]
fn a_pr_behind_its_base_is_updated_then_merged() {
    let (_repo, github, mut coordinator) = scene(&lgtm_overlay(), "normal");
    let n = first_pr_at_gate(&mut coordinator, &github, "the pull request at its gate");
    github.set_mergeable(n, Some(true), "behind");
    github.add_label(n, "lgtm", "reviewer");
    wait_for("the branch update", &mut coordinator, &github, || {
        github
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.uri.ends_with("/update-branch"))
    });
    github.clear_mergeable(n);
    exits_ok(coordinator, LIMIT);
    assert_eq!(github.pull(n)["merged"], true);
    assert_eq!(github.violations(), Vec::<String>::new());
}
