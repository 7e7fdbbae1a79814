//! The `hyperloopctl` binary on real embedded state: a git repository in a temp dir whose
//! state was written through `GitStore`, with tasks placed in the pipeline by the real
//! executor.

mod support;

use std::path::Path;

use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};
use support::{failed, git, ok};

use assert_cmd::Command;
use hyperloop_coordinator::adapters::git_store::GitStore;
use hyperloop_coordinator::compose::{CacheDir, compose_project};
use hyperloop_coordinator::ports::state_store::{
    Assignment, Change, Meta, Revision, SpecRecord, StateStore,
};
use hyperloop_shared::event::{Event, EventKind, SpecChange};
use hyperloop_shared::model::{
    AttemptId, Review, SpecPath, SpecRef, Task, TaskId, TaskStatus, Verdict,
};
use hyperloop_shared::pipeline::{Limits, Outcome, Pipeline, Transition};
use hyperloop_shared::project::Project;
use tempfile::TempDir;

const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A repository with two specs, `max_workers: 1` and no overlay (so the embedded base
/// pipeline applies: loop[implementer, verifier], action merge-pr).
fn repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(root.join("specs")).unwrap();
    std::fs::write(root.join("specs/auth.md"), "# Auth\n\nLogin and logout.\n").unwrap();
    std::fs::write(root.join("specs/api.md"), "# API\n\nSessions.\n").unwrap();
    std::fs::write(root.join(".hyperloop.yaml"), "max_workers: 1\n").unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "specs"]);
    dir
}

fn pipeline(root: &Path) -> Pipeline {
    let cache = CacheDir::new(root.join(".git/test-cache"));
    let (composition, _) = compose_project(root, ".hyperloop/agents", None, &cache).unwrap();
    Project::from_composition(&composition)
        .unwrap()
        .process
        .pipeline
}

/// The transition that puts a task `passes` steps into the pipeline.
fn at_step(pipeline: &Pipeline, passes: usize) -> Transition {
    let limits = Limits {
        max_task_rounds: 50,
        max_action_attempts: 3,
    };
    let mut t = pipeline.start();
    for _ in 0..passes {
        let outcome = match t.next.position().unwrap().step().kind {
            hyperloop_shared::pipeline::StepKind::Agent => Outcome::Agent(Verdict::Pass),
            _ => unreachable!("the base pipeline's first two steps are agents"),
        };
        t = pipeline
            .apply(&t.progress().unwrap(), outcome, limits)
            .unwrap();
    }
    t
}

fn task(id: u64, title: &str, spec: &str, commit: &str) -> Task {
    Task::new(
        TaskId(id),
        title,
        SpecRef {
            path: SpecPath::parse(spec).unwrap(),
            commit: commit.to_owned(),
        },
    )
}

fn event(task: Option<u64>, at_ms: u64, kind: EventKind) -> Change {
    Change::AppendEvent(Event {
        seq: 0,
        at_ms,
        task: task.map(TaskId),
        kind,
    })
}

