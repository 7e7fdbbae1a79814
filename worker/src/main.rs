//! `hyperloop-worker`: joins a coordinator and runs agent steps for it.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage or configuration. This
//! build has no gRPC transport yet, so after validating its flags it exits 2 saying so.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hyperloop_worker::WorkerOptions;
use hyperloop_worker::options::parse_labels;

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
    match options(&cli) {
        Ok(_) => {
            eprintln!(
                "hyperloop-worker: joining a remote coordinator ({}) is not available in this \
                 build yet. To run workers now, start `hyperloop-coordinator run` with \
                 `--local-workers N`, which runs the same worker in-process.",
                cli.join.join(",")
            );
            ExitCode::from(2)
        }
        Err(message) => {
            eprintln!("hyperloop-worker: {message}");
            ExitCode::from(2)
        }
    }
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
