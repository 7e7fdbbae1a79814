//! The push fence, worker side: a step pushes its commits only with the coordinator's
//! permission, and only while that permission holds.
//!
//! A step holds a [`PushFence`] and [`asks`](PushFence::ask) it before `git push`. The
//! question goes to the serve loop, whose [`Asks`] sends `PushRequest` on the current stream
//! (again on every new stream, and while unanswered at the result resend pace) and turns
//! each `PushAnswer` into a [`Permit`]. A grant holds for `valid_for` counted from when the
//! request was sent; the answer names no request, so it is counted from the oldest request
//! still unanswered on that stream: an answer is never to an earlier one, so the worker's
//! deadline never falls after the coordinator's. The coordinator answers only on the stream
//! a request came on, so a new stream starts with nothing outstanding.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use hyperloop_proto::v1;
use hyperloop_shared::duration::human;
use hyperloop_shared::model::AttemptId;
use hyperloop_shared::step::{PushAnswer, PushGrant, PushRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a step waits for a usable answer before giving up without pushing: long enough
/// to ride out a coordinator restart or failover, short enough that a step does not hang.
pub const DEFAULT_PUSH_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// What a step may do with its commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Push, if the push starts before `until` (`valid_for` after the request went out).
    Granted { until: Instant, valid_for: Duration },
    /// The coordinator said no; the reason is its own.
    Refused(String),
    /// No usable answer: none in time, only grants that had expired on arrival, or the
    /// worker is stopping.
    Unanswered(String),
    /// The step was cancelled while asking.
    Cancelled,
    /// Nobody to ask: the step runs without a coordinator ([`PushFence::unfenced`]).
    Unfenced,
}

/// A step's question for the serve loop.
#[derive(Debug)]
pub(crate) struct Question {
    pub attempt: u64,
    pub head_commit: String,
    pub answer: oneshot::Sender<Permit>,
}

/// A step's handle on the fence.
#[derive(Debug, Clone)]
pub struct PushFence(Fence);

#[derive(Debug, Clone)]
enum Fence {
    Coordinator(mpsc::Sender<Question>),
    Unfenced,
}

impl PushFence {
    /// Grants every push without asking anyone. Only for steps run with no coordinator at
    /// all (tests and benchmarks that call [`run_step`](crate::run_step) directly): nobody
    /// can have revoked their attempt. Every step a coordinator assigns is fenced.
    pub fn unfenced() -> Self {
        PushFence(Fence::Unfenced)
    }

    pub(crate) fn coordinator(questions: mpsc::Sender<Question>) -> Self {
        PushFence(Fence::Coordinator(questions))
    }

    /// Asks whether `attempt` may push `head_commit`, waiting for the serve loop's verdict
    /// (which it gives within the push answer timeout) or the step's cancellation.
    pub async fn ask(&self, attempt: u64, head_commit: &str, cancel: &CancellationToken) -> Permit {
        let questions = match &self.0 {
            Fence::Unfenced => return Permit::Unfenced,
            Fence::Coordinator(questions) => questions,
        };
        let stopping = || Permit::Unanswered("the worker is stopping".to_owned());
        let (answer, verdict) = oneshot::channel();
        let question = Question {
            attempt,
            head_commit: head_commit.to_owned(),
            answer,
        };
        tokio::select! {
            sent = questions.send(question) => if sent.is_err() {
                return stopping();
            },
            () = cancel.cancelled() => return Permit::Cancelled,
        }
        tokio::select! {
            verdict = verdict => verdict.unwrap_or_else(|_| stopping()),
            () = cancel.cancelled() => Permit::Cancelled,
        }
    }
}

/// One step's question while the loop asks it.
#[derive(Debug)]
struct Ask {
    head_commit: String,
    asked_at: Instant,
    /// When the requests still unanswered on the current stream went out, oldest first.
    sent: VecDeque<Instant>,
    /// The last grant that had expired when it arrived: (its age, how long it held).
    expired: Option<(Duration, Duration)>,
    answer: oneshot::Sender<Permit>,
}

