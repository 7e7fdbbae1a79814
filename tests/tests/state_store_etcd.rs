//! The `StateStore` contract and etcd-specific guarantees of [`EtcdStore`], against a real
//! etcd (3.4, `apt-get install etcd-server`) started per harness on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperloop_coordinator::adapters::etcd_store::{EtcdStore, Fence};
use hyperloop_coordinator::ports::state_store::contract::{self, Corruption, Harness};
use hyperloop_coordinator::ports::state_store::{Change, Revision, StateStore, StoreError};
use hyperloop_etcd::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare::CompareResult,
};
use hyperloop_etcd::{Client, Options, prefix_end};
use hyperloop_shared::model::TaskId;
use hyperloop_tests::etcd::{Etcd, EtcdCluster};

struct Backing {
    etcd: Arc<Etcd>,
    prefix: String,
    journal_limit: usize,
}

impl Backing {
    fn new(journal_limit: usize) -> Self {
        Backing {
            etcd: Arc::new(Etcd::start()),
            prefix: "/hyperloop".into(),
            journal_limit,
        }
    }

    /// Another store prefix on the same etcd.
    fn beside(&self, prefix: &str) -> Backing {
        Backing {
            etcd: self.etcd.clone(),
            prefix: prefix.into(),
            journal_limit: self.journal_limit,
        }
    }
}

/// Runs `f` with a fresh client on a runtime of its own: `Harness::corrupt` is synchronous
/// and may be called from inside the test's (current-thread) runtime.
fn with_client<T: Send + 'static>(
    endpoint: &str,
    f: impl AsyncFnOnce(Client) -> T + Send + 'static,
) -> T {
    let endpoint = endpoint.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { f(connect(&endpoint)).await })
    })
    .join()
    .unwrap()
}

fn connect(endpoint: &str) -> Client {
    Client::connect(&[endpoint], &Options::default()).unwrap()
}

impl Harness for Backing {
    type Store = EtcdStore;

    fn open(&self) -> EtcdStore {
        EtcdStore::new(
            std::slice::from_ref(&self.etcd.endpoint),
            &self.prefix,
            self.journal_limit,
        )
    }

    fn corrupt(&self, how: Corruption) -> Option<String> {
        let key = match how {
            Corruption::UnreadableTask(id) => format!("{}/tasks/{}", self.prefix, id.0),
            Corruption::UnknownKey => format!("{}/tasks/notes.txt", self.prefix),
        };
        let put = key.clone();
        with_client(&self.etcd.endpoint, async move |client| {
            client.put(PutRequest::new(put, "{not json")).await.unwrap();
        });
        Some(key)
    }
}

hyperloop_coordinator::state_store_contract_tests!(Backing::new);

