//! `hyperloop-worker`: joins a coordinator and runs agent steps for it.
//!
//! Exit codes: 0 clean shutdown (drained, or SIGINT/SIGTERM), 1 runtime failure (no
//! coordinator registered this worker within `--connect-timeout`), 2 bad usage or
//! configuration (including a join token or protocol version the coordinator refuses).
//!
//! Finds the leader among the `--join` URLs (`http://`, or `https://` with `--tls-ca` and,
//! for mutual TLS, `--tls-cert`/`--tls-key`), bridges each gRPC `Join` stream to a [`Link`]
//! and runs [`hyperloop_worker::serve_links`] over them. When a stream ends the running steps
//! keep running while the worker reconnects with backoff, following NotLeader redirects; the
//! next Hello lists the held attempts and unacknowledged results are resent (see `join`).

mod join;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hyperloop_shared::config::parse_duration;
use hyperloop_worker::options::parse_labels;
use hyperloop_worker::{WorkerError, WorkerOptions};
use join::{Failure, JoinConfig, RUNTIME, USAGE};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Run hyperloop agent steps for a coordinator.
#[derive(Debug, Parser)]
#[command(name = "hyperloop-worker", version)]
struct Cli {
    /// Coordinator gRPC URL(s); the worker finds the leader among them and follows it.
    #[arg(long, env = "HYPERLOOP_JOIN", value_delimiter = ',', required = true)]
    join: Vec<String>,
    /// Join token (required when the coordinator listens beyond loopback).
    #[arg(long, env = "HYPERLOOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Worker-host variables to hand to every agent, e.g. `NPM_TOKEN,GITHUB_TOKEN`. Unlike
    /// the repository's `env_passthrough`, this may pass hyperloop's own secrets.
    #[arg(long, env = "HYPERLOOP_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
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
    /// Give up (exit 1) if no coordinator registers the worker within this time at startup,
    /// e.g. `60s`, `5m`; `0` retries forever. Once registered, the worker always reconnects.
    #[arg(long, env = "HYPERLOOP_CONNECT_TIMEOUT", default_value = "60s")]
    connect_timeout: String,
    /// CA certificate(s) (PEM) to trust for `https://` join URLs; required for https.
    #[arg(long, env = "HYPERLOOP_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "HYPERLOOP_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "HYPERLOOP_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the URL's host).
    #[arg(long, env = "HYPERLOOP_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Log lines as `console` (timestamp [level] event key=value) or flat `json` objects.
    #[arg(long, env = "HYPERLOOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Console)]
    log_format: LogFormat,
    /// Export this worker's trace spans and metrics over OTLP to this collector, e.g.
    /// `http://localhost:4317`; each step's span joins the coordinator's trace. Wins over
    /// OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT, which also turn export on. Unset and no
    /// such variable: no export.
    #[arg(long)]
    otel_endpoint: Option<String>,
    /// OTLP transport: `grpc` or `http/protobuf` (alias `http`). Unset:
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf for an endpoint on port 4318 or ending
    /// in /v1/traces, else grpc.
    #[arg(long, value_parser = protocol)]
    otel_protocol: Option<hyperloop_worker::otel::Protocol>,
    /// The `service.name` of the exported telemetry. Unset: OTEL_SERVICE_NAME, else
    /// `service.name` in OTEL_RESOURCE_ATTRIBUTES, else hyperloop-worker.
    #[arg(long)]
    otel_service_name: Option<String>,
    #[command(flatten)]
    confinement: hyperloop_worker::shim::ConfinementArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Console,
    Json,
}