/// The serve loop's side of the fence: the questions being asked. No I/O: it says which
/// requests to send and records them as sent at the time given (before they are sent, which
/// only makes a grant end earlier).
#[derive(Debug, Default)]
pub(crate) struct Asks {
    asks: BTreeMap<u64, Ask>,
}

impl Asks {
    /// A step's new question; with a stream up (`connected`) its request goes out now.
    pub fn add(&mut self, q: Question, now: Instant, connected: bool) -> Option<v1::PushRequest> {
        let mut ask = Ask {
            head_commit: q.head_commit,
            asked_at: now,
            sent: VecDeque::new(),
            expired: None,
            answer: q.answer,
        };
        let request = connected.then(|| request(q.attempt, &mut ask, now));
        self.asks.insert(q.attempt, ask);
        request
    }

    /// A new stream: nothing sent on the last one can be answered any more; every question
    /// is asked again.
    pub fn restart(&mut self, now: Instant) -> Vec<v1::PushRequest> {
        self.asks
            .iter_mut()
            .map(|(attempt, ask)| {
                ask.sent.clear();
                request(*attempt, ask, now)
            })
            .collect()
    }

    /// Gives up on questions asked `limit` ago or more, forgets those whose step stopped
    /// waiting, and with a stream up returns the requests due again: none outstanding, or
    /// the newest sent `every` ago or more.
    pub fn due(
        &mut self,
        now: Instant,
        every: Duration,
        limit: Duration,
        connected: bool,
    ) -> Vec<v1::PushRequest> {
        let stale: Vec<u64> = self
            .asks
            .iter()
            .filter(|(_, a)| a.answer.is_closed() || now.duration_since(a.asked_at) >= limit)
            .map(|(id, _)| *id)
            .collect();
        for attempt in stale {
            if let Some(ask) = self.asks.remove(&attempt) {
                let why = match ask.expired {
                    Some((age, held)) => format!(
                        "no usable answer within {}: the last grant arrived {} after the \
                         request and held only {}",
                        human(limit),
                        human(age),
                        human(held)
                    ),
                    None => format!("no answer within {}", human(limit)),
                };
                let _ = ask.answer.send(Permit::Unanswered(why));
            }
        }
        if !connected {
            return Vec::new();
        }
        self.asks
            .iter_mut()
            .filter(|(_, a)| {
                a.sent
                    .back()
                    .is_none_or(|t| now.duration_since(*t) >= every)
            })
            .map(|(attempt, ask)| request(*attempt, ask, now))
            .collect()
    }

