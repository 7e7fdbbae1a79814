//! `hyperloopctl`: the operator's CLI. Parses the command line and hands over to
//! `hyperloop_coordinator::ctl`.
//!
//! The whole PRODUCT.md §11 surface is accepted, so `--help` shows it and scripts get a
//! clear answer instead of "unrecognized subcommand": commands that need a running
//! coordinator's admin API exit 2 saying that this build does not serve it yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hyperloop_coordinator::cli::Exit;
use hyperloop_coordinator::ctl::{self, Command as Read, DEFAULT_EVENT_LIMIT, Format, Target};

/// Inspect hyperloop: tasks, specs, events and why work is waiting.
///
/// With --path DIR (the default: the current directory) it reads the repository's embedded
/// state directly; no coordinator needs to be running.
#[derive(Debug, Parser)]
#[command(name = "hyperloopctl", version, about, long_about)]
struct Cli {
    /// The repository whose embedded state to read (its root).
    #[arg(long, env = "HYPERLOOP_PATH", default_value = ".", global = true)]
    path: PathBuf,
    /// A running coordinator's admin endpoint (not served by this build yet).
    #[arg(long, env = "HYPERLOOP_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
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
    /// Follow a task's agent output (needs a running coordinator).
    Logs {
        task: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Clear the gate a task waits at (needs a running coordinator).
    Approve { task: String },
    /// Cancel a task (needs a running coordinator).
    Cancel { task: String },
    /// Stop giving a worker new steps (needs a running coordinator).
    Drain { worker: String },
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

fn dispatch(cli: Cli) -> Exit {
    let command = match cli.command {
        Command::Logs { .. } => return ctl::needs_server("`logs`"),
        Command::Approve { .. } => return ctl::needs_server("`approve`"),
        Command::Cancel { .. } => return ctl::needs_server("`cancel`"),
        Command::Drain { .. } => return ctl::needs_server("`drain`"),
        Command::Get {
            resource: Resource::Workers,
            ..
        }
        | Command::Describe {
            kind: Kind::Worker, ..
        } => return ctl::needs_server("the worker registry (`get workers`, `describe worker`)"),
        Command::Status => Read::Status,
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
                _ => None,
            };
            if let Some(problem) = misplaced {
                return Exit::usage(problem);
            }
            match resource {
                Resource::Specs => Read::GetSpecs,
                Resource::Tasks => Read::GetTasks { spec },
                Resource::Events | Resource::Workers => Read::GetEvents {
                    since,
                    limit: limit.unwrap_or(DEFAULT_EVENT_LIMIT),
                },
            }
        }
        Command::Describe {
            kind: Kind::Task,
            name,
        } => Read::DescribeTask(name),
        Command::Describe { name, .. } => Read::DescribeSpec(name),
    };
    if cli.server.is_some() {
        return ctl::needs_server("--server");
    }
    let target = Target {
        path: cli.path,
        config: cli.config,
    };
    ctl::run(&target, cli.output, &command)
}