fn main() -> ExitCode {
    hyperloop_worker::shim::run_if_invoked();
    let cli = Cli::parse();
    let (options, config) = match options(&cli).and_then(|o| Ok((o, join_config(&cli)?))) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("hyperloop-worker: {message}");
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hyperloop-worker: cannot start the async runtime: {e}");
            return ExitCode::from(RUNTIME);
        }
    };
    // The flags play the part of the repository's `observability.otel` keys.
    let requested = hyperloop_shared::config::OtelConfig {
        endpoint: cli.otel_endpoint.clone().filter(|e| !e.is_empty()),
        service_name: cli.otel_service_name.clone(),
        protocol: cli.otel_protocol,
    };
    let export = match hyperloop_worker::otel::ExportSettings::resolve(
        (requested != hyperloop_shared::config::OtelConfig::default()).then_some(&requested),
        |name| std::env::var(name).ok(),
        "hyperloop-worker",
        vec![("hyperloop.worker.name", options.name.clone())],
    ) {
        Ok(export) => export,
        Err(e) => {
            eprintln!("hyperloop-worker: {e}");
            return ExitCode::from(USAGE);
        }
    };
    // The exporter's gRPC channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match init_tracing(cli.log_format, export.as_ref()) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("hyperloop-worker: {e}");
                return ExitCode::from(USAGE);
            }
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(hyperloop_worker::signals::watch(
            shutdown.clone(),
            "stopping agents",
        ));
        run(config, options, shutdown).await
    });
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("hyperloop-worker: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Runs the worker over reconnecting streams until it is drained or shut down (Ok), a
/// coordinator refuses it, or none registers it in time at startup.
async fn run(
    config: JoinConfig,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let (links_tx, links) = mpsc::channel(1);
    // `serve_links` stops once no further link can come; here only drain, shutdown or the
    // connector's verdict (below) end the worker, so the channel stays open to the end.
    let _links_open = links_tx.clone();
    let mut worker = tokio::spawn(hyperloop_worker::serve_links(
        options,
        links,
        shutdown.clone(),
    ));
    let mut connector = tokio::spawn(join::connect_loop(config, links_tx));
    let result = tokio::select! {
        result = &mut worker => result,
        ended = &mut connector => {
            if let Ok(Err(failure)) = ended {
                shutdown.cancel();
                let _ = worker.await;
                return Err(failure);
            }
            worker.await
        }
    };
    // The worker is done (drained or shut down); an open stream does not keep it alive.
    connector.abort();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure {
            code: if matches!(
                e,
                WorkerError::InvalidOption { .. } | WorkerError::Protocol(_)
            ) {
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

/// Logs go to stderr in the coordinator's line format; `RUST_LOG` overrides the default
/// level. With `export`, spans also go to an OpenTelemetry collector.
fn init_tracing(
    format: LogFormat,
    export: Option<&hyperloop_worker::otel::ExportSettings>,
) -> Result<Option<hyperloop_worker::otel::Telemetry>, hyperloop_worker::otel::ExportError> {
    use hyperloop_worker::logfmt::{Format, Style};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let style = match format {
        LogFormat::Json => Style::Json,
        // Colour only for a person at a terminal: never escape codes in a file or pipe.
        LogFormat::Console => Style::Console {
            colour: std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        },
    };
    let logs = tracing_subscriber::fmt::layer()
        .event_format(Format(style))
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (telemetry, spans) = match export {
        Some(settings) => {
            let (telemetry, layer) = hyperloop_worker::otel::Telemetry::start(settings)?;
            (Some(telemetry), Some(layer))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(telemetry)
}

fn protocol(given: &str) -> Result<hyperloop_worker::otel::Protocol, String> {
    match given {
        "grpc" => Ok(hyperloop_worker::otel::Protocol::Grpc),
        "http/protobuf" | "http" => Ok(hyperloop_worker::otel::Protocol::HttpProtobuf),
        _ => Err("write grpc or http/protobuf".to_owned()),
    }
}

fn options(cli: &Cli) -> Result<WorkerOptions, String> {
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
    options.pass_env.clone_from(&cli.pass_env);
    options.confinement.landlock = !cli.confinement.no_confine;
    options
        .confinement
        .writable
        .clone_from(&cli.confinement.agent_writable);
    options.validate().map_err(|e| e.to_string())?;
    Ok(options)
}

fn join_config(cli: &Cli) -> Result<JoinConfig, String> {
    let urls: Vec<String> = cli
        .join
        .iter()
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .collect();
    for url in &urls {
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            return Err(format!(
                "invalid --join URL {url:?}: write the coordinator's gRPC address as \
                 http://HOST:PORT or https://HOST:PORT"
            ));
        }
    }
    let connect_timeout = parse_duration(&cli.connect_timeout).ok_or_else(|| {
        format!(
            "invalid --connect-timeout {:?}: write e.g. 60s, 5m or 0 (wait forever)",
            cli.connect_timeout
        )
    })?;
    let tls = tls_config(cli)?;
    if tls.is_some() && !urls.iter().any(|url| url.starts_with("https://")) {
        return Err(
            "TLS flags (--tls-*) are set but no --join URL is https://; write https://HOST:PORT"
                .to_owned(),
        );
    }
    // Builds each endpoint once so a missing --tls-ca or a malformed PEM is a usage error now.
    for url in &urls {
        join::endpoint(url, tls.as_ref())?;
    }
    Ok(JoinConfig {
        urls,
        tls,
        connect_timeout: (!connect_timeout.is_zero()).then_some(connect_timeout),
    })
}

fn tls_config(cli: &Cli) -> Result<Option<ClientTlsConfig>, String> {
    let identity = match (&cli.tls_cert, &cli.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(Identity::from_pem(
            read_pem("--tls-cert", cert)?,
            read_pem("--tls-key", key)?,
        )),
        (Some(_), None) => return Err("--tls-cert needs --tls-key (its private key)".to_owned()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert (its certificate)".to_owned()),
    };
    let Some(ca) = &cli.tls_ca else {
        if identity.is_some() || cli.tls_server_name.is_some() {
            return Err(
                "--tls-cert, --tls-key and --tls-server-name need --tls-ca, the CA certificate \
                 (PEM) that signed the coordinator's certificate"
                    .to_owned(),
            );
        }
        return Ok(None);
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    if let Some(name) = &cli.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
}
