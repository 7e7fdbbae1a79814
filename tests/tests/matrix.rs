//! Matrix notifications against a real Synapse homeserver (`hyperloop_tests::synapse`), with
//! the real coordinator binary and the scripted agent: the bot registers itself and creates a
//! room once, each task's messages form one thread, `verbose` adds spawns, a second run sends
//! nothing twice, an existing account and room work without registering, a merge waiting for
//! a human is posted with the command that clears it, a homeserver that dies mid-run costs
//! the run nothing, and with two coordinators over etcd every event is sent exactly once
//! although the leader is killed mid-run.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyperloop_coordinator::adapters::etcd_store::EtcdStore;
use hyperloop_coordinator::adapters::matrix::{JOURNAL_FIELD, SEQ_FIELD, message};
use hyperloop_coordinator::ports::state_store::StateStore;
use hyperloop_tests::etcd::EtcdCluster;
use hyperloop_tests::repo::{TestRepo, coordinator_bin, git, logged_command, scripted_agent};
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
    // Each event's message carries its journal sequence number, once.
    let seqs: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["content"][SEQ_FIELD].as_u64())
        .collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert!(seqs.is_sorted() && unique == seqs, "{seqs:?}");
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

/// Two coordinators over a real etcd, each in its own checkout, and two workers; the bot
/// follows the journal in etcd.
struct Pair {
    repo: TestRepo,
    etcd: EtcdCluster,
    coordinators: Vec<Option<Child>>,
    workers: Vec<Child>,
}

const PREFIX: &str = "/hyperloop-matrix-test";
const JOIN_TOKEN: &str = "matrix-join-token-7Q";

impl Pair {
    fn new(synapse: &Synapse) -> Pair {
        let config = format!(
            "max_workers: 2\npoll_interval: 1s\nmax_task_rounds: 4\n\
             dashboard:\n  enabled: false\n  events_limit: 100000\n\
             agent:\n  runtime: command\n  command: [\"sh\", \"{}\"]\n  timeout: 60s\n\
             \x20 env_passthrough: [SCRIPTED_LOG, SCRIPTED_MODE, SCRIPTED_DELAY]\n\
             observability:\n  matrix:\n    homeserver: {}\n    \
             registration_token_env: MATRIX_REGISTRATION_TOKEN\n",
            scripted_agent().display(),
            synapse.url
        );
        let repo = TestRepo::new(&[
            ("specs/a.md", "# A\n\nThe repository records work for A.\n"),
            ("specs/b.md", "# B\n\nThe repository records work for B.\n"),
            (".hyperloop.yaml", &config),
        ]);
        git(
            repo.dir.path(),
            &["clone", "-q", "origin.git", "checkout-1"],
        );
        Pair {
            repo,
            etcd: EtcdCluster::start(1),
            coordinators: Vec::new(),
            workers: Vec::new(),
        }
    }

    fn checkout(&self, i: usize) -> std::path::PathBuf {
        match i {
            0 => self.repo.checkout.clone(),
            _ => self.repo.dir.path().join(format!("checkout-{i}")),
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.repo.dir.path().join(format!("{name}.log")))
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        ["coordinator-0", "coordinator-1", "worker-w1", "worker-w2"]
            .iter()
            .map(|name| format!("\n===== {name}\n{}", self.log(name)))
            .collect()
    }

    fn command(&self, program: std::path::PathBuf, log: &str) -> Command {
        let log = self.repo.dir.path().join(format!("{log}.log"));
        logged_command(&program, self.repo.dir.path(), &log)
    }

