//! The dispatcher: the registry of connected workers, their capacity, labels and liveness,
//! behind the [`Dispatcher`] port. In-process and remote workers attach the same way: a
//! bounded channel the coordinator sends `CoordinatorMessage`s on, and messages from the
//! worker arriving as [`WorkerEvent`]s on the registry's inbox, which it turns into domain
//! [`Inbound`]s for the loop. Wire types stop here.
//!
//! Every stream is a *connection* with its own id: a worker that reconnects (or a new
//! process under the same name) replaces its old connection, and events from a replaced
//! connection are ignored, so a late `Gone` can never remove the live one.
//!
//! Push fence: a `PushRequest` becomes [`Inbound::PushAsked`]; the answer goes back only on
//! the connection the request came on, granting at most [`push_validity`]: less than the time
//! before this registry could declare the worker lost and its attempts be given away.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use hyperloop_proto::v1::{self, AttemptPhase};
use hyperloop_shared::model::AttemptId;
use hyperloop_shared::reconcile::{Held, Offer};
use hyperloop_shared::step::{PushAnswer, PushGrant, PushRequest, StepOrder, StepReport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::WorkerView;
use crate::grpc::HEARTBEAT_TIMEOUT;
pub use crate::ports::dispatcher::DispatchError;
use crate::ports::dispatcher::{Dispatcher, Inbound};
use crate::reconcile::Clock;

/// How long a worker whose stream dropped may take to reconnect and reclaim its steps.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// A connected worker, as the coordinator knows it.
#[derive(Debug)]
struct Worker {
    conn: u64,
    registration: v1::Registration,
    local: bool,
    sender: mpsc::Sender<v1::CoordinatorMessage>,
    /// Cancelling it ends this connection's relay (and so the stream).
    close: CancellationToken,
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

/// Something a worker said or did, delivered to the registry's inbox.
// Events pass through a channel one at a time and are never stored in bulk, so the size of
// the message variant (a StepResult) costs nothing worth a box on every message.
#[allow(clippy::large_enum_variant)]
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
#[derive(Debug)]
pub struct Registry {
    workers: BTreeMap<String, Worker>,
    inbox: mpsc::Receiver<WorkerEvent>,
    /// Translated but not yet handed out (a heartbeat reports several attempts).
    pending: VecDeque<Inbound>,
    /// Push questions not yet answered: worker, attempt, and the connection asked on. The
    /// loop answers every [`Inbound::PushAsked`] once, so this stays as short as its backlog.
    asked: Vec<(String, AttemptId, u64)>,
    /// Wall-clock ms for the live view's timestamps.
    clock: Clock,
}

/// How long a push grant holds for a worker last heard from `silent_for` ago. A silent worker
/// is declared lost (its attempts given away at once) [`HEARTBEAT_TIMEOUT`] after it was last
/// seen, and a dropped connection keeps its attempts [`RECONNECT_GRACE`]; the grant ends
/// before either could happen. The worker counts it from when it sent its request, which was
/// before we saw it, so its clock runs out first.
pub fn push_validity(silent_for: Duration) -> Duration {
    HEARTBEAT_TIMEOUT
        .saturating_sub(silent_for)
        .min(RECONNECT_GRACE)
}

fn held(attempts: &[v1::HeldAttempt]) -> Vec<Held> {
    attempts
        .iter()
        .map(|h| Held {
            attempt: AttemptId(h.attempt_id),
            reporting: h.phase == i32::from(AttemptPhase::Reporting),
        })
        .collect()
}

impl Registry {
    pub fn new(inbox: mpsc::Receiver<WorkerEvent>, clock: Clock) -> Self {
        Registry {
            workers: BTreeMap::new(),
            inbox,
            pending: VecDeque::new(),
            asked: Vec::new(),
            clock,
        }
    }

    /// Registers a connection; a previous connection under the same name is closed.
    fn join(&mut self, joined: &Joined) {
        let now_ms = self.clock.now_ms();
        let replaced = self.workers.insert(
            joined.registration.name.clone(),
            Worker {
                conn: joined.conn,
                registration: joined.registration.clone(),
                local: joined.local,
                sender: joined.sender.clone(),
                close: joined.close.clone(),
                draining: false,
                last_seen: Instant::now(),
                last_heartbeat_ms: now_ms,
                connected_since_ms: now_ms,
            },
        );
        if let Some(old) = replaced {
            old.close.cancel();
        }
    }

    /// Whether `conn` is the live connection of `worker` (events of replaced ones are stale).
    fn is_current(&self, worker: &str, conn: u64) -> bool {
        self.workers.get(worker).is_some_and(|w| w.conn == conn)
    }

    /// Any message proves the worker alive; a heartbeat also refreshes what it reports.
    fn seen(&mut self, name: &str, heartbeat: Option<&v1::Heartbeat>) {
        let now_ms = self.clock.now_ms();
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

    fn tell(&self, worker: &str, kind: v1::coordinator_message::Body) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w
                .sender
                .try_send(v1::CoordinatorMessage { body: Some(kind) });
        }
    }

    /// What a transport event means to the loop, if anything.
    fn translate(&mut self, event: WorkerEvent) -> Vec<Inbound> {
        match event {
            WorkerEvent::Joined(joined) => {
                self.join(&joined);
                vec![Inbound::Joined {
                    worker: joined.registration.name.clone(),
                    capacity: joined.registration.capacity.max(1),
                    held: held(&joined.held),
                }]
            }
            WorkerEvent::Gone { worker, conn } => {
                if !self.is_current(&worker, conn) {
                    return Vec::new();
                }
                if let Some(w) = self.workers.remove(&worker) {
                    w.close.cancel();
                }
                vec![Inbound::Lost {
                    worker,
                    reason: "connection closed".to_owned(),
                    grace: RECONNECT_GRACE,
                }]
            }
            WorkerEvent::Message {
                worker,
                conn,
                message,
            } => {
                if !self.is_current(&worker, conn) {
                    return Vec::new(); // a replaced connection; the worker resends on its new one
                }
                use v1::worker_message::Body;
                let heartbeat = match &message {
                    Body::Heartbeat(hb) => Some(hb),
                    _ => None,
                };
                self.seen(&worker, heartbeat);
                match message {
                    Body::StepResult(result) => vec![Inbound::Result {
                        worker,
                        report: StepReport::from(result),
                    }],
                    Body::Declined(d) => vec![Inbound::Declined {
                        worker,
                        attempt: AttemptId(d.attempt_id),
                        reason: d.reason,
                    }],
                    Body::Accepted(a) => vec![Inbound::Progress {
                        attempt: AttemptId(a.attempt_id),
                        phase: AttemptPhase::Preparing,
                        usage: None,
                        lines: Vec::new(),
                    }],
                    Body::Progress(p) => vec![Inbound::Progress {
                        attempt: AttemptId(p.attempt_id),
                        phase: AttemptPhase::Running,
                        usage: Some((p.turns, p.cost_usd)),
                        lines: p.lines,
                    }],
                    Body::Heartbeat(hb) => hb
                        .attempts
                        .iter()
                        .map(|h| Inbound::Progress {
                            attempt: AttemptId(h.attempt_id),
                            phase: AttemptPhase::try_from(h.phase).unwrap_or_default(),
                            usage: None,
                            lines: Vec::new(),
                        })
                        .collect(),
                    Body::PushRequest(request) => match PushRequest::try_from(request) {
                        Ok(request) => {
                            tracing::debug!(%worker, attempt = %request.attempt, head = %request.head_commit, "push asked");
                            self.asked.push((worker.clone(), request.attempt, conn));
                            vec![Inbound::PushAsked {
                                worker,
                                attempt: request.attempt,
                            }]
                        }
                        // Unanswerable; the worker gives up without pushing.
                        Err(e) => {
                            tracing::warn!(%worker, error = %e, "ignored a malformed push request");
                            Vec::new()
                        }
                    },
                    Body::Hello(_) => Vec::new(),
                }
            }
        }
    }
}

impl Dispatcher for Registry {
    async fn next(&mut self) -> Option<Inbound> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Some(next);
            }
            let event = self.inbox.recv().await?;
            let translated = self.translate(event);
            self.pending.extend(translated);
        }
    }

    fn try_next(&mut self) -> Option<Inbound> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Some(next);
            }
            let event = self.inbox.try_recv().ok()?;
            let translated = self.translate(event);
            self.pending.extend(translated);
        }
    }

    fn expire(&mut self) -> Vec<Inbound> {
        let silent: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > HEARTBEAT_TIMEOUT)
            .map(|(name, _)| name.clone())
            .collect();
        silent
            .into_iter()
            .filter_map(|name| {
                let w = self.workers.remove(&name)?;
                w.close.cancel();
                Some(Inbound::Lost {
                    worker: name,
                    reason: format!(
                        "stopped heartbeating (no heartbeat for {}s); its steps go to other \
                         workers",
                        HEARTBEAT_TIMEOUT.as_secs()
                    ),
                    grace: Duration::ZERO,
                })
            })
            .collect()
    }

    fn offers(&self) -> Vec<Offer> {
        self.workers
            .values()
            .map(|w| Offer {
                name: w.registration.name.clone(),
                labels: w.registration.labels.clone(),
                capacity: w.registration.capacity.max(1),
                draining: w.draining,
            })
            .collect()
    }

    fn send(&mut self, worker: &str, order: StepOrder) -> Result<(), DispatchError> {
        let w = self
            .workers
            .get(worker)
            .ok_or_else(|| DispatchError::NotConnected(worker.to_owned()))?;
        w.sender
            .try_send(v1::CoordinatorMessage {
                body: Some(v1::coordinator_message::Body::Assign(v1::Assign::from(
                    order,
                ))),
            })
            .map_err(|_| DispatchError::Unavailable(worker.to_owned()))
    }

    fn ack(&mut self, worker: &str, attempt: AttemptId) {
        self.tell(
            worker,
            v1::coordinator_message::Body::ResultAck(v1::ResultAck {
                attempt_id: attempt.0,
            }),
        );
    }

    fn cancel(&mut self, worker: &str, attempt: AttemptId, reason: &str) {
        self.tell(
            worker,
            v1::coordinator_message::Body::Cancel(v1::Cancel {
                attempt_id: attempt.0,
                reason: reason.to_owned(),
            }),
        );
    }

    fn answer_push(&mut self, worker: &str, attempt: AttemptId, granted: bool, reason: &str) {
        let asked_on = self
            .asked
            .iter()
            .position(|(w, a, _)| w == worker && *a == attempt)
            .map(|i| self.asked.remove(i).2);
        let Some(w) = self.workers.get(worker) else {
            return;
        };
        // The worker times a grant from a request it sent on this stream: an answer to a
        // question from an earlier connection must not reach a later one.
        if asked_on != Some(w.conn) {
            return;
        }
        let grant = if granted {
            PushGrant::Granted {
                valid_for: push_validity(w.last_seen.elapsed()),
            }
        } else {
            PushGrant::Refused {
                reason: reason.to_owned(),
            }
        };
        let answer = v1::PushAnswer::from(PushAnswer { attempt, grant });
        self.tell(worker, v1::coordinator_message::Body::PushAnswer(answer));
    }

    fn drain(&mut self, name: &str, reason: &str) -> bool {
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

    fn drain_all(&mut self, reason: &str) {
        let names: Vec<String> = self.workers.keys().cloned().collect();
        for name in names {
            self.drain(&name, reason);
        }
    }

    fn workers(&self) -> Vec<WorkerView> {
        self.workers
            .values()
            .map(|w| WorkerView {
                name: w.registration.name.clone(),
                worker_id: format!("{}#{}", w.registration.name, w.conn),
                capacity: w.registration.capacity.max(1),
                labels: w.registration.labels.clone().into_iter().collect(),
                version: w.registration.version.clone(),
                last_heartbeat_ms: w.last_heartbeat_ms,
                connected_since_ms: w.connected_since_ms,
                draining: w.draining,
                local: w.local,
                attempts: Vec::new(),
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(name: &str, conn: u64) -> (Joined, mpsc::Receiver<v1::CoordinatorMessage>) {
        let (sender, rx) = mpsc::channel(8);
        let joined = Joined {
            conn,
            registration: v1::Registration {
                name: name.into(),
                capacity: 2,
                ..Default::default()
            },
            held: vec![v1::HeldAttempt {
                attempt_id: 7,
                phase: AttemptPhase::Reporting.into(),
                ..Default::default()
            }],
            local: false,
            sender,
            close: CancellationToken::new(),
        };
        (joined, rx)
    }

    fn registry() -> (Registry, mpsc::Sender<WorkerEvent>) {
        let (tx, rx) = mpsc::channel(8);
        (Registry::new(rx, Clock::start()), tx)
    }

    #[tokio::test]
    async fn a_replaced_connection_is_closed_and_its_gone_event_ignored() {
        let (mut r, tx) = registry();
        let (first, _rx1) = joined("w", 1);
        let close = first.close.clone();
        tx.send(WorkerEvent::Joined(Box::new(first))).await.unwrap();
        let (second, _rx2) = joined("w", 2);
        tx.send(WorkerEvent::Joined(Box::new(second)))
            .await
            .unwrap();
        tx.send(WorkerEvent::Gone {
            worker: "w".into(),
            conn: 1,
        })
        .await
        .unwrap();
        tx.send(WorkerEvent::Gone {
            worker: "w".into(),
            conn: 2,
        })
        .await
        .unwrap();
        let held = vec![Held {
            attempt: AttemptId(7),
            reporting: true,
        }];
        let first_join = Inbound::Joined {
            worker: "w".into(),
            capacity: 2,
            held: held.clone(),
        };
        assert_eq!(r.next().await, Some(first_join.clone()));
        assert_eq!(r.next().await, Some(first_join));
        assert!(close.is_cancelled(), "the replaced connection is closed");
        // The stale Gone of connection 1 is skipped; connection 2's is reported.
        assert!(
            matches!(r.next().await, Some(Inbound::Lost { grace, .. }) if grace == RECONNECT_GRACE)
        );
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn orders_reach_their_worker_as_assign_messages_and_a_gone_worker_refuses_them() {
        let (mut r, tx) = registry();
        let (j, mut rx) = joined("w", 1);
        tx.send(WorkerEvent::Joined(Box::new(j))).await.unwrap();
        r.next().await;
        assert_eq!(r.offers().len(), 1);
        let order = crate::ports::dispatcher::contract::order(AttemptId(3));
        r.send("w", order).unwrap();
        let got = rx.recv().await.unwrap();
        assert!(
            matches!(got.body, Some(v1::coordinator_message::Body::Assign(a)) if a.attempt_id == 3)
        );
        let order = crate::ports::dispatcher::contract::order(AttemptId(4));
        assert_eq!(
            r.send("nobody", order),
            Err(DispatchError::NotConnected("nobody".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_workers_expire_with_no_grace() {
        let (mut r, tx) = registry();
        let (w, _rx) = joined("w", 1);
        let close = w.close.clone();
        tx.send(WorkerEvent::Joined(Box::new(w))).await.unwrap();
        r.next().await;
        assert!(r.expire().is_empty());
        tokio::time::advance(HEARTBEAT_TIMEOUT + Duration::from_millis(10)).await;
        let expired = r.expire();
        assert!(matches!(&expired[..], [Inbound::Lost { grace, .. }] if grace.is_zero()));
        assert!(close.is_cancelled());
    }

    fn push_request(worker: &str, conn: u64, attempt: u64) -> WorkerEvent {
        WorkerEvent::Message {
            worker: worker.into(),
            conn,
            message: v1::worker_message::Body::PushRequest(v1::PushRequest {
                attempt_id: attempt,
                head_commit: "c0ffee".into(),
            }),
        }
    }

    fn push_answer(rx: &mut mpsc::Receiver<v1::CoordinatorMessage>) -> Option<v1::PushAnswer> {
        std::iter::from_fn(|| rx.try_recv().ok()).find_map(|m| match m.body {
            Some(v1::coordinator_message::Body::PushAnswer(a)) => Some(a),
            _ => None,
        })
    }

    #[test]
    fn a_push_grant_ends_before_the_worker_could_be_declared_lost_or_its_grace_run_out() {
        assert_eq!(push_validity(Duration::ZERO), RECONNECT_GRACE);
        assert!(RECONNECT_GRACE < HEARTBEAT_TIMEOUT);
        assert_eq!(
            push_validity(HEARTBEAT_TIMEOUT - Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        assert_eq!(push_validity(HEARTBEAT_TIMEOUT * 2), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_request_is_asked_as_push_asked_and_answered_with_a_grant_shorter_than_the_reconnect_grace()
     {
        let (mut r, tx) = registry();
        let (w, mut rx) = joined("w", 1);
        tx.send(WorkerEvent::Joined(Box::new(w))).await.unwrap();
        r.next().await;
        tx.send(push_request("w", 1, 5)).await.unwrap();
        assert_eq!(
            r.next().await,
            Some(Inbound::PushAsked {
                worker: "w".into(),
                attempt: AttemptId(5),
            })
        );
        // The loop took 2.5 s to decide: the worker could be declared lost 1.5 s later.
        tokio::time::advance(Duration::from_millis(2_500)).await;
        r.answer_push("w", AttemptId(5), true, "");
        let answer = push_answer(&mut rx).expect("answered");
        assert_eq!((answer.attempt_id, answer.granted), (5, true));
        let valid_for =
            hyperloop_proto::convert::parse_duration("valid_for", answer.valid_for).unwrap();
        assert!(valid_for <= RECONNECT_GRACE, "{valid_for:?}");
        assert_eq!(valid_for, HEARTBEAT_TIMEOUT - Duration::from_millis(2_500));

        tx.send(push_request("w", 1, 6)).await.unwrap();
        r.next().await;
        r.answer_push("w", AttemptId(6), false, "attempt-6 was revoked");
        let answer = push_answer(&mut rx).expect("answered");
        assert!(!answer.granted);
        assert_eq!(answer.reason, "attempt-6 was revoked");
        assert_eq!(answer.valid_for, Some(prost_types::Duration::default()));
    }

    #[tokio::test]
    async fn a_push_answer_never_reaches_a_later_connection_than_the_one_asked_on() {
        let (mut r, tx) = registry();
        let (first, _rx1) = joined("w", 1);
        tx.send(WorkerEvent::Joined(Box::new(first))).await.unwrap();
        r.next().await;
        tx.send(push_request("w", 1, 5)).await.unwrap();
        assert!(matches!(r.next().await, Some(Inbound::PushAsked { .. })));
        // The worker reconnects before the loop answers.
        let (second, mut rx2) = joined("w", 2);
        tx.send(WorkerEvent::Joined(Box::new(second)))
            .await
            .unwrap();
        r.next().await;
        r.answer_push("w", AttemptId(5), true, "");
        assert_eq!(push_answer(&mut rx2), None, "the new stream never asked");
        // Asked again on the new stream, it is answered there.
        tx.send(push_request("w", 2, 5)).await.unwrap();
        r.next().await;
        r.answer_push("w", AttemptId(5), true, "");
        assert!(push_answer(&mut rx2).is_some_and(|a| a.granted));
    }
}
