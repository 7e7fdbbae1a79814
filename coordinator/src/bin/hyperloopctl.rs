//! `hyperloopctl`: the operator's CLI. Parses the command line and hands over to
//! `hyperloop_coordinator::ctl`.
//!
//! Inside a repository whose coordinator is running (it records its address in the git
//! directory) and with `--server URL`, every command goes to a coordinator's admin API;
//! otherwise the read-only ones read the embedded state of `--path` and the live ones
//! (workers, logs, approve, cancel, drain) exit 2 saying a coordinator is needed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hyperloop_coordinator::cli::Exit;
use hyperloop_coordinator::ctl::remote::{self, Remote};
use hyperloop_coordinator::ctl::{self, Command as Read, DEFAULT_EVENT_LIMIT, Format, Target};
use hyperloop_coordinator::discovery;
use hyperloop_coordinator::tls::ClientTls;

/// Inspect hyperloop: tasks, specs, events and why work is waiting.
///
/// Inside a repository (--path, default: the current directory) it asks the coordinator
/// running for that repository, found without configuration; with none running it reads the
/// repository's embedded state directly. --server URL asks the coordinator at that address.
/// A coordinator also shows workers and logs and takes approve, cancel and drain, and it
/// refuses a hyperloopctl that stands in a different repository.
#[derive(Debug, Parser)]
#[command(name = "hyperloopctl", version, about, long_about)]
struct Cli {
    /// The repository to inspect: its running coordinator, else its embedded state.
    #[arg(long, env = "HYPERLOOP_PATH", default_value = ".", global = true)]
    path: PathBuf,
    /// A coordinator's gRPC address (http(s)://HOST:PORT), instead of the one running for
    /// --path; any coordinator answers reads, the leader answers the rest.
    #[arg(long, env = "HYPERLOOP_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
    /// CA certificate (PEM) that signed the coordinator's certificate (https).
    #[arg(long, env = "HYPERLOOP_TLS_CA", value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a coordinator that requires mutual TLS.
    #[arg(long, env = "HYPERLOOP_TLS_CERT", value_name = "FILE", global = true)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "HYPERLOOP_TLS_KEY", value_name = "FILE", global = true)]
    tls_key: Option<PathBuf>,
    /// Operator token: what approve, cancel, retry, drain and logs need on a coordinator that
    /// listens beyond loopback (its HYPERLOOP_ADMIN_TOKEN).
    #[arg(
        long,
        env = "HYPERLOOP_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    token: Option<String>,
    /// Configuration file (default: <path>/.hyperloop.yaml): its overlay and max_workers
    /// explain why tasks wait.
    #[arg(short = 'c', long = "config", env = "HYPERLOOP_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value_t,
        env = "HYPERLOOP_OUTPUT",
        global = true
    )]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Task counts, what runs and what waits (and why), assignments, the last cycle and
    /// the newest events.
    Status,
    /// List resources.
    Get {
        resource: Resource,
        /// `get tasks`: only the tasks of this spec.
        #[arg(long, value_name = "PATH")]
        spec: Option<String>,
        /// `get events`: only events after this sequence number, oldest first (page on with
        /// the last SEQ printed).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// `get events`: at most this many (without --since, the newest).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one resource in detail.
    Describe { kind: Kind, name: String },
    /// A task's agent output (needs --server).
    Logs {
        task: String,
        /// Keep following until the running (or next) step ends; exits 1 if the coordinator goes
        /// away first.
        #[arg(short, long)]
        follow: bool,
    },
    /// Clear the gate a task waits at (needs --server).
    Approve {
        task: String,
        /// Only if the task waits at this gate.
        #[arg(long)]
        gate: Option<String>,
        /// Recorded as a human review.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Cancel a task (needs --server).
    Cancel {
        task: String,
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
    },
    /// Let a worker finish its steps, give it no new ones (needs --server).
    Drain { worker: String },
    /// Reconcile a spec again that was given up after max_spec_failures (needs --server).
    Retry {
        kind: RetryKind,
        /// The spec's repository-relative path, e.g. specs/auth.md.
        #[arg(value_name = "PATH")]
        spec: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RetryKind {
    Spec,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Resource {
    #[value(alias = "spec")]
    Specs,
    #[value(alias = "task")]
    Tasks,
    #[value(alias = "worker")]
    Workers,
    #[value(alias = "event")]
    Events,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Task,
    Spec,
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch(cli).report()
}

/// A command that needs a coordinator (named for the error with `--path`), or a read.
enum Plan {
    Live(&'static str, Remote),
    Read(Read),
}

fn dispatch(cli: Cli) -> Exit {
    let plan = match cli.command {
        Command::Logs { task, follow } => Plan::Live("`logs`", Remote::Logs { task, follow }),
        Command::Approve {
            task,
            gate,
            comment,
        } => Plan::Live(
            "`approve`",
            Remote::Approve {
                task,
                gate,
                comment,
            },
        ),
        Command::Cancel { task, reason } => Plan::Live("`cancel`", Remote::Cancel { task, reason }),
        Command::Drain { worker } => Plan::Live("`drain`", Remote::Drain(worker)),
        Command::Retry {
            kind: RetryKind::Spec,
            spec,
        } => Plan::Live("`retry spec`", Remote::RetrySpec(spec)),
        Command::Describe {
            kind: Kind::Worker,
            name,
        } => Plan::Live("`describe worker`", Remote::DescribeWorker(name)),
        Command::Status => Plan::Read(Read::Status),
        Command::Get {
            resource,
            spec,
            since,
            limit,
        } => {
            let misplaced = match resource {
                Resource::Tasks if since.is_some() || limit.is_some() => {
                    Some("--since and --limit apply to `get events`")
                }
                Resource::Events if spec.is_some() => Some("--spec applies to `get tasks`"),
                Resource::Specs if spec.is_some() || since.is_some() || limit.is_some() => {
                    Some("`get specs` takes no filters")
                }
                Resource::Workers if spec.is_some() || since.is_some() || limit.is_some() => {
                    Some("`get workers` takes no filters")
                }
                _ => None,
            };
            if let Some(problem) = misplaced {
                return Exit::usage(problem);
            }
            match resource {
                Resource::Specs => Plan::Read(Read::GetSpecs),
                Resource::Tasks => Plan::Read(Read::GetTasks { spec }),
                Resource::Workers => Plan::Live("`get workers`", Remote::GetWorkers),
                Resource::Events => Plan::Read(Read::GetEvents {
                    since,
                    limit: limit.unwrap_or(DEFAULT_EVENT_LIMIT),
                }),
            }
        }
        Command::Describe {
            kind: Kind::Task,
            name,
        } => Plan::Read(Read::DescribeTask(name)),
        Command::Describe {
            kind: Kind::Spec,
            name,
        } => Plan::Read(Read::DescribeSpec(name)),
    };
    let tls = ClientTls {
        ca: cli.tls_ca,
        cert: cli.tls_cert,
        key: cli.tls_key,
    };
    // Without --server, the coordinator running for the repository hyperloopctl stands in.
    let server = cli
        .server
        .clone()
        .or_else(|| discovery::find(&cli.path).map(|record| record.url));
    let repository = discovery::Repository::discover(&cli.path);
    let token = cli.token.as_deref();
    match (plan, &server) {
        (Plan::Live(_, command), Some(server)) => {
            remote::run(server, &tls, token, repository, cli.output, command)
        }
        (Plan::Live(what, _), None) => ctl::needs_server(what),
        (Plan::Read(command), Some(server)) => remote::run(
            server,
            &tls,
            token,
            repository,
            cli.output,
            Remote::Read(command),
        ),
        (Plan::Read(command), None) => {
            let target = Target {
                path: cli.path,
                config: cli.config,
            };
            ctl::run(&target, cli.output, &command)
        }
    }
}
