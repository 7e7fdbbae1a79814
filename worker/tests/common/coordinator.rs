//! A minimal fake coordinator: a real tonic `WorkerService` server on loopback (optionally
//! with TLS and a required client certificate) whose `Join` admits a Hello with the right
//! token and answers Registered, or answers NotLeader, and hands each admitted stream to the
//! test as a [`Session`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyperloop_proto::PROTOCOL_VERSION;
use hyperloop_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use hyperloop_proto::v1::{
    self, CoordinatorMessage, WorkerMessage, coordinator_message, worker_message,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Bounds every wait on the fake.
pub const WAIT: Duration = Duration::from_secs(15);

pub const TOKEN: &str = "s3cret-join-token";

/// How the fake answers a Hello.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Registered (heartbeat every 100 ms) for the right token; UNAUTHENTICATED otherwise.
    Admit,
    /// As Admit, with this heartbeat interval.
    AdmitEvery(Duration),
    /// NotLeader with this leader address, then the end of the stream.
    NotLeader(String),
}

/// PEM server identity and, for mutual TLS, the CA that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

pub struct FakeCoordinator {
    pub addr: SocketAddr,
    pub url: String,
    sessions: mpsc::UnboundedReceiver<Session>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

/// One admitted `Join` stream.
pub struct Session {
    pub hello: v1::Hello,
    to_worker: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    from_worker: mpsc::Receiver<WorkerMessage>,
}

impl FakeCoordinator {
    pub async fn start(answer: Answer, tls: Option<ServerTls>) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), answer, tls).await
    }

    /// Listens on `addr` (port 0: any), e.g. the address of a fake that was stopped.
    pub async fn start_on(addr: SocketAddr, answer: Answer, tls: Option<ServerTls>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", addr.port());
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let service = Fake {
            answer,
            sessions: sessions_tx,
            stop: stop.clone(),
        };
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            let mut config = ServerTlsConfig::new().identity(Identity::from_pem(tls.cert, tls.key));
            if let Some(ca) = tls.client_ca {
                config = config.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config).unwrap();
        }
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            let _ = builder
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
        });
        Self {
            addr,
            url,
            sessions,
            stop,
            server,
        }
    }

    /// The next admitted stream.
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("the worker joins within the wait")
            .expect("server running")
    }

    /// Whether a stream was admitted within `wait`.
    pub async fn try_session(&mut self, wait: Duration) -> Option<Session> {
        tokio::time::timeout(wait, self.sessions.recv())
            .await
            .ok()
            .flatten()
    }

    /// Ends every stream (like a coordinator going away) and frees the port.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
            let _ = self.server.await;
        }
    }
}

impl Session {
    pub async fn tell(&self, body: coordinator_message::Body) {
        self.to_worker
            .send(Ok(CoordinatorMessage { body: Some(body) }))
            .await
            .expect("stream open");
    }

    /// The next message that is not a Heartbeat or Progress (None: the stream ended).
    pub async fn next(&mut self) -> Option<worker_message::Body> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.from_worker.recv())
                .await
                .expect("a message within the wait")?;
            match msg.body.expect("body set") {
                worker_message::Body::Heartbeat(_) | worker_message::Body::Progress(_) => {}
                other => return Some(other),
            }
        }
    }

    /// Messages other than Heartbeat/Progress that arrive within `wait`.
    pub async fn collect_for(&mut self, wait: Duration) -> Vec<worker_message::Body> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.from_worker.recv()).await {
            match msg.body.expect("body set") {
                worker_message::Body::Heartbeat(_) | worker_message::Body::Progress(_) => {}
                other => got.push(other),
            }
        }
        got
    }
}

struct Fake {
    answer: Answer,
    sessions: mpsc::UnboundedSender<Session>,
    stop: CancellationToken,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for Fake {
    type JoinStream = Outbound;

    async fn join(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let Some(worker_message::Body::Hello(hello)) =
            inbound.message().await?.and_then(|m| m.body)
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let (to_worker, rx) = mpsc::channel(64);
        let first = match &self.answer {
            Answer::NotLeader(leader) => {
                let answer = coordinator_message::Body::NotLeader(v1::NotLeader {
                    leader_address: leader.clone(),
                    leader_term: 1,
                });
                let once = tokio_stream::once(Ok(CoordinatorMessage { body: Some(answer) }));
                return Ok(Response::new(Box::pin(once)));
            }
            Answer::Admit | Answer::AdmitEvery(_) if hello.token != TOKEN => {
                return Err(Status::unauthenticated(
                    "invalid join token; use the token printed by `hyperloop-coordinator token`",
                ));
            }
            Answer::Admit | Answer::AdmitEvery(_) => {
                coordinator_message::Body::Registered(v1::Registered {
                    worker_id: format!("w-{}", hello.registration.as_ref().map_or("", |r| &r.name)),
                    heartbeat_interval: Some(
                        prost_types::Duration::try_from(match &self.answer {
                            Answer::AdmitEvery(every) => *every,
                            _ => Duration::from_millis(100),
                        })
                        .unwrap(),
                    ),
                    leader_term: 1,
                    protocol_version: PROTOCOL_VERSION,
                    coordinator_version: "fake".into(),
                })
            }
        };
        to_worker
            .send(Ok(CoordinatorMessage { body: Some(first) }))
            .await
            .expect("fresh channel");
        let (from_tx, from_worker) = mpsc::channel(1024);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(msg)) => {
                            if from_tx.send(msg).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                    () = stop.cancelled() => return,
                }
            }
        });
        let _ = self.sessions.send(Session {
            hello,
            to_worker,
            from_worker,
        });
        // Stopping the fake ends the stream, as a coordinator going away would.
        let (out_tx, out_rx) = mpsc::channel(64);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(Some(msg)) = stop.run_until_cancelled(rx.recv()).await {
                if out_tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
