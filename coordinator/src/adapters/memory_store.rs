//! [`MemoryStore`]: a [`StateStore`] in memory, for tests of the reconcile loop. Clones share
//! one backing, so a clone stands for a restarted coordinator over the same store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use hyperloop_shared::event::Event;

use crate::ports::state_store::{Change, Revision, State, StateStore, StoreError};

#[derive(Debug, Clone)]
pub struct MemoryStore {
    // std Mutex: nothing awaits while holding it.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    journal: VecDeque<Event>,
    next_seq: u64,
    journal_limit: usize,
}

impl MemoryStore {
    /// An empty store whose journal keeps the newest `journal_limit` events.
    pub fn new(journal_limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                state: State::default(),
                journal: VecDeque::new(),
                next_seq: 1,
                journal_limit,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock happens between whole batches only (apply validates first,
        // then mutates without failing), so the data behind a poisoned lock is consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StateStore for MemoryStore {
    async fn load(&self) -> Result<State, StoreError> {
        Ok(self.lock().state.clone())
    }

    async fn apply(
        &self,
        expected: Revision,
        changes: Vec<Change>,
    ) -> Result<(Revision, Vec<Event>), StoreError> {
        let mut inner = self.lock();
        let found = inner.state.revision;
        if found != expected {
            return Err(StoreError::Conflict { expected, found });
        }
        let mut journaled = Vec::new();
        for change in &changes {
            inner.state.apply(change);
            if let Change::AppendEvent(event) = change {
                let mut event = event.clone();
                event.seq = inner.next_seq;
                inner.next_seq += 1;
                journaled.push(event);
            }
        }
        inner.journal.extend(journaled.iter().cloned());
        let excess = inner.journal.len().saturating_sub(inner.journal_limit);
        inner.journal.drain(..excess);
        inner.state.revision = Revision(found.0 + 1);
        Ok((inner.state.revision, journaled))
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .journal
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }
}
