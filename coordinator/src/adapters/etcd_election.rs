//! [`EtcdElection`]: the [`Election`] over etcd's election API, for several coordinators of
//! one repository.
//!
//! A candidate grants itself a lease (TTL [`DEFAULT_TTL`] unless configured), keeps it alive
//! every TTL/3 and campaigns under `<prefix>/election` with it; etcd elects the candidate
//! whose key under that name is oldest. The leader key's create revision is the term (etcd
//! revisions only grow, so a later leader's is larger) and, with the key, the [`Fence`] the
//! state store's writes compare.
//!
//! Leadership is lost ([`Leadership::lost`]) when:
//! - a keep-alive says the lease is gone, or the leader key is deleted (watched);
//! - no keep-alive was acknowledged for so long that the lease may have expired: the lease
//!   is certainly alive until TTL after the last acknowledged keep-alive was *sent*, and
//!   `lost` fires [`MARGIN_DIVISOR`]ths of a TTL before that, so the deposed leader stops
//!   before etcd can elect a successor.
//!
//! Resigning or dropping the leadership revokes the lease, which deletes the key and elects
//! the next candidate at once.

use std::sync::Arc;
use std::time::Duration;

use hyperloop_etcd::etcdserverpb::{RangeRequest, WatchCreateRequest, range_request};
use hyperloop_etcd::mvccpb::event::EventType;
use hyperloop_etcd::{Client, Error, LeaseKeepAlive, Options, prefix_end};
use tokio::sync::OnceCell;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::etcd_store::layout::{self, Prefix};
use super::etcd_store::{CONNECT_TIMEOUT, REQUEST_TIMEOUT, is_transient};
use crate::ports::election::{Election, ElectionError, Fence, LeaderInfo, Leadership};

/// Lease TTL: how long a crashed leader blocks the election, and how long an etcd hiccup may
/// last before a healthy leader steps down.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// `lost` fires TTL/`MARGIN_DIVISOR` before the lease may have expired.
const MARGIN_DIVISOR: u32 = 6;

/// A candidate in the election of one key prefix. Clones share the connection.
#[derive(Clone)]
pub struct EtcdElection {
    endpoints: Arc<[String]>,
    client: Arc<OnceCell<Client>>,
    /// `<prefix>/election`; candidates' keys are `<name>/<lease id>`.
    name: Arc<str>,
    ttl: Duration,
}

