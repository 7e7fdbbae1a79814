//! `run` / `watch`: wires the embedded state store, the git spec source and lander, the
//! in-process workers and the reconcile loop, and runs it until it halts.
//!
//! Local workers are the same worker code remote ones run, attached through the same
//! dispatcher interface: a [`Link`] pair carrying the wire messages, admitted and relayed by
//! the same code as a remote worker's gRPC stream ([`crate::grpc`]), which is served on
//! `config.listen` for the life of the run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyperloop_shared::config::Config;
use hyperloop_shared::project::Project;
use std::sync::Arc;

use hyperloop_worker::{Link, WorkerOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::adapters::git::{GitLander, GitSpecSource};
use crate::adapters::git_store::GitStore;
use crate::compose::{CacheDir, compose_project};
use crate::control::Live;
use crate::grpc::{self, Admission, Farewell, Route, relay};
use crate::lock::CoordinatorLock;
use crate::logs::LogHub;
use crate::ports::lander::Lander;
use crate::ports::spec_source::SpecSource;
use crate::ports::state_store::StateStore;
use crate::reconcile::{Context, Halt, Links, Mode, Reconciler, RunError};

/// Messages from all workers to the loop. Large enough that a burst of progress lines from
/// every worker does not stall them; results are few and small.
const INBOX_CAPACITY: usize = 1024;
/// How long shutdown waits for local workers (and the worker endpoint) to stop their agents and clean up. Above the
/// worker's own kill ladder (a few seconds).
const WORKER_STOP_GRACE: Duration = Duration::from_secs(10);
/// Operator commands queued for the loop; a person types them, a handful is plenty.
const COMMANDS_CAPACITY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{0} is not a git repository; run `git init` there first, or pass the repository with --path"
    )]
    NotARepository(String),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{0}")]
    Setup(String),
    #[error("the composition is invalid: {0}")]
    Composition(String),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl StartError {
    /// Configuration problems are exit 2; everything else is a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StartError::NotARepository(_) | StartError::Composition(_)
        )
    }
}

/// Runs the coordinator on the repository at `root` until it halts.
///
/// # Errors
/// Not a repository, another coordinator holds it, an invalid composition, or a state store
/// failure during the run.
pub async fn run(
    root: &Path,
    config: Config,
    mode: Mode,
    shutdown: CancellationToken,
) -> Result<Halt, StartError> {
    let root = std::fs::canonicalize(root)
        .map_err(|_| StartError::NotARepository(root.display().to_string()))?;
    let repo = git2::Repository::open(&root)
        .map_err(|_| StartError::NotARepository(root.display().to_string()))?;
    let git_dir = repo.path().to_path_buf();
    drop(repo);
    let _lock = CoordinatorLock::acquire(&git_dir)?;

    let base = config.target.base_branch.clone();
    let store = GitStore::open(&root, config.dashboard.events_limit as usize)
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let compose = composer(root.clone(), &config);
    compose().map_err(StartError::Composition)?;

    let (route_tx, route) = watch::channel(Route::Following {
        leader: None,
        term: 0,
    });
    let endpoint_stop = CancellationToken::new();
    let mut endpoint = JoinSet::new();
    // Without local workers the endpoint is the only way work gets done, so failing to bind
    // is fatal; with them the run still works and only joining is lost (two single-host
    // coordinators of different repositories on one machine share the default port).
    match grpc::bind(config.listen).await {
        Ok(listener) => {
            tracing::info!(listen = %config.listen, "accepting workers");
            let routes = tonic::service::Routes::new(grpc::worker_service(
                Admission::with_token(config.join_token.clone()),
                route.clone(),
            ));
            let serving = grpc::serve(listener, None, routes, endpoint_stop.clone());
            endpoint.spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "the worker endpoint failed");
                }
            });
        }
        Err(e) if config.local_worker_count() == 0 => {
            return Err(StartError::Setup(format!(
                "cannot listen for workers on {} ({e}) and --local-workers is 0, so no worker \
                 could join; pick another address with --listen",
                config.listen
            )));
        }
        Err(e) => tracing::warn!(
            listen = %config.listen,
            error = %e,
            "cannot listen for workers; running with local workers only (set --listen to let \
             remote workers join)"
        ),
    }

    let (live, _) = watch::channel(Arc::new(Live {
        coordinator_id: "single-host".to_owned(),
        leading: true,
        ..Live::default()
    }));
    let (_commands_tx, commands) = mpsc::channel(COMMANDS_CAPACITY);
    let term = Term {
        number: 1,
        farewell: Farewell::Drain,
        deposed: CancellationToken::new(),
    };
    let ctx = Context {
        repo_url: root.display().to_string(),
        root: root.clone(),
        config,
        mode,
        distributed: false,
        coordinator_id: "single-host".to_owned(),
        term: term.number,
    };
    let links = Links {
        live,
        commands,
        logs: Arc::new(LogHub::new()),
        deposed: term.deposed.clone(),
    };
    let specs = GitSpecSource::open(&root, &base, &ctx.config.target.specs_dir)
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let lander = GitLander::open(&root, &base).map_err(|e| StartError::Setup(e.to_string()))?;
    let halt = lead(
        ctx, store, specs, lander, compose, &git_dir, &route_tx, term, links, &shutdown,
    )
    .await;
    let _ = route_tx.send(Route::Following {
        leader: None,
        term: 0,
    });
    endpoint_stop.cancel();
    let _ = tokio::time::timeout(WORKER_STOP_GRACE, async {
        while endpoint.join_next().await.is_some() {}
    })
    .await;
    halt
}

