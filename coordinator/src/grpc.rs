//! The worker stream over gRPC: `WorkerService.Join`, and the one relay that turns any
//! worker's stream (remote over gRPC, or local over a [`Link`](hyperloop_worker::Link)) into
//! [`WorkerEvent`]s on the reconcile loop's inbox.
//!
//! Admission happens on the first message: it must be a `Hello` with this build's protocol
//! version and, when a join token is configured, that token (compared in constant time and
//! never logged). A refused worker gets an error status instead of a stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyperloop_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use hyperloop_proto::v1::{self, CoordinatorMessage, WorkerMessage};
use hyperloop_shared::config::Secret;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::dispatch::{Joined, WorkerEvent};

/// Workers heartbeat this often; the coordinator tells them so on registration.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A worker silent this long (several missed heartbeats) is lost: its stream is closed and
/// its steps are given to others.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a new stream may stay silent before its `Hello`. Below the worker's own
/// registration timeout, so a stuck handshake is refused by us first, with a reason.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages buffered towards one remote worker; the same bound as an in-process link, so a
/// worker that stops reading pushes back on the loop the same way wherever it runs.
const TO_WORKER_CAPACITY: usize = hyperloop_worker::link::LINK_CAPACITY;

/// Where admitted worker streams go: to this coordinator's loop while it leads, or back to
/// the worker with `NotLeader` while it stands by.
#[derive(Debug, Clone)]
pub enum Route {
    Leading {
        inbox: mpsc::Sender<WorkerEvent>,
        /// Cancelled when this term ends (shutdown or deposition).
        stop: CancellationToken,
        term: u64,
        /// What workers hear when the term ends.
        farewell: Farewell,
    },
    Following {
        /// The leader's advertised URL; `None` during an election.
        leader: Option<String>,
        term: u64,
    },
}

/// The message a relay sends when its term ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// Single host: there is no other coordinator, so workers finish and exit.
    Drain,
    /// Several coordinators: workers go and find the next leader.
    NotLeader,
}

/// Connection ids, unique per process: a reconnecting worker gets a new one.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Who may join: the configured join token, if any.
#[derive(Clone)]
pub struct Admission {
    token: Option<Secret>,
}

impl Admission {
    /// Admits any worker that speaks this protocol (in-process workers).
    pub fn open() -> Self {
        Self { token: None }
    }

    /// Admits workers presenting `token` when it is set.
    pub fn with_token(token: Option<Secret>) -> Self {
        Self { token }
    }

    /// Checks a `Hello`: protocol version first (so an old worker hears about the version,
    /// not the token), then the join token.
    ///
    /// # Errors
    /// INVALID_ARGUMENT / FAILED_PRECONDITION for a missing or different protocol version,
    /// UNAUTHENTICATED for a missing or wrong join token.
    fn check(&self, hello: &v1::Hello) -> Result<(), Status> {
        hyperloop_proto::check_protocol_version("hello.protocol_version", hello.protocol_version)?;
        if let Some(expected) = &self.token {
            if hello.token.is_empty() {
                return Err(Status::unauthenticated(
                    "this coordinator requires a join token; pass it to the worker with --token \
                     (or HYPERLOOP_TOKEN)",
                ));
            }
            if !constant_time_eq(hello.token.as_bytes(), expected.expose().as_bytes()) {
                return Err(Status::unauthenticated(
                    "the join token was refused; pass the coordinator's join token with --token \
                     (or HYPERLOOP_TOKEN)",
                ));
            }
        }
        let registration = hello
            .registration
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("`hello.registration` is missing"))?;
        if registration.name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`hello.registration.name` is empty; give the worker a --name",
            ));
        }
        Ok(())
    }

    /// Reads the stream's first message and admits it.
    ///
    /// # Errors
    /// The stream ended or stayed silent, the first message was not a `Hello`, or
    /// [`check`](Self::check) refused it.
    pub async fn admit<S>(&self, inbound: &mut S) -> Result<v1::Hello, Status>
    where
        S: Stream<Item = WorkerMessage> + Unpin,
    {
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within {}s of opening the stream",
                    HELLO_TIMEOUT.as_secs()
                ))
            })?
            .ok_or_else(|| Status::cancelled("the stream ended before its Hello"))?;
        match first.body {
            Some(v1::worker_message::Body::Hello(hello)) => self.check(&hello).map(|()| hello),
            _ => Err(Status::invalid_argument(
                "the first message on a worker stream must be Hello",
            )),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths, not on where they
/// first differ, so the join token cannot be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The answer to an admitted `Hello`.
fn registered(worker_id: &str, term: u64) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(v1::coordinator_message::Body::Registered(v1::Registered {
            worker_id: worker_id.to_owned(),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: HEARTBEAT_INTERVAL.as_secs() as i64,
                nanos: HEARTBEAT_INTERVAL.subsec_nanos() as i32,
            }),
            leader_term: term,
            protocol_version: hyperloop_proto::PROTOCOL_VERSION,
            coordinator_version: env!("CARGO_PKG_VERSION").to_owned(),
        })),
    }
}

