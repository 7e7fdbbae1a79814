//! [`EtcdStore`]: the [`StateStore`] in etcd, for several coordinators sharing one state.
//!
//! One key per record under a prefix (see [`layout`]). Every [`StateStore::apply`] is ONE etcd
//! transaction:
//!
//! ```text
//! IF   mod_revision(<prefix>/revision) == the one this batch was built on   (absent: 0)
//!  [AND create_revision(<fence key>) == <fence revision>]                    (with_fence)
//! THEN put/delete every changed record
//!      put every new event                    events/<seq>
//!      delete events/ .. events/<first kept>  (journal trim, one range delete)
//!      put <prefix>/revision = {revision + 1, next_event_seq}
//! ELSE get <prefix>/revision                  (names `found` in the Conflict)
//! ```
//!
//! The `revision` record carries the journal counter, so an apply needs that one record
//! before it can number events and compute the trim range. The store caches it from its own
//! last load/apply; a leader writing back to back therefore pays one round trip per apply,
//! and only an apply at a revision the cache does not hold reads first. The compare makes a
//! stale cache harmless: it turns into a [`StoreError::Conflict`], never a lost write.
//!
//! Guarantees: atomic (one txn), conditional (the compare), the journal keeps the newest
//! `journal_limit` events and numbers never repeat (the counter moves with the revision).
//! Assumptions: every writer under a prefix is an `EtcdStore` (anything else that writes
//! there must bump `revision` in the same txn); etcd runs with `--max-txn-ops` at least the
//! largest batch plus two (etcd's default of 128 is too small for a big intake or a
//! startup sweep: run etcd with `--max-txn-ops 10000`, see `deploy/README.md`); the whole
//! batch fits etcd's `--max-request-bytes` (1.5 MiB by default).

pub mod layout;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyperloop_etcd::etcdserverpb::{
    Compare, RangeRequest, RequestOp, TxnRequest, compare::CompareResult, response_op,
};
use hyperloop_etcd::mvccpb::KeyValue;
use hyperloop_etcd::{Client, Options};
use hyperloop_shared::event::Event;
use hyperloop_shared::model::TaskId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use self::layout::{Prefix, Record, RevisionRecord};
// Where the fence comes from; re-exported for callers that only know the store.
pub use crate::ports::election::Fence;
use crate::ports::state_store::{
    Assignment, Change, Meta, Revision, SpecRecord, State, StateStore, StoreError,
};

/// The default key prefix (ARCHITECTURE.md, "State layout").
pub const DEFAULT_PREFIX: &str = "/hyperloop";

/// Bound on one etcd request, connection included. Below the reconcile cycle's own patience
/// (seconds) and well above a healthy etcd's commit latency (milliseconds, a few hundred
/// under fsync pressure), so a hung member surfaces as a transient error the loop retries.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on establishing a connection to one endpoint; shorter than [`REQUEST_TIMEOUT`] so
/// the balancer can try another member within one request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Records per range request when loading. tonic refuses responses over 4 MiB by default;
/// 500 records of a few KiB each stay well below it.
const PAGE_SIZE: i64 = 500;

/// A [`StateStore`] over etcd. Clones share the connection and the revision cache.
#[derive(Clone)]
pub struct EtcdStore {
    endpoints: Arc<[String]>,
    /// Connected on first use, so a store can be built without awaiting (and outside a
    /// runtime); the connection then belongs to the runtime of that first use.
    client: Arc<OnceCell<Client>>,
    prefix: Arc<Prefix>,
    journal_limit: usize,
    fence: Option<Arc<Fence>>,
    // std Mutex: nothing awaits while holding it.
    cache: Arc<Mutex<Option<Cached>>>,
}

