//! `hyperloopctl --server` against an in-process AdminService (over a MemoryStore, a live view
//! and a fake loop answering commands), driving the real binary.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use hyperloop_coordinator::adapters::memory_store::MemoryStore;
use hyperloop_coordinator::admin;
use hyperloop_coordinator::compose::{CacheDir, compose_project};
use hyperloop_coordinator::control::{
    AttemptView, Command as LoopCommand, CommandError, LeaderView, Live, WorkerView,
};
use hyperloop_coordinator::discovery::{Gatekeeper, Repository};
use hyperloop_coordinator::logs::LogHub;
use hyperloop_coordinator::ports::state_store::{Change, Revision, StateStore};
use hyperloop_coordinator::tls::server_tls;
use hyperloop_proto::v1::{AttemptPhase, LogLine, LogSource};
use hyperloop_shared::config::{Config, Overrides, TlsConfig};
use hyperloop_shared::event::{Event, EventKind};
use hyperloop_shared::model::{SpecPath, SpecRef, Task, TaskId};
use hyperloop_shared::project::Project;
use support::{failed, git, ok};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;

fn task(id: u64, deps: &[u64]) -> Task {
    let mut t = Task::new(
        TaskId(id),
        format!("Task {id}"),
        SpecRef {
            path: SpecPath::parse("specs/auth.md").unwrap(),
            commit: "0123abcd".into(),
        },
    );
    t.deps = deps.iter().copied().map(TaskId).collect();
    t
}

/// The base project, composed in a throwaway repository.
fn project() -> Project {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    std::fs::write(root.join("README.md"), "x\n").unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "init"]);
    let cache = CacheDir::new(root.join(".git/test-cache"));
    let (composition, _) = compose_project(root, ".hyperloop/agents", None, &cache).unwrap();
    Project::from_composition(&composition).unwrap()
}

fn worker(name: &str) -> WorkerView {
    WorkerView {
        name: name.into(),
        worker_id: format!("{name}-id"),
        capacity: 2,
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        version: "0.1.0".into(),
        last_heartbeat_ms: 1,
        connected_since_ms: 1,
        draining: false,
        local: false,
        attempts: vec![AttemptView {
            attempt: 5,
            task_id: "task-003".into(),
            step_path: String::new(),
            role: "implementer".into(),
            round: 1,
            worker: name.into(),
            phase: AttemptPhase::Running,
            started_at_ms: 1,
            deadline_ms: 0,
            turns: 2,
            cost_usd: 0.1,
        }],
    }
}

/// A served AdminService on loopback and what the fake loop received.
struct Harness {
    runtime: tokio::runtime::Runtime,
    url: String,
    logs: Arc<LogHub>,
    received: Arc<Mutex<Vec<String>>>,
    _live: watch::Sender<Arc<Live>>,
}

struct Options {
    leading: bool,
    tls: TlsConfig,
    /// The coordinator's settings as its operator gave them (listen address, tokens), and
    /// more of its `.hyperloop.yaml`.
    overrides: Overrides,
    yaml: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            leading: true,
            tls: TlsConfig::default(),
            overrides: Overrides::default(),
            yaml: "",
        }
    }
}