/// Tasks in every status and several pipeline places, reviews, an assignment and events.
fn populated() -> TempDir {
    let dir = repo();
    let root = dir.path();
    let commit = git(root, &["rev-parse", "HEAD"]);
    let pipeline = pipeline(root);
    let then = now_ms() - 3 * DAY_MS;

    let mut t1 = task(1, "Add login", "specs/auth.md", &commit);
    t1.status = TaskStatus::Complete;
    t1.branch = Some("hyperloop/task-001".into());

    let mut t2 = task(2, "Add logout", "specs/auth.md", &commit);
    at_step(&pipeline, 1).apply_to(&mut t2); // at the verifier
    t2.round = 10;
    t2.deps = vec![TaskId(1)];
    t2.branch = Some("hyperloop/task-002".into());

    let mut t3 = task(3, "Session store", "specs/api.md", &commit);
    t3.deps = vec![TaskId(2)];

    let mut t4 = task(4, "Rate limits", "specs/api.md", &commit);
    at_step(&pipeline, 0).apply_to(&mut t4); // at the implementer, no worker

    let mut t5 = task(5, "Token refresh", "specs/auth.md", &commit);
    at_step(&pipeline, 2).apply_to(&mut t5); // at the merge-pr action

    let mut t6 = task(6, "Password reset", "specs/auth.md", &commit);
    t6.status = TaskStatus::Failed;
    t6.round = 3;
    t6.failure = Some("round limit reached after agent `verifier` failed".into());

    let mut t7 = task(7, "Reset emails", "specs/auth.md", &commit);
    t7.deps = vec![TaskId(6)];

    let review = |round, role: &str, verdict, detail: &str| {
        Change::AddReview(Review {
            task_id: TaskId(2),
            round,
            role: role.into(),
            verdict,
            detail: detail.into(),
        })
    };
    let blob = |path: &str| git(root, &["rev-parse", &format!("HEAD:{path}")]);
    let mut changes = vec![
        Change::PutMeta(Meta {
            next_task_id: 8,
            next_attempt: 13,
            cycle: 4,
            ..Meta::default()
        }),
        Change::PutSpec(SpecRecord {
            path: SpecPath::parse("specs/auth.md").unwrap(),
            blob: blob("specs/auth.md"),
            commit: commit.clone(),
        }),
        Change::PutSpec(SpecRecord {
            path: SpecPath::parse("specs/api.md").unwrap(),
            blob: blob("specs/api.md"),
            commit: commit.clone(),
        }),
        // Recorded out of round order on purpose: describe shows round order.
        review(
            10,
            "verifier",
            Verdict::Fail,
            "logout leaves the session cookie\nsee test_logout",
        ),
        review(9, "verifier", Verdict::Fail, "no logout endpoint"),
        Change::PutAssignment(Assignment {
            task: TaskId(2),
            attempt: AttemptId(12),
            step: t2.position.as_ref().unwrap().to_string(),
            role: "verifier".into(),
            round: 10,
            worker: "local-0".into(),
            dispatched_at_ms: then,
        }),
        event(
            None,
            then,
            EventKind::CoordinatorStarted {
                version: "0.1.0".into(),
                mode: "run".into(),
            },
        ),
        event(
            None,
            then,
            EventKind::SpecChanged {
                path: "specs/api.md".into(),
                change: SpecChange::Added,
            },
        ),
        event(
            Some(2),
            then,
            EventKind::StepDispatched {
                step: t2.position.as_ref().unwrap().to_string(),
                role: "verifier".into(),
                round: 10,
                attempt: 12,
                worker: "local-0".into(),
            },
        ),
        event(
            Some(3),
            then,
            EventKind::TaskCreated {
                title: "Session store".into(),
                spec_ref: t3.spec_ref.clone(),
                deps: vec![TaskId(2)],
            },
        ),
        event(
            Some(6),
            then,
            EventKind::TaskFailed {
                reason: "round limit reached".into(),
            },
        ),
        event(
            None,
            then,
            EventKind::CycleCompleted {
                cycle: 4,
                reaped: 1,
                advanced: 2,
                dispatched: 1,
            },
        ),
    ];
    changes.extend(
        [t1, t2, t3, t4, t5, t6, t7]
            .into_iter()
            .map(Change::PutTask),
    );
    let store = GitStore::open(root, 1000).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(store.apply(Revision(0), changes)).unwrap();
    dir
}

