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
        },
        deadline_ms: 0,
    }
}

/// The workers' side of an adapter.
trait World {
    async fn join(&mut self, name: &str, capacity: u32);
    async fn lose(&mut self, name: &str);
    /// Attempts delivered to `name` so far.
    async fn delivered(&mut self, name: &str) -> Vec<AttemptId>;
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
    // Nothing to acknowledge or cancel on a worker that is gone: no panic, no error.
    d.ack("w1", AttemptId(1));
    d.cancel("w1", AttemptId(1), "gone");
    assert!(d.is_empty());
}

struct Streams {
    inbox: mpsc::Sender<WorkerEvent>,
    workers: Vec<(String, u64, mpsc::Receiver<v1::CoordinatorMessage>)>,
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
        let (_, _, rx) = self.workers.iter_mut().find(|(n, ..)| n == name).unwrap();
        let mut got = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(v1::coordinator_message::Body::Assign(a)) = m.body {
                got.push(AttemptId(a.attempt_id));
            }
        }
        got
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
