//! Matrix notifications against a real Synapse homeserver (`hyperloop_tests::synapse`), with
//! the real coordinator binary and the scripted agent: the bot registers itself and creates a
//! room once, each task's messages form one thread, `verbose` adds spawns, a second run sends
//! nothing twice, an existing account and room work without registering, a merge waiting for
//! a human is posted with the command that clears it, and a homeserver that dies mid-run costs
//! the run nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyperloop_tests::repo::{TestRepo, coordinator_bin, git, scripted_agent};
use hyperloop_tests::synapse::Synapse;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const STATE_FILE: &str = ".hyperloop/matrix-state.json";

fn config(matrix: Option<(&Synapse, bool)>) -> String {
    let mut config = format!(
        "max_workers: 1\npoll_interval: 1s\nmax_task_rounds: 3\n\
         agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 20s\n\
         \x20 env_passthrough: [SCRIPTED_LOG]\n\
         \x20 git_identity: {{name: Bot, email: bot@example.invalid}}\n",
        scripted_agent().display()
    );
    if let Some((synapse, verbose)) = matrix {
        config.push_str(&format!(
            "observability:\n  matrix:\n    homeserver: {}\n    \
             registration_token_env: MATRIX_REGISTRATION_TOKEN\n    invite_user: '{}'\n    \
             verbose: {verbose}\n",
            synapse.url, synapse.admin_user
        ));
    }
    config
}

fn repo(matrix: Option<(&Synapse, bool)>) -> TestRepo {
    TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config(matrix)),
    ])
}

/// Runs the coordinator to its end (exit 0 required), with `token` in both
/// MATRIX_REGISTRATION_TOKEN and MATRIX_ACCESS_TOKEN; `during` is called every few
/// milliseconds while it runs. Returns stderr and how long the run took.
fn run(
    repo: &TestRepo,
    token: Option<&str>,
    mut during: impl FnMut(&TestRepo),
) -> (String, Duration) {
    let log = repo.dir.path().join("steps.log");
    let mut command = Command::new(coordinator_bin());
    command
        .args(["run", "--path"])
        .arg(&repo.checkout)
        .args(["--listen", "127.0.0.1:0"])
        .envs(hyperloop_tests::scripted_log(&log))
        .env("XDG_CACHE_HOME", repo.dir.path().join("cache"))
        .env_remove("HYPERLOOP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("MATRIX_REGISTRATION_TOKEN", token);
        command.env("MATRIX_ACCESS_TOKEN", token);
    }
    let started = Instant::now();
    let child = command.spawn().expect("coordinator starts");
    let (code, stderr) =
        hyperloop_tests::wait_with_limit_during(child, RUN_TIMEOUT, || during(repo));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "within {RUN_TIMEOUT:?}: {stderr}");
    (stderr, took)
}

fn state(repo: &TestRepo) -> Value {
    let text = std::fs::read_to_string(repo.checkout.join(STATE_FILE))
        .unwrap_or_else(|e| panic!("no {STATE_FILE}: {e}"));
    serde_json::from_str(&text).expect("state JSON")
}

fn body(message: &Value) -> &str {
    message["content"]["body"].as_str().unwrap_or_default()
}

/// The thread root a message replies in, if it is in a thread.
fn thread(message: &Value) -> Option<&str> {
    let relation = &message["content"]["m.relates_to"];
    (relation["rel_type"] == "m.thread").then(|| relation["event_id"].as_str().unwrap_or(""))
}

/// The messages of `task`'s thread (its root first).
fn task_thread<'a>(messages: &'a [Value], task: &str) -> Vec<&'a Value> {
    let root = messages
        .iter()
        .find(|m| thread(m).is_none() && body(m).starts_with(&format!("{task}: ")))
        .unwrap_or_else(|| panic!("no root message for {task}: {messages:#?}"));
    let root_id = root["event_id"].as_str().expect("event id");
    std::iter::once(root)
        .chain(messages.iter().filter(|m| thread(m) == Some(root_id)))
        .collect()
}

fn bodies(messages: &[&Value]) -> Vec<String> {
    messages.iter().map(|m| body(m).to_owned()).collect()
}