fn not_leader(leader: Option<&str>, term: u64) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(v1::coordinator_message::Body::NotLeader(v1::NotLeader {
            leader_address: leader.unwrap_or_default().to_owned(),
            leader_term: term,
        })),
    }
}

/// Relays one admitted worker's stream to the loop while `route` leads: answers with
/// `Registered`, emits `Joined`, forwards every message, and emits `Gone` when the stream
/// ends or the loop closes the connection. When the term ends it says its farewell (drain,
/// or go find the new leader) and lets go of the stream. A following route answers
/// `NotLeader` at once.
pub async fn relay<S>(
    hello: v1::Hello,
    mut inbound: S,
    outbound: mpsc::Sender<CoordinatorMessage>,
    route: Route,
    local: bool,
) where
    S: Stream<Item = WorkerMessage> + Unpin,
{
    let (inbox, stop, term, farewell) = match route {
        Route::Leading {
            inbox,
            stop,
            term,
            farewell,
        } => (inbox, stop, term, farewell),
        Route::Following { leader, term } => {
            let _ = outbound.send(not_leader(leader.as_deref(), term)).await;
            return;
        }
    };
    let registration = hello.registration.unwrap_or_default();
    let worker = registration.name.clone();
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    if outbound
        .send(registered(&format!("{worker}#{conn}"), term))
        .await
        .is_err()
    {
        return;
    }
    let close = stop.child_token();
    let joined = WorkerEvent::Joined(Box::new(Joined {
        conn,
        registration,
        held: hello.attempts,
        local,
        sender: outbound.clone(),
        close: close.clone(),
    }));
    if inbox.send(joined).await.is_err() {
        return;
    }
    tracing::info!(worker = %worker, conn, "worker joined");
    loop {
        let message = tokio::select! {
            message = inbound.next() => message,
            () = close.cancelled() => {
                if stop.is_cancelled() {
                    // Best effort: a full queue means the worker is not reading anyway.
                    let _ = outbound.try_send(match farewell {
                        Farewell::Drain => CoordinatorMessage {
                            body: Some(v1::coordinator_message::Body::Drain(v1::Drain {
                                reason: "the coordinator is stopping".to_owned(),
                            })),
                        },
                        Farewell::NotLeader => not_leader(None, term),
                    });
                }
                break;
            }
        };
        let Some(message) = message else { break };
        let Some(body) = message.body else { continue };
        let event = WorkerEvent::Message {
            worker: worker.clone(),
            conn,
            message: body,
        };
        if inbox.send(event).await.is_err() {
            break;
        }
    }
    tracing::info!(worker = %worker, conn, "worker left");
    let _ = inbox.send(WorkerEvent::Gone { worker, conn }).await;
}

/// The current [`Route`], shared by the endpoint and whoever runs the election.
pub type RouteCell = tokio::sync::watch::Receiver<Route>;

