//! `run` / `watch`: wires the embedded state store, the git spec source and lander, the
//! in-process workers and the reconcile loop, and runs it until it halts.
//!
//! Local workers are the same worker code remote ones run, attached through the same
//! dispatcher interface: a [`Link`] pair carrying the wire messages, admitted and relayed by
//! the same code as a remote worker's gRPC stream ([`crate::grpc`]), which is served on
//! `config.listen` for the life of the run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyperloop_shared::config::{Config, NotificationKind};
use hyperloop_shared::project::Project;
use std::sync::Arc;

use hyperloop_worker::{Link, WorkerOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::adapters::command_gate::CommandGates;
use crate::adapters::etcd_election::EtcdElection;
use crate::adapters::etcd_store::EtcdStore;
use crate::adapters::git::{GitLander, GitSpecSource};
use crate::adapters::git_store::GitStore;
use crate::adapters::github::{ApiStats, GitHubConfig, GitHubForge, GithubComments};
use crate::adapters::matrix;
use crate::adapters::webhook::Webhooks;
use crate::compose::{CacheDir, ProjectLoadError, compose_project};
use crate::control::{Command, LeaderView, Live};
use crate::discovery::{self, Gatekeeper};
use crate::dispatch::Registry;
use crate::forge_driver;
use crate::grpc::{self, Admission, Farewell, Route, relay};
use crate::lock::CoordinatorLock;
use crate::logs::LogHub;
use crate::metrics::{self, Metrics};
use crate::ports::election::Election;
use crate::ports::forge::Forge;
use crate::ports::lander::Lander;
use crate::ports::notifier::{Fanout, Leading, Notifier, journal};
use crate::ports::spec_source::SpecSource;
use crate::ports::state_store::StateStore;
use crate::reconcile::{Clock, Context, GitHub, Halt, Links, Mode, Reconciler, RunError};
use hyperloop_shared::config::Secret;

/// Messages from all workers to the loop. Large enough that a burst of progress lines from
/// every worker does not stall them; results are few and small.
const INBOX_CAPACITY: usize = 1024;
/// How long shutdown waits for local workers (and the worker endpoint) to stop their agents and clean up. Above the
/// worker's own kill ladder (a few seconds).
const WORKER_STOP_GRACE: Duration = Duration::from_secs(10);
/// Operator commands queued for the loop; a person types them, a handful is plenty.
const COMMANDS_CAPACITY: usize = 16;
/// GitHub requests and replies queued between the loop and the driver: one per waiting task
/// at most, so this bounds how many tasks talk to GitHub at once.
const FORGE_QUEUE: usize = 256;
/// How often a standby checks who leads (for NotLeader answers and `hyperloopctl status`).
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// The coordinator id and leader address of a single-host run.
const SINGLE_HOST: &str = "single-host";

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
    Composition(#[source] ProjectLoadError),
    /// Bad settings found only when starting (unreadable TLS files, no origin for etcd).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl StartError {
    /// Configuration problems are exit 2; everything else is a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StartError::NotARepository(_) | StartError::Composition(_) | StartError::Usage(_)
        )
    }
}

/// Runs the coordinator on the repository at `root` until it halts: alone with the
/// embedded store, or (with etcd endpoints) as one candidate among several coordinators,
/// leading while elected and standing by otherwise.
///
/// # Errors
/// Not a repository, another coordinator holds it, an invalid composition, an endpoint that
/// cannot be served, or a state store failure during the run.
pub async fn run(
    root: &Path,
    config: Config,
    mode: Mode,
    shutdown: CancellationToken,
) -> Result<Halt, StartError> {
    run_observed(root, config, mode, shutdown, None).await
}

/// Given the live view once the endpoint serves it (for the progress display).
pub type LiveObserver = Box<dyn FnOnce(watch::Receiver<Arc<Live>>) + Send>;

