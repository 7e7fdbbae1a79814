//! `hyperloop-coordinator`: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hyperloop_coordinator::cli;
use hyperloop_coordinator::reconcile::Mode;
use hyperloop_shared::config::Overrides;

/// hyperloop keeps a repository's code in sync with its markdown specs using AI coding agents.
#[derive(Debug, Parser)]
#[command(name = "hyperloop-coordinator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scaffold .hyperloop.yaml, .hyperloop/agents/ and specs/ (idempotent, offline).
    Init(InitArgs),
    /// Reconcile the repository's specs with its code; halt when no gap remains.
    ///
    /// With --dry-run: print the resolved configuration, pipeline, composed agent templates
    /// and the specs that would be reconciled, and change nothing.
    Run(RunArgs),
    /// Like run, but never halt: keep reconciling as specs change.
    Watch(RunArgs),
    /// Print the resolved Agent and Process resources as multi-document YAML, exactly as
    /// `kubectl kustomize` would for the overlay (no kustomize needed).
    Compose(ComposeArgs),
}

#[derive(Debug, Args)]
struct RepoArgs {
    /// The repository to work on.
    #[arg(long, env = "HYPERLOOP_PATH", default_value = ".")]
    path: PathBuf,
    /// Configuration file (default: <path>/.hyperloop.yaml; missing means all defaults).
    #[arg(short = 'c', long = "config", env = "HYPERLOOP_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The repository to scaffold (its root).
    #[arg(long, env = "HYPERLOOP_PATH", default_value = ".")]
    path: PathBuf,
    /// The base agent definitions as a kustomize resource (default: hyperloop's own base,
    /// built in).
    #[arg(long, env = "HYPERLOOP_BASE_REF")]
    base_ref: Option<String>,
    /// A project overlay (a kustomize resource that includes a base); replaces --base-ref.
    #[arg(long, env = "HYPERLOOP_OVERLAY")]
    overlay: Option<String>,
}

#[derive(Debug, Args)]
struct ComposeArgs {
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Land work through pull requests on this GitHub repository ('' lands locally).
    #[arg(long = "repo", value_name = "OWNER/REPO")]
    repo_slug: Option<String>,
    /// Branch specs are read from and work lands on (default: main, or the checkout's
    /// branch when there is no main).
    #[arg(long, value_name = "NAME")]
    base_branch: Option<String>,
    /// Log lines as `console` (timestamp [level] event key=value) or flat `json` objects.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Show what would be done and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Never halt; keep reconciling as specs change.
    #[arg(long)]
    watch: bool,
    /// Maximum tasks worked on at once.
    #[arg(long)]
    max_workers: Option<u32>,
    /// Workers started inside the coordinator (default: max_workers; 0 = joined workers only).
    #[arg(long)]
    local_workers: Option<u32>,
    /// gRPC address for workers and hyperloopctl.
    #[arg(long)]
    listen: Option<String>,
    /// etcd endpoints; without them state is kept in the repository (embedded store).
    #[arg(long, value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Key prefix in etcd (default: derived from the repository's origin URL).
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// Token workers must present to join (required when listening beyond loopback).
    #[arg(long)]
    join_token: Option<String>,
    /// URL workers and other coordinators reach this one at (default: derived from --listen).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// PEM certificate chain the gRPC endpoint serves over TLS.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// PEM CA certificates that client certificates must chain to (mutual TLS).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<String>,
    /// Operator token that admin mutations (approve, cancel, retry, drain) and agent logs
    /// need; without one they are only served to loopback clients or over mutual TLS.
    #[arg(long, env = "HYPERLOOP_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Let `type: command` gates run their commands on this host. The process definition is
    /// written by whoever can commit to the repository, so without this flag a process with
    /// command gates is refused.
    #[arg(long)]
    allow_command_gates: bool,
    #[command(flatten)]
    confinement: hyperloop_worker::shim::ConfinementArgs,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            repo: self.repo_slug.clone(),
            base_branch: self.base_branch.clone(),
            log_format: self.log_format.clone(),
            max_workers: self.max_workers,
            local_workers: self.local_workers,
            listen: self.listen.clone(),
            etcd_endpoints: self.etcd.clone(),
            etcd_prefix: self.etcd_prefix.clone(),
            join_token: self.join_token.clone(),
            advertise: self.advertise.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            allow_command_gates: self.allow_command_gates,
            admin_token: self.admin_token.clone(),
            no_confine: self.confinement.no_confine,
            agent_writable: self.confinement.agent_writable.clone(),
            ..Overrides::default()
        }
    }
}

fn main() -> ExitCode {
    hyperloop_worker::shim::run_if_invoked();
    let cli = Cli::parse();
    let exit = match cli.command {
        Command::Compose(args) => cli::compose(
            &args.repo.path,
            args.repo.config.as_deref(),
            &Overrides::default(),
        ),
        Command::Init(args) => cli::init(
            &args.path,
            args.base_ref.as_deref(),
            args.overlay.as_deref(),
        ),
        Command::Run(args) | Command::Watch(args) if args.dry_run => cli::dry_run(
            &args.repo.path,
            args.repo.config.as_deref(),
            &args.overrides(),
        ),
        Command::Run(args) => {
            let mode = if args.watch { Mode::Watch } else { Mode::Run };
            cli::reconcile(
                &args.repo.path,
                args.repo.config.as_deref(),
                &args.overrides(),
                mode,
            )
        }
        Command::Watch(args) => cli::reconcile(
            &args.repo.path,
            args.repo.config.as_deref(),
            &args.overrides(),
            Mode::Watch,
        ),
    };
    exit.report()
}
