//! `Dispatcher`: the workers, as the reconcile loop sees them. It hears what workers say
//! ([`Inbound`]), offers their capacity, and delivers orders, acknowledgements and cancels.
//! The gRPC stream registry ([`crate::dispatch::Registry`]) is the production adapter;
//! [`crate::adapters::memory_dispatcher`] is the in-memory one tests drive by hand.
//!
//! Guarantees every adapter gives (checked by `contract`):
//! - An order is delivered to the named worker or refused with an error; never silently lost.
//! - Acknowledgements and cancels for a worker that is gone are dropped: it has nothing left
//!   to acknowledge or cancel.
//! - A worker that stops answering is reported [`Inbound::Lost`] by [`Dispatcher::expire`].
//! - A push answer reaches the worker that asked, or nobody: never another worker, and (for
//!   the stream registry) never a later connection than the one the question came on.

use std::future::Future;
use std::time::Duration;

use hyperloop_proto::v1::{AttemptPhase, LogLine};
use hyperloop_shared::model::AttemptId;
use hyperloop_shared::reconcile::{Held, Offer};
use hyperloop_shared::step::{StepOrder, StepReport};

use crate::control::WorkerView;

#[cfg(test)]
pub mod contract;

/// Something a worker said or did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Joined {
        worker: String,
        capacity: u32,
        held: Vec<Held>,
    },
    /// Its attempts wait `grace` for it to come back (zero: they are lost now).
    Lost {
        worker: String,
        reason: String,
        grace: Duration,
    },
    Result {
        worker: String,
        report: StepReport,
    },
    Declined {
        worker: String,
        attempt: AttemptId,
        reason: String,
    },
    /// The worker asks whether `attempt` may still push its commits (the push fence);
    /// answered with [`Dispatcher::answer_push`].
    PushAsked {
        worker: String,
        attempt: AttemptId,
    },
    /// Where a running attempt is (for the live view and log followers).
    Progress {
        attempt: AttemptId,
        phase: AttemptPhase,
        /// Turns and cost so far, when the worker reported them.
        usage: Option<(u32, f64)>,
        /// Agent output to relay to log followers.
        lines: Vec<LogLine>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("worker {0} is not connected")]
    NotConnected(String),
    #[error("worker {0}'s queue is full or closed")]
    Unavailable(String),
}

pub trait Dispatcher: Send + 'static {
    /// The next thing a worker said or did; `None` once no worker can reach the loop again.
    /// Cancel-safe: nothing is lost when the future is dropped.
    fn next(&mut self) -> impl Future<Output = Option<Inbound>> + Send;

    /// The next thing already received, without waiting: the loop takes everything queued
    /// before deciding again, so a burst of results costs one cycle and one write.
    fn try_next(&mut self) -> Option<Inbound>;

    /// Workers silent for too long, each as [`Inbound::Lost`] with no grace.
    fn expire(&mut self) -> Vec<Inbound>;

    /// Every connected worker's capacity and labels.
    fn offers(&self) -> Vec<Offer>;

    /// Delivers an order.
    ///
    /// # Errors
    /// The worker is gone or not reading; the caller puts the step back.
    fn send(&mut self, worker: &str, order: StepOrder) -> Result<(), DispatchError>;

    fn ack(&mut self, worker: &str, attempt: AttemptId);

    fn cancel(&mut self, worker: &str, attempt: AttemptId, reason: &str);

    /// Answers an [`Inbound::PushAsked`]. A grant holds for less time than it would take to
    /// declare the worker lost and give its attempts away, so the worker cannot start a push
    /// after the attempt stopped being its own; a refusal says why (`reason`).
    fn answer_push(&mut self, worker: &str, attempt: AttemptId, granted: bool, reason: &str);

    /// Asks one worker to finish its steps, take no new ones and leave; false if it is not
    /// connected.
    fn drain(&mut self, worker: &str, reason: &str) -> bool;

    fn drain_all(&mut self, reason: &str);

    /// The connected workers for the live view (their attempts left empty).
    fn workers(&self) -> Vec<WorkerView>;

    fn is_empty(&self) -> bool;
}