#[tokio::test]
async fn racing_writers_on_one_prefix_lose_no_write() {
    let backing = Backing::new(100);
    const WRITERS: u64 = 6;
    const ATTEMPTS: u64 = 15;
    let mut handles = Vec::new();
    for writer in 0..WRITERS {
        let store = backing.open();
        handles.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for attempt in 0..ATTEMPTS {
                let id = writer * 1_000 + attempt + 1;
                let at = store.load().await.unwrap().revision;
                let changes = vec![
                    Change::PutTask(contract::task(id)),
                    Change::AppendEvent(contract::event(id)),
                ];
                match store.apply(at, changes).await {
                    Ok((revision, events)) => won.push((id, revision, events[0].seq)),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("writer {writer}: {e}"),
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for handle in handles {
        won.extend(handle.await.unwrap());
    }
    let state = backing.open().load().await.unwrap();
    assert_eq!(state.revision, Revision(won.len() as u64));
    assert_eq!(state.tasks.len(), won.len(), "every winning write is there");
    for (id, _, _) in &won {
        assert!(state.tasks.contains_key(&TaskId(*id)));
    }
    won.sort_by_key(|w| w.1);
    let revisions: Vec<u64> = won.iter().map(|w| w.1.0).collect();
    let seqs: Vec<u64> = won.iter().map(|w| w.2).collect();
    assert_eq!(revisions, (1..=won.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        seqs, revisions,
        "one event per winner, numbered in commit order"
    );
    assert!(won.len() as u64 > ATTEMPTS / 2, "writers made progress");
}

#[tokio::test]
async fn stores_under_different_prefixes_are_isolated() {
    let a = Backing::new(10);
    // `/hyperloop2` starts with `/hyperloop`: keys are `<prefix>/...`, so neither sees the other.
    let b = a.beside("/hyperloop2");
    let (sa, sb) = (a.open(), b.open());
    sa.apply(
        Revision(0),
        vec![
            Change::PutTask(contract::task(1)),
            Change::AppendEvent(contract::event(1)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        sb.load().await.unwrap(),
        Default::default(),
        "b sees nothing of a"
    );
    assert!(sb.events(0, 10).await.unwrap().is_empty());
    let (revision, events) = sb
        .apply(
            Revision(0),
            vec![
                Change::PutTask(contract::task(2)),
                Change::AppendEvent(contract::event(2)),
            ],
        )
        .await
        .unwrap();
    assert_eq!((revision, events[0].seq), (Revision(1), 1));
    let state = sa.load().await.unwrap();
    assert_eq!(state.tasks.keys().copied().collect::<Vec<_>>(), [TaskId(1)]);
    assert_eq!(
        sa.events(0, 10).await.unwrap()[0].at_ms,
        contract::event(1).at_ms
    );
}

#[tokio::test]
async fn a_thousand_changes_apply_as_one_transaction_and_load_across_pages() {
    // Needs etcd's --max-txn-ops above 1,002 (the test server runs with 10,000).
    let backing = Backing::new(10_000);
    let store = backing.open();
    let mut changes: Vec<Change> = (1..=700)
        .map(|n| Change::PutTask(contract::task(n)))
        .collect();
    changes.extend((1..=300).map(|n| Change::AppendEvent(contract::event(n))));
    let started = Instant::now();
    let (revision, events) = store.apply(Revision(0), changes).await.unwrap();
    let applied_in = started.elapsed();
    assert_eq!(revision, Revision(1));
    assert_eq!(events.last().unwrap().seq, 300);

    let started = Instant::now();
    let state = backing.open().load().await.unwrap();
    let loaded_in = started.elapsed();
    assert_eq!(state.tasks.len(), 700);
    assert_eq!(state.revision, Revision(1));
    assert_eq!(store.events(0, usize::MAX).await.unwrap().len(), 300);
    eprintln!("1,000 changes: apply {applied_in:?}, load {loaded_in:?}");

    // A stale writer's big batch leaves no trace either.
    let changes = (701..=1_700)
        .map(|n| Change::PutTask(contract::task(n)))
        .collect();
    let err = store.apply(Revision(0), changes).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(backing.open().load().await.unwrap().tasks.len(), 700);
}

#[tokio::test]
async fn trimming_keeps_the_newest_events_across_big_batches() {
    let backing = Backing::new(1_200);
    let store = backing.open();
    for (revision, range) in [(0, 1..=1_000u64), (1, 1_001..=2_000), (2, 2_001..=2_500)] {
        let changes = range
            .map(|n| Change::AppendEvent(contract::event(n)))
            .collect();
        store.apply(Revision(revision), changes).await.unwrap();
    }
    let seqs: Vec<u64> = store
        .events(0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1_301..=2_500).collect::<Vec<_>>());
    assert_eq!(store.events(1_999, 2).await.unwrap()[0].seq, 2_000);
    let count = with_client(&backing.etcd.endpoint, async |client| {
        let events = RangeRequest {
            key: b"/hyperloop/events/".to_vec(),
            range_end: prefix_end(b"/hyperloop/events/"),
            count_only: true,
            ..RangeRequest::default()
        };
        client.range(events).await.unwrap().count
    });
    assert_eq!(count, 1_200, "trimmed events are deleted, not hidden");
}

#[tokio::test]
async fn a_deposed_leaders_fenced_apply_fails_and_writes_nothing() {
    let backing = Backing::new(10);
    let endpoint = backing.etcd.endpoint.clone();
    let client = connect(&endpoint);
    let lease = client.lease_grant(30).await.unwrap().id;
    let elected = client
        .campaign("/hyperloop-election", "coordinator-a", lease)
        .await
        .unwrap();
    let leader = elected.leader.unwrap();
    let fence = Fence {
        key: leader.key,
        create_revision: leader.rev,
    };
    let store = backing.open().with_fence(fence);
    store
        .apply(Revision(0), vec![Change::PutTask(contract::task(1))])
        .await
        .expect("the current leader writes");

    // Another coordinator takes over: this one's lease is gone, and with it its key.
    client.lease_revoke(lease).await.unwrap();
    let lease_b = client.lease_grant(30).await.unwrap().id;
    client
        .campaign("/hyperloop-election", "coordinator-b", lease_b)
        .await
        .unwrap();

    let err = store
        .apply(Revision(1), vec![Change::PutTask(contract::task(2))])
        .await
        .unwrap_err();
    assert!(
        !err.is_transient(),
        "a deposed leader must not retry: {err}"
    );
    let message = err.to_string();
    assert!(message.contains("no longer holds leadership"), "{message}");
    assert!(message.contains("/hyperloop-election/"), "{message}");
    let state = backing.open().load().await.unwrap();
    assert_eq!(state.revision, Revision(1), "nothing was written");
    assert!(!state.tasks.contains_key(&TaskId(2)));

    // Unfenced, the same store is still an ordinary conditional writer.
    backing
        .open()
        .apply(Revision(1), vec![Change::PutTask(contract::task(2))])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_write_behind_the_stores_back_is_a_conflict_not_a_lost_update() {
    let backing = Backing::new(10);
    let store = backing.open();
    store.apply(Revision(0), vec![]).await.unwrap(); // caches the revision record
    // Another program rewrites the revision record with the same content.
    let key = store.key("revision");
    with_client(&backing.etcd.endpoint, async move |client| {
        let value = client.get(key.as_str()).await.unwrap().unwrap().value;
        let txn = TxnRequest {
            compare: vec![Compare::version(key.as_str(), CompareResult::Greater, 0)],
            success: vec![RequestOp::put(key.as_str(), value)],
            failure: vec![],
        };
        assert!(client.txn(txn).await.unwrap().succeeded);
    });
    let err = store.apply(Revision(1), vec![]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    // Reloaded, the writer goes on.
    let at = store.load().await.unwrap().revision;
    store.apply(at, vec![]).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_transient_backend_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = EtcdStore::new(&[format!("http://127.0.0.1:{port}")], "/hyperloop", 10);
    let started = Instant::now();
    let err = store.load().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the request timeout"
    );
}

fn assert_send<T: Send>(_: T) {}

#[test]
fn store_futures_are_send() {
    let store = EtcdStore::new(&["http://127.0.0.1:1".into()], "/x", 1);
    assert_send(store.load());
    assert_send(store.apply(Revision(0), vec![]));
    assert_send(store.events(0, 1));
}

#[tokio::test]
async fn the_store_keeps_working_with_one_of_three_members_killed() {
    let mut cluster = EtcdCluster::start(3);
    let store = EtcdStore::new(&cluster.endpoints(), "/hyperloop", 10);
    store
        .apply(Revision(0), vec![Change::PutTask(contract::task(1))])
        .await
        .unwrap();
    // The raft leader, the hardest member to lose: the others elect a new one first.
    let leader = cluster.leader().expect("a healthy cluster has a leader");
    cluster.kill_member(leader);
    let killed = Instant::now();

    let (revision, _) = retrying_transient_errors(|| {
        store.apply(Revision(1), vec![Change::PutTask(contract::task(2))])
    })
    .await;
    eprintln!("applied {revision:?} {:?} after the kill", killed.elapsed());
    // A fresh client, whose list still names the dead member.
    let fresh = EtcdStore::new(&cluster.endpoints(), "/hyperloop", 10);
    let state = retrying_transient_errors(|| fresh.load()).await;
    assert_eq!(state.revision, Revision(2));
    assert_eq!(state.tasks.len(), 2);
}

/// Calls `f` until it succeeds, as the reconcile loop does: right after a member dies, a
/// request may be routed to it (connection refused, broken pipe) or wait out the request
/// timeout while the survivors elect a raft leader. Other errors, or transient ones for
/// longer than two request timeouts, fail the test.
async fn retrying_transient_errors<T, F: Future<Output = Result<T, StoreError>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let deadline =
        Instant::now() + 2 * hyperloop_coordinator::adapters::etcd_store::REQUEST_TIMEOUT;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}