#[test]
fn the_bot_registers_creates_a_room_and_threads_each_tasks_high_signal_messages() {
    let synapse = Synapse::start();
    let repo = repo(Some((&synapse, false)));
    let (stderr, _) = run(&repo, Some(&synapse.registration_token), |_| {});

    let state = state(&repo);
    let room = state["room_id"].as_str().expect("room id");
    assert_eq!(state["user_id"], "@hyperloop-checkout:localhost");
    assert!(stderr.contains("Matrix notifications are on"), "{stderr}");
    assert!(stderr.contains(room), "{stderr}");
    // No secret in the logs.
    assert!(!stderr.contains(&synapse.registration_token), "{stderr}");
    assert!(
        !stderr.contains(state["access_token"].as_str().expect("token")),
        "{stderr}"
    );
    // The state file is git-ignored.
    let status = git(&repo.checkout, &["status", "--porcelain", "--ignored"]);
    assert!(
        status.contains(&format!("!! {STATE_FILE}")) || status.contains("!! .hyperloop/"),
        "{status}"
    );

    let messages = synapse.messages(room);
    let thread = bodies(&task_thread(&messages, "task-001"));
    let has = |needle: &str| thread.iter().any(|b| b.contains(needle));
    assert!(has("implementer pass"), "{thread:#?}");
    assert!(has("verifier pass"), "{thread:#?}");
    assert!(has("merged"), "{thread:#?}");
    assert!(has("completed"), "{thread:#?}");
    assert!(!has("spawned"), "{thread:#?}");
    // Outside the thread: its root, messages about no task (the process improver's) and
    // the halt, last.
    let top: Vec<&str> = messages
        .iter()
        .filter(|m| self::thread(m).is_none())
        .map(body)
        .collect();
    assert_eq!(
        top.iter().filter(|b| b.contains("task-001")).count(),
        1,
        "{top:#?}"
    );
    assert!(
        top.last()
            .is_some_and(|b| b.starts_with("hyperloop halted")),
        "{top:#?}"
    );
    // The invited user is invited.
    let encoded = room.replace('!', "%21").replace(':', "%3A");
    let room_state = synapse.admin(
        "GET",
        &format!("/_synapse/admin/v1/rooms/{encoded}/state"),
        None,
    );
    let invited = room_state["state"]
        .as_array()
        .expect("state")
        .iter()
        .any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == synapse.admin_user.as_str()
                && e["content"]["membership"] == "invite"
        });
    assert!(invited, "{room_state:#}");
}

#[test]
fn spawn_messages_are_sent_only_with_verbose() {
    let synapse = Synapse::start();
    let repo = repo(Some((&synapse, true)));
    run(&repo, Some(&synapse.registration_token), |_| {});
    let messages = synapse.messages(state(&repo)["room_id"].as_str().expect("room"));
    let thread = bodies(&task_thread(&messages, "task-001"));
    assert!(
        thread.iter().any(|b| b.contains("spawned implementer")),
        "{thread:#?}"
    );
    assert!(
        thread.iter().any(|b| b.contains("spawned verifier")),
        "{thread:#?}"
    );
    // The quiet run is checked in the test above (no "spawned" there).
}

#[test]
fn a_second_run_reuses_the_saved_bot_and_room_and_sends_no_event_twice() {
    let synapse = Synapse::start();
    let repo = repo(Some((&synapse, false)));
    run(&repo, Some(&synapse.registration_token), |_| {});
    let first = state(&repo);
    let room = first["room_id"].as_str().expect("room").to_owned();
    let sent_first = synapse.messages(&room).len();

    // New work for the second run; `git add -A` must not pick up the state file.
    repo.commit(
        &[("specs/c.md", "# C\n\nThe repository records work for C.\n")],
        "Add C",
    );
    let tracked = git(&repo.checkout, &["ls-files"]);
    assert!(!tracked.contains("matrix-state"), "{tracked}");
    // Without the registration token: a second registration would fail the setup.
    let (stderr, _) = run(&repo, Some("not-a-valid-token"), |_| {});
    assert!(stderr.contains("Matrix notifications are on"), "{stderr}");
    let second = state(&repo);
    assert_eq!(second["room_id"], first["room_id"]);
    assert_eq!(second["access_token"], first["access_token"]);
    assert!(second["last_seq"].as_u64() > first["last_seq"].as_u64());

    // Registered once: the token was used once, and the server has the admin and the bot.
    let token = synapse.admin(
        "GET",
        &format!(
            "/_synapse/admin/v1/registration_tokens/{}",
            synapse.registration_token
        ),
        None,
    );
    assert_eq!(token["completed"], 1, "{token:#}");
    let users = synapse.admin("GET", "/_synapse/admin/v2/users", None);
    assert_eq!(users["total"], 2, "{users:#}");

    let messages = synapse.messages(&room);
    assert!(messages.len() > sent_first);
    // task-001's thread is unchanged by the second run; task-002 has its own.
    let task1 = bodies(&task_thread(&messages, "task-001"));
    let completed = task1.iter().filter(|b| b.contains("completed")).count();
    assert_eq!(completed, 1, "{task1:#?}");
    let task2 = bodies(&task_thread(&messages, "task-002"));
    assert!(task2.iter().any(|b| b.contains("completed")), "{task2:#?}");
    // Every message body of a task appears once: nothing was sent twice.
    let mut all: Vec<&str> = messages.iter().map(body).collect();
    let halts = all
        .iter()
        .filter(|b| b.starts_with("hyperloop halted"))
        .count();
    assert_eq!(halts, 2, "{all:#?}");
    all.retain(|b| !b.starts_with("hyperloop halted"));
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count, "a message was sent twice: {all:#?}");
}

