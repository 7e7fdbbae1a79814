//! The worker stream over gRPC: `WorkerService.Join`, and the one relay that turns any
//! worker's stream (remote over gRPC, or local over a [`Link`](hyperloop_worker::Link)) into
//! [`WorkerEvent`]s on the reconcile loop's inbox.
//!
//! Admission happens on the first message: it must be a `Hello` with this build's protocol
//! version and, when a join token is configured, that token (compared in constant time and
//! never logged). A refused worker gets an error status instead of a stream.

use std::net::SocketAddr;
use std::time::Duration;

use hyperloop_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use hyperloop_proto::v1::{self, CoordinatorMessage, WorkerMessage};
use hyperloop_shared::config::Secret;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::dispatch::WorkerEvent;

/// Workers heartbeat this often; the coordinator tells them so on registration.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a new stream may stay silent before its `Hello`. Below the worker's own
/// registration timeout, so a stuck handshake is refused by us first, with a reason.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages buffered towards one remote worker; the same bound as an in-process link, so a
/// worker that stops reading pushes back on the loop the same way wherever it runs.
const TO_WORKER_CAPACITY: usize = hyperloop_worker::link::LINK_CAPACITY;

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
    fn check(&self, hello: &v1::Hello) -> Result<v1::Registration, Status> {
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
            .clone()
            .ok_or_else(|| Status::invalid_argument("`hello.registration` is missing"))?;
        if registration.name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`hello.registration.name` is empty; give the worker a --name",
            ));
        }
        Ok(registration)
    }

    /// Reads the stream's first message and admits it.
    ///
    /// # Errors
    /// The stream ended or stayed silent, the first message was not a `Hello`, or
    /// [`check`](Self::check) refused it.
    pub async fn admit<S>(&self, inbound: &mut S) -> Result<v1::Registration, Status>
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
            Some(v1::worker_message::Body::Hello(hello)) => self.check(&hello),
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
fn registered(worker_id: &str) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(v1::coordinator_message::Body::Registered(v1::Registered {
            worker_id: worker_id.to_owned(),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: HEARTBEAT_INTERVAL.as_secs() as i64,
                nanos: 0,
            }),
            leader_term: 0,
            protocol_version: hyperloop_proto::PROTOCOL_VERSION,
            coordinator_version: env!("CARGO_PKG_VERSION").to_owned(),
        })),
    }
}

/// Relays one admitted worker's stream to the loop: answers with `Registered`, emits
/// `Joined`, forwards every message, and emits `Gone` when the stream ends. On `stop` it
/// tells the worker to drain and lets go of the stream.
pub async fn relay<S>(
    registration: v1::Registration,
    mut inbound: S,
    outbound: mpsc::Sender<CoordinatorMessage>,
    inbox: mpsc::Sender<WorkerEvent>,
    stop: CancellationToken,
) where
    S: Stream<Item = WorkerMessage> + Unpin,
{
    let worker = registration.name;
    if outbound.send(registered(&worker)).await.is_err() {
        return;
    }
    let joined = WorkerEvent::Joined {
        worker: worker.clone(),
        capacity: registration.capacity.max(1),
        sender: outbound.clone(),
    };
    if inbox.send(joined).await.is_err() {
        return;
    }
    tracing::info!(worker = %worker, "worker joined");
    loop {
        let message = tokio::select! {
            message = inbound.next() => message,
            () = stop.cancelled() => {
                // Best effort: a full queue means the worker is not reading anyway.
                let _ = outbound.try_send(CoordinatorMessage {
                    body: Some(v1::coordinator_message::Body::Drain(v1::Drain {
                        reason: "the coordinator is stopping".to_owned(),
                    })),
                });
                break;
            }
        };
        let Some(message) = message else { break };
        let Some(body) = message.body else { continue };
        let event = WorkerEvent::Message {
            worker: worker.clone(),
            message: body,
        };
        if inbox.send(event).await.is_err() {
            break;
        }
    }
    tracing::info!(worker = %worker, "worker left");
    let _ = inbox.send(WorkerEvent::Gone { worker }).await;
}

/// `WorkerService` for remote workers: admits, then relays.
struct Service {
    admission: Admission,
    inbox: mpsc::Sender<WorkerEvent>,
    stop: CancellationToken,
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
        let registration = match self.admission.admit(&mut inbound).await {
            Ok(registration) => registration,
            Err(status) => {
                tracing::warn!(peer = ?peer, code = ?status.code(), reason = status.message(), "refused a worker");
                return Err(status);
            }
        };
        let (outbound, to_worker) = mpsc::channel(TO_WORKER_CAPACITY);
        tokio::spawn(relay(
            registration,
            Box::pin(inbound),
            outbound,
            self.inbox.clone(),
            self.stop.clone(),
        ));
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

/// Serves `WorkerService` on `listener` until `stop` is cancelled.
///
/// # Errors
/// The transport failed.
pub async fn serve(
    listener: TcpListener,
    admission: Admission,
    inbox: mpsc::Sender<WorkerEvent>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let service = Service {
        admission,
        inbox,
        stop: stop.clone(),
    };
    tonic::transport::Server::builder()
        .add_service(WorkerServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
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
