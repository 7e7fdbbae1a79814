//! The real `hyperloop-worker` binary against an in-test fake coordinator (a real tonic
//! server on loopback): reconnect, NotLeader redirects, drain, refusal, cancel latency, TLS.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::coordinator::{Answer, FakeCoordinator, ServerTls, Session, TOKEN, WAIT};
use common::{Fixture, wait_for_file, write_result};
use hyperloop_proto::v1::{
    self, AttemptPhase, FailureCause, coordinator_message::Body as Tell, worker_message::Body,
};

/// The worker binary as a child process; killed if the test fails.
struct Worker {
    child: tokio::process::Child,
    stderr: PathBuf,
}

impl Worker {
    fn spawn(fx: &Fixture, join: &str, extra: &[&str]) -> Self {
        let stderr = fx.path(&format!("worker-{}.log", std::process::id()));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hyperloop-worker"))
            .args(["--join", join, "--name", "builder-1", "--work-dir"])
            .arg(fx.path("work"))
            // These agents leave their marks (pids, timestamps) in the fixture's dir.
            .arg("--agent-writable")
            .arg(fx.dir.path())
            .args(extra)
            .env_remove("HYPERLOOP_JOIN")
            .env_remove("HYPERLOOP_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child, stderr }
    }

    /// Exit code and stderr, waiting at most `limit`.
    async fn exit(mut self, limit: Duration) -> (Option<i32>, String) {
        let status = tokio::time::timeout(limit, self.child.wait()).await;
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let status = status
            .unwrap_or_else(|_| panic!("the worker did not exit within {limit:?}; log:\n{log}"))
            .unwrap();
        (status.code(), log)
    }
}

fn token_args() -> [&'static str; 2] {
    ["--token", TOKEN]
}

fn held(hello: &v1::Hello) -> Vec<(u64, AttemptPhase)> {
    hello
        .attempts
        .iter()
        .map(|a| (a.attempt_id, a.phase()))
        .collect()
}

fn instance(hello: &v1::Hello) -> String {
    hello.registration.as_ref().unwrap().instance_id.clone()
}

async fn drain_and_expect_exit_0(session: &Session, worker: Worker) {
    session
        .tell(Tell::Drain(v1::Drain {
            reason: "test over".into(),
        }))
        .await;
    let (code, log) = worker.exit(WAIT).await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test]
async fn a_restarted_coordinator_gets_the_held_attempt_in_hello_and_the_result_once() {
    let fx = Fixture::new();
    let (started, go) = (fx.path("started"), fx.path("go"));
    let script = fx.script(
        "agent.sh",
        &format!(
            "touch '{}'\nwhile [ ! -f '{}' ]; do sleep 0.05; done\n{}",
            started.display(),
            go.display(),
            write_result("pass", "ok")
        ),
    );
    let mut coordinator = FakeCoordinator::start(Answer::Admit, None).await;
    let addr = coordinator.addr;
    let worker = Worker::spawn(&fx, &coordinator.url, &token_args());

    let mut first = coordinator.session().await;
    assert!(first.hello.attempts.is_empty());
    let id = instance(&first.hello);
    first.tell(Tell::Assign(fx.assign(7, &script))).await;
    assert!(matches!(first.next().await, Some(Body::Accepted(a)) if a.attempt_id == 7));
    assert!(wait_for_file(&started, WAIT).await, "agent started");

    // The coordinator goes away with the step running; it keeps running.
    drop(first);
    coordinator.stop().await;
    let mut coordinator = FakeCoordinator::start_on(addr, Answer::Admit, None).await;
    let mut second = coordinator.session().await;
    assert_eq!(held(&second.hello), [(7, AttemptPhase::Running)]);
    std::fs::write(&go, "").unwrap();
    let Some(Body::StepResult(result)) = second.next().await else {
        panic!("expected the step's result")
    };
    assert_eq!(result.attempt_id, 7);

    // Gone again before acknowledging: the result is held and resent after Registered.
    drop(second);
    coordinator.stop().await;
    let mut coordinator = FakeCoordinator::start_on(addr, Answer::Admit, None).await;
    let mut third = coordinator.session().await;
    assert_eq!(held(&third.hello), [(7, AttemptPhase::Reporting)]);
    assert_eq!(instance(&third.hello), id, "the same worker process");
    let Some(Body::StepResult(again)) = third.next().await else {
        panic!("expected the result resent")
    };
    assert_eq!(again, result);
    third
        .tell(Tell::ResultAck(v1::ResultAck { attempt_id: 7 }))
        .await;
    third
        .tell(Tell::Drain(v1::Drain {
            reason: "test over".into(),
        }))
        .await;
    // Drained means every result acknowledged; nothing is sent again before the exit.
    let rest = third.collect_for(Duration::from_secs(3)).await;
    assert!(
        !rest.iter().any(|m| matches!(m, Body::StepResult(_))),
        "{rest:?}"
    );
    let (code, log) = worker.exit(WAIT).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log.contains(TOKEN),
        "the token leaked into the log:\n{log}"
    );
}