#[test]
fn an_existing_account_and_room_are_used_without_registering() {
    let synapse = Synapse::start();
    let (user, token) = synapse.user("operator-bot");
    let room = synapse.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&token),
        Some(serde_json::json!({"name": "ops"})),
    );
    let room = room["body"]["room_id"].as_str().expect("room").to_owned();
    let matrix = format!(
        "observability:\n  matrix:\n    homeserver: {}\n    token_env: MATRIX_ACCESS_TOKEN\n    \
         room_id: '{room}'\n",
        synapse.url
    );
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &format!("{}{matrix}", config(None))),
    ]);
    let (stderr, _) = run(&repo, Some(&token), |_| {});
    assert!(stderr.contains(&room), "{stderr}");
    assert!(!stderr.contains(&token), "{stderr}");
    let messages = synapse.messages(&room);
    assert!(messages.iter().all(|m| m["sender"] == user.as_str()));
    let thread = bodies(&task_thread(&messages, "task-001"));
    assert!(
        thread.iter().any(|b| b.contains("completed")),
        "{thread:#?}"
    );
    // Nobody registered: the token was never used, and the server has the admin and the bot.
    let users = synapse.admin("GET", "/_synapse/admin/v2/users", None);
    assert_eq!(users["total"], 2, "{users:#}");
}

#[test]
fn a_rejected_registration_token_turns_notifications_off_and_the_run_still_converges() {
    let synapse = Synapse::start();
    let repo = repo(Some((&synapse, false)));
    let (stderr, _) = run(&repo, Some("wrong-registration-token"), |_| {});
    assert!(
        stderr.contains("Matrix notifications are off for this run"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-registration-token"), "{stderr}");
    assert!(repo.files("main").contains(&"work/task-001.txt".to_owned()));
    let users = synapse.admin("GET", "/_synapse/admin/v2/users", None);
    assert_eq!(users["total"], 1, "{users:#}");
}

#[test]
fn a_merge_waiting_for_a_human_is_posted_with_the_command_that_clears_it() {
    let synapse = Synapse::start();
    let config = config(Some((&synapse, false))).replace(
        "max_task_rounds: 3\n",
        "max_task_rounds: 3\nmerge:\n  auto_merge: false\n",
    );
    let repo = TestRepo::new(&[
        ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
        (".hyperloop.yaml", &config),
    ]);
    let mut approved = false;
    let mut last_look = Instant::now();
    let (stderr, _) = run(&repo, Some(&synapse.registration_token), |repo| {
        if approved || last_look.elapsed() < Duration::from_millis(300) {
            return;
        }
        last_look = Instant::now();
        let Ok(text) = std::fs::read_to_string(repo.checkout.join(STATE_FILE)) else {
            return;
        };
        let state: Value = serde_json::from_str(&text).unwrap_or_default();
        let Some(room) = state["room_id"].as_str() else {
            return;
        };
        // Approve as the message says, only once it is in the room.
        let waiting = synapse
            .messages(room)
            .iter()
            .any(|m| thread(m).is_some() && body(m).contains("`hyperloopctl approve task-001`"));
        if waiting {
            let out = Command::new(coordinator_bin().with_file_name("hyperloopctl"))
                .args(["approve", "task-001"])
                .current_dir(&repo.checkout)
                .env_remove("HYPERLOOP_SERVER")
                .env_remove("HYPERLOOP_PATH")
                .output()
                .expect("hyperloopctl runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            approved = true;
        }
    });
    assert!(approved, "no waiting message was posted:\n{stderr}");
    let messages = synapse.messages(state(&repo)["room_id"].as_str().expect("room"));
    let thread = bodies(&task_thread(&messages, "task-001"));
    assert!(thread.iter().any(|b| b.contains("merged")), "{thread:#?}");
}

fn has_thread(repo: &TestRepo) -> bool {
    std::fs::read_to_string(repo.checkout.join(STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|s| s["threads"].as_object().is_some_and(|t| !t.is_empty()))
}

#[test]
fn a_homeserver_that_dies_mid_run_costs_the_run_nothing() {
    // The same run without Matrix, for reference.
    let (_, reference) = run(&repo(None), None, |_| {});

    let mut synapse = Synapse::start();
    let repo = repo(Some((&synapse, false)));
    let token = synapse.registration_token.clone();
    let mut killed = false;
    let (stderr, took) = run(&repo, Some(&token), |repo| {
        if !killed && has_thread(repo) {
            synapse.kill();
            killed = true;
        }
    });
    assert!(
        killed,
        "the run ended before a task's thread was opened:\n{stderr}"
    );
    assert!(stderr.contains("Matrix send failed"), "{stderr}");
    assert!(
        repo.files("main").contains(&"work/task-001.txt".to_owned()),
        "{stderr}"
    );
    assert!(
        took < reference + Duration::from_secs(5),
        "with Matrix down the run took {took:?}, without Matrix {reference:?}"
    );
    let status = git(&repo.checkout, &["status", "--porcelain"]);
    assert!(!status.contains("matrix-state"), "{status}");
}
