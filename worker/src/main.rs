//! `hyperloop-worker`: joins a coordinator and runs agent steps for it.
//!
//! Exit codes: 0 clean shutdown (drained, or SIGINT/SIGTERM), 1 runtime failure (no
//! coordinator reachable, connection lost), 2 bad usage or configuration (including a join
//! token or protocol version the coordinator refuses).
//!
//! Joins the first reachable `--join` URL (plain http; TLS is not wired yet), bridges the
//! gRPC `Join` stream to a [`Link`] and runs [`hyperloop_worker::serve`] over it. There is
//! no reconnect with backoff yet: when the coordinator goes away the worker exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hyperloop_proto::v1::worker_service_client::WorkerServiceClient;
use hyperloop_worker::link::CoordinatorEnd;
use hyperloop_worker::options::parse_labels;
use hyperloop_worker::{Link, WorkerError, WorkerOptions};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Run hyperloop agent steps for a coordinator.
#[derive(Debug, Parser)]
#[command(name = "hyperloop-worker", version)]
struct Cli {
    /// Coordinator gRPC URL(s); the worker finds the leader among them.
    #[arg(long, env = "HYPERLOOP_JOIN", value_delimiter = ',', required = true)]
    join: Vec<String>,
    /// Join token (required when the coordinator listens beyond loopback).
    #[arg(long, env = "HYPERLOOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Concurrent steps.
    #[arg(long, env = "HYPERLOOP_CAPACITY", default_value_t = 1)]
    capacity: u32,
    /// Labels matched against step requirements, e.g. `os=linux,gpu=a100`.
    #[arg(long, env = "HYPERLOOP_LABELS", default_value = "")]
    labels: String,
    /// Where the repository mirror and step worktrees live.
    #[arg(long, env = "HYPERLOOP_WORK_DIR", default_value = ".hyperloop-worker")]
    work_dir: PathBuf,
    /// Worker name shown by `hyperloopctl get workers` (default: the host name).
    #[arg(long, env = "HYPERLOOP_NAME")]
    name: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match options(&cli) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("hyperloop-worker: {message}");
            return ExitCode::from(USAGE);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hyperloop-worker: cannot start the async runtime: {e}");
            return ExitCode::from(RUNTIME);
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(hyperloop_worker::signals::watch(
            shutdown.clone(),
            "stopping agents",
        ));
        join(&cli.join, options, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::from(OK),
        Err(failure) => {
            eprintln!("hyperloop-worker: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Exit codes (PRODUCT.md §11).
const OK: u8 = 0;
const RUNTIME: u8 = 1;
const USAGE: u8 = 2;

/// Why the worker stopped, and the exit code that says so.
struct Failure {
    code: u8,
    message: String,
}

/// Connects to the first reachable coordinator in `urls`, bridges the `Join` stream to a
/// [`Link`] and runs the worker protocol over it until drained, shut down or disconnected.
/// No reconnect yet: a lost coordinator ends the process (a supervisor restarts it).
async fn join(
    urls: &[String],
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let mut client = None;
    let mut errors = Vec::new();
    for url in urls {
        let url = url.trim();
        match WorkerServiceClient::connect(url.to_owned()).await {
            Ok(c) => {
                tracing::info!(coordinator = url, "connected");
                client = Some(c);
                break;
            }
            Err(e) => errors.push(format!("{url}: {}", error_chain(&e))),
        }
    }
    let Some(mut client) = client else {
        return Err(Failure {
            code: RUNTIME,
            message: format!(
                "cannot reach a coordinator ({}); check --join and that `hyperloop-coordinator \
                 run` is listening there",
                errors.join("; ")
            ),
        });
    };

    let (link, end) = Link::pair();
    let CoordinatorEnd {
        outbound: to_worker,
        inbound: from_worker,
    } = end;
    let worker = tokio::spawn(hyperloop_worker::serve(options, link, shutdown.clone()));
    // The request stream carries what `serve` sends (Hello first); the coordinator reads
    // the Hello before it answers, so a refusal arrives here as the call's status.
    let response = tokio::select! {
        response = client.join(ReceiverStream::new(from_worker)) => response,
        () = shutdown.cancelled() => {
            drop(to_worker);
            let _ = worker.await;
            return Ok(());
        }
    };
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            worker.abort();
            let code = match status.code() {
                Code::Unauthenticated | Code::FailedPrecondition | Code::InvalidArgument => USAGE,
                _ => RUNTIME,
            };
            return Err(Failure {
                code,
                message: format!(
                    "the coordinator refused to let this worker join: {}",
                    status.message()
                ),
            });
        }
    };
    let bridge = tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(message)) => {
                    if to_worker.send(message).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(code = ?status.code(), reason = status.message(), "the coordinator stream failed");
                    break;
                }
            }
        }
    });
    let result = worker.await;
    bridge.abort();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure {
            code: if matches!(e, WorkerError::InvalidOption { .. }) {
                USAGE
            } else {
                RUNTIME
            },
            message: e.to_string(),
        }),
        Err(e) => Err(Failure {
            code: RUNTIME,
            message: format!("the worker task failed: {e}"),
        }),
    }
}

/// A transport error with its causes (tonic's top-level message is just "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut last = text.clone();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and tonic repeat a cause's text one level up; print it once.
        if cause_text != last {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

/// Logs go to stderr; `RUST_LOG` overrides the default level.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn options(cli: &Cli) -> Result<WorkerOptions, String> {
    for url in &cli.join {
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            return Err(format!(
                "invalid --join URL {url:?}: write the coordinator's gRPC address as \
                 http://HOST:PORT or https://HOST:PORT"
            ));
        }
    }
    let name = match &cli.name {
        Some(name) => name.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| format!("cannot read the host name ({e}); pass --name"))?
            .to_string_lossy()
            .into_owned(),
    };
    let mut options = WorkerOptions::new(name, cli.work_dir.clone());
    options.capacity = cli.capacity;
    options.labels = parse_labels(&cli.labels).map_err(|e| e.to_string())?;
    options.token = cli.token.clone().unwrap_or_default();
    options.validate().map_err(|e| e.to_string())?;
    Ok(options)
}