fn serve(options: Options) -> Harness {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new(1000));
    let created = |id: u64| {
        Change::AppendEvent(Event {
            seq: 0,
            at_ms: 1,
            task: Some(TaskId(id)),
            kind: EventKind::TaskCreated {
                title: format!("Task {id}"),
                spec_ref: task(id, &[]).spec_ref,
                deps: vec![],
            },
        })
    };
    runtime
        .block_on(store.apply(
            Revision(0),
            vec![
                Change::PutTask(task(1, &[])),
                Change::PutTask(task(2, &[1])),
                created(1),
                created(2),
            ],
        ))
        .unwrap();
    // Every agent needs `gpu=yes`, which no connected worker has.
    let config = Config::load(
        &format!("agent:\n  labels: {{gpu: \"yes\"}}\n{}", options.yaml),
        ".hyperloop.yaml",
        &BTreeMap::new(),
        &options.overrides,
    )
    .unwrap();
    let leader_url = "http://leader.example:7070".to_owned();
    let live = Live {
        coordinator_id: if options.leading {
            leader_url.clone()
        } else {
            "http://standby.example:7070".into()
        },
        leader: Some(LeaderView {
            address: leader_url,
            term: 3,
            since_ms: 1,
        }),
        leading: options.leading,
        workers: vec![worker("w1")],
        cycle: 7,
        last_cycle_at_ms: 1,
        converged: false,
        queued: 0,
        project: Some(Arc::new(project())),
        tasks: Vec::new(),
    };
    let (live_tx, live_rx) = watch::channel(Arc::new(live));
    let (tx, mut rx) = mpsc::channel::<LoopCommand>(8);
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&received);
    runtime.spawn(async move {
        while let Some(command) = rx.recv().await {
            let missing = |what: String| CommandError::NotFound(format!("no {what}"));
            match command {
                LoopCommand::Approve {
                    task: id,
                    gate,
                    comment,
                    reply,
                } => {
                    seen.lock()
                        .unwrap()
                        .push(format!("approve {id} {gate:?} {comment}"));
                    let answer = if id.0 == 1 {
                        Ok(task(1, &[]))
                    } else {
                        Err(missing(id.to_string()))
                    };
                    let _ = reply.send(answer);
                }
                LoopCommand::Cancel {
                    task: id,
                    reason,
                    reply,
                } => {
                    seen.lock().unwrap().push(format!("cancel {id} {reason}"));
                    let _ = reply.send(Ok(task(id.0, &[])));
                }
                LoopCommand::RetrySpec { path, reply } => {
                    seen.lock().unwrap().push(format!("retry {path}"));
                    let answer = if path.as_str() == "specs/a.md" {
                        Ok(path)
                    } else {
                        Err(CommandError::FailedPrecondition(format!(
                            "{path} was not given up"
                        )))
                    };
                    let _ = reply.send(answer);
                }
                LoopCommand::Drain {
                    worker: name,
                    reply,
                } => {
                    seen.lock().unwrap().push(format!("drain {name}"));
                    let answer = if name == "w1" {
                        Ok(WorkerView {
                            draining: true,
                            ..worker("w1")
                        })
                    } else {
                        Err(missing(format!("worker {name}")))
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    });
    let logs = Arc::new(LogHub::new());
    // hyperloopctl runs in this crate's directory: serve the repository it stands in.
    let here = std::env::current_dir().unwrap();
    let gatekeeper = Gatekeeper {
        serves: Repository::discover(&here).unwrap_or(Repository {
            git_dir: here,
            origin: None,
        }),
        shared_by_origin: false,
    };
    let service = admin::service(
        store,
        live_rx,
        Some(tx),
        Arc::clone(&logs),
        Arc::new(config),
        gatekeeper,
    );
    let tls = server_tls(&options.tls).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime.spawn(async move {
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        builder
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Harness {
        runtime,
        url: format!("{scheme}://127.0.0.1:{port}"),
        logs,
        received,
        _live: live_tx,
    }
}

impl Harness {
    fn ctl(&self, args: &[&str]) -> Output {
        Command::cargo_bin("hyperloopctl")
            .unwrap()
            .env_remove("HYPERLOOP_OUTPUT")
            .env_remove("HYPERLOOP_TLS_CA")
            .env_remove("HYPERLOOP_TLS_CERT")
            .env_remove("HYPERLOOP_TLS_KEY")
            .env_remove("HYPERLOOP_ADMIN_TOKEN")
            .env("HYPERLOOP_SERVER", &self.url)
            .args(args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap()
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

#[test]
fn status_shows_the_leader_workers_and_why_tasks_wait() {
    let h = serve(Options::default());
    let out = ok(&h.ctl(&["status"]));
    assert!(
        out.contains("Leader:       http://leader.example:7070"),
        "{out}"
    );
    assert!(
        out.contains("w1") && out.contains("1/2") && out.contains("zone=a"),
        "{out}"
    );
    assert!(
        out.contains("no_matching_worker") && out.contains("gpu=yes"),
        "{out}"
    );
    assert!(
        out.contains("dependencies") && out.contains("task-001"),
        "{out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&h.ctl(&["status", "-o", "json"]))).unwrap();
    assert_eq!(json["cycle"], 7);
    assert_eq!(json["workers"][0]["load"], 1);
    let reasons: Vec<&str> = json["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["no_matching_worker", "dependencies"]);
}

#[test]
fn every_read_works_in_every_format() {
    let h = serve(Options::default());
    for args in [
        &["get", "tasks"][..],
        &["get", "tasks", "--spec", "specs/auth.md"],
        &["get", "specs"],
        &["get", "workers"],
        &["get", "events"],
        &["get", "events", "--since", "1"],
        &["describe", "task", "task-002"],
        &["describe", "spec", "specs/auth.md"],
        &["describe", "worker", "w1"],
    ] {
        let table = ok(&h.ctl(args));
        assert!(!table.is_empty(), "{args:?}");
        let json = ok(&h.ctl(&[args, &["-o", "json"]].concat()));
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let yaml = ok(&h.ctl(&[args, &["-o", "yaml"]].concat()));
        serde_yaml::from_str::<serde_yaml::Value>(&yaml)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    let tasks = ok(&h.ctl(&["get", "tasks"]));
    assert!(
        tasks.contains("task-001") && tasks.contains("Task 2"),
        "{tasks}"
    );
    let events = ok(&h.ctl(&["get", "events", "--since", "1"]));
    assert!(
        events.contains("task_created") && !events.contains("\n1 "),
        "{events}"
    );
    let task = ok(&h.ctl(&["describe", "task", "2"]));
    assert!(task.contains("task-001 (not-started)"), "{task}");
    let worker = ok(&h.ctl(&["describe", "worker", "w1"]));
    assert!(
        worker.contains("task-003") && worker.contains("ATTEMPT_PHASE_RUNNING"),
        "{worker}"
    );

    let err = failed(&h.ctl(&["describe", "task", "task-042"]), 2);
    assert!(err.contains("no task task-042"), "{err}");
    let err = failed(&h.ctl(&["describe", "worker", "nope"]), 2);
    assert!(err.contains("no worker `nope`"), "{err}");
    let err = failed(&h.ctl(&["describe", "spec", "../x.md"]), 2);
    assert!(err.contains("`path`"), "{err}");
}

#[test]
fn approve_cancel_and_drain_reach_the_loop() {
    let h = serve(Options::default());
    let out = ok(&h.ctl(&[
        "approve",
        "task-001",
        "--gate",
        "lgtm",
        "--comment",
        "ship it",
    ]));
    assert_eq!(out, "task-001 approved\n");
    ok(&h.ctl(&["cancel", "1", "--reason", "obsolete"]));
    let out = ok(&h.ctl(&["drain", "w1", "-o", "json"]));
    assert!(out.contains("\"draining\": true"), "{out}");
    assert_eq!(
        h.received(),
        [
            "approve task-001 Some(\"lgtm\") ship it",
            "cancel task-001 obsolete",
            "drain w1"
        ]
    );

    let err = failed(&h.ctl(&["approve", "task-009"]), 2);
    assert!(err.contains("no task-009"), "{err}");
    let err = failed(&h.ctl(&["drain", "w9"]), 2);
    assert!(err.contains("no worker w9"), "{err}");
    let err = failed(&h.ctl(&["approve", "login"]), 2);
    assert!(err.contains("invalid task id"), "{err}");
}

#[test]
fn an_oversized_reason_or_request_is_refused_and_never_reaches_the_loop() {
    let h = serve(Options::default());
    let long = "x".repeat(admin::MAX_NOTE_BYTES + 1);
    let err = failed(&h.ctl(&["cancel", "1", "--reason", &long]), 2);
    assert!(
        err.contains("`reason`") && err.contains(&format!("at most {}", admin::MAX_NOTE_BYTES)),
        "{err}"
    );
    let err = failed(&h.ctl(&["approve", "1", "--comment", &long]), 2);
    assert!(err.contains("`comment`"), "{err}");
    // Over the request limit: refused by the transport before it is decoded.
    let huge = "y".repeat(admin::MAX_REQUEST_BYTES + 1);
    let out = h.ctl(&["cancel", "1", "--reason", &huge]);
    assert!(
        !out.status.success(),
        "a {}-byte request is refused",
        huge.len()
    );
    assert!(
        h.received().is_empty(),
        "nothing reached the loop: {:?}",
        h.received()
    );
}

/// A coordinator listening on every interface, as its operator set it up.
fn beyond_loopback(admin_token: Option<&str>) -> Options {
    Options {
        overrides: Overrides {
            listen: Some("0.0.0.0:7070".into()),
            join_token: Some("join-secret".into()),
            admin_token: admin_token.map(str::to_owned),
            ..Overrides::default()
        },
        // Plaintext keeps the test short; the credential rules are the same over TLS.
        yaml: "tls: {allow_plaintext: true}\n",
        ..Options::default()
    }
}

#[test]
fn an_anonymous_client_reads_but_cannot_steer_a_coordinator_listening_beyond_loopback() {
    let h = serve(beyond_loopback(None));
    ok(&h.ctl(&["get", "tasks"]));
    for args in [
        &["cancel", "1", "--reason", "anonymous"][..],
        &["approve", "1"],
        &["drain", "w1"],
        &["retry", "spec", "specs/a.md"],
        &["logs", "task-001"],
    ] {
        let err = failed(&h.ctl(args), 2);
        assert!(
            err.contains("--admin-token") && err.contains("mutual TLS"),
            "{args:?}: {err}"
        );
    }
    assert!(h.received().is_empty(), "{:?}", h.received());
}

#[test]
fn with_an_operator_token_commands_need_it_and_a_wrong_one_is_refused() {
    let h = serve(beyond_loopback(Some("op-7Kq")));
    let err = failed(&h.ctl(&["cancel", "1"]), 2);
    assert!(err.contains("operator token"), "{err}");
    let err = failed(&h.ctl(&["--token", "op-guess", "cancel", "1"]), 2);
    assert!(err.contains("operator token"), "{err}");
    ok(&h.ctl(&[
        "--token",
        "op-7Kq",
        "cancel",
        "1",
        "--reason",
        "by the operator",
    ]));
    assert_eq!(h.received(), ["cancel task-001 by the operator"]);
}

#[test]
fn retry_spec_reaches_the_loop_and_its_refusal_reaches_the_operator() {
    let h = serve(Options::default());
    let out = ok(&h.ctl(&["retry", "spec", "specs/a.md"]));
    assert_eq!(out, "specs/a.md will be reconciled again\n");
    let err = failed(&h.ctl(&["retry", "spec", "specs/b.md"]), 2);
    assert!(err.contains("specs/b.md was not given up"), "{err}");
    let err = failed(&h.ctl(&["retry", "spec", "../etc/passwd"]), 2);
    assert!(err.contains("repository-relative path"), "{err}");
    assert_eq!(h.received(), ["retry specs/a.md", "retry specs/b.md"]);
}

#[test]
fn a_standby_answers_reads_and_refuses_the_rest_naming_the_leader() {
    let h = serve(Options {
        leading: false,
        ..Options::default()
    });
    ok(&h.ctl(&["get", "tasks"]));
    for args in [
        &["approve", "task-001"][..],
        &["cancel", "task-001"],
        &["drain", "w1"],
        &["logs", "task-001"],
    ] {
        let err = failed(&h.ctl(args), 2);
        assert!(
            err.contains("standby")
                && err.contains("hyperloopctl --server http://leader.example:7070"),
            "{args:?}: {err}"
        );
    }
    assert!(h.received().is_empty());
}

fn line(seq: u64, text: &str) -> LogLine {
    LogLine {
        seq,
        source: LogSource::Stdout.into(),
        text: text.into(),
        at: None,
    }
}

#[test]
fn logs_follow_prints_lines_pushed_after_it_connected_and_exits_0_when_that_step_ends() {
    let h = serve(Options::default());
    h.logs
        .started("task-001", 11, "0/agent:implementer@ab", "implementer");
    h.logs.lines(11, vec![line(1, "before")]);

    let out = ok(&h.ctl(&["logs", "task-001"]));
    assert_eq!(out, "[implementer attempt-11] before\n");

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("hyperloopctl"))
        .args(["--server", &h.url, "logs", "task-001", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let _ = tx.send(l.unwrap());
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a log line")
    };
    assert_eq!(next(), "[implementer attempt-11] before");
    h.logs.lines(11, vec![line(2, "after"), line(5, "later")]);
    h.logs.finished(11);
    h.logs
        .started("task-001", 12, "0/agent:verifier@ab", "verifier");
    h.logs.lines(12, vec![line(1, "next attempt")]);
    assert_eq!(next(), "[implementer attempt-11] after");
    assert!(next().contains("2 line(s) dropped"));
    assert_eq!(next(), "[implementer attempt-11] later");
    assert_eq!(next(), "[implementer attempt-11] finished");
    // The followed step ended: the next attempt is not waited for.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still following"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("the step ended"), "{stderr}");
    drop(h.runtime);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, san) in [("server", "127.0.0.1"), ("client", "operator")] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn path(dir: &TempDir, file: &str) -> String {
    dir.path().join(file).display().to_string()
}

#[test]
fn tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let tls = TlsConfig {
        cert: Some(path(&dir, "server.pem")),
        key: Some(path(&dir, "server.key")),
        ..TlsConfig::default()
    };
    let h = serve(Options {
        tls: tls.clone(),
        ..Options::default()
    });
    let ca = path(&dir, "ca.pem");
    ok(&h.ctl(&["--tls-ca", &ca, "get", "workers"]));
    let err = failed(&h.ctl(&["get", "workers"]), 2);
    assert!(err.contains("--tls-ca"), "{err}");

    let h = serve(Options {
        tls: TlsConfig {
            client_ca: Some(ca.clone()),
            ..tls
        },
        ..Options::default()
    });
    let (cert, key) = (path(&dir, "client.pem"), path(&dir, "client.key"));
    ok(&h.ctl(&[
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "get",
        "workers",
    ]));
    let out = h.ctl(&["--tls-ca", &ca, "get", "workers"]);
    let err = failed(&out, 1);
    assert!(err.contains(&h.url) && err.contains("--tls-cert"), "{err}");
}
