//! The dispatcher: the registry of connected workers, their free capacity, labels and
//! liveness. In-process and remote workers attach the same way: a bounded channel the
//! coordinator sends `CoordinatorMessage`s on, and messages from the worker arriving as
//! [`WorkerEvent`]s on the reconcile loop's inbox.
//!
//! Every stream is a *connection* with its own id: a worker that reconnects (or a new
//! process under the same name) replaces its old connection, and events from a replaced
//! connection are ignored, so a late `Gone` can never remove the live one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use hyperloop_proto::v1;
use hyperloop_shared::model::AttemptId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A connected worker, as the coordinator knows it.
#[derive(Debug)]
struct Worker {
    conn: u64,
    registration: v1::Registration,
    local: bool,
    sender: mpsc::Sender<v1::CoordinatorMessage>,
    /// Cancelling it ends this connection's relay (and so the stream).
    close: CancellationToken,
    running: BTreeSet<AttemptId>,
    draining: bool,
    last_seen: Instant,
    last_heartbeat_ms: u64,
    connected_since_ms: u64,
}

/// A new connection, admitted and registered.
#[derive(Debug)]
pub struct Joined {
    pub conn: u64,
    pub registration: v1::Registration,
    /// Attempts the worker still holds from before it reconnected (`Hello.attempts`).
    pub held: Vec<v1::HeldAttempt>,
    pub local: bool,
    pub sender: mpsc::Sender<v1::CoordinatorMessage>,
    pub close: CancellationToken,
}

/// Something a worker said or did, delivered to the reconcile loop.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The worker registered (its first message).
    Joined(Box<Joined>),
    Message {
        worker: String,
        conn: u64,
        message: v1::worker_message::Body,
    },
    /// The connection is gone.
    Gone { worker: String, conn: u64 },
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