/// One leadership term.
struct Term {
    number: u64,
    farewell: Farewell,
    /// Cancelled when leadership is lost.
    deposed: CancellationToken,
}

/// Leads one term: routes joining workers to a fresh loop, starts the local workers, runs
/// the loop until it halts, and stops the term's worker streams.
#[allow(clippy::too_many_arguments)] // the parts one term is made of
async fn lead<S, P, L, C>(
    ctx: Context,
    store: S,
    specs: P,
    lander: L,
    compose: C,
    git_dir: &Path,
    route: &watch::Sender<Route>,
    term: Term,
    links: Links,
    shutdown: &CancellationToken,
) -> Result<Halt, StartError>
where
    S: StateStore,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, String>,
{
    let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
    let term_stop = CancellationToken::new();
    let leading = Route::Leading {
        inbox: inbox_tx,
        stop: term_stop.clone(),
        term: term.number,
        farewell: term.farewell,
    };
    let _ = route.send(leading.clone());
    let mut workers = JoinSet::new();
    for i in 0..ctx.config.local_worker_count() {
        let name = format!("local-{i}");
        let mut options = WorkerOptions::new(&name, git_dir.join("hyperloop/workers").join(&name));
        options.capacity = 1;
        attach_local(&mut workers, options, leading.clone(), term_stop.clone());
    }
    drop(leading);
    let outcome = match Reconciler::new(ctx, store, specs, lander, compose, inbox, links).await {
        Ok(reconciler) => reconciler
            .run(shutdown.clone())
            .await
            .map_err(StartError::from),
        Err(e) => Err(e.into()),
    };
    term_stop.cancel();
    let _ = tokio::time::timeout(WORKER_STOP_GRACE, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    drop(term);
    outcome
}
/// Recomposes the project from the checkout (after the process-improver landed overlays).
fn composer(root: PathBuf, config: &Config) -> impl Fn() -> Result<Project, String> + use<> {
    let overlay = config.overlay.clone();
    let base_ref = config.base_ref.clone();
    let cache = CacheDir::from_env();
    move || {
        let (composition, _) = compose_project(&root, &overlay, base_ref.as_deref(), &cache)
            .map_err(|e| e.to_string())?;
        Project::from_composition(&composition).map_err(|e| e.to_string())
    }
}

/// Starts an in-process worker and relays its side of the stream to the loop's inbox,
/// through the same admission and relay as a remote worker.
fn attach_local(
    set: &mut JoinSet<()>,
    options: WorkerOptions,
    route: Route,
    stop: CancellationToken,
) {
    let (link, end) = Link::pair();
    let name = options.name.clone();
    set.spawn(async move {
        if let Err(e) = hyperloop_worker::serve(options, link, stop).await {
            tracing::warn!(worker = %name, error = %e, "local worker stopped with an error");
        }
    });
    set.spawn(async move {
        let mut inbound = ReceiverStream::new(end.inbound);
        match Admission::open().admit(&mut inbound).await {
            Ok(hello) => relay(hello, inbound, end.outbound, route, true).await,
            Err(status) => {
                tracing::warn!(reason = status.message(), "local worker refused");
            }
        }
    });
}