    /// An answer from the coordinator, received at `now`. A grant that already expired is
    /// not used; the question is asked again at the next resend.
    pub fn answer(&mut self, wire: v1::PushAnswer, now: Instant) {
        let attempt = wire.attempt_id;
        let Some(ask) = self.asks.get_mut(&attempt) else {
            return; // already settled (a duplicate answer)
        };
        let Some(sent_at) = ask.sent.pop_front() else {
            return; // nothing asked on this stream: not an answer to us
        };
        let grant = match PushAnswer::try_from(wire) {
            Ok(answer) => answer.grant,
            Err(e) => PushGrant::Refused {
                reason: format!("the coordinator's answer was unusable: {e}"),
            },
        };
        let permit = match grant {
            PushGrant::Refused { reason } => Permit::Refused(reason),
            PushGrant::Granted { valid_for } => match sent_at.checked_add(valid_for) {
                Some(until) if now < until => Permit::Granted { until, valid_for },
                _ => {
                    ask.expired = Some((now.duration_since(sent_at), valid_for));
                    return;
                }
            },
        };
        if let Some(ask) = self.asks.remove(&attempt) {
            let _ = ask.answer.send(permit);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.asks.is_empty()
    }
}

fn request(attempt: u64, ask: &mut Ask, now: Instant) -> v1::PushRequest {
    ask.sent.push_back(now);
    v1::PushRequest::from(PushRequest {
        attempt: AttemptId(attempt),
        head_commit: ask.head_commit.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(5);
    const LIMIT: Duration = Duration::from_secs(120);

    fn question(attempt: u64) -> (Question, oneshot::Receiver<Permit>) {
        let (answer, rx) = oneshot::channel();
        let q = Question {
            attempt,
            head_commit: "abc".to_owned(),
            answer,
        };
        (q, rx)
    }

    fn grant(attempt: u64, valid_for: Duration) -> v1::PushAnswer {
        v1::PushAnswer::from(PushAnswer {
            attempt: AttemptId(attempt),
            grant: PushGrant::Granted { valid_for },
        })
    }

    #[test]
    fn a_grant_holds_from_when_the_request_was_sent() {
        let t0 = Instant::now();
        let mut asks = Asks::default();
        let (q, mut rx) = question(7);
        let sent = asks.add(q, t0, true).expect("asked at once");
        assert_eq!((sent.attempt_id, sent.head_commit.as_str()), (7, "abc"));
        asks.answer(
            grant(7, Duration::from_secs(2)),
            t0 + Duration::from_millis(300),
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Permit::Granted {
                until: t0 + Duration::from_secs(2),
                valid_for: Duration::from_secs(2)
            }
        );
        assert!(asks.is_empty());
    }

    #[test]
    fn an_answer_counts_from_the_oldest_unanswered_request_so_a_late_one_has_expired() {
        let t0 = Instant::now();
        let mut asks = Asks::default();
        let (q, mut rx) = question(7);
        asks.add(q, t0, true);
        // Unanswered for a resend interval: asked again.
        let again = asks.due(t0 + EVERY, EVERY, LIMIT, true);
        assert_eq!(again.len(), 1);
        // This answer may be to the second request, but nothing says so: it counts from the
        // first, and a 2 s grant 5.1 s after that is no grant.
        asks.answer(
            grant(7, Duration::from_secs(2)),
            t0 + EVERY + Duration::from_millis(100),
        );
        assert!(rx.try_recv().is_err(), "an expired grant settles nothing");
        // The next answer is matched to the second request and holds.
        asks.answer(
            grant(7, Duration::from_secs(2)),
            t0 + EVERY + Duration::from_millis(200),
        );
        assert!(
            matches!(rx.try_recv(), Ok(Permit::Granted { until, .. }) if until == t0 + EVERY + Duration::from_secs(2))
        );
    }

    #[test]
    fn a_refusal_settles_and_a_new_stream_forgets_requests_sent_on_the_old_one() {
        let t0 = Instant::now();
        let mut asks = Asks::default();
        let (q, mut rx) = question(7);
        assert!(asks.add(q, t0, false).is_none(), "no stream: nothing sent");
        assert!(asks.due(t0 + EVERY, EVERY, LIMIT, false).is_empty());
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(asks.restart(t1).len(), 1);
        let refusal = v1::PushAnswer::from(PushAnswer {
            attempt: AttemptId(7),
            grant: PushGrant::Refused {
                reason: "attempt-7 was revoked".to_owned(),
            },
        });
        asks.answer(refusal, t1 + Duration::from_millis(5));
        assert_eq!(
            rx.try_recv().unwrap(),
            Permit::Refused("attempt-7 was revoked".to_owned())
        );
    }

    #[test]
    fn an_answer_with_nothing_outstanding_on_this_stream_is_ignored() {
        let t0 = Instant::now();
        let mut asks = Asks::default();
        let (q, mut rx) = question(7);
        asks.add(q, t0, false);
        asks.answer(grant(7, Duration::from_secs(2)), t0);
        assert!(rx.try_recv().is_err());
        assert!(!asks.is_empty());
    }

    #[test]
    fn a_question_unanswered_for_the_limit_is_given_up_naming_an_expired_grant() {
        let t0 = Instant::now();
        let mut asks = Asks::default();
        let (q, mut rx) = question(7);
        asks.add(q, t0, true);
        asks.answer(grant(7, Duration::ZERO), t0 + Duration::from_millis(40));
        asks.due(t0 + LIMIT, EVERY, LIMIT, true);
        let Ok(Permit::Unanswered(why)) = rx.try_recv() else {
            panic!("given up")
        };
        assert!(why.contains("no usable answer within 2m"), "{why}");
        assert!(why.contains("arrived 40ms after the request"), "{why}");
        assert!(asks.is_empty());
    }
}
