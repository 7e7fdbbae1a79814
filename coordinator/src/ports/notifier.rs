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

#[cfg(any(test, feature = "testing"))]
use std::sync::{Arc, Mutex};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyperloop_shared::event::Event;

pub trait Notifier: Send + Sync + 'static {
    /// Takes a batch of stored events, oldest first.
    fn notify(&self, events: &[Event]);

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