#[tokio::test]
async fn not_leader_redirects_lead_to_the_leader_and_across_a_failover() {
    let fx = Fixture::new();
    let mut leader = FakeCoordinator::start(Answer::Admit, None).await;
    let electing = FakeCoordinator::start(Answer::NotLeader(String::new()), None).await;
    let pointing = FakeCoordinator::start(Answer::NotLeader(leader.url.clone()), None).await;
    let join = format!("{},{}", electing.url, pointing.url);
    let worker = Worker::spawn(&fx, &join, &token_args());
    let first = leader.session().await;
    let id = instance(&first.hello);

    // Failover: the leader dies, the follower now points at a new leader.
    let mut new_leader = FakeCoordinator::start(Answer::Admit, None).await;
    let pointing_addr = pointing.addr;
    pointing.stop().await;
    let pointing = FakeCoordinator::start_on(
        pointing_addr,
        Answer::NotLeader(new_leader.url.clone()),
        None,
    )
    .await;
    drop(first);
    leader.stop().await;
    let second = new_leader.session().await;
    assert_eq!(
        instance(&second.hello),
        id,
        "the same worker process followed"
    );
    drain_and_expect_exit_0(&second, worker).await;
    drop((electing, pointing));
}

#[tokio::test]
async fn drain_exits_0_while_the_coordinator_keeps_the_stream_open() {
    let fx = Fixture::new();
    let mut coordinator = FakeCoordinator::start(Answer::Admit, None).await;
    let worker = Worker::spawn(&fx, &coordinator.url, &token_args());
    let session = coordinator.session().await;
    drain_and_expect_exit_0(&session, worker).await;
    drop(session);
}

#[tokio::test]
async fn a_wrong_token_exits_2_naming_the_join_token_without_printing_it() {
    let fx = Fixture::new();
    let coordinator = FakeCoordinator::start(Answer::Admit, None).await;
    let wrong = "wrong-token-9f8e7d";
    let worker = Worker::spawn(&fx, &coordinator.url, &["--token", wrong]);
    let (code, log) = worker.exit(WAIT).await;
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("join token"), "{log}");
    assert!(log.contains("--token"), "the fix is named: {log}");
    assert!(!log.contains(wrong), "the token leaked:\n{log}");
}

