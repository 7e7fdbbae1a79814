//! End-to-end check of the generated WorkerService code: a tiny in-process coordinator on
//! 127.0.0.1:0 answers Hello with Registered and acknowledges results, over a real tonic
//! HTTP/2 connection.

use std::time::Duration;

use hyperloop_proto::convert::{parse_task_id, require};
use hyperloop_proto::v1::coordinator_message::Body as ToWorker;
use hyperloop_proto::v1::worker_message::Body as ToCoordinator;
use hyperloop_proto::v1::worker_service_client::WorkerServiceClient;
use hyperloop_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use hyperloop_proto::v1::{self, CoordinatorMessage, WorkerMessage};
use hyperloop_proto::{ConversionError, PROTOCOL_VERSION, check_protocol_version};
use hyperloop_shared::model::{Verdict, WorkerResult};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Messages in flight per direction; the test never has more than a handful outstanding.
const STREAM_BUFFER: usize = 8;
/// Upper bound for any single exchange, so a broken stream fails the test instead of hanging.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers every worker and acknowledges every valid result; refuses anything malformed
/// with the status its `ConversionError` maps to, which ends the stream.
struct EchoCoordinator;

impl EchoCoordinator {
    fn answer(msg: WorkerMessage) -> Result<Option<CoordinatorMessage>, ConversionError> {
        let body = match msg.body {
            Some(ToCoordinator::Hello(hello)) => {
                check_protocol_version("hello.protocol_version", hello.protocol_version)?;
                let registration = hello.registration.ok_or(ConversionError::MissingField {
                    field: "hello.registration".into(),
                })?;
                ToWorker::Registered(v1::Registered {
                    worker_id: format!("{}-1", registration.name),
                    heartbeat_interval: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                    leader_term: 1,
                    protocol_version: PROTOCOL_VERSION,
                    coordinator_version: "test".into(),
                })
            }
            Some(ToCoordinator::StepResult(result)) => {
                parse_task_id("step_result.task_id", &result.task_id)?;
                let _outcome: WorkerResult = require("step_result.result", result.result)?;
                ToWorker::ResultAck(v1::ResultAck {
                    attempt_id: result.attempt_id,
                })
            }
            Some(_) => return Ok(None),
            None => {
                return Err(ConversionError::MissingField {
                    field: "body".into(),
                });
            }
        };
        Ok(Some(CoordinatorMessage { body: Some(body) }))
    }
}