impl std::fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("endpoints", &self.endpoints)
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl EtcdElection {
    /// A candidate over `endpoints` in the election under `<prefix>/election` (`prefix` as
    /// the state store's). It connects on first use.
    pub fn new(endpoints: &[String], prefix: &str) -> Self {
        Self {
            endpoints: endpoints.into(),
            client: Arc::new(OnceCell::new()),
            name: Prefix::new(prefix).key(layout::ELECTION).into(),
            ttl: DEFAULT_TTL,
        }
    }

    /// This candidate with a lease of `ttl` (rounded up to whole seconds; etcd may raise
    /// it to its minimum, about 2 s with default heartbeat settings).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The election's name: candidates' keys live under `<name>/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn client(&self) -> Result<Client, ElectionError> {
        self.client
            .get_or_try_init(|| async {
                let options = Options {
                    connect_timeout: Some(CONNECT_TIMEOUT),
                    // None: a campaign waits for as long as another candidate leads. Short
                    // calls are bounded here.
                    request_timeout: None,
                    // A member cut off from its cluster must not renew leases or keep
                    // watches.
                    require_leader: true,
                };
                Client::connect(&self.endpoints[..], &options)
            })
            .await
            .cloned()
            .map_err(|e| self.error("connect", &e))
    }

    fn error(&self, operation: &'static str, error: &Error) -> ElectionError {
        classify(&self.endpoints, operation, error)
    }

    fn timed_out(&self, operation: &'static str) -> ElectionError {
        ElectionError::Unreachable {
            endpoints: self.endpoints.join(","),
            reason: format!("{operation} got no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}

impl Election for EtcdElection {
    async fn campaign(&self, value: String) -> Result<Leadership, ElectionError> {
        let client = self.client().await?;
        let ttl_secs = i64::try_from(self.ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let granted_at = Instant::now();
        let grant = timeout(REQUEST_TIMEOUT, client.lease_grant(ttl_secs))
            .await
            .map_err(|_| self.timed_out("lease grant"))?
            .map_err(|e| self.error("lease grant", &e))?;
        let ttl = Duration::from_secs(u64::try_from(grant.ttl).unwrap_or(0));
        let lease = grant.id;

        let (lost, step_down) = (CancellationToken::new(), CancellationToken::new());
        let session = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            ttl,
            granted_at + ttl,
            lost.clone(),
            step_down.clone(),
        ));
        // Until the campaign is won, failing or being dropped ends the session (revoking
        // the lease, and with it this candidate's key).
        let unwon = step_down.clone().drop_guard();

        let won = tokio::select! {
            won = client.campaign(self.name.as_bytes(), value, lease) => {
                won.map_err(|e| self.error("campaign", &e))?
            }
            () = lost.cancelled() => {
                return Err(ElectionError::Backend {
                    operation: "campaign",
                    reason: format!(
                        "this candidate's lease could not be kept alive while it waited \
                         (etcd at {} unreachable for about the lease TTL of {ttl:?})",
                        self.endpoints.join(",")
                    ),
                    transient: true,
                });
            }
        };
        let key = won.leader.map(|l| (l.key, l.rev));
        let Some((key, create_revision)) = key else {
            return Err(ElectionError::Backend {
                operation: "campaign",
                reason: "etcd elected this candidate without naming its leader key".into(),
                transient: true,
            });
        };
        tokio::spawn(watch_key(
            client,
            key.clone(),
            create_revision,
            lost.clone(),
        ));
        unwon.disarm();
        Ok(Leadership::new(
            u64::try_from(create_revision).unwrap_or(0),
            Some(Fence {
                key,
                create_revision,
            }),
            lost,
            step_down,
            Some(session),
        ))
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>, ElectionError> {
        let client = self.client().await?;
        // What etcd's `Leader` call does, without its "no leader" error: the oldest key.
        let candidates = format!("{}/", self.name);
        let oldest = RangeRequest {
            range_end: prefix_end(candidates.as_bytes()),
            key: candidates.into_bytes(),
            sort_target: range_request::SortTarget::Create.into(),
            sort_order: range_request::SortOrder::Ascend.into(),
            limit: 1,
            ..RangeRequest::default()
        };
        let response = timeout(REQUEST_TIMEOUT, client.range(oldest))
            .await
            .map_err(|_| self.timed_out("leader lookup"))?
            .map_err(|e| self.error("leader lookup", &e))?;
        Ok(response.kvs.first().map(|kv| LeaderInfo {
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            term: u64::try_from(kv.create_revision).unwrap_or(0),
        }))
    }
}

/// Keeps `lease` alive until `step_down` or `lost`, then revokes it. Fires `lost` when the
/// lease is gone or may expire before the next renewal could land.
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    mut valid_until: Instant,
    lost: CancellationToken,
    step_down: CancellationToken,
) {
    let every = ttl / 3;
    let margin = ttl / MARGIN_DIVISOR;
    let mut stream: Option<LeaseKeepAlive> = None;
    loop {
        let sent = Instant::now();
        let renewed = tokio::select! {
            () = step_down.cancelled() => break,
            () = lost.cancelled() => break,
            renewed = timeout(every, renew(&client, lease, &mut stream)) => renewed,
        };
        match renewed {
            Ok(Ok(Some(left))) => valid_until = sent + left,
            Ok(Ok(None)) => {
                tracing::warn!(lease, "etcd says this coordinator's lease is gone");
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease, error = %e, "renewing the election lease failed");
                stream = None;
            }
            Err(_) => {
                tracing::warn!(lease, "renewing the election lease timed out");
                stream = None;
            }
        }
        let doubtful = valid_until.checked_sub(margin).unwrap_or(valid_until);
        if Instant::now() >= doubtful {
            tracing::warn!(lease, "the election lease may have expired");
            break;
        }
        tokio::select! {
            () = step_down.cancelled() => break,
            () = lost.cancelled() => break,
            () = sleep_until((sent + every).min(doubtful)) => {}
        }
    }
    lost.cancel();
    // Best effort: a lease that cannot be revoked expires within its TTL anyway.
    if let Ok(Err(e)) = timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await
        && !e.to_string().contains("lease not found")
    {
        tracing::debug!(lease, error = %e, "revoking the election lease");
    }
}

/// One keep-alive round trip: `Some(remaining TTL)`, or `None` if the lease is gone.
async fn renew(
    client: &Client,
    lease: i64,
    stream: &mut Option<LeaseKeepAlive>,
) -> Result<Option<Duration>, Error> {
    let left = match stream {
        Some(keeper) => keeper.renew().await?,
        None => {
            // Opening the stream renews once.
            let (keeper, left) = client.lease_keep_alive(lease).await?;
            *stream = Some(keeper);
            left
        }
    };
    Ok(left.map(|secs| Duration::from_secs(u64::try_from(secs).unwrap_or(0))))
}

/// Fires `lost` when the leader key is deleted (lease expired or revoked, or removed by
/// hand). A broken watch (its member died) is re-established, through another member if
/// there is one; an unreachable etcd is the keep-alive's to judge.
async fn watch_key(client: Client, key: Vec<u8>, created: i64, lost: CancellationToken) {
    let name = String::from_utf8_lossy(&key).into_owned();
    let deleted = async {
        loop {
            match watch_once(&client, &key, created).await {
                Ok(Some(why)) => return why,
                Ok(None) => tracing::debug!(key = %name, "the leader key's watch ended"),
                Err(e) => tracing::debug!(key = %name, error = %e, "watching the leader key"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = lost.cancelled() => {}
        why = deleted => {
            tracing::warn!(key = %name, "leadership lost: {why}");
            lost.cancel();
        }
    }
}

/// Watches `key` from its creation on (so a delete before the watch started is seen too):
/// why the leadership ended, or `None` if the watch ended first.
async fn watch_once(
    client: &Client,
    key: &[u8],
    created: i64,
) -> Result<Option<&'static str>, Error> {
    let request = WatchCreateRequest {
        key: key.to_vec(),
        start_revision: created,
        ..WatchCreateRequest::default()
    };
    let mut watch = client.watch(request).await?;
    while let Some(response) = watch.next().await? {
        if response.canceled {
            // Compacted past the key's creation: whether it still exists is unknowable here.
            return Ok(Some("etcd cancelled the watch of the leader key"));
        }
        if response
            .events
            .iter()
            .any(|e| e.r#type() == EventType::Delete)
        {
            return Ok(Some("the leader key was deleted"));
        }
    }
    Ok(None)
}

fn classify(endpoints: &[String], operation: &'static str, error: &Error) -> ElectionError {
    use tonic::Code;
    let unreachable = match error {
        Error::Unreachable { .. } => true,
        Error::Status(status) => status.code() == Code::Unavailable,
        _ => false,
    };
    if unreachable {
        return ElectionError::Unreachable {
            endpoints: endpoints.join(","),
            reason: format!("{operation}: {error}"),
        };
    }
    if let Error::Status(status) = error
        && matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        )
    {
        return ElectionError::Denied {
            operation,
            reason: error.to_string(),
        };
    }
    ElectionError::Backend {
        operation,
        reason: error.to_string(),
        transient: is_transient(error),
    }
}
