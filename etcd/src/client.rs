//! [`Client`]: the calls, and failover between a cluster's members.
//!
//! Every member gets a lazily connected tonic channel. A call goes to the member that last
//! answered; when that member cannot be connected to (refused, connect timeout), the call
//! moves on to the next member at once, which is safe because nothing was sent. A call that
//! reached a member and then failed is not repeated (a transaction may have been applied),
//! but if the failure points at the member (unavailable, timed out, the connection broke)
//! the next call starts with the next member.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::Error;
use crate::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    lease_client::LeaseClient, watch_client::WatchClient, watch_request,
};
use crate::mvccpb::KeyValue;
use crate::v3electionpb::{CampaignRequest, CampaignResponse, election_client::ElectionClient};

/// How a [`Client`] talks to etcd. The default: no timeouts, any member answers.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bound on connecting to one member; past it the call tries the next member.
    pub connect_timeout: Option<Duration>,
    /// Bound on each call until its response starts (all of a unary call; the opening of a
    /// stream). Leave it unset for calls that wait on purpose, like a campaign.
    pub request_timeout: Option<Duration>,
    /// Ask members to refuse calls while they are cut off from the cluster's raft leader
    /// (gRPC metadata `hasleader: true`), instead of serving stale reads or hanging
    /// watches.
    pub require_leader: bool,
}

/// A client of one etcd cluster. Clones share the connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<Member>,
    /// Index of the member the next call tries first.
    preferred: AtomicUsize,
    require_leader: bool,
    /// Every endpoint, comma-separated, for errors.
    endpoints: String,
}

struct Member {
    endpoint: String,
    channel: Channel,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("require_leader", &self.inner.require_leader)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the cluster whose members listen at `endpoints` (`http://host:port`, or
    /// `host:port` for plain http). Connections are made on first use, so this only checks
    /// the endpoints; it must run inside a Tokio runtime, which the connections then
    /// belong to.
    pub fn connect(endpoints: &[impl AsRef<str>], options: &Options) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let members = endpoints
            .iter()
            .map(|endpoint| {
                let endpoint = endpoint.as_ref();
                Ok(Member {
                    endpoint: endpoint.to_owned(),
                    channel: tonic_endpoint(endpoint, options)?.connect_lazy(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let endpoints = members
            .iter()
            .map(|m| m.endpoint.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            inner: Arc::new(Inner {
                members,
                preferred: AtomicUsize::new(0),
                require_leader: options.require_leader,
                endpoints,
            }),
        })
    }

    /// Keys and values as `request` selects them.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Error> {
        self.call(|channel| {
            let request = self.request(request.clone());
            async move { KvClient::new(channel).range(request).await }
        })
        .await
    }

    /// The current value of `key`, if it exists.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        let request = RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        };
        Ok(self.range(request).await?.kvs.into_iter().next())
    }

    /// Writes one key (see [`PutRequest::new`]).
    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, Error> {
        self.call(|channel| {
            let request = self.request(request.clone());
            async move { KvClient::new(channel).put(request).await }
        })
        .await
    }

    /// Runs a transaction: `request.success` if every compare holds, else
    /// `request.failure`, atomically.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Error> {
        self.call(|channel| {
            let request = self.request(request.clone());
            async move { KvClient::new(channel).txn(request).await }
        })
        .await
    }

    /// A new lease of `ttl` seconds (etcd may raise it to its minimum).
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, Error> {
        self.call(|channel| {
            let request = self.request(LeaseGrantRequest { ttl, id: 0 });
            async move { LeaseClient::new(channel).lease_grant(request).await }
        })
        .await
    }

    /// Ends lease `id` now, deleting every key attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        self.call(|channel| {
            let request = self.request(LeaseRevokeRequest { id });
            async move { LeaseClient::new(channel).lease_revoke(request).await }
        })
        .await
        .map(drop)
    }

    /// Opens a keep-alive stream for lease `id` and renews the lease once through it: the
    /// stream for further renewals, and the seconds the lease has left (`None`: it no
    /// longer exists).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<(LeaseKeepAlive, Option<i64>), Error> {
        let mut keep_alive = self
            .call(|channel| {
                let (requests, queued) = mpsc::channel(1);
                // The first renewal goes with the opening: etcd answers the call only once
                // it has a message to answer.
                let opening = tokio_stream::once(LeaseKeepAliveRequest { id })
                    .chain(ReceiverStream::new(queued));
                let request = self.request(opening);
                async move {
                    let responses = LeaseClient::new(channel)
                        .lease_keep_alive(request)
                        .await?
                        .into_inner();
                    Ok(tonic::Response::new(LeaseKeepAlive {
                        id,
                        requests,
                        responses,
                    }))
                }
            })
            .await?;
        let left = keep_alive.answer().await?;
        Ok((keep_alive, left))
    }

    /// Starts watching what `request` selects: the stream of changes, after the answer
    /// that confirms the watch.
    pub async fn watch(&self, request: WatchCreateRequest) -> Result<Watch, Error> {
        self.call(|channel| {
            // The request side stays open for as long as the watch is read.
            let opening = tokio_stream::once(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(request.clone())),
            })
            .chain(tokio_stream::pending());
            let request = self.request(opening);
            async move {
                let responses = WatchClient::new(channel).watch(request).await?.into_inner();
                Ok(tonic::Response::new(Watch { responses }))
            }
        })
        .await
    }

    /// Campaigns with `lease` in election `name` (etcd's election service), announcing
    /// `value`: returns once this candidate leads, which may take as long as others do.
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<CampaignResponse, Error> {
        let request = CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        };
        self.call(|channel| {
            let request = self.request(request.clone());
            async move { ElectionClient::new(channel).campaign(request).await }
        })
        .await
    }

    /// `message` as a request, with the metadata every call carries.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if self.inner.require_leader {
            request
                .metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
        }
        request
    }

    /// Runs `attempt` against the preferred member, and against the next ones in turn
    /// while a member cannot be connected to.
    async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let members = &self.inner.members;
        let first = self.inner.preferred.load(Ordering::Relaxed) % members.len();
        let mut i = first;
        loop {
            match attempt(members[i].channel.clone()).await {
                Ok(response) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Err(status) if never_connected(&status) => {
                    i = (i + 1) % members.len();
                    if i == first {
                        return Err(Error::Unreachable {
                            endpoints: self.inner.endpoints.clone(),
                            last: status,
                        });
                    }
                }
                Err(status) => {
                    if blames_the_member(status.code()) {
                        self.inner
                            .preferred
                            .store((i + 1) % members.len(), Ordering::Relaxed);
                    }
                    return Err(Error::Status(status));
                }
            }
        }
    }
}

