//! `Notifier`: where journaled events go once they are stored — chat rooms, webhooks,
//! OpenTelemetry, the dashboard's live feed. The loop calls it after the write that stored
//! the events, so nobody is ever told about something a crash could still undo.
//!
//! Guarantees the loop gives every notifier (checked by `contract::check_all`):
//! - events arrive once each, in journal order, with their sequence numbers;
//! - an event is handed over only after it is in the state store.
//!
//! A notifier must not block the loop: one that talks to the network queues and sends from
//! its own task, and drops (counting) what it cannot keep up with.
//!
//! Each leadership term is announced with [`Notifier::lead`] before its events flow, with a
//! way to read the journal back ([`Journal`]): a notifier that keeps its own cursor outside
//! this process (Matrix keeps it in the room) can send what an earlier leader journaled but
//! did not get out, and must stop sending once the term is deposed.

#[cfg(any(test, feature = "testing"))]
use std::sync::{Arc, Mutex};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyperloop_shared::event::Event;
use tokio_util::sync::CancellationToken;

use crate::ports::state_store::{StateStore, StoreError};

/// Reads the stored journal: `(after, limit)` gives the events with `seq > after`, oldest
/// first, at most `limit` ([`StateStore::events`]). Read-only: notifiers never write the
/// store, whose writes are the loop's (conditional on its revision).
pub type Journal = std::sync::Arc<
    dyn Fn(u64, usize) -> Pin<Box<dyn Future<Output = Result<Vec<Event>, StoreError>> + Send>>
        + Send
        + Sync,
>;

/// The journal of `store`.
pub fn journal<S: StateStore + Clone>(store: S) -> Journal {
    std::sync::Arc::new(move |after, limit| {
        let store = store.clone();
        Box::pin(async move { store.events(after, limit).await })
    })
}

/// A leadership term as a notifier sees it.
#[derive(Clone)]
pub struct Leading {
    pub journal: Journal,
    /// Cancelled when the leadership is lost or given up: whatever is still queued is then
    /// not this coordinator's to send (the next leader sends it from the journal).
    pub deposed: CancellationToken,
}

pub trait Notifier: Send + Sync + 'static {
    /// Takes a batch of stored events, oldest first.
    fn notify(&self, events: &[Event]);

    /// A leadership term begins; the events handed over next are stored in its journal.
    fn lead(&self, term: &Leading) {
        let _ = term;
    }

    /// At shutdown: delivers what is still queued, for at most `within`; takes no more.
    fn drain(&self, within: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let _ = within;
        Box::pin(std::future::ready(()))
    }
}

/// Notifies nobody: the default until a notification channel is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nobody;

impl Notifier for Nobody {
    fn notify(&self, _: &[Event]) {}
}

/// A shared notifier (one that is also read elsewhere, like the metrics) notifies as itself.
impl<N: Notifier> Notifier for std::sync::Arc<N> {
    fn notify(&self, events: &[Event]) {
        (**self).notify(events);
    }

    fn lead(&self, term: &Leading) {
        (**self).lead(term);
    }

    fn drain(&self, within: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        (**self).drain(within)
    }
}

/// Hands every batch to each of several notifiers (`notifications` can list several sinks).
pub struct Fanout(pub Vec<Box<dyn Notifier>>);

impl Notifier for Fanout {
    fn notify(&self, events: &[Event]) {
        for sink in &self.0 {
            sink.notify(events);
        }
    }

    fn lead(&self, term: &Leading) {
        for sink in &self.0 {
            sink.lead(term);
        }
    }

    fn drain(&self, within: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            for sink in &self.0 {
                sink.drain(within).await;
            }
        })
    }
}

/// Keeps every event it was given, for tests.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    // std Mutex: nothing awaits while holding it.
    seen: Arc<Mutex<Vec<Event>>>,
}

#[cfg(any(test, feature = "testing"))]
impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.seen.lock().expect("recorder lock").clone()
    }
}

#[cfg(any(test, feature = "testing"))]
impl Notifier for Recorder {
    fn notify(&self, events: &[Event]) {
        self.seen
            .lock()
            .expect("recorder lock")
            .extend_from_slice(events);
    }
}
