//! [`MemoryDispatcher`]: a [`Dispatcher`] with no transport, for tests of the reconcile loop.
//! The test holds the other end, [`MemoryWorkers`]: it joins and loses workers, reports
//! results, sees every order, acknowledgement and cancel, and can make the next dispatch fail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyperloop_shared::model::AttemptId;
use hyperloop_shared::reconcile::{Held, Offer};
use hyperloop_shared::step::{StepOrder, StepReport};
use tokio::sync::{mpsc, watch};

use crate::control::WorkerView;
use crate::ports::dispatcher::{DispatchError, Dispatcher, Inbound};

/// Deeper than any test has messages in flight.
const INBOUND: usize = 1024;

/// What went out to workers, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    pub orders: Vec<(String, StepOrder)>,
    pub acks: Vec<(String, AttemptId)>,
    pub cancels: Vec<(String, AttemptId, String)>,
    /// Push answers: worker, attempt, granted, reason.
    pub push_answers: Vec<(String, AttemptId, bool, String)>,
}

#[derive(Debug, Default)]
struct Shared {
    workers: BTreeMap<String, Offer>,
    outbox: Outbox,
    /// Dispatches still to refuse.
    fail_next: usize,
}

#[derive(Debug)]
pub struct MemoryDispatcher {
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::Receiver<Inbound>,
    sent: watch::Sender<usize>,
}

/// The test's side.
#[derive(Debug, Clone)]
pub struct MemoryWorkers {
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::Sender<Inbound>,
    sent: watch::Receiver<usize>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panicking test thread must not hide the state from the others.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryDispatcher {
    pub fn new() -> (MemoryDispatcher, MemoryWorkers) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = mpsc::channel(INBOUND);
        let (sent_tx, sent_rx) = watch::channel(0);
        (
            MemoryDispatcher {
                shared: Arc::clone(&shared),
                inbound: rx,
                sent: sent_tx,
            },
            MemoryWorkers {
                shared,
                inbound: tx,
                sent: sent_rx,
            },
        )
    }
}

impl MemoryWorkers {
    async fn say(&self, inbound: Inbound) {
        self.inbound
            .send(inbound)
            .await
            .expect("the dispatcher is alive");
    }

    pub async fn join(&self, name: &str, capacity: u32, held: Vec<Held>) {
        lock(&self.shared).workers.insert(
            name.to_owned(),
            Offer {
                name: name.to_owned(),
                labels: Default::default(),
                capacity,
                draining: false,
            },
        );
        self.say(Inbound::Joined {
            worker: name.to_owned(),
            capacity,
            held,
        })
        .await;
    }

    /// The worker's connection drops; its attempts wait `grace` for it.
    pub async fn lose(&self, name: &str, grace: Duration) {
        lock(&self.shared).workers.remove(name);
        self.say(Inbound::Lost {
            worker: name.to_owned(),
            reason: "connection closed".to_owned(),
            grace,
        })
        .await;
    }

    pub async fn report(&self, worker: &str, report: StepReport) {
        self.say(Inbound::Result {
            worker: worker.to_owned(),
            report,
        })
        .await;
    }

    /// The worker asks whether `attempt` may push.
    pub async fn ask_push(&self, worker: &str, attempt: AttemptId) {
        self.say(Inbound::PushAsked {
            worker: worker.to_owned(),
            attempt,
        })
        .await;
    }

    /// The next `n` dispatches fail as if the worker's queue were full.
    pub fn fail_next_dispatch(&self, n: usize) {
        lock(&self.shared).fail_next += n;
    }

    /// Waits until at least `n` orders went out; returns them all.
    pub async fn orders(&mut self, n: usize) -> Vec<(String, StepOrder)> {
        self.sent
            .wait_for(|sent| *sent >= n)
            .await
            .expect("the dispatcher is alive");
        lock(&self.shared).outbox.orders.clone()
    }

    pub fn with_outbox<T>(&self, f: impl FnOnce(&Outbox) -> T) -> T {
        f(&lock(&self.shared).outbox)
    }
}

impl Dispatcher for MemoryDispatcher {
    async fn next(&mut self) -> Option<Inbound> {
        self.inbound.recv().await
    }

    fn try_next(&mut self) -> Option<Inbound> {
        self.inbound.try_recv().ok()
    }

    fn expire(&mut self) -> Vec<Inbound> {
        Vec::new()
    }

    fn offers(&self) -> Vec<Offer> {
        lock(&self.shared).workers.values().cloned().collect()
    }

    fn send(&mut self, worker: &str, order: StepOrder) -> Result<(), DispatchError> {
        let mut shared = lock(&self.shared);
        if !shared.workers.contains_key(worker) {
            return Err(DispatchError::NotConnected(worker.to_owned()));
        }
        if shared.fail_next > 0 {
            shared.fail_next -= 1;
            return Err(DispatchError::Unavailable(worker.to_owned()));
        }
        shared.outbox.orders.push((worker.to_owned(), order));
        let sent = shared.outbox.orders.len();
        drop(shared);
        self.sent.send_replace(sent);
        Ok(())
    }

    fn ack(&mut self, worker: &str, attempt: AttemptId) {
        let mut shared = lock(&self.shared);
        if shared.workers.contains_key(worker) {
            shared.outbox.acks.push((worker.to_owned(), attempt));
        }
    }

    fn cancel(&mut self, worker: &str, attempt: AttemptId, reason: &str) {
        let mut shared = lock(&self.shared);
        if shared.workers.contains_key(worker) {
            shared
                .outbox
                .cancels
                .push((worker.to_owned(), attempt, reason.to_owned()));
        }
    }

    fn answer_push(&mut self, worker: &str, attempt: AttemptId, granted: bool, reason: &str) {
        let mut shared = lock(&self.shared);
        if shared.workers.contains_key(worker) {
            shared.outbox.push_answers.push((
                worker.to_owned(),
                attempt,
                granted,
                reason.to_owned(),
            ));
        }
    }

    fn drain(&mut self, worker: &str, _reason: &str) -> bool {
        lock(&self.shared)
            .workers
            .get_mut(worker)
            .map(|w| w.draining = true)
            .is_some()
    }

    fn drain_all(&mut self, _reason: &str) {
        for w in lock(&self.shared).workers.values_mut() {
            w.draining = true;
        }
    }

    fn workers(&self) -> Vec<WorkerView> {
        lock(&self.shared)
            .workers
            .values()
            .map(|o| WorkerView {
                name: o.name.clone(),
                worker_id: o.name.clone(),
                capacity: o.capacity,
                labels: o.labels.clone().into_iter().collect(),
                version: "memory".to_owned(),
                last_heartbeat_ms: 0,
                connected_since_ms: 0,
                draining: o.draining,
                local: true,
                attempts: Vec::new(),
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        lock(&self.shared).workers.is_empty()
    }
}
