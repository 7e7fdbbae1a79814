//! The dispatcher: the registry of connected workers and their free capacity. In-process
//! workers and (later) remote ones attach the same way: a bounded channel the coordinator
//! sends `CoordinatorMessage`s on, and messages from the worker arriving as
//! [`WorkerEvent`]s on the reconcile loop's inbox.

use std::collections::{BTreeMap, BTreeSet};

use hyperloop_proto::v1;
use hyperloop_shared::model::AttemptId;
use tokio::sync::mpsc;

/// A connected worker, as the coordinator knows it.
#[derive(Debug)]
struct Worker {
    name: String,
    capacity: u32,
    sender: mpsc::Sender<v1::CoordinatorMessage>,
    running: BTreeSet<AttemptId>,
    draining: bool,
}

/// Something a worker said or did, delivered to the reconcile loop.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The worker registered (its first message).
    Joined {
        worker: String,
        capacity: u32,
        sender: mpsc::Sender<v1::CoordinatorMessage>,
    },
    Message {
        worker: String,
        message: v1::worker_message::Body,
    },
    /// The connection is gone; its running attempts are lost.
    Gone { worker: String },
}

/// Workers by name. Owned by the reconcile loop; nothing else keeps worker senders.
#[derive(Debug, Default)]
pub struct Registry {
    workers: BTreeMap<String, Worker>,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("worker {0} is not connected")]
    NotConnected(String),
    #[error("worker {0}'s queue is full or closed")]
    Unavailable(String),
}

impl Registry {
    pub fn join(
        &mut self,
        name: String,
        capacity: u32,
        sender: mpsc::Sender<v1::CoordinatorMessage>,
    ) {
        self.workers.insert(
            name.clone(),
            Worker {
                name,
                capacity,
                sender,
                running: BTreeSet::new(),
                draining: false,
            },
        );
    }

    /// Removes a worker; returns the attempts it was running.
    pub fn leave(&mut self, name: &str) -> BTreeSet<AttemptId> {
        self.workers
            .remove(name)
            .map(|w| w.running)
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Free slots across all workers that take work.
    pub fn free_slots(&self) -> usize {
        self.workers
            .values()
            .filter(|w| !w.draining)
            .map(|w| (w.capacity as usize).saturating_sub(w.running.len()))
            .sum()
    }

    /// The worker with the most free slots after `promised(name)` slots already planned
    /// for it (ties by name, for determinism).
    pub fn pick(&self, promised: impl Fn(&str) -> usize) -> Option<String> {
        let free =
            |w: &Worker| (w.capacity as usize).saturating_sub(w.running.len() + promised(&w.name));
        self.workers
            .values()
            .filter(|w| !w.draining && free(w) > 0)
            .max_by(|a, b| free(a).cmp(&free(b)).then_with(|| b.name.cmp(&a.name)))
            .map(|w| w.name.clone())
    }

    /// Hands `assign` to `worker` and counts the slot as taken.
    ///
    /// # Errors
    /// The worker is gone or not reading; the caller treats the attempt as lost.
    pub fn send_assign(&mut self, worker: &str, assign: v1::Assign) -> Result<(), DispatchError> {
        let w = self
            .workers
            .get_mut(worker)
            .ok_or_else(|| DispatchError::NotConnected(worker.to_owned()))?;
        let attempt = AttemptId(assign.attempt_id);
        w.sender
            .try_send(v1::CoordinatorMessage {
                body: Some(v1::coordinator_message::Body::Assign(assign)),
            })
            .map_err(|_| DispatchError::Unavailable(worker.to_owned()))?;
        w.running.insert(attempt);
        Ok(())
    }

    /// Frees the slot of a finished attempt.
    pub fn finished(&mut self, worker: &str, attempt: AttemptId) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.running.remove(&attempt);
        }
    }

    /// Best-effort message to one worker (acks, cancels): a worker that is gone has nothing
    /// left to acknowledge or cancel.
    pub fn tell(&self, worker: &str, kind: v1::coordinator_message::Body) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w
                .sender
                .try_send(v1::CoordinatorMessage { body: Some(kind) });
        }
    }

    /// Asks every worker to drain (finish current steps, take no new ones, exit).
    pub fn drain_all(&mut self, reason: &str) {
        for w in self.workers.values_mut() {
            w.draining = true;
            let _ = w.sender.try_send(v1::CoordinatorMessage {
                body: Some(v1::coordinator_message::Body::Drain(v1::Drain {
                    reason: reason.to_owned(),
                })),
            });
        }
    }
}
