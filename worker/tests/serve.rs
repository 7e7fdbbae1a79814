//! `serve()` over in-memory channels, with real steps (real git, real processes).

mod common;

use std::time::Duration;

use common::{Fixture, write_result};
use hyperloop_proto::PROTOCOL_VERSION;
use hyperloop_proto::v1::{
    self, AttemptPhase, CoordinatorMessage, FailureCause, WorkerMessage, coordinator_message,
    worker_message::Body,
};
use hyperloop_worker::link::CoordinatorEnd;
use hyperloop_worker::{Link, WorkerError, WorkerOptions, serve};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bounds every wait in these tests; steps take well under a second.
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    end: CoordinatorEnd,
    worker: JoinHandle<Result<(), WorkerError>>,
    shutdown: CancellationToken,
}

fn options(fx: &Fixture, capacity: u32) -> WorkerOptions {
    let mut o = WorkerOptions::new("builder-1", fx.path("work"));
    o.capacity = capacity;
    o.labels = [("os".to_owned(), "linux".to_owned())].into();
    o.token = "join-token".into();
    o.result_resend_interval = Duration::from_millis(150);
    o
}

async fn start(options: WorkerOptions) -> Harness {
    let (link, end) = Link::pair();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(serve(options, link, shutdown.clone()));
    Harness {
        end,
        worker,
        shutdown,
    }
}

impl Harness {
    async fn tell(&self, body: coordinator_message::Body) {
        self.end
            .outbound
            .send(CoordinatorMessage { body: Some(body) })
            .await
            .expect("worker is listening");
    }

    /// The next message that is not a Heartbeat or Progress.
    async fn next(&mut self) -> Body {
        loop {
            let msg: WorkerMessage = tokio::time::timeout(WAIT, self.end.inbound.recv())
                .await
                .expect("a message within the wait")
                .expect("link open");
            match msg.body.expect("body set") {
                Body::Heartbeat(_) | Body::Progress(_) => continue,
                other => return other,
            }
        }
    }

    async fn register(&mut self) -> v1::Hello {
        let Body::Hello(hello) = self.next().await else {
            panic!("first message must be Hello")
        };
        self.tell(coordinator_message::Body::Registered(v1::Registered {
            worker_id: "w-1".into(),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 50_000_000,
            }),
            leader_term: 1,
            protocol_version: PROTOCOL_VERSION,
            coordinator_version: "test".into(),
        }))
        .await;
        hello
    }

    async fn finish(self) -> Result<(), WorkerError> {
        tokio::time::timeout(WAIT, self.worker)
            .await
            .expect("serve returns")
            .expect("no panic")
    }
}

#[tokio::test]
async fn hello_registered_assign_accepted_result_resent_until_acked_then_drained() {
    let fx = Fixture::new();
    let script = fx.script(
        "agent.sh",
        &format!("echo working\n{}", write_result("pass", "ok")),
    );
    let mut h = start(options(&fx, 2)).await;

    let hello = h.register().await;
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.token, "join-token");
    let reg = hello.registration.expect("registration");
    assert_eq!(reg.name, "builder-1");
    assert_eq!(reg.capacity, 2);
    assert_eq!(reg.labels.get("os").map(String::as_str), Some("linux"));
    assert_eq!(reg.version, env!("CARGO_PKG_VERSION"));
    assert!(!reg.instance_id.is_empty());

    h.tell(coordinator_message::Body::Assign(fx.assign(41, &script)))
        .await;
    assert!(matches!(h.next().await, Body::Accepted(a) if a.attempt_id == 41));
    let Body::StepResult(first) = h.next().await else {
        panic!("expected StepResult")
    };
    assert_eq!(first.attempt_id, 41);
    assert_eq!(first.task_id, "task-007");
    assert_eq!(
        first.result.as_ref().map(|r| r.verdict),
        Some(v1::Verdict::Pass as i32)
    );
    // Not acknowledged: sent again, identical.
    let Body::StepResult(again) = h.next().await else {
        panic!("expected the StepResult again")
    };
    assert_eq!(again, first);

    h.tell(coordinator_message::Body::ResultAck(v1::ResultAck {
        attempt_id: 41,
    }))
    .await;
    // After the ack only heartbeats flow; none of them holds the attempt any more.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(100), h.end.inbound.recv()).await
        else {
            continue;
        };
        match msg.body.unwrap() {
            Body::Heartbeat(hb) => {
                assert_eq!(hb.protocol_version, PROTOCOL_VERSION);
                assert!(hb.registration.is_some());
                if tokio::time::Instant::now() + Duration::from_millis(200) < deadline {
                    continue; // an ack may still be in flight for the first heartbeats
                }
                assert!(hb.attempts.is_empty(), "{:?}", hb.attempts);
            }
            Body::StepResult(r) => panic!("result resent after its ack: {r:?}"),
            _ => {}
        }
    }

    h.tell(coordinator_message::Body::Drain(v1::Drain {
        reason: "test".into(),
    }))
    .await;
    h.finish().await.expect("drained cleanly");
}