/// Whether `labels` carry every `required` label with the same value.
pub fn satisfies(labels: &HashMap<String, String>, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Registry {
    /// Registers a connection. A previous connection under the same name is closed and its
    /// attempts returned: the caller decides which the new connection still holds.
    pub fn join(&mut self, joined: &Joined, now_ms: u64) -> BTreeSet<AttemptId> {
        let name = joined.registration.name.clone();
        let replaced = self.workers.insert(
            name,
            Worker {
                conn: joined.conn,
                registration: joined.registration.clone(),
                local: joined.local,
                sender: joined.sender.clone(),
                close: joined.close.clone(),
                running: BTreeSet::new(),
                draining: false,
                last_seen: Instant::now(),
                last_heartbeat_ms: now_ms,
                connected_since_ms: now_ms,
            },
        );
        match replaced {
            Some(old) => {
                old.close.cancel();
                old.running
            }
            None => BTreeSet::new(),
        }
    }

    /// Whether `conn` is the live connection of `worker` (events of replaced ones are stale).
    pub fn is_current(&self, worker: &str, conn: u64) -> bool {
        self.workers.get(worker).is_some_and(|w| w.conn == conn)
    }

    /// Removes a worker if `conn` is its live connection; returns the attempts it held.
    pub fn leave(&mut self, name: &str, conn: u64) -> Option<BTreeSet<AttemptId>> {
        if !self.is_current(name, conn) {
            return None;
        }
        self.workers.remove(name).map(|w| {
            w.close.cancel();
            w.running
        })
    }

    /// Any message proves the worker alive; a heartbeat also refreshes what it reports.
    pub fn seen(&mut self, name: &str, heartbeat: Option<&v1::Heartbeat>, now_ms: u64) {
        if let Some(w) = self.workers.get_mut(name) {
            w.last_seen = Instant::now();
            if let Some(hb) = heartbeat {
                w.last_heartbeat_ms = now_ms;
                w.draining |= hb.draining;
                if let Some(r) = &hb.registration {
                    w.registration.labels.clone_from(&r.labels);
                    w.registration.capacity = r.capacity.max(1);
                }
            }
        }
    }

    /// Workers silent for longer than `timeout`: closed and removed, with their attempts.
    pub fn expire(&mut self, timeout: Duration) -> Vec<(String, BTreeSet<AttemptId>)> {
        let silent: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > timeout)
            .map(|(name, _)| name.clone())
            .collect();
        silent
            .into_iter()
            .filter_map(|name| {
                let w = self.workers.remove(&name)?;
                w.close.cancel();
                Some((name, w.running))
            })
            .collect()
    }

    /// Binds an attempt the worker reports holding to it (after a reconnect).
    pub fn hold(&mut self, name: &str, attempt: AttemptId) {
        if let Some(w) = self.workers.get_mut(name) {
            w.running.insert(attempt);
        }
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    fn free(w: &Worker) -> usize {
        (w.registration.capacity.max(1) as usize).saturating_sub(w.running.len())
    }

    /// Free slots across all workers that take work.
    pub fn free_slots(&self) -> usize {
        self.workers
            .values()
            .filter(|w| !w.draining)
            .map(Self::free)
            .sum()
    }

    /// The worker carrying `required` labels with the most free slots after `promised(name)`
    /// slots already planned for it (ties by name, for determinism).
    pub fn pick(
        &self,
        required: &BTreeMap<String, String>,
        promised: impl Fn(&str) -> usize,
    ) -> Option<String> {
        let free = |w: &Worker| Self::free(w).saturating_sub(promised(&w.registration.name));
        self.workers
            .values()
            .filter(|w| !w.draining && free(w) > 0 && satisfies(&w.registration.labels, required))
            .max_by(|a, b| {
                free(a)
                    .cmp(&free(b))
                    .then_with(|| b.registration.name.cmp(&a.registration.name))
            })
            .map(|w| w.registration.name.clone())
    }

    /// Whether any connected worker (busy or not) carries `required`.
    pub fn any_matches(&self, required: &BTreeMap<String, String>) -> bool {
        self.workers
            .values()
            .any(|w| !w.draining && satisfies(&w.registration.labels, required))
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

    /// Frees the slot of a finished (or declined) attempt.
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

    /// Asks one worker to drain; false if it is not connected.
    pub fn drain(&mut self, name: &str, reason: &str) -> bool {
        let Some(w) = self.workers.get_mut(name) else {
            return false;
        };
        w.draining = true;
        let _ = w.sender.try_send(v1::CoordinatorMessage {
            body: Some(v1::coordinator_message::Body::Drain(v1::Drain {
                reason: reason.to_owned(),
            })),
        });
        true
    }

    /// Asks every worker to drain (finish current steps, take no new ones, exit).
    pub fn drain_all(&mut self, reason: &str) {
        let names: Vec<String> = self.workers.keys().cloned().collect();
        for name in names {
            self.drain(&name, reason);
        }
    }

    /// The workers for the live view: (registration, local, draining, running attempts,
    /// last heartbeat, connected since).
    pub fn views(&self) -> impl Iterator<Item = WorkerSnapshot<'_>> {
        self.workers.values().map(|w| WorkerSnapshot {
            conn: w.conn,
            registration: &w.registration,
            local: w.local,
            draining: w.draining,
            running: &w.running,
            last_heartbeat_ms: w.last_heartbeat_ms,
            connected_since_ms: w.connected_since_ms,
        })
    }
}

/// One worker as [`Registry::views`] shows it.
#[derive(Debug)]
pub struct WorkerSnapshot<'a> {
    pub conn: u64,
    pub registration: &'a v1::Registration,
    pub local: bool,
    pub draining: bool,
    pub running: &'a BTreeSet<AttemptId>,
    pub last_heartbeat_ms: u64,
    pub connected_since_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(name: &str, conn: u64, capacity: u32, labels: &[(&str, &str)]) -> Joined {
        let (sender, _rx) = mpsc::channel(8);
        Joined {
            conn,
            registration: v1::Registration {
                name: name.into(),
                capacity,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            },
            held: Vec::new(),
            local: false,
            sender,
            close: CancellationToken::new(),
        }
    }

    #[test]
    fn pick_respects_labels_and_capacity() {
        let mut r = Registry::default();
        r.join(&joined("cpu", 1, 2, &[("os", "linux")]), 0);
        r.join(&joined("gpu", 2, 1, &[("os", "linux"), ("gpu", "a100")]), 0);
        let gpu = BTreeMap::from([("gpu".to_owned(), "a100".to_owned())]);
        assert_eq!(r.pick(&gpu, |_| 0).as_deref(), Some("gpu"));
        assert_eq!(r.pick(&gpu, |n| usize::from(n == "gpu")), None);
        assert_eq!(r.pick(&BTreeMap::new(), |_| 0).as_deref(), Some("cpu"));
        let tpu = BTreeMap::from([("tpu".to_owned(), "v5".to_owned())]);
        assert!(!r.any_matches(&tpu));
        assert!(r.any_matches(&gpu));
    }

    #[test]
    fn a_replaced_connection_is_closed_and_its_gone_event_ignored() {
        let mut r = Registry::default();
        let first = joined("w", 1, 1, &[]);
        r.join(&first, 0);
        r.hold("w", AttemptId(7));
        let held = r.join(&joined("w", 2, 1, &[]), 0);
        assert!(first.close.is_cancelled());
        assert_eq!(held, BTreeSet::from([AttemptId(7)]));
        assert!(r.leave("w", 1).is_none(), "stale connection");
        assert!(r.is_current("w", 2));
        assert!(r.leave("w", 2).is_some());
        assert!(r.is_empty());
    }

    #[test]
    fn silent_workers_expire_with_their_attempts() {
        let mut r = Registry::default();
        let w = joined("w", 1, 1, &[]);
        r.join(&w, 0);
        r.hold("w", AttemptId(3));
        assert!(r.expire(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        let expired = r.expire(Duration::from_millis(10));
        assert_eq!(
            expired,
            vec![("w".to_owned(), BTreeSet::from([AttemptId(3)]))]
        );
        assert!(w.close.is_cancelled());
    }
}