/// Nanoseconds since the epoch, as `date +%s%N` prints them.
fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn cancel_reaches_the_agent_process_group_within_a_second() {
    let fx = Fixture::new();
    let (started, interrupted) = (fx.path("started"), fx.path("interrupted"));
    let script = fx.script(
        "agent.sh",
        &format!(
            "trap 'date +%s%N > \"{}\"; exit 130' INT\ntouch '{}'\nwhile :; do sleep 0.05; done\n",
            interrupted.display(),
            started.display()
        ),
    );
    let mut coordinator = FakeCoordinator::start(Answer::Admit, None).await;
    let worker = Worker::spawn(&fx, &coordinator.url, &token_args());
    let mut session = coordinator.session().await;
    session.tell(Tell::Assign(fx.assign(9, &script))).await;
    assert!(matches!(session.next().await, Some(Body::Accepted(_))));
    assert!(wait_for_file(&started, WAIT).await, "agent started");

    let sent = now_nanos();
    session
        .tell(Tell::Cancel(v1::Cancel {
            attempt_id: 9,
            reason: "cancelled by operator".into(),
        }))
        .await;
    assert!(
        wait_for_file(&interrupted, WAIT).await,
        "SIGINT reached the agent"
    );
    // The trap writes the file in two steps; wait for the newline.
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&interrupted).unwrap();
        if text.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handled: u128 = text.trim().parse().expect("date +%s%N output");
    let latency = Duration::from_nanos(u64::try_from(handled.saturating_sub(sent)).unwrap());
    assert!(latency < Duration::from_secs(1), "cancel took {latency:?}");

    let Some(Body::StepResult(result)) = session.next().await else {
        panic!("expected the cancelled result")
    };
    assert_eq!(result.failure_cause(), FailureCause::Cancelled);
    session
        .tell(Tell::ResultAck(v1::ResultAck { attempt_id: 9 }))
        .await;
    drain_and_expect_exit_0(&session, worker).await;
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// files in the fixture.
struct Pki {
    ca: PathBuf,
    server: ServerTls,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(fx: &Fixture, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["builder-1".into()]);
    let write = |file: &str, text: &str| {
        let path = fx.path(&format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server: ServerTls {
            cert: server_cert,
            key: server_key,
            client_ca: None,
        },
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

fn arg(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn tls_join_trusts_the_given_ca() {
    let fx = Fixture::new();
    let pki = pki(&fx, "a");
    let mut coordinator = FakeCoordinator::start(Answer::Admit, Some(pki.server.clone())).await;
    assert!(coordinator.url.starts_with("https://"));
    let worker = Worker::spawn(
        &fx,
        &coordinator.url,
        &["--token", TOKEN, "--tls-ca", arg(&pki.ca)],
    );
    let session = coordinator.session().await;
    drain_and_expect_exit_0(&session, worker).await;
}

fn mutual(pki: &Pki) -> ServerTls {
    ServerTls {
        client_ca: Some(std::fs::read_to_string(&pki.ca).unwrap()),
        ..pki.server.clone()
    }
}

#[tokio::test]
async fn mutual_tls_join_with_a_client_certificate() {
    let fx = Fixture::new();
    let pki = pki(&fx, "a");
    let mut coordinator = FakeCoordinator::start(Answer::Admit, Some(mutual(&pki))).await;
    let worker = Worker::spawn(
        &fx,
        &coordinator.url,
        &[
            "--token",
            TOKEN,
            "--tls-ca",
            arg(&pki.ca),
            "--tls-cert",
            arg(&pki.client_cert),
            "--tls-key",
            arg(&pki.client_key),
        ],
    );
    let session = coordinator.session().await;
    drain_and_expect_exit_0(&session, worker).await;
}

#[tokio::test]
async fn mutual_tls_without_a_client_certificate_fails_naming_the_flags() {
    let fx = Fixture::new();
    let pki = pki(&fx, "a");
    let mut coordinator = FakeCoordinator::start(Answer::Admit, Some(mutual(&pki))).await;
    let worker = Worker::spawn(
        &fx,
        &coordinator.url,
        &[
            "--token",
            TOKEN,
            "--tls-ca",
            arg(&pki.ca),
            "--connect-timeout",
            "2s",
        ],
    );
    let (code, log) = worker.exit(WAIT).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("--tls-cert"), "{log}");
    assert!(coordinator.try_session(Duration::ZERO).await.is_none());
}

#[tokio::test]
async fn an_untrusted_coordinator_certificate_names_the_ca_flag() {
    let fx = Fixture::new();
    let (ours, theirs) = (pki(&fx, "a"), pki(&fx, "b"));
    let coordinator = FakeCoordinator::start(Answer::Admit, Some(theirs.server.clone())).await;
    let worker = Worker::spawn(
        &fx,
        &coordinator.url,
        &[
            "--token",
            TOKEN,
            "--tls-ca",
            arg(&ours.ca),
            "--connect-timeout",
            "2s",
        ],
    );
    let (code, log) = worker.exit(WAIT).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("--tls-ca"), "{log}");
}

#[tokio::test]
async fn a_push_asked_of_a_coordinator_that_went_away_is_asked_again_on_the_next_stream() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!(
            "echo work > work.txt\ngit add work.txt\n\
             git -c user.name=Agent -c user.email=agent@example.invalid commit -q -m Work\n{}",
            write_result("pass", "ok")
        ),
    );
    let mut coordinator = FakeCoordinator::start(Answer::Admit, None).await;
    let addr = coordinator.addr;
    let worker = Worker::spawn(&fx, &coordinator.url, &token_args());
    let mut first = coordinator.session().await;
    first.tell(Tell::Assign(fx.assign(7, &script))).await;
    assert!(matches!(first.next().await, Some(Body::Accepted(_))));
    let Some(Body::PushRequest(asked)) = first.next().await else {
        panic!("the step asks before pushing")
    };

    // Gone before answering: that question can no longer be answered, so it is asked anew.
    drop(first);
    coordinator.stop().await;
    let mut coordinator = FakeCoordinator::start_on(addr, Answer::Admit, None).await;
    let mut second = coordinator.session().await;
    assert_eq!(held(&second.hello), [(7, AttemptPhase::Running)]);
    let Some(Body::PushRequest(again)) = second.next().await else {
        panic!("the question is asked again on the new stream")
    };
    assert_eq!(again, asked);
    assert_eq!(fx.origin_branch("hyperloop/task-007"), None);
    second
        .tell(Tell::PushAnswer(v1::PushAnswer {
            attempt_id: 7,
            granted: true,
            valid_for: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            reason: String::new(),
        }))
        .await;
    let Some(Body::StepResult(result)) = second.next().await else {
        panic!("expected the step's result")
    };
    assert_eq!(result.head_commit, asked.head_commit);
    assert_eq!(
        fx.origin_branch("hyperloop/task-007").as_deref(),
        Some(asked.head_commit.as_str())
    );
    second
        .tell(Tell::ResultAck(v1::ResultAck { attempt_id: 7 }))
        .await;
    drain_and_expect_exit_0(&second, worker).await;
}