#[tonic::async_trait]
impl WorkerService for EchoCoordinator {
    type JoinStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn join(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let reply = match msg {
                    Ok(msg) => Self::answer(msg).map_err(Status::from),
                    Err(status) => Err(status),
                };
                match reply {
                    Ok(Some(out)) => {
                        if tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves [`EchoCoordinator`] on an ephemeral loopback port and returns a connected client.
async fn start() -> WorkerServiceClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(EchoCoordinator))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    WorkerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn hello(protocol_version: u32) -> WorkerMessage {
    WorkerMessage {
        body: Some(ToCoordinator::Hello(v1::Hello {
            protocol_version,
            registration: Some(v1::Registration {
                name: "builder-1".into(),
                instance_id: "b7c1".into(),
                capacity: 2,
                labels: [("arch".to_owned(), "x86_64".to_owned())].into(),
                version: "0.1.0".into(),
            }),
            token: "join-token".into(),
            attempts: vec![],
        })),
    }
}

/// Opens the stream; returns the sender for worker messages and the coordinator's replies.
async fn join(
    client: &mut WorkerServiceClient<tonic::transport::Channel>,
) -> (mpsc::Sender<WorkerMessage>, Streaming<CoordinatorMessage>) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let inbound = client
        .join(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

async fn next(inbound: &mut Streaming<CoordinatorMessage>) -> Result<ToWorker, Status> {
    let msg = tokio::time::timeout(EXCHANGE_TIMEOUT, inbound.message())
        .await
        .expect("coordinator answered in time")?
        .expect("stream still open");
    Ok(msg.body.expect("coordinator message has a body"))
}

#[tokio::test]
async fn a_worker_says_hello_and_is_registered_over_a_real_connection() {
    let mut client = start().await;
    let (tx, mut inbound) = join(&mut client).await;

    tx.send(hello(PROTOCOL_VERSION)).await.unwrap();
    let ToWorker::Registered(registered) = next(&mut inbound).await.unwrap() else {
        panic!("expected Registered");
    };
    assert_eq!(registered.worker_id, "builder-1-1");
    assert_eq!(registered.protocol_version, PROTOCOL_VERSION);
    assert_eq!(registered.leader_term, 1);

    let result = v1::StepResult {
        attempt_id: 41,
        task_id: "task-007".into(),
        step_path: "0".into(),
        result: Some(
            WorkerResult {
                verdict: Verdict::Pass,
                detail: "done".into(),
            }
            .into(),
        ),
        ..Default::default()
    };
    tx.send(WorkerMessage {
        body: Some(ToCoordinator::StepResult(result)),
    })
    .await
    .unwrap();
    let ToWorker::ResultAck(ack) = next(&mut inbound).await.unwrap() else {
        panic!("expected ResultAck");
    };
    assert_eq!(ack.attempt_id, 41);
}

#[tokio::test]
async fn a_worker_with_another_protocol_version_is_refused_clearly() {
    let mut client = start().await;
    let (tx, mut inbound) = join(&mut client).await;

    tx.send(hello(PROTOCOL_VERSION + 1)).await.unwrap();
    let status = next(&mut inbound).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("hello.protocol_version"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_result_without_a_verdict_is_invalid_argument_naming_the_field() {
    let mut client = start().await;
    let (tx, mut inbound) = join(&mut client).await;
    tx.send(hello(PROTOCOL_VERSION)).await.unwrap();
    next(&mut inbound).await.unwrap();

    let result = v1::StepResult {
        attempt_id: 1,
        task_id: "task-001".into(),
        result: Some(v1::WorkerResult::default()),
        ..Default::default()
    };
    tx.send(WorkerMessage {
        body: Some(ToCoordinator::StepResult(result)),
    })
    .await
    .unwrap();
    let status = next(&mut inbound).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("`step_result.result.verdict`"),
        "{}",
        status.message()
    );
}

/// The admin surface hyperloopctl depends on (PRODUCT §11): every RPC exists on the
/// generated client with its own request and response types. Only compiled, never run;
/// renaming or dropping an RPC fails this build.
async fn admin_surface(
    mut c: hyperloop_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> Result<(), Status> {
    let _: v1::GetStatusResponse = c.get_status(v1::GetStatusRequest {}).await?.into_inner();
    let _: v1::ListTasksResponse = c
        .list_tasks(v1::ListTasksRequest::default())
        .await?
        .into_inner();
    let _: v1::GetTaskResponse = c
        .get_task(v1::GetTaskRequest::default())
        .await?
        .into_inner();
    let _: v1::ListSpecsResponse = c.list_specs(v1::ListSpecsRequest {}).await?.into_inner();
    let _: v1::GetSpecResponse = c
        .get_spec(v1::GetSpecRequest::default())
        .await?
        .into_inner();
    let _: v1::ListWorkersResponse = c
        .list_workers(v1::ListWorkersRequest {})
        .await?
        .into_inner();
    let _: v1::GetWorkerResponse = c
        .get_worker(v1::GetWorkerRequest::default())
        .await?
        .into_inner();
    let _: v1::ListEventsResponse = c
        .list_events(v1::ListEventsRequest::default())
        .await?
        .into_inner();
    let mut events = c
        .watch_events(v1::WatchEventsRequest::default())
        .await?
        .into_inner();
    let _: Option<v1::WatchEventsResponse> = events.message().await?;
    let mut logs = c
        .stream_logs(v1::StreamLogsRequest::default())
        .await?
        .into_inner();
    let _: Option<v1::StreamLogsResponse> = logs.message().await?;
    let _: v1::ApproveTaskResponse = c
        .approve_task(v1::ApproveTaskRequest::default())
        .await?
        .into_inner();
    let _: v1::CancelTaskResponse = c
        .cancel_task(v1::CancelTaskRequest::default())
        .await?
        .into_inner();
    let _: v1::DrainWorkerResponse = c
        .drain_worker(v1::DrainWorkerRequest::default())
        .await?
        .into_inner();
    Ok(())
}

#[test]
fn the_admin_api_offers_every_operator_command() {
    // Referencing the function is enough: the check is that it type-checks.
    let _ = admin_surface;
}