    fn start_coordinator(&mut self, i: usize, port: u16, token: &str) {
        let mut cmd = self.command(coordinator_bin(), &format!("coordinator-{i}"));
        cmd.args(["run", "--path"])
            .arg(self.checkout(i))
            .args(["--local-workers", "0", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--etcd", &self.etcd.endpoints().join(",")])
            .args(["--etcd-prefix", PREFIX, "--join-token", JOIN_TOKEN])
            .env("MATRIX_REGISTRATION_TOKEN", token);
        self.coordinators
            .push(Some(cmd.spawn().expect("coordinator starts")));
    }

    fn start_worker(&mut self, name: &str, join: &str) {
        let mut cmd = self.command(
            coordinator_bin().with_file_name("hyperloop-worker"),
            &format!("worker-{name}"),
        );
        cmd.args(["--join", join, "--token", JOIN_TOKEN, "--name", name])
            .args(["--capacity", "1", "--connect-timeout", "0", "--work-dir"])
            .arg(self.repo.dir.path().join(format!("work-{name}")))
            .envs(hyperloop_tests::scripted_log(
                self.repo.dir.path().join(format!("steps-{name}.log")),
            ))
            .env("SCRIPTED_MODE", "normal")
            .env("SCRIPTED_DELAY", "1");
        self.workers.push(cmd.spawn().expect("worker starts"));
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut(&Pair) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < RUN_TIMEOUT,
                "timed out waiting for {what}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The room, from a checkout's cached Matrix state, once its bot has found one.
    fn room(&self, i: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.checkout(i).join(STATE_FILE)).ok()?;
        let state: Value = serde_json::from_str(&text).ok()?;
        state["room_id"].as_str().map(str::to_owned)
    }

    /// The journal in etcd, oldest first.
    fn events(&self) -> Vec<hyperloop_shared::event::Event> {
        let store = EtcdStore::new(&self.etcd.endpoints(), PREFIX, 100_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(store.events(0, 100_000))
            .expect("read the journal from etcd")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in self
            .coordinators
            .iter_mut()
            .flatten()
            .chain(&mut self.workers)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sequence numbers of the bot's messages in `room`, with how often each was sent.
fn sent_seqs(synapse: &Synapse, room: &str) -> BTreeMap<u64, usize> {
    let mut seqs = BTreeMap::new();
    for message in synapse.messages(room) {
        if let Some(seq) = message["content"][SEQ_FIELD].as_u64() {
            assert!(
                message["content"][JOURNAL_FIELD].is_string(),
                "a message without its journal: {message:#}"
            );
            *seqs.entry(seq).or_insert(0) += 1;
        }
    }
    seqs
}

#[test]
fn with_two_coordinators_over_etcd_a_killed_leaders_successor_sends_each_event_exactly_once() {
    let mut synapse = Synapse::start();
    let mut pair = Pair::new(&synapse);
    let ports = [hyperloop_tests::free_port(), hyperloop_tests::free_port()];
    let token = synapse.registration_token.clone();
    pair.start_coordinator(0, ports[0], &token);
    pair.wait_for("coordinator-0 to lead", |p| {
        p.log("coordinator-0").contains("leading")
    });
    pair.start_coordinator(1, ports[1], &token);
    let join = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        ports[0], ports[1]
    );
    pair.start_worker("w1", &join);
    pair.start_worker("w2", &join);
    // Mid-run: the first results are in the room, more work is to come.
    pair.wait_for("a result in the room", |p| {
        p.room(0).is_some_and(|room| {
            synapse
                .messages(&room)
                .iter()
                .any(|m| body(m).contains("implementer pass"))
        })
    });
    let room = pair.room(0).expect("room");
    let before_kill = sent_seqs(&synapse, &room);
    // A Matrix outage, during which the leader journals events it cannot send…
    synapse.kill();
    let sent_last = *before_kill.keys().last().expect("a message with its seq");
    let unsent = |p: &Pair| -> Vec<u64> {
        p.events()
            .iter()
            .filter(|e| e.seq > sent_last && message::render(e, false).is_some())
            .map(|e| e.seq)
            .collect()
    };
    pair.wait_for("the leader to journal events it cannot send", |p| {
        !unsent(p).is_empty()
    });
    // …then kill -9: what the leader queued is lost with it; its successor must send it.
    let mut leader = pair.coordinators[0].take().expect("running");
    let _ = leader.kill();
    let _ = leader.wait();
    let left_unsent = unsent(&pair);
    synapse.restart();

    let mut standby = pair.coordinators[1].take().expect("running");
    let mut code = None;
    pair.wait_for("the standby to finish the run", |_| {
        code = standby.try_wait().expect("wait").map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(0)), "{}", pair.logs());
    let standby_log = pair.log("coordinator-1");
    assert!(standby_log.contains("leading"), "{}", pair.logs());

    // The standby found the bot and the room the leader made: no second registration.
    assert!(
        standby_log.contains("logged in as the existing Matrix bot"),
        "{}",
        pair.logs()
    );
    assert_eq!(pair.room(1).as_deref(), Some(room.as_str()));
    let token = synapse.admin(
        "GET",
        &format!("/_synapse/admin/v1/registration_tokens/{token}"),
        None,
    );
    assert_eq!(token["completed"], 1, "{token:#}");

    // Every journaled event the audience rules send is in the room exactly once.
    let sent = sent_seqs(&synapse, &room);
    let expected: Vec<u64> = pair
        .events()
        .iter()
        .filter(|e| message::render(e, false).is_some())
        .map(|e| e.seq)
        .collect();
    let missing: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|seq| !sent.contains_key(seq))
        .collect();
    let twice: Vec<(&u64, &usize)> = sent.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<&u64> = sent.keys().filter(|s| !expected.contains(s)).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && unexpected.is_empty(),
        "missing {missing:?}, sent twice {twice:?}, not journaled {unexpected:?}{}",
        pair.logs()
    );
    // What the killed leader journaled but never sent came from its successor.
    assert!(
        left_unsent.iter().all(|seq| sent.get(seq) == Some(&1)),
        "{left_unsent:?} {sent:?}"
    );
    let bodies: Vec<String> = synapse
        .messages(&room)
        .iter()
        .map(|m| body(m).to_owned())
        .collect();
    assert!(
        bodies
            .last()
            .is_some_and(|b| b.starts_with("hyperloop halted")),
        "{bodies:#?}"
    );
}
