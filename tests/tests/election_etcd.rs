//! The `Election` contract and etcd-specific guarantees of [`EtcdElection`], against a real
//! etcd (3.4) started per test on loopback.

use std::time::{Duration, Instant};

use hyperloop_coordinator::adapters::etcd_election::EtcdElection;
use hyperloop_coordinator::adapters::etcd_store::EtcdStore;
use hyperloop_coordinator::ports::election::contract::Harness;
use hyperloop_coordinator::ports::election::{Election, ElectionError, Leadership};
use hyperloop_coordinator::ports::state_store::contract;
use hyperloop_coordinator::ports::state_store::{Change, Revision, StateStore};
use hyperloop_etcd::{Client, Options};
use hyperloop_tests::etcd::{Etcd, EtcdCluster};

/// etcd's minimum lease TTL with its default heartbeat (it raises 1 s to 2 s).
const TTL: Duration = Duration::from_secs(2);
const PREFIX: &str = "/hyperloop/github.com/owner/repo";

struct Backing {
    etcd: Etcd,
}

impl Backing {
    fn new() -> Self {
        Backing {
            etcd: Etcd::start(),
        }
    }
}

impl Harness for Backing {
    type Election = EtcdElection;

    fn candidate(&self) -> EtcdElection {
        EtcdElection::new(std::slice::from_ref(&self.etcd.endpoint), PREFIX).with_ttl(TTL)
    }

    fn ttl(&self) -> Duration {
        TTL
    }

    /// Revokes the holder's lease from another client, as etcd does when it expires.
    async fn expire(&self, leadership: &Leadership) -> bool {
        let fence = leadership
            .fence
            .as_ref()
            .expect("etcd leadership is fenced");
        let client = Client::connect(&[&self.etcd.endpoint], &Options::default()).unwrap();
        let lease = client.get(fence.key.clone()).await.unwrap().unwrap().lease;
        client.lease_revoke(lease).await.unwrap();
        true
    }
}

hyperloop_coordinator::election_contract_tests!(Backing::new);

#[tokio::test]
async fn the_deposed_leaders_fenced_store_fails_and_the_new_leaders_succeeds() {
    let backing = Backing::new();
    let endpoints = std::slice::from_ref(&backing.etcd.endpoint);
    let store = EtcdStore::new(endpoints, PREFIX, 10);
    let a = backing
        .candidate()
        .campaign("http://a:1".into())
        .await
        .unwrap();
    assert_eq!(
        store.load().await.unwrap(),
        Default::default(),
        "the election's keys under the store's prefix are no records of it"
    );
    let old = store.with_fence(a.fence.clone().unwrap());
    old.apply(Revision(0), vec![Change::PutTask(contract::task(1))])
        .await
        .expect("the leader writes");
    assert!(
        a.fence
            .as_ref()
            .unwrap()
            .key
            .starts_with(format!("{PREFIX}/election/").as_bytes()),
        "candidates' keys live under <prefix>/election/"
    );

    let b = tokio::spawn({
        let candidate = backing.candidate();
        async move { candidate.campaign("http://b:1".into()).await }
    });
    assert!(backing.expire(&a).await);
    let b = tokio::time::timeout(TTL, b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(b.term > a.term);

    let err = old
        .apply(Revision(1), vec![Change::PutTask(contract::task(2))])
        .await
        .unwrap_err();
    assert!(
        !err.is_transient(),
        "a deposed leader must not retry: {err}"
    );
    assert!(
        err.to_string().contains("no longer holds leadership"),
        "{err}"
    );
    let new = store.with_fence(b.fence.clone().unwrap());
    new.apply(Revision(1), vec![Change::PutTask(contract::task(3))])
        .await
        .expect("the new leader writes");
    let state = store.load().await.unwrap();
    assert_eq!(state.revision, Revision(2));
    assert!(
        !state
            .tasks
            .contains_key(&hyperloop_shared::model::TaskId(2))
    );
}

/// A leader cut off from etcd (its only member killed) steps down before its lease can have
/// expired, and a candidate talking to the surviving members takes over within the TTL
/// (plus etcd's expiry check, every 500 ms, and the second's watch).
#[tokio::test]
async fn a_leader_cut_off_from_etcd_steps_down_before_its_successor_starts() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    // Cut off a follower, not the raft leader: losing that would add a raft election.
    let raft_leader = cluster.leader().expect("a healthy cluster has a leader");
    let cut = (raft_leader + 1) % 3;
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != cut)
        .map(|i| endpoints[i].clone())
        .collect();
    let a = EtcdElection::new(&endpoints[cut..=cut], PREFIX)
        .with_ttl(TTL)
        .campaign("http://a:1".into())
        .await
        .unwrap();
    let b_candidate = EtcdElection::new(&survivors, PREFIX).with_ttl(TTL);
    let b = tokio::spawn({
        let candidate = b_candidate.clone();
        async move { candidate.campaign("http://b:1".into()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "b waits while a leads");

    cluster.kill_member(cut);
    let killed = Instant::now();
    let within = TTL + Duration::from_secs(1);
    tokio::time::timeout(within, a.lost.cancelled())
        .await
        .expect("a learns it may have lost the leadership");
    let a_lost_after = killed.elapsed();
    let b = tokio::time::timeout(within, b)
        .await
        .expect("b is elected within TTL + 1 s")
        .unwrap()
        .unwrap();
    let b_elected_after = killed.elapsed();
    eprintln!("after the kill: a lost at {a_lost_after:?}, b elected at {b_elected_after:?}");
    assert!(
        a_lost_after < b_elected_after,
        "the deposed leader stops before its successor starts"
    );
    assert!(b.term > a.term);
    let leader = b_candidate.leader().await.unwrap().unwrap();
    assert_eq!((leader.value.as_str(), leader.term), ("http://b:1", b.term));
}

#[tokio::test]
async fn an_unreachable_etcd_names_the_flag_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let election = EtcdElection::new(&[format!("http://127.0.0.1:{port}")], PREFIX);
    let err = election.leader().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(matches!(err, ElectionError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("--etcd"), "{err}");
    let err = election.campaign("http://a:1".into()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

fn assert_send<T: Send>(_: T) {}

#[test]
fn election_futures_are_send() {
    let election = EtcdElection::new(&["http://127.0.0.1:1".into()], PREFIX);
    assert_send(election.campaign(String::new()));
    assert_send(election.leader());
}

#[tokio::test]
async fn a_leader_keeps_its_leadership_when_one_of_three_members_dies() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let a = EtcdElection::new(&endpoints, PREFIX)
        .with_ttl(TTL)
        .campaign("http://a:1".into())
        .await
        .unwrap();
    // A follower: losing the raft leader stalls every write for a raft election and up to
    // etcd's request timeout, which a 2 s lease does not survive.
    let raft_leader = cluster.leader().expect("a healthy cluster has a leader");
    cluster.kill_member((raft_leader + 1) % 3);
    tokio::time::sleep(2 * TTL).await;
    assert!(
        !a.lost.is_cancelled(),
        "the leader's session moved to a surviving member"
    );
    // A fresh client may be routed to the dead member first: retry transient failures.
    let mut leader = EtcdElection::new(&endpoints, PREFIX).leader().await;
    for _ in 0..10 {
        match &leader {
            Err(e) if e.is_transient() => {
                leader = EtcdElection::new(&endpoints, PREFIX).leader().await;
            }
            _ => break,
        }
    }
    assert_eq!(leader.unwrap().unwrap().term, a.term);
}