/// The `revision` record as this store last saw it, and its etcd mod revision.
#[derive(Debug, Clone, Copy)]
struct Cached {
    record: RevisionRecord,
    mod_revision: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("journal_limit", &self.journal_limit)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store over `endpoints` (`http://host:2379`, ...) keeping its records under `prefix`
    /// (e.g. [`DEFAULT_PREFIX`]), whose journal keeps the newest `journal_limit` events. It
    /// connects on first use; a connection failure then surfaces as a transient
    /// [`StoreError::Backend`] from that call.
    pub fn new(endpoints: &[String], prefix: &str, journal_limit: usize) -> Self {
        Self {
            endpoints: endpoints.into(),
            client: Arc::new(OnceCell::new()),
            prefix: Arc::new(Prefix::new(prefix)),
            journal_limit,
            fence: None,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// This store with every apply also conditional on `fence` (same connection and cache).
    /// A failed fence is a non-transient [`StoreError::Backend`] naming the key: the caller
    /// has lost leadership and must step down rather than retry.
    pub fn with_fence(&self, fence: Fence) -> Self {
        Self {
            fence: Some(Arc::new(fence)),
            ..self.clone()
        }
    }

    /// The full etcd key of a record name (`tasks/1` → `<prefix>/tasks/1`).
    pub fn key(&self, name: &str) -> String {
        self.prefix.key(name)
    }

    async fn kv(&self) -> Result<&Client, StoreError> {
        self.client
            .get_or_try_init(|| async {
                let options = Options {
                    connect_timeout: Some(CONNECT_TIMEOUT),
                    request_timeout: Some(REQUEST_TIMEOUT),
                    require_leader: false,
                };
                Client::connect(&self.endpoints[..], &options)
            })
            .await
            .map_err(|e| backend("connect", &e))
    }

    fn cache(&self) -> MutexGuard<'_, Option<Cached>> {
        // The cache is a hint checked by every txn's compare; a value from a panicking
        // writer is as good as a stale one.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, cached: Cached) {
        let mut cache = self.cache();
        // Keep the newest: a slow load must not replace what a later apply wrote.
        if cache.is_none_or(|c| c.mod_revision <= cached.mod_revision) {
            *cache = Some(cached);
        }
    }

    /// The `revision` record, from the cache if it is at `expected`, else from etcd.
    async fn current(&self, kv: &Client, expected: Revision) -> Result<Cached, StoreError> {
        if let Some(cached) = *self.cache()
            && cached.record.revision == expected
        {
            return Ok(cached);
        }
        let key = self.key(layout::REVISION);
        let pair = kv
            .get(key)
            .await
            .map_err(|e| backend("read the revision", &e))?;
        let cached = self.revision_from(pair.as_ref())?;
        self.remember(cached);
        Ok(cached)
    }

    fn revision_from(&self, kv: Option<&KeyValue>) -> Result<Cached, StoreError> {
        Ok(match kv {
            None => Cached {
                record: RevisionRecord::EMPTY,
                mod_revision: 0,
            },
            Some(kv) => Cached {
                record: decode(&self.key(layout::REVISION), &kv.value)?,
                mod_revision: kv.mod_revision,
            },
        })
    }

    /// Every key in `[start, end)` as of one etcd revision (the first page's, or `at`),
    /// page by page. Returns the pairs and that revision.
    async fn range(
        &self,
        kv: &Client,
        start: String,
        end: &str,
        at: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let mut out = Vec::new();
        let mut at = at;
        let mut from = start.into_bytes();
        while out.len() < limit {
            let page = PAGE_SIZE.min(i64::try_from(limit - out.len()).unwrap_or(i64::MAX));
            let request = RangeRequest {
                key: from.clone(),
                range_end: end.into(),
                limit: page,
                revision: at.unwrap_or(0),
                ..RangeRequest::default()
            };
            let response = kv.range(request).await.map_err(|e| backend("read", &e))?;
            if at.is_none() {
                at = response.header.map(|h| h.revision);
            }
            let kvs = response.kvs;
            let Some(last) = kvs.last() else { break };
            // The next page starts right after the last key.
            from = last.key.clone();
            from.push(0);
            out.extend(kvs);
            if !response.more {
                break;
            }
        }
        Ok((out, at.unwrap_or(0)))
    }
}

impl StateStore for EtcdStore {
    async fn load(&self) -> Result<State, StoreError> {
        let kv = self.kv().await?;
        // Everything but the election and the journal (which sort next to each other), in
        // two ranges at one etcd revision: a consistent snapshot even when it takes several
        // pages.
        let (mut kvs, at) = self
            .range(
                kv,
                self.key(""),
                &self.key(&layout::election_start()),
                None,
                usize::MAX,
            )
            .await?;
        let (rest, _) = self
            .range(
                kv,
                self.key(&layout::events_end()),
                &self.prefix.end(),
                Some(at),
                usize::MAX,
            )
            .await?;
        kvs.extend(rest);

        let mut state = State::default();
        let mut revision = None;
        for pair in &kvs {
            let key = key_of(pair)?;
            let name = self.prefix.name(key).unwrap_or(key);
            let value = &pair.value;
            match layout::classify(name) {
                Some(Record::Revision) => revision = Some(self.revision_from(Some(pair))?),
                Some(Record::Meta) => state.meta = decode::<Meta>(key, value)?,
                Some(Record::Task(id)) => {
                    let task: hyperloop_shared::model::Task = decode(key, value)?;
                    same_task(key, id, task.id)?;
                    state.tasks.insert(id, task);
                }
                Some(Record::Review(id)) => {
                    let review: hyperloop_shared::model::Review = decode(key, value)?;
                    same_task(key, id, review.task_id)?;
                    // Keys sort by (revision, index): the order the reviews were added in.
                    state.reviews.entry(id).or_default().push(review);
                }
                Some(Record::Spec(encoded)) => {
                    let spec: SpecRecord = decode(key, value)?;
                    if layout::encode_path(spec.path.as_str()) != encoded {
                        return Err(corrupt(
                            key,
                            format!("holds the record of spec {}", spec.path.as_str()),
                        ));
                    }
                    state.specs.insert(spec.path.clone(), spec);
                }
                Some(Record::Assignment(id)) => {
                    let assignment: Assignment = decode(key, value)?;
                    same_task(key, id, assignment.task)?;
                    state.assignments.insert(id, assignment);
                }
                Some(Record::Event(_)) | None => {
                    return Err(corrupt(key, "no record of this store's layout lives here"));
                }
            }
        }
        match revision {
            Some(cached) => {
                state.revision = cached.record.revision;
                self.remember(cached);
            }
            None if kvs.is_empty() => {}
            None => {
                return Err(corrupt(
                    &self.key(layout::REVISION),
                    format!("is missing while {} other records exist", kvs.len()),
                ));
            }
        }
        Ok(state)
    }

