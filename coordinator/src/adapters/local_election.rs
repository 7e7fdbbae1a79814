//! [`LocalElection`]: the [`Election`] of a single host, where the coordinator leads at once.
//!
//! Candidates sharing one `LocalElection` (clones) take turns: the first leads with term 1
//! until it resigns or drops its [`Leadership`], then the next one leads with term 2. With
//! the one candidate a single-host coordinator has, that is term 1, never lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ports::election::{Election, ElectionError, LeaderInfo, Leadership};

#[derive(Debug, Clone)]
pub struct LocalElection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// One permit: held by the leader.
    seat: Arc<Semaphore>,
    terms: AtomicU64,
    leader: Mutex<Option<LeaderInfo>>,
}

impl Default for LocalElection {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalElection {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                seat: Arc::new(Semaphore::new(1)),
                terms: AtomicU64::new(0),
                leader: Mutex::new(None),
            }),
        }
    }
}

impl Inner {
    fn leader(&self) -> MutexGuard<'_, Option<LeaderInfo>> {
        // Plain data, consistent after every statement: usable after a panic elsewhere.
        self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Election for LocalElection {
    async fn campaign(&self, value: String) -> Result<Leadership, ElectionError> {
        let seat =
            self.inner
                .seat
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ElectionError::Backend {
                    operation: "campaign",
                    reason: "the local election was closed".into(),
                    transient: false,
                })?;
        let term = self.inner.terms.fetch_add(1, Ordering::SeqCst) + 1;
        *self.inner.leader() = Some(LeaderInfo { value, term });
        let (lost, step_down) = (CancellationToken::new(), CancellationToken::new());
        let released = tokio::spawn({
            let (inner, lost, step_down) = (self.inner.clone(), lost.clone(), step_down.clone());
            async move {
                step_down.cancelled().await;
                inner.leader().take_if(|l| l.term == term);
                lost.cancel();
                // The next candidate may lead only now, after this one is cleared.
                drop(seat);
            }
        });
        Ok(Leadership::new(term, None, lost, step_down, Some(released)))
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>, ElectionError> {
        Ok(self.inner.leader().clone())
    }
}