/// A lease's keep-alive stream (see [`Client::lease_keep_alive`]).
#[derive(Debug)]
pub struct LeaseKeepAlive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl LeaseKeepAlive {
    /// Renews the lease to its full TTL: the seconds it has left (`None`: it no longer
    /// exists).
    pub async fn renew(&mut self) -> Result<Option<i64>, Error> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Error::StreamEnded("lease keep-alive"))?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<Option<i64>, Error> {
        match self.responses.message().await.map_err(Error::Status)? {
            Some(answer) if answer.ttl > 0 => Ok(Some(answer.ttl)),
            Some(_) => Ok(None),
            None => Err(Error::StreamEnded("lease keep-alive")),
        }
    }
}

/// The changes a watch sees (see [`Client::watch`]).
#[derive(Debug)]
pub struct Watch {
    responses: Streaming<WatchResponse>,
}

impl Watch {
    /// The next response: the confirmation first, then batches of events, or one saying
    /// the watch was cancelled. `None` once etcd closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, Error> {
        self.responses.message().await.map_err(Error::Status)
    }
}

fn tonic_endpoint(endpoint: &str, options: &Options) -> Result<Endpoint, Error> {
    let invalid = |reason: String| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let url = match endpoint.split_once("://") {
        None => format!("http://{endpoint}"),
        Some(("http", _)) => endpoint.to_owned(),
        Some((scheme, _)) => {
            return Err(invalid(format!(
                "{scheme}:// is not supported: this client speaks plain http:// only"
            )));
        }
    };
    let mut built = Endpoint::from_shared(url).map_err(|e| invalid(e.to_string()))?;
    if let Some(timeout) = options.connect_timeout {
        built = built.connect_timeout(timeout);
    }
    if let Some(timeout) = options.request_timeout {
        built = built.timeout(timeout);
    }
    Ok(built)
}

/// Whether the call failed before anything was sent: connecting to the member failed.
fn never_connected(status: &Status) -> bool {
    let mut error: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = error {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        error = e.source();
    }
    false
}

/// Whether a failed call suggests trying another member next time: the member is
/// unavailable (cut off from its cluster, shutting down), did not answer in time, or the
/// connection broke.
fn blames_the_member(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}