/// [`run`], handing the live view to `observer` as soon as it exists.
///
/// # Errors
/// As [`run`].
pub async fn run_observed(
    root: &Path,
    config: Config,
    mode: Mode,
    shutdown: CancellationToken,
    observer: Option<LiveObserver>,
) -> Result<Halt, StartError> {
    let root = std::fs::canonicalize(root)
        .map_err(|_| StartError::NotARepository(root.display().to_string()))?;
    let repo = git2::Repository::open(&root)
        .map_err(|_| StartError::NotARepository(root.display().to_string()))?;
    let git_dir = repo.path().to_path_buf();
    let repository = discovery::Repository::discover(&root)
        .ok_or_else(|| StartError::NotARepository(root.display().to_string()))?;
    let origin = repo
        .find_remote("origin")
        .ok()
        .and_then(|r| r.url().ok().map(str::to_owned));
    drop(repo);
    let compose = composer(root.clone(), &config);
    let project = compose().map_err(StartError::Composition)?;
    let has_command_gates = project
        .process
        .gates
        .values()
        .any(|g| matches!(g.kind, hyperloop_shared::pipeline::GateKind::Command { .. }));
    if has_command_gates && !config.etcd.endpoints.is_empty() && config.target.repo.is_none() {
        // Task branches live on origin there, not in this checkout the gate would run in.
        return Err(StartError::Usage(
            "command gates need GitHub mode (--repo OWNER/REPO) or a single host (no \
             --etcd): with several coordinators and local landing the task branches are not in \
             this checkout"
                .to_owned(),
        ));
    }
    let tls = crate::tls::server_tls(&config.tls).map_err(|e| StartError::Usage(e.to_string()))?;
    // Before asking for a token: a missing remote is the first thing to fix.
    if let (None, Some(repo), None) = (&config.target.clone_url, &config.target.repo, &origin) {
        return Err(no_origin_for_github(repo, &root));
    }
    let forge = github_forge(&config)?;
    let place = Place {
        git_dir,
        repository,
        root,
        origin,
        tls,
        observer,
        forge,
    };
    if config.etcd.endpoints.is_empty() {
        single_host(place, config, mode, compose, shutdown).await
    } else {
        distributed(place, config, mode, compose, shutdown).await
    }
}

/// This coordinator's id: `single-host` without etcd, else the address it campaigns with
/// (`advertise`, or its listen address).
pub fn coordinator_id(config: &Config) -> String {
    if config.etcd.endpoints.is_empty() {
        return SINGLE_HOST.to_owned();
    }
    config.advertise.clone().unwrap_or_else(|| {
        let scheme = if config.tls.cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", config.listen)
    })
}

/// Where this coordinator runs.
struct Place {
    root: PathBuf,
    git_dir: PathBuf,
    /// The repository as `hyperloopctl` identifies it.
    repository: discovery::Repository,
    /// The checkout's `origin` URL.
    origin: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    observer: Option<LiveObserver>,
    /// GitHub mode's forge (`--repo`): one per process, so its conditional-request cache and
    /// API call counts outlive leadership terms, and the notifiers can comment through it.
    forge: Option<Arc<GitHubForge>>,
}

/// Whose events the notifications tell: the repository's name, and where its journal
/// lives (the same for every host that shares it), so hosts sharing a journal share one
/// Matrix room and one cursor in it.
struct Teller {
    name: String,
    journal: String,
}

/// What the notifier is built with besides the configuration.
struct Sinks<'a> {
    metrics: Arc<Metrics>,
    teller: &'a Teller,
    /// Ends background senders with the endpoint.
    stop: &'a CancellationToken,
    tasks: &'a mut JoinSet<()>,
}

/// Where stored events go: the metrics, Matrix when `observability.matrix` is set, every
/// `notifications.webhooks` entry, and the task's pull request with
/// `notifications.type: github-comment` in GitHub mode.
fn notifier(
    config: &Config,
    place: &Place,
    sinks: Sinks<'_>,
) -> Result<Arc<dyn Notifier>, StartError> {
    let mut all: Vec<Box<dyn Notifier>> = vec![Box::new(sinks.metrics)];
    if let Some(matrix) = &config.observability.matrix {
        let teller = sinks.teller;
        let settings = matrix::Settings::resolve(matrix, &teller.name, &teller.journal)
            .map_err(StartError::Usage)?;
        let (notifier, sender) = matrix::start(
            settings,
            &place.root,
            &place.repository.git_dir,
            sinks.stop.clone(),
        )
        .map_err(|e| {
            StartError::Setup(format!(
                "cannot git-ignore {} through info/exclude: {e}",
                matrix::STATE_FILE
            ))
        })?;
        sinks.tasks.spawn(sender);
        all.push(Box::new(notifier));
    }
    let hooks = &config.notifications.webhooks;
    if !hooks.is_empty() {
        let repository = config
            .target
            .repo
            .clone()
            .unwrap_or_else(|| place.root.display().to_string());
        all.push(Box::new(Webhooks::start(hooks, &repository)));
    }
    if config.notifications.kind == NotificationKind::GithubComment {
        match &place.forge {
            Some(forge) => all.push(Box::new(GithubComments::start(
                forge.clone(),
                &config.branch_prefix,
            ))),
            None => tracing::warn!(
                "notifications.type is github-comment, but work lands locally (no --repo): \
                 there are no pull requests to comment on"
            ),
        }
    }
    Ok(Arc::new(Fanout(all)))
}

