//! The contract every [`Dispatcher`] passes, run against the gRPC stream registry and the
//! in-memory dispatcher. Each adapter supplies a [`World`]: how a test makes a worker join
//! or leave and sees what reached it.

use std::time::Duration;

use hyperloop_proto::v1;
use hyperloop_shared::config::AgentProgram;
use hyperloop_shared::model::AttemptId;
use hyperloop_shared::step::{RuntimeSettings, StepOrder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DispatchError, Dispatcher, Inbound};
use crate::adapters::memory_dispatcher::{MemoryDispatcher, MemoryWorkers};
use crate::dispatch::{Joined, Registry, WorkerEvent};
use crate::reconcile::Clock;

/// An order for tests.
pub fn order(attempt: AttemptId) -> StepOrder {
    StepOrder {
        attempt,
        subject: "task-001".to_owned(),
        step: "0".to_owned(),
        role: "implementer".to_owned(),
        round: 0,
        prompt: "do it".to_owned(),
        spec_ref: None,
        repo_url: "memory://repo".to_owned(),
        base_branch: "main".to_owned(),
        base_commit: "c0ffee".to_owned(),
        branch: "hyperloop/task-001".to_owned(),
        runtime: RuntimeSettings {
            program: AgentProgram::Claude,
            model: None,
            max_turns: None,
            timeout: Duration::from_secs(60),
            budget_usd: None,
            env_passthrough: Vec::new(),
            git_identity: Default::default(),
        },
        deadline_ms: 0,
        checks: None,
        trace_context: Default::default(),
    }
}

/// The workers' side of an adapter.
trait World {
    async fn join(&mut self, name: &str, capacity: u32);
    async fn lose(&mut self, name: &str);
    /// Attempts delivered to `name` so far.
    async fn delivered(&mut self, name: &str) -> Vec<AttemptId>;
    /// `name` asks whether `attempt` may push.
    async fn ask_push(&mut self, name: &str, attempt: AttemptId);
    /// Push answers that reached `name` since last asked: attempt and whether granted.
    async fn push_answers(&mut self, name: &str) -> Vec<(AttemptId, bool)>;
}

async fn contract<D: Dispatcher>(mut d: D, world: &mut impl World) {
    assert!(d.is_empty());
    assert_eq!(d.try_next(), None, "nothing happened yet");
    world.join("w1", 2).await;
    assert!(
        matches!(d.try_next(), Some(Inbound::Joined { worker, capacity: 2, .. }) if worker == "w1"),
        "a joining worker is announced, and what is queued is taken without waiting"
    );
    assert_eq!(d.try_next(), None);
    let offers = d.offers();
    assert_eq!(offers.len(), 1);
    assert_eq!((offers[0].name.as_str(), offers[0].capacity), ("w1", 2));

    d.send("w1", order(AttemptId(1))).expect("delivered");
    assert_eq!(world.delivered("w1").await, vec![AttemptId(1)]);
    assert_eq!(
        d.send("ghost", order(AttemptId(2))),
        Err(DispatchError::NotConnected("ghost".to_owned())),
        "an order for a worker that is not there is refused, not lost"
    );

    world.ask_push("w1", AttemptId(1)).await;
    world.ask_push("w1", AttemptId(2)).await;
    for attempt in [1, 2] {
        assert_eq!(
            d.next().await,
            Some(Inbound::PushAsked {
                worker: "w1".to_owned(),
                attempt: AttemptId(attempt),
            }),
            "a push request is heard as a question about that attempt"
        );
    }
    d.answer_push("w1", AttemptId(1), true, "");
    d.answer_push("w1", AttemptId(2), false, "attempt-2 was revoked");
    assert_eq!(
        world.push_answers("w1").await,
        vec![(AttemptId(1), true), (AttemptId(2), false)],
        "each answer reaches the worker that asked"
    );
    d.answer_push("ghost", AttemptId(3), true, "");

    assert!(d.drain("w1", "test"));
    assert!(!d.drain("ghost", "test"));
    assert!(
        d.offers()[0].draining,
        "a draining worker offers no new work"
    );

    world.lose("w1").await;
    assert!(
        matches!(d.next().await, Some(Inbound::Lost { worker, grace, .. }) if worker == "w1" && !grace.is_zero()),
        "a dropped worker is reported with a grace period to come back"
    );
    assert!(d.offers().is_empty());
    // Nothing to acknowledge, cancel or answer on a worker that is gone: no panic, no error.
    d.ack("w1", AttemptId(1));
    d.cancel("w1", AttemptId(1), "gone");
    d.answer_push("w1", AttemptId(1), true, "");
    assert!(d.is_empty());
}