fn ctl(root: &Path, args: &[&str]) -> Output {
    Command::cargo_bin("hyperloopctl")
        .unwrap()
        .env_remove("HYPERLOOP_PATH")
        .env_remove("HYPERLOOP_CONFIG")
        .env_remove("HYPERLOOP_OUTPUT")
        .env_remove("HYPERLOOP_SERVER")
        .env("XDG_CACHE_HOME", root.join(".git/test-cache"))
        .arg("--path")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn get_tasks_prints_an_aligned_table_with_step_and_round() {
    let dir = populated();
    insta::assert_snapshot!(ok(&ctl(dir.path(), &["get", "tasks"])), @r"
    ID         STATUS        STEP                ROUND   SPEC            TITLE
    task-001   complete      -                   0       specs/auth.md   Add login
    task-002   in-progress   agent:verifier      10      specs/auth.md   Add logout
    task-003   not-started   -                   0       specs/api.md    Session store
    task-004   in-progress   agent:implementer   0       specs/api.md    Rate limits
    task-005   in-progress   action:merge-pr     0       specs/auth.md   Token refresh
    task-006   failed        -                   3       specs/auth.md   Password reset
    task-007   not-started   -                   0       specs/auth.md   Reset emails
    ");
}

#[test]
fn get_tasks_filters_by_spec() {
    let dir = populated();
    let out = ok(&ctl(
        dir.path(),
        &["get", "tasks", "--spec", "specs/api.md"],
    ));
    assert!(
        out.contains("task-003") && out.contains("task-004"),
        "{out}"
    );
    assert!(!out.contains("task-001"), "{out}");
}

#[test]
fn get_tasks_as_json_explains_every_waiting_task() {
    let dir = populated();
    let list = json(&ctl(dir.path(), &["get", "tasks", "-o", "json"]));
    assert_eq!(list["kind"], "TaskList");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    let by_id = |id: &str| items.iter().find(|t| t["id"] == id).unwrap().clone();

    let running = by_id("task-002");
    assert_eq!(running["status"], "in-progress");
    assert_eq!(running["step"], "agent:verifier");
    assert_eq!(running["round"], 10);
    assert_eq!(running["worker"], "local-0");
    assert!(running.get("waiting").is_none(), "{running}");
    assert!(
        running["position"]
            .as_str()
            .unwrap()
            .starts_with("0.1/agent:verifier@")
    );

    for (id, reason) in [
        ("task-003", "waiting on dependencies task-002"),
        ("task-004", "runnable, waiting for a free worker slot"),
        ("task-005", "action `merge-pr` pending"),
        ("task-007", "dependency failed: task-006"),
    ] {
        assert_eq!(by_id(id)["waiting"], reason, "{id}");
    }
    assert!(by_id("task-001").get("waiting").is_none());
}

#[test]
fn yaml_output_is_structured_too() {
    let dir = populated();
    let out = ok(&ctl(dir.path(), &["-o", "yaml", "get", "specs"]));
    let value: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(value["kind"].as_str(), Some("SpecList"));
    assert_eq!(value["items"][1]["path"].as_str(), Some("specs/auth.md"));
    assert_eq!(value["items"][1]["tasks"]["in-progress"].as_u64(), Some(2));
}

#[test]
fn get_specs_counts_tasks_per_spec() {
    let dir = populated();
    let root = dir.path();
    let out = ok(&ctl(root, &["get", "specs"]));
    let auth = git(root, &["rev-parse", "--short=7", "HEAD:specs/auth.md"]);
    let api = git(root, &["rev-parse", "--short=7", "HEAD:specs/api.md"]);
    let expected = format!(
        "PATH            BLOB      TASKS\n\
         specs/api.md    {api}   2 (1 not-started, 1 in-progress)\n\
         specs/auth.md   {auth}   5 (1 not-started, 2 in-progress, 1 complete, 1 failed)\n"
    );
    assert_eq!(out, expected);
}

#[test]
fn status_shows_counts_work_in_progress_reasons_assignments_and_the_journal_tail() {
    let dir = populated();
    let out = ok(&ctl(dir.path(), &["status"]));
    for expected in [
        "State:        revision 1, 4 cycle(s) completed; last cycle 3d ago: cycle 4: reaped 1, \
         advanced 2, dispatched 1",
        "Tasks:        7 total: 2 not-started, 3 in-progress, 1 complete, 1 failed",
        "task-002   agent:verifier      10      running on local-0",
        "task-004   agent:implementer   0       runnable, waiting for a free worker slot",
        "task-005   action:merge-pr     0       action `merge-pr` pending",
        "task-003   waiting on dependencies task-002   Session store",
        "task-007   dependency failed: task-006        Reset emails",
        "task-006   3       round limit reached after agent `verifier` failed",
        "task-002   attempt-12   verifier   10      local-0   3d",
        "6     3d    -          cycle_completed       cycle 4: reaped 1, advanced 2, dispatched 1",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("Note:"), "{out}");

    let status = json(&ctl(dir.path(), &["status", "-o", "json"]));
    assert_eq!(status["tasks"]["in-progress"], 3);
    assert_eq!(status["waiting"][0]["id"], "task-003");
    assert_eq!(status["assignments"][0]["worker"], "local-0");
    assert_eq!(status["last_cycle"]["cycle"], 4);
    assert_eq!(status["recent_events"].as_array().unwrap().len(), 6);
}

#[test]
fn describe_task_shows_fields_deps_reviews_in_round_order_and_events() {
    let dir = populated();
    let out = ok(&ctl(dir.path(), &["describe", "task", "task-002"]));
    for expected in [
        "Name:         task-002",
        "Title:        Add logout",
        "Status:       in-progress",
        "Step:         agent:verifier at pipeline[0].loop[1] (0.1/agent:verifier@",
        "Round:        10",
        "Branch:       hyperloop/task-002",
        "Depends on:   task-001 (complete)",
        "Needed by:    task-003",
        "Running:      verifier on local-0 (attempt-12, round 10, dispatched 3d ago)",
        "  Round 10   verifier   fail\n    logout leaves the session cookie\n    see test_logout\n",
        "step_dispatched   verifier round 10 to local-0 (attempt-12)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let round9 = out
        .find("Round 9    verifier   fail\n    no logout endpoint")
        .unwrap();
    let round10 = out.find("Round 10 ").unwrap();
    assert!(round9 < round10, "reviews in round order:\n{out}");

    // Bare numbers work too, and JSON carries the same.
    let detail = json(&ctl(dir.path(), &["describe", "task", "2", "-o", "json"]));
    let rounds: Vec<u64> = detail["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [9, 10]);
    assert_eq!(detail["dependencies"][0]["status"], "complete");
    assert_eq!(detail["assignment"]["attempt"], 12);
}

#[test]
fn describe_task_of_a_waiting_task_says_why() {
    let dir = populated();
    let out = ok(&ctl(dir.path(), &["describe", "task", "task-003"]));
    assert!(
        out.contains("Waiting:      waiting on dependencies task-002"),
        "{out}"
    );
    assert!(
        out.contains("Depends on:   task-002 (in-progress)"),
        "{out}"
    );
    assert!(out.contains("Reviews:\n  none"), "{out}");
}

#[test]
fn describe_spec_lists_its_tasks_and_events() {
    let dir = populated();
    let out = ok(&ctl(dir.path(), &["describe", "spec", "specs/api.md"]));
    for expected in [
        "Path:         specs/api.md",
        "Tasks:        2 (1 not-started, 1 in-progress)",
        "task-004   in-progress   agent:implementer   0       Rate limits",
        "task-003: waiting on dependencies task-002",
        "spec_changed   specs/api.md added",
        "task_created   \"Session store\" for specs/api.md, after task-002",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("task-001"), "{out}");
}

#[test]
fn get_events_pages_with_since_and_limit() {
    let dir = populated();
    let all = ok(&ctl(dir.path(), &["get", "events"]));
    assert!(all.starts_with("SEQ   AGE   TASK       EVENT"), "{all}");
    assert_eq!(all.lines().count(), 7, "{all}");
    assert!(
        all.contains("3     3d    task-002   step_dispatched       verifier round 10 to local-0"),
        "{all}"
    );

    let seqs = |args: &[&str]| -> Vec<u64> {
        let mut full = vec!["get", "events", "-o", "json"];
        full.extend(args);
        json(&ctl(dir.path(), &full))["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&["--limit", "2"]), [5, 6], "newest without --since");
    assert_eq!(
        seqs(&["--since", "2", "--limit", "2"]),
        [3, 4],
        "pages forward"
    );
    assert_eq!(seqs(&["--since", "6"]), Vec::<u64>::new());
}

#[test]
fn a_project_that_does_not_compose_still_shows_tasks_without_reasons() {
    let dir = populated();
    let agents = dir.path().join(".hyperloop/agents");
    std::fs::create_dir_all(&agents).unwrap();
    std::fs::write(
        agents.join("kustomization.yaml"),
        "resources: [missing.yaml]\n",
    )
    .unwrap();
    let out = ok(&ctl(dir.path(), &["status"]));
    assert!(
        out.contains("Note:         the project does not compose"),
        "{out}"
    );
    assert!(out.contains("waiting reasons are not shown"), "{out}");
    assert!(out.contains("task-003   -        Session store"), "{out}");
}

#[test]
fn outside_a_git_repository_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = failed(&ctl(dir.path(), &["status"]), 2);
    assert!(err.contains("is not a git repository"), "{err}");
    assert!(err.contains("--path"), "{err}");
}

#[test]
fn a_repository_without_state_says_to_run_the_coordinator_first() {
    let dir = repo();
    let err = failed(&ctl(dir.path(), &["get", "tasks"]), 1);
    assert!(
        err.contains("no hyperloop state in")
            && err.contains("run `hyperloop-coordinator run` first"),
        "{err}"
    );
}

#[test]
fn an_unknown_task_names_it_and_suggests_listing_tasks() {
    let dir = populated();
    let err = failed(&ctl(dir.path(), &["describe", "task", "task-042"]), 1);
    assert!(err.contains("no task task-042"), "{err}");
    assert!(err.contains("hyperloopctl get tasks"), "{err}");

    let err = failed(&ctl(dir.path(), &["describe", "task", "login"]), 2);
    assert!(err.contains("invalid task id \"login\""), "{err}");

    let err = failed(&ctl(dir.path(), &["describe", "spec", "specs/nope.md"]), 1);
    assert!(err.contains("hyperloopctl get specs"), "{err}");
}

#[test]
fn commands_that_need_a_running_coordinator_say_so_with_exit_2() {
    let dir = populated();
    for args in [
        &["approve", "task-002"][..],
        &["cancel", "task-002"],
        &["logs", "task-002", "-f"],
        &["drain", "local-0"],
        &["get", "workers"],
        &["describe", "worker", "local-0"],
    ] {
        let err = failed(&ctl(dir.path(), args), 2);
        assert!(
            err.contains("needs a running coordinator") && err.contains("--server URL"),
            "{args:?}: {err}"
        );
    }
    // Nothing listens there: exit 1 naming the URL and what to check.
    let err = failed(
        &ctl(dir.path(), &["--server", "http://127.0.0.1:9", "status"]),
        1,
    );
    assert!(
        err.contains("http://127.0.0.1:9") && err.contains("coordinator is running"),
        "{err}"
    );
    let err = failed(&ctl(dir.path(), &["get", "specs", "--since", "3"]), 2);
    assert!(err.contains("takes no filters"), "{err}");
}