    async fn apply(
        &self,
        expected: Revision,
        changes: Vec<Change>,
    ) -> Result<(Revision, Vec<Event>), StoreError> {
        let kv = self.kv().await?;
        let current = self.current(kv, expected).await?;
        if current.record.revision != expected {
            return Err(StoreError::Conflict {
                expected,
                found: current.record.revision,
            });
        }
        let next = Revision(expected.0 + 1);
        let plan = plan(&changes, next, current.record, self.journal_limit)?;

        let revision_key = self.key(layout::REVISION);
        let mut compares = vec![Compare::mod_revision(
            revision_key.as_str(),
            CompareResult::Equal,
            current.mod_revision,
        )];
        let mut otherwise = vec![RequestOp::get(revision_key.as_str())];
        if let Some(fence) = &self.fence {
            compares.push(Compare::create_revision(
                fence.key.clone(),
                CompareResult::Equal,
                fence.create_revision,
            ));
            otherwise.push(RequestOp::get(fence.key.clone()));
        }
        let mut ops: Vec<RequestOp> = Vec::with_capacity(plan.writes.len() + 2);
        for (name, value) in &plan.writes {
            let key = self.key(name);
            ops.push(match value {
                Some(value) => RequestOp::put(key, value.clone()),
                None => RequestOp::delete_range(key, ""),
            });
        }
        if let Some(first_kept) = plan.trim_below {
            ops.push(RequestOp::delete_range(
                self.key(layout::EVENTS),
                self.key(&layout::event(first_kept)),
            ));
        }
        ops.push(RequestOp::put(revision_key.as_str(), encode(&plan.record)?));

        let txn = TxnRequest {
            compare: compares,
            success: ops,
            failure: otherwise,
        };
        let response = kv.txn(txn).await.map_err(|e| backend("apply", &e))?;
        if response.succeeded {
            let mod_revision = response.header.map_or(0, |h| h.revision);
            self.remember(Cached {
                record: plan.record,
                mod_revision,
            });
            return Ok((next, plan.events));
        }

        // Refused: say why from what the else branch read.
        let mut reads = response.responses.into_iter().map(|op| match op.response {
            Some(response_op::Response::ResponseRange(read)) => read.kvs.into_iter().next(),
            _ => None,
        });
        let found = self.revision_from(reads.next().flatten().as_ref())?;
        *self.cache() = Some(found);
        if found.mod_revision != current.mod_revision {
            return Err(StoreError::Conflict {
                expected,
                found: found.record.revision,
            });
        }
        let fence = self.fence.as_deref();
        let holder = reads.next().flatten();
        Err(StoreError::Backend {
            operation: "apply",
            reason: format!(
                "this coordinator no longer holds leadership: election key {} {} (this \
                 coordinator was elected at revision {}); step down and let the current \
                 leader write",
                fence.map_or_else(String::new, |f| String::from_utf8_lossy(&f.key)
                    .into_owned()),
                holder.map_or_else(
                    || "is gone".to_owned(),
                    |kv| format!("was re-created at revision {}", kv.create_revision)
                ),
                fence.map_or(0, |f| f.create_revision),
            ),
            transient: false,
        })
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let kv = self.kv().await?;
        let (kvs, _) = self
            .range(
                kv,
                self.key(&layout::event(first)),
                &self.key(&layout::events_end()),
                None,
                limit,
            )
            .await?;
        kvs.iter()
            .map(|pair| {
                let key = key_of(pair)?;
                let name = self.prefix.name(key).unwrap_or(key);
                let Some(Record::Event(seq)) = layout::classify(name) else {
                    return Err(corrupt(key, "no record of this store's layout lives here"));
                };
                let event: Event = decode(key, &pair.value)?;
                if event.seq != seq {
                    return Err(corrupt(key, format!("holds event {}", event.seq)));
                }
                Ok(event)
            })
            .collect()
    }
}

/// What one batch writes, by record name (the key after the prefix).
#[derive(Debug)]
struct Plan {
    /// Final value per name (`None`: delete). A map because etcd refuses a txn that puts
    /// one key twice, and a batch may (a task put twice, a spec put then deleted); the last
    /// change to a record wins, as when applying the batch in order.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Delete every event below this seq (the journal's new first event).
    trim_below: Option<u64>,
    record: RevisionRecord,
    events: Vec<Event>,
}

fn plan(
    changes: &[Change],
    next: Revision,
    current: RevisionRecord,
    journal_limit: usize,
) -> Result<Plan, StoreError> {
    let mut writes = BTreeMap::new();
    let mut events = Vec::new();
    let mut seq = current.next_event_seq;
    for (index, change) in changes.iter().enumerate() {
        let (name, value) = match change {
            Change::PutTask(task) => (layout::task(task.id), Some(encode(task)?)),
            Change::AddReview(review) => (
                layout::review(review.task_id, next, index),
                Some(encode(review)?),
            ),
            Change::PutSpec(spec) => (layout::spec(&spec.path), Some(encode(spec)?)),
            Change::DeleteSpec(path) => (layout::spec(path), None),
            Change::PutAssignment(assignment) => (
                layout::assignment(assignment.task),
                Some(encode(assignment)?),
            ),
            Change::DeleteAssignment(task) => (layout::assignment(*task), None),
            Change::PutMeta(meta) => (layout::META.to_owned(), Some(encode(meta)?)),
            Change::AppendEvent(event) => {
                let mut event = event.clone();
                event.seq = seq;
                seq += 1;
                let written = (layout::event(event.seq), Some(encode(&event)?));
                events.push(event);
                written
            }
        };
        writes.insert(name, value);
    }
    let journal_limit = u64::try_from(journal_limit).unwrap_or(u64::MAX);
    let first_kept = seq.saturating_sub(journal_limit).max(1);
    let trim_below = if events.is_empty() || first_kept <= 1 {
        None
    } else {
        // Events of this batch already beyond the bound are journaled as gone: etcd also
        // refuses a txn whose put falls inside its own range delete.
        writes.retain(|name, _| match layout::classify(name) {
            Some(Record::Event(s)) => s >= first_kept,
            _ => true,
        });
        Some(first_kept)
    };
    Ok(Plan {
        writes,
        trim_below,
        record: RevisionRecord {
            revision: next,
            next_event_seq: seq,
        },
        events,
    })
}

fn key_of(pair: &KeyValue) -> Result<&str, StoreError> {
    std::str::from_utf8(&pair.key)
        .map_err(|_| corrupt(&String::from_utf8_lossy(&pair.key), "the key is not UTF-8"))
}

fn same_task(key: &str, under: TaskId, holds: TaskId) -> Result<(), StoreError> {
    if under == holds {
        Ok(())
    } else {
        Err(corrupt(key, format!("holds a record of {holds}")))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend {
        operation: "encode a record",
        reason: e.to_string(),
        transient: false,
    })
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))
}