struct Streams {
    inbox: mpsc::Sender<WorkerEvent>,
    workers: Vec<(String, u64, mpsc::Receiver<v1::CoordinatorMessage>)>,
}

impl Streams {
    /// Everything that reached `name` since the last look.
    fn received(&mut self, name: &str) -> Vec<v1::coordinator_message::Body> {
        let (_, _, rx) = self.workers.iter_mut().find(|(n, ..)| n == name).unwrap();
        let mut got = Vec::new();
        while let Ok(m) = rx.try_recv() {
            got.extend(m.body);
        }
        got
    }
}

impl World for Streams {
    async fn join(&mut self, name: &str, capacity: u32) {
        let (sender, rx) = mpsc::channel(8);
        let conn = self.workers.len() as u64 + 1;
        let joined = Joined {
            conn,
            registration: v1::Registration {
                name: name.to_owned(),
                capacity,
                ..Default::default()
            },
            held: Vec::new(),
            local: false,
            sender,
            close: CancellationToken::new(),
        };
        self.inbox
            .send(WorkerEvent::Joined(Box::new(joined)))
            .await
            .unwrap();
        self.workers.push((name.to_owned(), conn, rx));
    }

    async fn lose(&mut self, name: &str) {
        let (_, conn, _) = self.workers.iter().find(|(n, ..)| n == name).unwrap();
        let gone = WorkerEvent::Gone {
            worker: name.to_owned(),
            conn: *conn,
        };
        self.inbox.send(gone).await.unwrap();
    }

    async fn delivered(&mut self, name: &str) -> Vec<AttemptId> {
        self.received(name)
            .into_iter()
            .filter_map(|b| match b {
                v1::coordinator_message::Body::Assign(a) => Some(AttemptId(a.attempt_id)),
                _ => None,
            })
            .collect()
    }

    async fn ask_push(&mut self, name: &str, attempt: AttemptId) {
        let (_, conn, _) = self.workers.iter().find(|(n, ..)| n == name).unwrap();
        let message = v1::worker_message::Body::PushRequest(v1::PushRequest {
            attempt_id: attempt.0,
            head_commit: "c0ffee".to_owned(),
        });
        let event = WorkerEvent::Message {
            worker: name.to_owned(),
            conn: *conn,
            message,
        };
        self.inbox.send(event).await.unwrap();
    }

    async fn push_answers(&mut self, name: &str) -> Vec<(AttemptId, bool)> {
        self.received(name)
            .into_iter()
            .filter_map(|b| match b {
                v1::coordinator_message::Body::PushAnswer(a) => {
                    Some((AttemptId(a.attempt_id), a.granted))
                }
                _ => None,
            })
            .collect()
    }
}

impl World for MemoryWorkers {
    async fn join(&mut self, name: &str, capacity: u32) {
        MemoryWorkers::join(self, name, capacity, Vec::new()).await;
    }

    async fn lose(&mut self, name: &str) {
        MemoryWorkers::lose(self, name, Duration::from_secs(2)).await;
    }

    async fn delivered(&mut self, name: &str) -> Vec<AttemptId> {
        self.with_outbox(|o| {
            o.orders
                .iter()
                .filter(|(w, _)| w == name)
                .map(|(_, order)| order.attempt)
                .collect()
        })
    }

    async fn ask_push(&mut self, name: &str, attempt: AttemptId) {
        MemoryWorkers::ask_push(self, name, attempt).await;
    }

    async fn push_answers(&mut self, name: &str) -> Vec<(AttemptId, bool)> {
        self.with_outbox(|o| {
            o.push_answers
                .iter()
                .filter(|(w, ..)| w == name)
                .map(|(_, attempt, granted, _)| (*attempt, *granted))
                .collect()
        })
    }
}

#[tokio::test]
async fn the_stream_registry_keeps_the_dispatcher_contract() {
    let (inbox, rx) = mpsc::channel(16);
    let mut world = Streams {
        inbox,
        workers: Vec::new(),
    };
    contract(Registry::new(rx, Clock::start()), &mut world).await;
}

#[tokio::test]
async fn the_memory_dispatcher_keeps_the_dispatcher_contract() {
    let (dispatcher, mut workers) = MemoryDispatcher::new();
    contract(dispatcher, &mut workers).await;
}