/// The gRPC endpoint (workers and hyperloopctl) for the life of the process.
struct Endpoint {
    route: watch::Sender<Route>,
    live: watch::Sender<Arc<Live>>,
    commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    logs: Arc<LogHub>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Where stored events go (metrics, Matrix, webhooks, GitHub comments); lives as long as
    /// the endpoint, so its senders outlast leadership terms and send what is queued when the
    /// endpoint stops.
    notifier: Arc<dyn Notifier>,
    /// Also takes the loop's timings.
    metrics: Arc<Metrics>,
    /// GitHub mode's API call counts and rate limit (see [`ApiStats::snapshot`]), for the
    /// metrics and the shutdown log line.
    github_stats: Option<Arc<ApiStats>>,
    /// The endpoint record `hyperloopctl` finds; removed when the endpoint goes.
    _published: Option<discovery::Published>,
}

impl Endpoint {
    /// Binds `config.listen` and serves the worker and admin services there; an address in
    /// use is a usage error (exit 2), except the default address on a single host, where
    /// another repository's coordinator may hold it: then any free loopback port is taken.
    /// Records the endpoint for `hyperloopctl` in the repository's git directory.
    async fn start<S: StateStore>(
        config: &Config,
        place: &Place,
        store: Arc<S>,
        coordinator_id: String,
        teller: &Teller,
    ) -> Result<Self, StartError> {
        let (route, route_rx) = watch::channel(Route::Following {
            leader: None,
            term: 0,
        });
        let (live, live_rx) = watch::channel(Arc::new(Live {
            coordinator_id,
            ..Live::default()
        }));
        let (commands_tx, commands) = mpsc::channel(COMMANDS_CAPACITY);
        let logs = Arc::new(LogHub::new());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let single_host = config.etcd.endpoints.is_empty();
        let listener = match grpc::bind(config.listen).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && config.listen_defaulted
                    && single_host =>
            {
                let any = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
                let listener = grpc::bind(any).await.map_err(|e| {
                    StartError::Usage(format!("cannot listen on any loopback port: {e}"))
                })?;
                tracing::info!(
                    "the default address {} is in use (perhaps by the coordinator of another \
                     repository), so this coordinator listens on {} instead; hyperloopctl finds \
                     it from inside the repository, and `listen:` or --listen fixes an address",
                    config.listen,
                    listener
                        .local_addr()
                        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
                );
                listener
            }
            Err(e) => {
                // Fatal even on a single host: a second coordinator left without an endpoint
                // would let `hyperloopctl` reach the first one's and steer the wrong repository.
                return Err(StartError::Usage(format!(
                    "cannot listen on {} ({e}); another process (perhaps the coordinator of \
                     another repository) uses it: pick another address with --listen (or \
                     `listen:` in .hyperloop.yaml; 127.0.0.1:0 takes any free port)",
                    config.listen
                )));
            }
            Ok(listener) => listener,
        };
        let bound = listener.local_addr().unwrap_or(config.listen);
        tracing::info!(listen = %bound, tls = place.tls.is_some(), "serving workers and hyperloopctl");
        let gatekeeper = Gatekeeper {
            serves: place.repository.clone(),
            shared_by_origin: !single_host,
        };
        let mut routes = tonic::service::Routes::new(grpc::worker_service(
            Admission::with_token(config.join_token.clone()),
            route_rx,
        ))
        .add_service(crate::admin::service(
            store,
            live_rx,
            Some(commands_tx),
            logs.clone(),
            Arc::new(config.clone()),
            gatekeeper,
        ));
        // Always kept (a few counters): scraped at /metrics, pushed by OpenTelemetry export
        // when that is set up (otherwise the global meter is a no-op), or both.
        let github_stats = place.forge.as_ref().map(|forge| forge.stats());
        let metrics = Arc::new(Metrics::new(github_stats.clone()));
        metrics.export(live.subscribe());
        if metrics::served(bound, config.observability.prometheus) {
            routes = metrics_route(routes, metrics.clone(), live.subscribe());
            tracing::info!(listen = %bound, "serving Prometheus metrics at /metrics");
        }
        let serving = grpc::serve(listener, place.tls.clone(), routes, stop.clone());
        tasks.spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %crate::tls::error_chain(&e), "the gRPC endpoint failed");
            }
        });
        let sinks = Sinks {
            metrics: metrics.clone(),
            teller,
            stop: &stop,
            tasks: &mut tasks,
        };
        let notifier = notifier(config, place, sinks)?;
        let url = local_url(bound, place.tls.is_some());
        let published = match discovery::publish(&place.repository.git_dir, &url) {
            Ok(published) => Some(published),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot record this coordinator's endpoint in the repository's git \
                     directory; hyperloopctl needs --server {url} here"
                );
                None
            }
        };
        Ok(Endpoint {
            route,
            live,
            commands: Arc::new(tokio::sync::Mutex::new(commands)),
            logs,
            stop,
            tasks,
            notifier,
            metrics,
            github_stats,
            _published: published,
        })
    }

    fn links(
        &self,
        deposed: CancellationToken,
        github: Option<GitHub>,
        gates: Option<CommandGates>,
    ) -> Links {
        Links {
            live: self.live.clone(),
            commands: self.commands.clone(),
            logs: self.logs.clone(),
            deposed,
            github,
            notifier: self.notifier.clone(),
            gates,
            metrics: Some(self.metrics.clone()),
        }
    }

    /// Marks this coordinator as leading (or not) in the live view.
    fn set_leader(&self, leader: Option<LeaderView>, leading: bool) {
        self.live.send_modify(|live| {
            *live = Arc::new(Live {
                leader,
                leading,
                ..(**live).clone()
            });
        });
    }

    async fn stop(mut self) {
        let _ = self.route.send(Route::Following {
            leader: None,
            term: 0,
        });
        self.notifier.drain(NOTIFY_GRACE).await;
        if let Some(stats) = &self.github_stats {
            let snapshot = stats.snapshot();
            tracing::info!(
                calls = snapshot.total_calls(),
                rate_limit_remaining = ?snapshot.rate_limit_remaining(),
                rate_limit_limit = ?snapshot.rate_limit_limit(),
                "GitHub API calls made by this coordinator"
            );
        }
        self.stop.cancel();
        let _ = tokio::time::timeout(WORKER_STOP_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// How long a stopping coordinator gives notification sinks to deliver what is queued.
const NOTIFY_GRACE: Duration = Duration::from_secs(3);

/// `GET /metrics` next to the gRPC services (plain HTTP/1.1 on the same address).
fn metrics_route(
    routes: tonic::service::Routes,
    metrics: Arc<Metrics>,
    live: watch::Receiver<Arc<Live>>,
) -> tonic::service::Routes {
    let handler = move || {
        let text = metrics.render(&live.borrow());
        std::future::ready((
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ))
    };
    tonic::service::Routes::from(
        routes
            .into_axum_router()
            .route("/metrics", axum::routing::get(handler)),
    )
}

/// The URL `hyperloopctl` on this host reaches the endpoint bound at `bound` by.
fn local_url(bound: SocketAddr, tls: bool) -> String {
    let ip = match bound.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
}

async fn single_host<C>(
    mut place: Place,
    config: Config,
    mode: Mode,
    compose: C,
    shutdown: CancellationToken,
) -> Result<Halt, StartError>
where
    C: Fn() -> Result<Project, ProjectLoadError>,
{
    let _lock = CoordinatorLock::acquire(&place.git_dir)?;
    let base = config.target.base_branch.clone();
    let store = GitStore::open(&place.root, config.dashboard.events_limit as usize)
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let teller = Teller {
        name: place
            .root
            .file_name()
            .map_or_else(|| "repo".to_owned(), |n| n.to_string_lossy().into_owned()),
        // The journal is in this checkout's git store.
        journal: format!("{}:{}", crate::lock::hostname(), place.root.display()),
    };
    let endpoint = Endpoint::start(
        &config,
        &place,
        Arc::new(store.clone()),
        SINGLE_HOST.to_owned(),
        &teller,
    )
    .await?;
    if let Some(observe) = place.observer.take() {
        observe(endpoint.live.subscribe());
    }
    endpoint.set_leader(
        Some(LeaderView {
            address: SINGLE_HOST.to_owned(),
            term: 1,
            since_ms: now_ms(),
        }),
        true,
    );
    let term = Term {
        number: 1,
        farewell: Farewell::Drain,
        deposed: CancellationToken::new(),
    };
    // With GitHub, branches go to the repository pull requests are opened in.
    let repo_url = match (&config.target.clone_url, &config.target.repo, &place.origin) {
        (Some(url), _, _) => url.clone(),
        (None, Some(_), Some(origin)) => origin.clone(),
        (None, Some(repo), None) => return Err(no_origin_for_github(repo, &place.root)),
        (None, None, _) => place.root.display().to_string(),
    };
    let ctx = Context {
        repo_url,
        root: place.root.clone(),
        config,
        mode,
        distributed: false,
        coordinator_id: SINGLE_HOST.to_owned(),
        term: term.number,
        clock: Clock::start(),
    };
    let specs = GitSpecSource::open(&place.root, &base, &ctx.config.target.specs_dir)
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let lander =
        GitLander::open(&place.root, &base).map_err(|e| StartError::Setup(e.to_string()))?;
    // Task branches are in this checkout (local workers push to it), so command gates can
    // be checked out here.
    let gates = ctx
        .config
        .allow_command_gates
        .then(|| CommandGates::new(&place.root));
    let github = github_mode(&ctx.config, &place).await?;
    let links = endpoint.links(term.deposed.clone(), github, gates);
    let halt = lead(
        ctx,
        store,
        specs,
        lander,
        compose,
        &place.git_dir,
        &endpoint.route,
        term,
        links,
        &shutdown,
    )
    .await;
    endpoint.stop().await;
    halt
}

/// Several coordinators over etcd: campaign; while elected, lead (fenced on the
/// leadership); when deposed, stand by and campaign again. A standby answers workers with
/// the leader's address and serves hyperloopctl's reads.
async fn distributed<C>(
    mut place: Place,
    config: Config,
    mode: Mode,
    compose: C,
    shutdown: CancellationToken,
) -> Result<Halt, StartError>
where
    C: Fn() -> Result<Project, ProjectLoadError> + Clone,
{
    let Some(origin) = place.origin.clone() else {
        return Err(StartError::Usage(format!(
            "{} has no `origin` remote; with --etcd, coordinators on different hosts share \
             the repository through it: add one with `git remote add origin URL`",
            place.root.display()
        )));
    };
    let prefix = match &config.etcd.prefix {
        Some(prefix) => prefix.clone(),
        None => hyperloop_shared::origin::etcd_prefix(&origin)
            .map_err(|e| StartError::Usage(e.to_string()))?,
    };
    let advertise = coordinator_id(&config);
    let repo_url = config
        .target
        .clone_url
        .clone()
        .unwrap_or_else(|| origin.clone());
    let endpoints = &config.etcd.endpoints;
    let journal = config.dashboard.events_limit as usize;
    let store = EtcdStore::new(endpoints, &prefix, journal);
    let election = EtcdElection::new(endpoints, &prefix).with_ttl(config.etcd.lease_ttl);
    let base = config.target.base_branch.clone();
    // Each host has its own checkout (named as it likes): the name comes from the origin.
    let teller = Teller {
        name: origin_name(&origin),
        journal: format!("etcd:{prefix}"),
    };
    let endpoint = Endpoint::start(
        &config,
        &place,
        Arc::new(store.clone()),
        advertise.clone(),
        &teller,
    )
    .await?;
    if let Some(observe) = place.observer.take() {
        observe(endpoint.live.subscribe());
    }
    tracing::info!(%prefix, %advertise, "standing by for leadership");
    let mut follower = Some(follow_leader(election.clone(), &endpoint));
    let mut backoff = Duration::from_millis(200);
    let halt = loop {
        let leadership = tokio::select! {
            () = shutdown.cancelled() => break Ok(Halt::Shutdown),
            elected = election.campaign(advertise.clone()) => elected,
        };
        let leadership = match leadership {
            Ok(leadership) => leadership,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "campaign failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(Halt::Shutdown),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => break Err(StartError::Setup(e.to_string())),
        };
        backoff = Duration::from_millis(200);
        stop_following(&mut follower).await;
        tracing::info!(term = leadership.term, "leading");
        endpoint.set_leader(
            Some(LeaderView {
                address: advertise.clone(),
                term: leadership.term,
                since_ms: now_ms(),
            }),
            true,
        );
        let fenced = match &leadership.fence {
            Some(fence) => store.with_fence(fence.clone()),
            None => store.clone(),
        };
        let term = Term {
            number: leadership.term,
            farewell: Farewell::NotLeader,
            deposed: leadership.lost.clone(),
        };
        let ctx = Context {
            repo_url: repo_url.clone(),
            root: place.root.clone(),
            config: config.clone(),
            mode,
            distributed: true,
            coordinator_id: advertise.clone(),
            term: term.number,
            clock: Clock::start(),
        };
        let parts = GitSpecSource::open(&place.root, &base, &config.target.specs_dir)
            .map_err(|e| e.to_string())
            .and_then(|specs| {
                GitLander::open_shared(&place.root, &base)
                    .map(|lander| (specs, lander))
                    .map_err(|e| e.to_string())
            });
        let (specs, lander) = match parts {
            Ok(parts) => parts,
            Err(e) => {
                leadership.resign().await;
                break Err(StartError::Setup(e));
            }
        };
        let github = match github_mode(&config, &place).await {
            Ok(github) => github,
            Err(e) => {
                leadership.resign().await;
                break Err(e);
            }
        };
        let links = endpoint.links(term.deposed.clone(), github, None);
        let lost = leadership.lost.clone();
        let outcome = lead(
            ctx,
            fenced,
            specs,
            lander,
            compose.clone(),
            &place.git_dir,
            &endpoint.route,
            term,
            links,
            &shutdown,
        )
        .await;
        endpoint.set_leader(None, false);
        match outcome {
            Ok(Halt::Deposed) => {
                tracing::warn!("lost the leadership; standing by");
            }
            // Fenced out, or etcd struggling: let whoever can write lead.
            Err(StartError::Run(RunError::Store(e))) => {
                let why = if lost.is_cancelled() {
                    "leadership lost"
                } else {
                    "state store failing"
                };
                tracing::warn!(error = %e, why, "stepping down; standing by");
                leadership.resign().await;
            }
            other => {
                // Sent while still leading: once resigned, what is queued is the next
                // leader's to send.
                endpoint.notifier.drain(NOTIFY_GRACE).await;
                leadership.resign().await;
                break other;
            }
        }
        follower = Some(follow_leader(election.clone(), &endpoint));
    };
    stop_following(&mut follower).await;
    endpoint.stop().await;
    halt
}

/// GitHub mode's forge (`--repo`), nothing sent yet; `None` when work lands locally.
fn no_origin_for_github(repo: &str, root: &Path) -> StartError {
    StartError::Usage(format!(
        "GitHub mode (--repo {repo}) pushes task branches to the checkout's `origin`, and {} \
         has none: add it with `git remote add origin URL`",
        root.display()
    ))
}

fn github_forge(config: &Config) -> Result<Option<Arc<GitHubForge>>, StartError> {
    let Some(repo) = config.target.repo.as_deref() else {
        return Ok(None);
    };
    let token = ["GITHUB_TOKEN", "GH_TOKEN"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|t| !t.trim().is_empty()))
        .ok_or_else(|| {
            StartError::Usage(format!(
                "GitHub mode (--repo {repo}) needs a token: set GITHUB_TOKEN or GH_TOKEN to a \
                 token that may write pull requests, labels and comments"
            ))
        })?;
    let mut settings = GitHubConfig::new(repo, Secret::new(token));
    settings.api_url = config.github.api_url.clone();
    let forge = GitHubForge::new(settings).map_err(|e| StartError::Usage(e.to_string()))?;
    Ok(Some(Arc::new(forge)))
}

/// GitHub mode for one leadership term: the forge's access checked and its driver started;
/// `None` when work lands locally.
async fn github_mode(config: &Config, place: &Place) -> Result<Option<GitHub>, StartError> {
    let (Some(repo), Some(forge)) = (config.target.repo.clone(), place.forge.clone()) else {
        return Ok(None);
    };
    forge.check_access().await.map_err(|e| {
        if e.is_transient() {
            StartError::Setup(e.to_string())
        } else {
            StartError::Usage(e.to_string())
        }
    })?;
    let (requests, requests_rx) = mpsc::channel(FORGE_QUEUE);
    let (replies_tx, replies) = mpsc::channel(FORGE_QUEUE);
    let commands = config
        .allow_command_gates
        .then(|| CommandGates::new(&place.root));
    let gates = Arc::new(crate::adapters::forge_gates::ForgeGates::new(
        forge.clone(),
        commands,
    ));
    tokio::spawn(forge_driver::drive_with_gates(
        forge,
        gates,
        requests_rx,
        replies_tx,
    ));
    Ok(Some(GitHub::new(
        repo,
        config.github.api_url.as_deref(),
        requests,
        replies,
    )))
}

/// Stops the follower and waits for it: aborted mid-update, it must not overwrite the route
/// a new term is about to set.
async fn stop_following(follower: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = follower.take() {
        task.abort();
        let _ = task.await;
    }
}

/// While standing by, keeps the route (what joining workers hear) and the live view
/// pointing at the current leader.
fn follow_leader(election: EtcdElection, endpoint: &Endpoint) -> tokio::task::JoinHandle<()> {
    let route = endpoint.route.clone();
    let live = endpoint.live.clone();
    tokio::spawn(async move {
        loop {
            let leader = election.leader().await.ok().flatten();
            let view = leader.as_ref().map(|l| LeaderView {
                address: l.value.clone(),
                term: l.term,
                since_ms: 0,
            });
            let _ = route.send(Route::Following {
                leader: leader.as_ref().map(|l| l.value.clone()),
                term: leader.as_ref().map_or(0, |l| l.term),
            });
            live.send_if_modified(|current| {
                if current.leader == view && !current.leading {
                    return false;
                }
                *current = Arc::new(Live {
                    leader: view.clone(),
                    leading: false,
                    ..(**current).clone()
                });
                true
            });
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    })
}

/// The repository's name in its origin URL (`git@host:team/widgets.git` → `widgets`).
fn origin_name(origin: &str) -> String {
    let trimmed = origin.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() {
        "repo".to_owned()
    } else {
        name.to_owned()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    S: StateStore + Clone,
    P: SpecSource,
    L: Lander,
    C: Fn() -> Result<Project, ProjectLoadError>,
{
    // Before the loop stores anything of this term.
    links.notifier.lead(&Leading {
        journal: journal(store.clone()),
        deposed: term.deposed.clone(),
    });
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
        options.confinement.landlock = !ctx.config.agents_unconfined;
        options
            .confinement
            .writable
            .clone_from(&ctx.config.agent_writable);
        attach_local(&mut workers, options, leading.clone(), term_stop.clone());
    }
    drop(leading);
    let dispatcher = Registry::new(inbox, ctx.clock);
    let outcome = match Reconciler::new(ctx, store, specs, lander, compose, dispatcher, links).await
    {
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
fn composer(
    root: PathBuf,
    config: &Config,
) -> impl Fn() -> Result<Project, ProjectLoadError> + Clone + use<> {
    let overlay = config.overlay.clone();
    let base_ref = config.base_ref.clone();
    let allow_command_gates = config.allow_command_gates;
    let cache = CacheDir::from_env();
    move || {
        let (composition, _) = compose_project(&root, &overlay, base_ref.as_deref(), &cache)?;
        let project = Project::from_composition(&composition)?;
        // Checked on every composition: overlays an agent lands mid-run may add gates too.
        if !allow_command_gates {
            hyperloop_shared::gates::refuse_command_gates(&project.process)?;
        }
        Ok(project)
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_repository_name_comes_from_the_last_part_of_the_origin() {
        for (origin, name) in [
            ("git@github.com:team/widgets.git", "widgets"),
            ("https://github.com/team/widgets/", "widgets"),
            ("/srv/git/origin.git", "origin"),
            ("host:widgets", "widgets"),
        ] {
            assert_eq!(super::origin_name(origin), name, "{origin}");
        }
    }
}