/// `WorkerService` for remote workers: admits, then relays.
struct Service {
    admission: Admission,
    route: RouteCell,
}

#[tonic::async_trait]
impl WorkerService for Service {
    type JoinStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send + 'static>>;

    async fn join(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner().map_while(|message| match message {
            Ok(message) => Some(message),
            Err(status) => {
                tracing::debug!(code = ?status.code(), "worker stream ended with an error");
                None
            }
        });
        let hello = match self.admission.admit(&mut inbound).await {
            Ok(hello) => hello,
            Err(status) => {
                tracing::warn!(peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()), code = ?status.code(), reason = status.message(), "refused a worker");
                return Err(status);
            }
        };
        let (outbound, to_worker) = mpsc::channel(TO_WORKER_CAPACITY);
        let route = self.route.borrow().clone();
        tokio::spawn(relay(hello, Box::pin(inbound), outbound, route, false));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(to_worker).map(Ok),
        )))
    }
}

/// Binds the worker endpoint. Separate from [`serve`] so that a port in use is a start-up
/// error, before the loop runs.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The `WorkerService` for remote workers: admits, then relays along the current route.
pub fn worker_service(
    admission: Admission,
    route: RouteCell,
) -> WorkerServiceServer<impl WorkerService> {
    WorkerServiceServer::new(Service { admission, route })
        .max_decoding_message_size(hyperloop_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(hyperloop_proto::MAX_MESSAGE_BYTES)
}

/// Serves `routes` (the worker and admin services) on `listener`, over TLS when `tls` is
/// set, until `stop` is cancelled.
///
/// # Errors
/// The transport failed (or the TLS configuration was refused).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    routes: tonic::service::Routes,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // HTTP/1.1 too, for `GET /metrics` (gRPC clients speak HTTP/2 regardless).
    let mut builder = tonic::transport::Server::builder().accept_http1(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Small messages (an ack, then the next Assign) must not wait for the peer's delayed
    // ACK: without TCP_NODELAY every dispatch after a result cost ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(token: &str, version: u32) -> v1::Hello {
        v1::Hello {
            protocol_version: version,
            registration: Some(v1::Registration {
                name: "w".into(),
                capacity: 1,
                ..Default::default()
            }),
            token: token.into(),
            attempts: Vec::new(),
        }
    }

    #[test]
    fn constant_time_eq_matches_only_equal_strings() {
        for (a, b, equal) in [
            ("", "", true),
            ("secret", "secret", true),
            ("secret", "secreT", false),
            ("secret", "secret2", false),
            ("secret", "", false),
            ("", "secret", false),
        ] {
            assert_eq!(
                constant_time_eq(a.as_bytes(), b.as_bytes()),
                equal,
                "{a:?} {b:?}"
            );
        }
    }

    #[test]
    fn admission_checks_version_then_token_and_never_echoes_it() {
        let v = hyperloop_proto::PROTOCOL_VERSION;
        let guarded = Admission::with_token(Some(Secret::new("s3cret")));
        assert!(guarded.check(&hello("s3cret", v)).is_ok());
        for (token, version, code) in [
            ("wrong-one", v, tonic::Code::Unauthenticated),
            ("", v, tonic::Code::Unauthenticated),
            ("s3cret", v + 1, tonic::Code::FailedPrecondition),
            ("s3cret", 0, tonic::Code::InvalidArgument),
        ] {
            let status = guarded.check(&hello(token, version)).unwrap_err();
            assert_eq!(status.code(), code, "{token:?} {version}");
            assert!(!status.message().contains("s3cret"), "{}", status.message());
            if !token.is_empty() {
                assert!(!status.message().contains(token), "{}", status.message());
            }
            if code == tonic::Code::Unauthenticated {
                assert!(
                    status.message().contains("join token"),
                    "{}",
                    status.message()
                );
            }
        }
        assert!(Admission::open().check(&hello("", v)).is_ok());
    }
}