fn corrupt(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Whether a retry can fix `error`: an unreachable or overloaded member, a leader election
/// in progress, a timeout.
pub(crate) fn is_transient(error: &hyperloop_etcd::Error) -> bool {
    use hyperloop_etcd::Error;
    use tonic::Code;
    match error {
        Error::Unreachable { .. } | Error::StreamEnded(_) => true,
        Error::Status(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Unknown
        ),
        Error::NoEndpoints | Error::InvalidEndpoint { .. } => false,
    }
}

/// Maps an etcd client error; what a retry can fix (an unreachable or overloaded member, a
/// leader election in progress, a timeout) is transient.
fn backend(operation: &'static str, error: &hyperloop_etcd::Error) -> StoreError {
    let (transient, hint) = match error {
        hyperloop_etcd::Error::Status(status) => {
            let message = status.message();
            if message.contains("too many operations in txn request") {
                (
                    false,
                    "; the batch is bigger than etcd's --max-txn-ops allows: run etcd with \
                     --max-txn-ops 10000 (see deploy/README.md)",
                )
            } else if message.contains("request is too large") {
                (
                    false,
                    "; the batch is bigger than etcd's --max-request-bytes allows: raise it",
                )
            } else {
                (is_transient(error), "")
            }
        }
        _ => (is_transient(error), ""),
    };
    StoreError::Backend {
        operation,
        reason: format!("{error}{hint}"),
        transient,
    }
}

#[cfg(test)]
mod tests {
    use hyperloop_shared::event::EventKind;

    use super::*;

    fn event() -> Change {
        Change::AppendEvent(Event {
            seq: 0,
            at_ms: 1,
            task: None,
            kind: EventKind::TaskCompleted { rounds: 1 },
        })
    }

    fn event_names(plan: &Plan) -> Vec<u64> {
        plan.writes
            .keys()
            .filter_map(|name| match layout::classify(name) {
                Some(Record::Event(seq)) => Some(seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_journal_is_trimmed_to_the_newest_events_in_one_range() {
        let current = RevisionRecord {
            revision: Revision(3),
            next_event_seq: 4,
        };
        let plan = plan(&[event(), event()], Revision(4), current, 3).unwrap();
        assert_eq!(plan.record.next_event_seq, 6);
        assert_eq!(plan.trim_below, Some(3), "keeps 3, 4, 5");
        assert_eq!(event_names(&plan), [4, 5]);

        // More new events than the journal holds: the oldest of them are never written.
        let plan = plan_of(5, current, 2);
        assert_eq!(plan.trim_below, Some(7));
        assert_eq!(event_names(&plan), [7, 8]);
        assert_eq!(plan.events.len(), 5, "every event is returned, numbered");

        // Under the bound, or no events: nothing to delete.
        assert_eq!(plan_of(2, current, 10).trim_below, None);
        assert_eq!(plan_of(0, current, 1).trim_below, None);
    }

    fn plan_of(events: usize, current: RevisionRecord, limit: usize) -> Plan {
        let changes = vec![event(); events];
        plan(&changes, Revision(current.revision.0 + 1), current, limit).unwrap()
    }

    #[test]
    fn a_record_changed_twice_in_a_batch_is_written_once_with_the_last_value() {
        use crate::ports::state_store::contract;
        let path = contract::spec("specs/a.md").path;
        let changes = vec![
            Change::PutTask(contract::task(1)),
            Change::PutSpec(contract::spec("specs/a.md")),
            Change::DeleteSpec(path.clone()),
            Change::PutTask(contract::task(1)),
        ];
        let plan = plan(&changes, Revision(1), RevisionRecord::EMPTY, 10).unwrap();
        assert_eq!(plan.writes.len(), 2);
        assert_eq!(plan.writes[&layout::spec(&path)], None);
    }

    #[test]
    fn an_oversized_txn_names_the_etcd_flag() {
        let status =
            tonic::Status::invalid_argument("etcdserver: too many operations in txn request");
        let err = backend("apply", &hyperloop_etcd::Error::Status(status));
        assert!(!err.is_transient());
        assert!(err.to_string().contains("--max-txn-ops"), "{err}");
        let status = tonic::Status::unavailable("etcdserver: leader changed");
        assert!(backend("apply", &hyperloop_etcd::Error::Status(status)).is_transient());
    }
}
