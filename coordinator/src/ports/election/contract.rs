//! The contract every [`Election`] adapter passes. An adapter's test file instantiates it
//! with [`election_contract_tests!`](crate::election_contract_tests), giving a function
//! returning a fresh [`Harness`]; each check gets its own backing.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Election, ElectionError, LeaderInfo, Leadership};

/// One election (an etcd prefix, a shared local seat) that candidates join.
pub trait Harness: Send + Sync + 'static {
    type Election: Election;

    /// A new candidate in this election, as another coordinator process would be.
    fn candidate(&self) -> Self::Election;

    /// The longest a leadership whose holder stopped renewing it stays valid (the lease
    /// TTL).
    fn ttl(&self) -> Duration;

    /// Ends `leadership` behind its holder's back, as the expiry of a crashed holder's lease
    /// does. Returns false if this election has no such thing (a single host: never lost).
    fn expire(&self, leadership: &Leadership) -> impl Future<Output = bool> + Send;
}

/// How long a hand-over (resign, drop) may take: etcd round trips, not lease expiry.
const PROMPTLY: Duration = Duration::from_secs(1);

/// Instantiates every contract check as a `#[tokio::test]`.
/// `$new_harness` is an expression of type `impl Fn() -> impl Harness`.
#[macro_export]
macro_rules! election_contract_tests {
    ($new_harness:expr) => {
        $crate::election_contract_tests!(@each $new_harness;
            nobody_leads_before_a_campaign,
            a_campaign_makes_the_candidate_leader,
            a_second_candidate_waits_while_the_first_leads,
            resign_hands_over_promptly,
            dropping_the_leadership_hands_over,
            a_lost_leadership_hands_over_within_the_ttl,
        );
    };
    (@each $new_harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::ports::election::contract::$check(&$new_harness).await;
            }
        )*
    };
}

fn url(name: &str) -> String {
    format!("http://{name}.test:7070")
}

async fn leader_of<E: Election>(candidate: &E) -> Option<LeaderInfo> {
    candidate.leader().await.expect("leader()")
}

fn spawn_campaign<E: Election>(
    candidate: E,
    value: String,
) -> JoinHandle<Result<Leadership, ElectionError>> {
    tokio::spawn(async move { candidate.campaign(value).await })
}

/// The waiting campaign's leadership, failing if it takes longer than `within`.
async fn elected(
    waiting: JoinHandle<Result<Leadership, ElectionError>>,
    within: Duration,
    what: &str,
) -> Leadership {
    tokio::time::timeout(within, waiting)
        .await
        .unwrap_or_else(|_| panic!("{what}: the waiting candidate was not elected in {within:?}"))
        .expect("campaign task")
        .expect("campaign")
}

/// Asserts the waiting candidate stays waiting for a while (a campaign that returned would
/// mean two leaders).
async fn still_waiting(waiting: &JoinHandle<Result<Leadership, ElectionError>>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second candidate was elected while the first leads"
    );
}

pub async fn nobody_leads_before_a_campaign<H: Harness>(new: &impl Fn() -> H) {
    let harness = new();
    assert_eq!(leader_of(&harness.candidate()).await, None);
}

pub async fn a_campaign_makes_the_candidate_leader<H: Harness>(new: &impl Fn() -> H) {
    let harness = new();
    let a = harness.candidate();
    let leadership = tokio::time::timeout(PROMPTLY, a.campaign(url("a")))
        .await
        .expect("an uncontested campaign wins at once")
        .unwrap();
    assert!(leadership.term >= 1);
    assert!(!leadership.lost.is_cancelled());
    let expected = Some(LeaderInfo {
        value: url("a"),
        term: leadership.term,
    });
    assert_eq!(leader_of(&a).await, expected);
    assert_eq!(
        leader_of(&harness.candidate()).await,
        expected,
        "every candidate sees the leader"
    );
}

pub async fn a_second_candidate_waits_while_the_first_leads<H: Harness>(new: &impl Fn() -> H) {
    let harness = new();
    let a = harness.campaign_first().await;
    let waiting = spawn_campaign(harness.candidate(), url("b"));
    still_waiting(&waiting).await;
    let seen = leader_of(&harness.candidate()).await.unwrap();
    assert_eq!((seen.value, seen.term), (url("a"), a.term));
    assert!(!a.lost.is_cancelled());
    waiting.abort();
}

pub async fn resign_hands_over_promptly<H: Harness>(new: &impl Fn() -> H) {
    let harness = new();
    let a = harness.campaign_first().await;
    let (a_term, a_lost) = (a.term, a.lost.clone());
    let waiting = spawn_campaign(harness.candidate(), url("b"));
    still_waiting(&waiting).await;
    a.resign().await;
    assert!(a_lost.is_cancelled(), "a resigned leadership is lost");
    let b = elected(waiting, PROMPTLY, "after resign").await;
    assert!(b.term > a_term, "term {} after {a_term}", b.term);
    let seen = leader_of(&harness.candidate()).await.unwrap();
    assert_eq!((seen.value, seen.term), (url("b"), b.term));

    // With nobody waiting, resigning leaves the election without a leader.
    b.resign().await;
    assert_eq!(leader_of(&harness.candidate()).await, None);
}

pub async fn dropping_the_leadership_hands_over<H: Harness>(new: &impl Fn() -> H) {
    let harness = new();
    let a = harness.campaign_first().await;
    let (a_term, a_lost) = (a.term, a.lost.clone());
    let waiting = spawn_campaign(harness.candidate(), url("b"));
    still_waiting(&waiting).await;
    drop(a);
    let b = elected(waiting, PROMPTLY, "after drop").await;
    assert!(b.term > a_term);
    assert!(a_lost.is_cancelled());
}

pub async fn a_lost_leadership_hands_over_within_the_ttl<H: Harness>(new: &impl Fn() -> H) {
    let harness = new();
    let a = harness.campaign_first().await;
    let waiting = spawn_campaign(harness.candidate(), url("b"));
    still_waiting(&waiting).await;
    if !harness.expire(&a).await {
        // Nothing can take this leadership away: it stays, and the other candidate waits.
        still_waiting(&waiting).await;
        assert!(!a.lost.is_cancelled());
        waiting.abort();
        return;
    }
    let within = harness.ttl() + Duration::from_secs(1);
    let b = elected(waiting, within, "after the first's lease was lost").await;
    tokio::time::timeout(within, a.lost.cancelled())
        .await
        .expect("the deposed leader learns it lost the leadership");
    assert!(b.term > a.term);
    let seen = leader_of(&harness.candidate()).await.unwrap();
    assert_eq!((seen.value, seen.term), (url("b"), b.term));
    // The deposed leader stepping down late must not disturb the new one.
    a.resign().await;
    assert!(!b.lost.is_cancelled());
    assert_eq!(leader_of(&harness.candidate()).await.unwrap().term, b.term);
}

trait CampaignFirst: Harness {
    /// Candidate "a", elected.
    async fn campaign_first(&self) -> Leadership {
        tokio::time::timeout(PROMPTLY, self.candidate().campaign(url("a")))
            .await
            .expect("an uncontested campaign wins at once")
            .expect("campaign")
    }
}

impl<H: Harness> CampaignFirst for H {}