/// A halting coordinator sends Drain and closes the stream at once; the worker's own answer
/// to Drain then finds the stream gone, and it is drained all the same (not reconnecting).
#[tokio::test]
async fn drain_followed_by_a_closed_stream_is_a_clean_drain() {
    let fx = Fixture::new();
    let mut h = start(options(&fx, 1)).await;
    h.register().await;
    h.tell(coordinator_message::Body::Drain(v1::Drain {
        reason: "coordinator stopped".into(),
    }))
    .await;
    let Harness {
        end,
        worker,
        shutdown: _shutdown,
    } = h;
    drop(end);
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("serve returns")
        .expect("no panic")
        .expect("drained cleanly");
}

#[tokio::test]
async fn at_capacity_and_while_draining_new_steps_are_declined_and_running_ones_finish() {
    let fx = Fixture::new();
    let slow = fx.script(
        "slow.sh",
        &format!("sleep 0.5\n{}", write_result("pass", "slow but done")),
    );
    let mut h = start(options(&fx, 1)).await;
    h.register().await;

    h.tell(coordinator_message::Body::Assign(fx.assign(1, &slow)))
        .await;
    assert!(matches!(h.next().await, Body::Accepted(a) if a.attempt_id == 1));

    // While it runs, a heartbeat reports it.
    let held = loop {
        let msg = tokio::time::timeout(WAIT, h.end.inbound.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(Body::Heartbeat(hb)) = msg.body
            && let Some(a) = hb.attempts.first()
        {
            break a.clone();
        }
    };
    assert_eq!(held.attempt_id, 1);
    assert!(
        held.phase == AttemptPhase::Preparing as i32 || held.phase == AttemptPhase::Running as i32
    );

    let mut second = fx.assign(2, &slow);
    second.task_id = "task-008".into();
    second.branch = "hyperloop/task-008".into();
    h.tell(coordinator_message::Body::Assign(second.clone()))
        .await;
    let Body::Declined(d) = h.next().await else {
        panic!("expected Declined")
    };
    assert_eq!(d.attempt_id, 2);
    assert!(d.reason.contains("capacity"), "{}", d.reason);

    h.tell(coordinator_message::Body::Drain(v1::Drain {
        reason: "maintenance".into(),
    }))
    .await;
    second.attempt_id = 3;
    h.tell(coordinator_message::Body::Assign(second)).await;
    let Body::Declined(d) = h.next().await else {
        panic!("expected Declined")
    };
    assert!(d.reason.contains("draining"), "{}", d.reason);

    let Body::StepResult(result) = h.next().await else {
        panic!("expected StepResult")
    };
    assert_eq!(result.attempt_id, 1);
    assert_eq!(result.failure_cause, FailureCause::Unspecified as i32);
    h.tell(coordinator_message::Body::ResultAck(v1::ResultAck {
        attempt_id: 1,
    }))
    .await;
    h.finish().await.expect("drained cleanly");
}

#[tokio::test]
async fn cancel_stops_the_step_and_reports_cancelled_with_the_reason() {
    let fx = Fixture::new();
    let started = fx.path("started");
    let hang = fx.script(
        "hang.sh",
        &format!("touch '{}'\nsleep 30\n", started.display()),
    );
    let mut h = start(options(&fx, 1)).await;
    h.register().await;
    h.tell(coordinator_message::Body::Assign(fx.assign(7, &hang)))
        .await;
    assert!(matches!(h.next().await, Body::Accepted(_)));
    assert!(common::wait_for_file(&started, WAIT).await);

    let t0 = std::time::Instant::now();
    h.tell(coordinator_message::Body::Cancel(v1::Cancel {
        attempt_id: 7,
        reason: "spec requirement removed".into(),
    }))
    .await;
    let Body::StepResult(result) = h.next().await else {
        panic!("expected StepResult")
    };
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(result.failure_cause, FailureCause::Cancelled as i32);
    let detail = result.result.unwrap().detail;
    assert!(detail.contains("spec requirement removed"), "{detail}");
    h.shutdown.cancel();
    h.finish().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_stops_running_agents_and_returns() {
    let fx = Fixture::new();
    let started = fx.path("started");
    let hang = fx.script(
        "hang.sh",
        &format!("echo $$ > '{}'\nsleep 30\n", started.display()),
    );
    let mut h = start(options(&fx, 1)).await;
    h.register().await;
    h.tell(coordinator_message::Body::Assign(fx.assign(9, &hang)))
        .await;
    assert!(matches!(h.next().await, Body::Accepted(_)));
    assert!(common::wait_for_file(&started, WAIT).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let t0 = std::time::Instant::now();
    h.shutdown.cancel();
    let end = h.end;
    tokio::time::timeout(WAIT, h.worker)
        .await
        .unwrap()
        .unwrap()
        .expect("shutdown is clean");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(!common::alive(pid), "agent {pid} survived shutdown");
    drop(end);
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[tokio::test]
async fn a_coordinator_of_another_protocol_version_is_refused() {
    let fx = Fixture::new();
    let mut h = start(options(&fx, 1)).await;
    let _hello = h.next().await;
    h.tell(coordinator_message::Body::Registered(v1::Registered {
        protocol_version: PROTOCOL_VERSION + 1,
        ..Default::default()
    }))
    .await;
    let err = h.finish().await.expect_err("refused");
    assert!(matches!(err, WorkerError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("protocol version"), "{err}");
}

#[tokio::test]
async fn invalid_assignments_are_declined_with_the_field_named() {
    let fx = Fixture::new();
    let script = fx.script("agent.sh", &write_result("pass", "ok"));
    let mut h = start(options(&fx, 1)).await;
    h.register().await;
    let mut bad = fx.assign(5, &script);
    bad.branch = "--upload-pack=touch /tmp/pwned".into();
    h.tell(coordinator_message::Body::Assign(bad)).await;
    let Body::Declined(d) = h.next().await else {
        panic!("expected Declined")
    };
    assert!(d.reason.contains("`branch`"), "{}", d.reason);
    h.shutdown.cancel();
    h.finish().await.unwrap();
}

/// An agent that commits one file and passes.
const COMMIT_AND_PASS: &str = r#"echo "work of $HYPERLOOP_TASK_ID" > work.txt
git add work.txt
git -c user.name=Agent -c user.email=agent@example.invalid commit -q -m "Work"
"#;

fn grant(attempt_id: u64, valid_for: Duration) -> coordinator_message::Body {
    coordinator_message::Body::PushAnswer(v1::PushAnswer {
        attempt_id,
        granted: true,
        valid_for: Some(prost_types::Duration::try_from(valid_for).unwrap()),
        reason: String::new(),
    })
}

/// Starts a committing step as attempt 41 and returns its push request.
async fn committed(fx: &Fixture, h: &mut Harness) -> v1::PushRequest {
    let script = fx.script(
        "agent.sh",
        &format!("{COMMIT_AND_PASS}{}", write_result("pass", "ok")),
    );
    h.register().await;
    h.tell(coordinator_message::Body::Assign(fx.assign(41, &script)))
        .await;
    assert!(matches!(h.next().await, Body::Accepted(a) if a.attempt_id == 41));
    let Body::PushRequest(request) = h.next().await else {
        panic!("a step with commits asks before pushing")
    };
    assert_eq!(request.attempt_id, 41);
    assert_eq!(request.head_commit.len(), 40, "{request:?}");
    request
}

async fn result(h: &mut Harness) -> v1::StepResult {
    loop {
        match h.next().await {
            Body::StepResult(result) => return result,
            Body::PushRequest(_) => {} // asked again while the test did not answer
            other => panic!("expected StepResult, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_step_pushes_its_commits_only_once_the_coordinator_grants_it() {
    let fx = Fixture::new();
    let mut h = start(options(&fx, 1)).await;
    let request = committed(&fx, &mut h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fx.origin_branch("hyperloop/task-007"),
        None,
        "nothing is pushed before the answer"
    );
    h.tell(grant(41, Duration::from_secs(60))).await;
    let result = result(&mut h).await;
    assert_eq!(
        result.result.as_ref().map(|r| r.verdict),
        Some(v1::Verdict::Pass as i32),
        "{result:?}"
    );
    assert_eq!(result.head_commit, request.head_commit);
    assert_eq!(
        fx.origin_branch("hyperloop/task-007").as_deref(),
        Some(request.head_commit.as_str())
    );
    h.shutdown.cancel();
    h.finish().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_refused_push_leaves_the_branch_absent_and_the_report_says_why() {
    let fx = Fixture::new();
    let mut h = start(options(&fx, 1)).await;
    committed(&fx, &mut h).await;
    h.tell(coordinator_message::Body::PushAnswer(v1::PushAnswer {
        attempt_id: 41,
        granted: false,
        valid_for: None,
        reason: "attempt-41 was revoked: builder-1 stopped heartbeating".into(),
    }))
    .await;
    let result = result(&mut h).await;
    assert_eq!(result.failure_cause, FailureCause::Workspace as i32);
    assert_eq!(result.head_commit, "", "nothing was pushed");
    let detail = result.result.unwrap().detail;
    assert!(
        detail.contains(
            "The coordinator refused the push of attempt 41 (attempt-41 was revoked: builder-1 \
             stopped heartbeating); its commits were not pushed."
        ),
        "{detail}"
    );
    assert_eq!(fx.origin_branch("hyperloop/task-007"), None);
    h.shutdown.cancel();
    h.finish().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_grant_that_expired_before_it_arrived_is_not_used_and_the_step_gives_up_unpushed() {
    let fx = Fixture::new();
    let mut o = options(&fx, 1);
    o.push_answer_timeout = Duration::from_secs(1);
    let mut h = start(o).await;
    committed(&fx, &mut h).await;
    // Every grant has run out by the time it arrives: the worker asks again, then gives up.
    h.tell(grant(41, Duration::ZERO)).await;
    let result = loop {
        match h.next().await {
            Body::PushRequest(r) => h.tell(grant(r.attempt_id, Duration::ZERO)).await,
            Body::StepResult(result) => break result,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(result.failure_cause, FailureCause::Workspace as i32);
    let detail = result.result.unwrap().detail;
    assert!(
        detail.contains("could not get the coordinator's permission to push attempt 41")
            && detail.contains("no usable answer within 1s: the last grant arrived")
            && detail.contains("its commits were not pushed"),
        "{detail}"
    );
    assert_eq!(fx.origin_branch("hyperloop/task-007"), None);
    h.shutdown.cancel();
    h.finish().await.expect("clean shutdown");
}
