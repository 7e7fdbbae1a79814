//! `.hyperloop.yaml`: parsing, environment overrides, defaults and validation.
//!
//! Loading runs in two stages. `raw` gathers what the user gave (file, then `HYPERLOOP_*`
//! environment variables, then command-line [`Overrides`]) keyed by canonical path, rejecting
//! unknown keys. [`Config::load`] then types and range-checks every value into a [`Config`],
//! collecting every problem so one run reports all of them.
//!
//! Both layouts of the original tool are accepted: flat (`base_branch`, `max_workers`,
//! `runtime: local`) and nested (`target.base_branch`, `runtime.max_workers`, …). Setting one
//! key both ways with different values is an error.
//!
//! Environment variables: every key except the per-role ones can be set with `HYPERLOOP_` +
//! its shortest spelling (the flat one if there is one), uppercased, `.` → `_`:
//! `HYPERLOOP_MAX_WORKERS`, `HYPERLOOP_BASE_BRANCH`, `HYPERLOOP_MERGE_STRATEGY`,
//! `HYPERLOOP_AGENT_MODEL`. Lists are comma-separated (a command is space-separated) or a JSON
//! array; an empty variable counts as unset. [`reference()`] lists them all, from the same table
//! the loader uses. Precedence: defaults < file < environment < [`Overrides`].
//!
//! A few keys name features this version does not have: the web dashboard (`dashboard.enabled`,
//! `dashboard.listen`). They stay in the key table, so a typo near them still gets
//! a suggestion, but asking for the feature is refused ([`ConfigError::NotImplemented`]) rather
//! than silently doing nothing; defaults and `dashboard.enabled: false` load.
//!
//! This module does no I/O: callers pass the file text, the file's name for messages and the
//! environment as a map.

mod error;
mod keys;
mod parse;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use error::{ConfigError, Origin};
pub use parse::{format_duration, is_hyperloop_secret, parse_duration};

use parse::{Input, Invalid, Parsed};
use raw::RawConfig;

/// `max_workers` ceiling. A guard against typos like `60000`, not a tested capacity.
const MAX_WORKERS_LIMIT: u32 = 1024;
/// `poll_interval` bounds: polling faster than every second only burns GitHub's rate limit,
/// and internal work is event-driven anyway; slower than a day looks like a unit mistake.
const POLL_INTERVAL_MIN: Duration = Duration::from_secs(1);
const POLL_INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);
/// `agent.timeout` bounds: a step shorter than a second cannot start an agent; one longer than
/// a day is almost certainly a unit mistake (`30` meant as minutes).
const AGENT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Below a second a leader could not renew in time on a loaded host; above a minute a dead
/// leader stalls everything too long.
const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
const LEASE_TTL_MAX: Duration = Duration::from_secs(60);
const AGENT_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// The validated configuration. Field layout mirrors the nested file layout, so serializing it
/// (as `run --dry-run` does) yields a file that loads back to the same value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Project overlay: a local kustomization directory or a git URL.
    pub overlay: String,
    /// Base agent definitions; `None` = the ones built into hyperloop ([`crate::base`]).
    pub base_ref: Option<String>,
    pub target: TargetConfig,
    pub runtime: RuntimeConfig,
    /// Workers started inside the coordinator; `None` = `runtime.max_workers`.
    /// See [`Config::local_worker_count`].
    pub local_workers: Option<u32>,
    pub merge: MergeConfig,
    #[serde(serialize_with = "serialize_duration")]
    pub poll_interval: Duration,
    pub max_task_rounds: u32,
    /// Consecutive cycles without progress (no task finished, no gap closed) after which
    /// `run` stops: a guard against a loop that spins, never a limit on healthy work.
    pub max_cycles: u32,
    pub max_action_attempts: u32,
    pub max_rebase_attempts: u32,
    /// Failures (failed tasks, intakes leaving it uncovered) a spec version may cause before
    /// it is given up ([`crate::gaps`]).
    pub max_spec_failures: u32,
    /// Specs one PM session is asked about at most; more are split across sessions.
    pub max_specs_per_intake: u32,
    /// The largest spec text (bytes) put into a prompt; a bigger spec is given up with a
    /// finding, so one huge file cannot push an assignment past the transport's limit.
    pub max_spec_bytes: u32,
    /// Task branches are `<branch_prefix><task-id>`.
    pub branch_prefix: String,
    /// The coordinator's gRPC endpoint.
    pub listen: SocketAddr,
    /// `listen` was not set anywhere: a single-host coordinator may take another loopback
    /// port when the default one is in use (another repository's coordinator on this host).
    #[serde(skip)]
    pub listen_defaulted: bool,
    /// The URL others reach that endpoint at (the leader announces it to standbys, which
    /// send workers there); `None` = derived from `listen`.
    pub advertise: Option<String>,
    pub tls: TlsConfig,
    /// Name of the environment variable the join token is read from.
    pub join_token_env: String,
    /// The join token itself, from `--join-token` or the `join_token_env` variable. Never
    /// serialized: `--dry-run` output ends up in logs.
    #[serde(skip)]
    pub join_token: Option<Secret>,
    /// `--allow-command-gates` only: the repository's own config cannot let its gates run
    /// commands on the coordinator's host. Not serialized: it has no key to load back into.
    #[serde(skip)]
    pub allow_command_gates: bool,
    /// The operator token admin mutations need (`--admin-token` or `HYPERLOOP_ADMIN_TOKEN`).
    /// Never serialized, and never read from the repository's config.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// `--no-confine` only: in-process workers start agents without Landlock.
    #[serde(skip)]
    pub agents_unconfined: bool,
    /// `--agent-writable` only: further paths confined agents may write.
    #[serde(skip)]
    pub agent_writable: Vec<std::path::PathBuf>,
    pub etcd: EtcdConfig,
    pub github: GithubConfig,
    pub notifications: NotificationsConfig,
    pub observability: ObservabilityConfig,
    pub dashboard: DashboardConfig,
    pub agent: AgentConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    /// GitHub `owner/repo`; `None` = land work locally.
    pub repo: Option<String>,
    /// `target.repo` was not set at all (neither to a repository nor to `null`/`''`), so the
    /// coordinator infers it from a GitHub `origin` remote ([`crate::origin::github_repo`]).
    pub repo_from_origin: bool,
    pub base_branch: String,
    /// `target.base_branch` was not set, so a repository without `main` may use the branch
    /// its checkout is on instead (decided by the coordinator, which can read the checkout).
    pub base_branch_from_checkout: bool,
    /// Relative to the repository root; never contains `..`.
    pub specs_dir: String,
    /// Where workers fetch from and push to; `None` = the coordinator's checkout (single
    /// host) or its `origin` remote (etcd mode, where coordinators do not share a checkout).
    pub clone_url: Option<String>,
}

/// `repo` and `base_branch` are left out while they are still to be inferred and written
/// (`repo: null` = local) once decided, so the printed configuration loads back to the same
/// value.
impl Serialize for TargetConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut s = serializer.serialize_struct("TargetConfig", 4)?;
        if self.repo.is_some() || !self.repo_from_origin {
            s.serialize_field("repo", &self.repo)?;
        } else {
            s.skip_field("repo")?;
        }
        if self.base_branch_from_checkout {
            s.skip_field("base_branch")?;
        } else {
            s.serialize_field("base_branch", &self.base_branch)?;
        }
        s.serialize_field("specs_dir", &self.specs_dir)?;
        s.serialize_field("clone_url", &self.clone_url)?;
        s.end()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeConfig {
    pub default: RuntimeKind,
    pub max_workers: u32,
}

/// Where workers run. The original also had `ambient` (remote sessions); here agents always
/// run on hyperloop's own workers, so `local` is the only kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    Local,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeConfig {
    pub auto_merge: bool,
    pub strategy: MergeStrategy,
    pub delete_branch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStrategy {
    Squash,
    Merge,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EtcdConfig {
    /// Empty = no etcd: embedded store, single coordinator.
    pub endpoints: Vec<String>,
    /// `None` = derive from the repository's `origin` URL, so every clone agrees.
    pub prefix: Option<String>,
    /// Leader lease: a dead leader is replaced this long after its last keep-alive.
    #[serde(serialize_with = "serialize_duration")]
    pub lease_ttl: Duration,
}

/// GitHub mode's API endpoint (the token comes from `GITHUB_TOKEN` / `GH_TOKEN`).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GithubConfig {
    /// `None` = `https://api.github.com`.
    pub api_url: Option<String>,
}

/// TLS for the gRPC endpoint (rustls). Without `cert` the endpoint is plain TCP, which a
/// non-loopback `listen` only accepts with `allow_plaintext`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TlsConfig {
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Set = mutual TLS: clients must present a certificate chaining to these CAs.
    pub client_ca: Option<String>,
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationsConfig {
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    /// `notifications.webhooks.<name>`: endpoints every event is POSTed to.
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

/// One webhook sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookConfig {
    pub url: String,
    /// The environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// Its value, read at load time. Never serialized.
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// Also spawns, cycles and intake runs (otherwise only what a person acts on).
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    /// Written `null` in the file, as in the seeds.
    None,
    GithubComment,
}

impl Serialize for NotificationKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            NotificationKind::None => serializer.serialize_none(),
            NotificationKind::GithubComment => serializer.serialize_str("github-comment"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservabilityConfig {
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    /// `observability.prometheus`: serve `/metrics` on the coordinator's listen address.
    /// Unset = only when that address is loopback.
    pub prometheus: Option<bool>,
    /// `None` = Matrix notifications off (no `observability.matrix` keys given). When given,
    /// `homeserver` and a credential (`registration_token_env` or `token_env`) are required.
    pub matrix: Option<MatrixConfig>,
    /// `None` = no `observability.otel` keys given (the standard `OTEL_EXPORTER_OTLP_*`
    /// variables alone can still turn export on). Otherwise the coordinator exports traces and
    /// metrics over OTLP.
    pub otel: Option<OtelConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatrixConfig {
    pub homeserver: String,
    pub registration_token_env: Option<String>,
    pub bot_username: Option<String>,
    pub room_id: Option<String>,
    pub token_env: Option<String>,
    pub verbose: bool,
    pub invite_user: Option<String>,
}

/// The `observability.otel` keys as given: each one set here wins over the standard
/// `OTEL_*` variable for it; the exporter (`hyperloop_worker::otel`) fills in the rest from the
/// environment and defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct OtelConfig {
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    pub protocol: Option<OtelProtocol>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OtelProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `dashboard:`. There is no web dashboard yet: [`Config::load`] refuses `enabled: true` and a
/// non-default `listen` unless `enabled: false` is spelled out, so `enabled` is always false.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DashboardConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Events kept in the state's event journal (read by the state stores, not a dashboard).
    pub events_limit: u32,
}

/// `agent:`: defaults for every role, and per-role overrides. Use [`Config::agent_for`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    pub runtime: AgentRuntime,
    /// argv for `runtime: command`; empty otherwise.
    pub command: Vec<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    pub budget_usd: Option<f64>,
    pub env_passthrough: Vec<String>,
    /// `agent.git_identity.{name,email}`: what agents commit as on a worker whose git has no
    /// identity (fresh HOME, containers, CI). An identity git already has always wins.
    pub git_identity: crate::step::GitIdentity,
    /// Worker labels (`k=v`) every step requires unless its role says otherwise.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, RoleOverrides>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentRuntime {
    /// The Claude Code CLI.
    Claude,
    /// Any executable: prompt on stdin, context in environment variables.
    Command,
}

/// `agent.roles.<role>`: every field replaces the `agent` default when set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoleOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<AgentRuntime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Replaces (does not extend) `agent.env_passthrough`, so a role can also get fewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_passthrough: Option<Vec<String>>,
    /// Replaces `agent.labels`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The agent settings for one role, role overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAgent {
    pub role: String,
    pub program: AgentProgram,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub timeout: Duration,
    pub budget_usd: Option<f64>,
    pub env_passthrough: Vec<String>,
    /// Worker labels the step requires.
    pub labels: BTreeMap<String, String>,
}

/// What to execute for an agent step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentProgram {
    Claude,
    /// argv; non-empty in a loaded [`Config`].
    Command(Vec<String>),
}

/// Where the coordinator reads its operator token from (besides `--admin-token`).
pub const ADMIN_TOKEN_ENV: &str = "HYPERLOOP_ADMIN_TOKEN";

/// A secret string: `Debug` does not show it and it is never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Command-line values; `None` means "flag not given". They beat the file and the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--repo OWNER/REPO`
    pub repo: Option<String>,
    /// `--base-branch NAME`
    pub base_branch: Option<String>,
    /// `--max-workers N`
    pub max_workers: Option<u32>,
    /// `--local-workers N`
    pub local_workers: Option<u32>,
    /// `--listen ADDR`
    pub listen: Option<String>,
    /// `--etcd URL[,URL...]`
    pub etcd_endpoints: Option<Vec<String>>,
    /// `--etcd-prefix P`
    pub etcd_prefix: Option<String>,
    /// `--join-token TOKEN`
    pub join_token: Option<String>,
    /// `--advertise URL`
    pub advertise: Option<String>,
    /// `--tls-cert FILE`
    pub tls_cert: Option<String>,
    /// `--tls-key FILE`
    pub tls_key: Option<String>,
    /// `--tls-client-ca FILE`
    pub tls_client_ca: Option<String>,
    /// `--overlay REF`
    pub overlay: Option<String>,
    /// `--base-ref REF`
    pub base_ref: Option<String>,
    /// `--allow-command-gates`
    pub allow_command_gates: bool,
    /// `--admin-token TOKEN`
    pub admin_token: Option<String>,
    /// `--log-format console|json`
    pub log_format: Option<String>,
    /// `--no-confine`
    pub no_confine: bool,
    /// `--agent-writable PATH[:PATH...]`
    pub agent_writable: Vec<std::path::PathBuf>,
}

impl Default for Config {
    /// The defaults, in one place. Values follow the original tool's documentation.
    fn default() -> Self {
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Config {
            overlay: ".hyperloop/agents/".to_owned(),
            base_ref: None,
            target: TargetConfig {
                repo: None,
                repo_from_origin: true,
                base_branch_from_checkout: true,
                base_branch: "main".to_owned(),
                specs_dir: "specs".to_owned(),
                clone_url: None,
            },
            runtime: RuntimeConfig {
                default: RuntimeKind::Local,
                max_workers: 6,
            },
            local_workers: None,
            merge: MergeConfig {
                auto_merge: true,
                strategy: MergeStrategy::Squash,
                delete_branch: true,
            },
            poll_interval: Duration::from_secs(30),
            max_task_rounds: 50,
            max_cycles: 200,
            max_action_attempts: 3,
            max_rebase_attempts: 3,
            max_spec_failures: 3,
            max_specs_per_intake: 25,
            max_spec_bytes: 256 * 1024,
            branch_prefix: "hyperloop/".to_owned(),
            listen: loopback(7070),
            listen_defaulted: true,
            advertise: None,
            tls: TlsConfig::default(),
            join_token_env: "HYPERLOOP_JOIN_TOKEN".to_owned(),
            join_token: None,
            allow_command_gates: false,
            admin_token: None,
            agents_unconfined: false,
            agent_writable: Vec::new(),
            etcd: EtcdConfig {
                endpoints: Vec::new(),
                prefix: None,
                lease_ttl: Duration::from_secs(3),
            },
            github: GithubConfig::default(),
            notifications: NotificationsConfig {
                kind: NotificationKind::None,
                webhooks: BTreeMap::new(),
            },
            observability: ObservabilityConfig {
                log_format: LogFormat::Console,
                log_level: LogLevel::Info,
                prometheus: None,
                matrix: None,
                otel: None,
            },
            dashboard: DashboardConfig {
                // Nothing serves a dashboard yet; `true` is refused when loading.
                enabled: false,
                listen: loopback(8787),
                events_limit: 1000,
            },
            agent: AgentConfig {
                runtime: AgentRuntime::Claude,
                command: Vec::new(),
                model: None,
                max_turns: None,
                timeout: Duration::from_secs(30 * 60),
                budget_usd: None,
                env_passthrough: Vec::new(),
                git_identity: crate::step::GitIdentity::default(),
                labels: BTreeMap::new(),
                roles: BTreeMap::new(),
            },
        }
    }
}

impl Config {
    /// Builds the configuration from `.hyperloop.yaml` text (empty = all defaults), the
    /// environment and command-line overrides. Precedence: defaults < file < environment <
    /// overrides. `file` is only used in messages.
    ///
    /// # Errors
    /// Malformed YAML or a top level that is not a mapping is reported alone. Otherwise every
    /// problem found (unknown keys, wrong types, out-of-range values, conflicting layouts,
    /// missing required keys, bad `HYPERLOOP_*` values) is reported, as
    /// [`ConfigError::Several`] when there is more than one.
    pub fn load(
        text: &str,
        file: &str,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut raw = RawConfig::default();
        raw.read_file(text, file, &mut errors)?;
        raw.read_env(env);
        raw.read_overrides(overrides);

        let mut resolver = Resolver {
            raw: &raw,
            file,
            errors,
            read: Vec::new(),
        };
        let config = resolver.config(env, overrides);
        match ConfigError::collect(resolver.errors) {
            Some(error) => Err(error),
            None => Ok(config),
        }
    }

    /// The agent settings for `role`: `agent.roles.<role>` over the `agent` defaults.
    pub fn agent_for(&self, role: &str) -> ResolvedAgent {
        let agent = &self.agent;
        let role_overrides = agent.roles.get(role).cloned().unwrap_or_default();
        let command = role_overrides
            .command
            .unwrap_or_else(|| agent.command.clone());
        let program = match role_overrides.runtime.unwrap_or(agent.runtime) {
            AgentRuntime::Claude => AgentProgram::Claude,
            AgentRuntime::Command => AgentProgram::Command(command),
        };
        ResolvedAgent {
            role: role.to_owned(),
            program,
            model: role_overrides.model.or_else(|| agent.model.clone()),
            max_turns: role_overrides.max_turns.or(agent.max_turns),
            timeout: role_overrides.timeout.unwrap_or(agent.timeout),
            budget_usd: role_overrides.budget_usd.or(agent.budget_usd),
            env_passthrough: role_overrides
                .env_passthrough
                .unwrap_or_else(|| agent.env_passthrough.clone()),
            labels: role_overrides
                .labels
                .unwrap_or_else(|| agent.labels.clone()),
        }
    }

    /// How many workers the coordinator starts in-process: `local_workers`, else `max_workers`.
    pub fn local_worker_count(&self) -> u32 {
        self.local_workers.unwrap_or(self.runtime.max_workers)
    }
}

/// One row of the configuration reference, for `--help` and the README.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// Canonical (nested) dotted path; `*` is a role name.
    pub key: &'static str,
    /// Flat-layout spelling, if any.
    pub flat: Option<&'static str>,
    /// Environment variable, if the key has one (per-role keys do not).
    pub env: Option<String>,
    /// The default as it would be written in the file; `unset` when there is none.
    pub default: String,
    pub help: &'static str,
}

/// Every key with its environment variable, default and help, in table order.
pub fn reference() -> Vec<KeyDoc> {
    let mut config = Config::default();
    // The default as written; the help says when the checkout's branch replaces it.
    config.target.base_branch_from_checkout = false;
    let defaults = serde_json::to_value(config).unwrap_or_default();
    keys::KEYS
        .iter()
        .map(|key| {
            let value = key
                .path
                .split('.')
                .try_fold(&defaults, |v, segment| v.get(segment));
            let default = match value {
                None | Some(serde_json::Value::Null) if key.path.starts_with("agent.roles.") => {
                    "inherits from agent".to_owned()
                }
                None | Some(serde_json::Value::Null) => "unset".to_owned(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(items)) if items.is_empty() => "[]".to_owned(),
                Some(other) => other.to_string(),
            };
            KeyDoc {
                key: key.path,
                flat: key.flat,
                env: key.env_var(),
                default,
                help: key.help,
            }
        })
        .collect()
}

/// Just the environment variables: (variable, key it sets).
pub fn env_vars() -> Vec<(String, &'static str)> {
    keys::KEYS
        .iter()
        .filter_map(|k| k.env_var().map(|var| (var, k.path)))
        .collect()
}

fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

fn serialize_opt_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serializer.serialize_str(&format_duration(*d)),
        None => serializer.serialize_none(),
    }
}

/// Stage two: types every raw value, applying precedence, and collects every problem.
struct Resolver<'a> {
    raw: &'a RawConfig,
    file: &'a str,
    errors: Vec<ConfigError>,
    /// Every key looked up, so a test can check the resolver reads every key in the table.
    read: Vec<String>,
}

impl Resolver<'_> {
    /// The highest-precedence valid value for `key`, or `None` if nobody set it. Invalid
    /// values are reported even when a higher layer overrides them: the file is still wrong.
    fn get<T: PartialEq>(&mut self, key: &str, parse: impl Fn(&Input) -> Parsed<T>) -> Option<T> {
        self.read.push(key.to_owned());
        let raw = self.raw;
        let entries = raw.values.get(key)?;
        let mut parsed: Vec<(T, &Origin)> = Vec::new();
        for entry in entries {
            match parse(&entry.input) {
                Ok(value) => parsed.push((value, &entry.origin)),
                Err(invalid) => self.errors.push(reject(invalid, entry.origin.clone())),
            }
        }
        // The same setting spelled both ways in the file must agree.
        let in_file: Vec<&(T, &Origin)> = parsed
            .iter()
            .filter(|(_, o)| matches!(o, Origin::File { .. }))
            .collect();
        for pair in in_file.windows(2) {
            if let [
                (a, Origin::File { key: first, .. }),
                (b, Origin::File { key: second, .. }),
            ] = pair
                && a != b
            {
                self.errors.push(ConfigError::Conflict {
                    file: self.file.to_owned(),
                    first: first.clone(),
                    second: second.clone(),
                });
            }
        }
        parsed.pop().map(|(value, _)| value)
    }

    fn config(&mut self, env: &BTreeMap<String, String>, overrides: &Overrides) -> Config {
        use parse::*;
        let d = Config::default();
        let branch = "a branch name like main (no spaces, `..` or `~^:?*[\\`)";
        let relative = "a path inside the repository, like specs (relative, no `..`)";
        let env_name = "an environment variable name like MY_TOKEN";

        // `null` or `''` is an explicit "land locally", unlike leaving the key out.
        let repo = self.get("target.repo", |input| match input {
            Input::Yaml(serde_yaml::Value::Null) => Ok(None),
            Input::Yaml(serde_yaml::Value::String(s)) if s.is_empty() => Ok(None),
            Input::Text(s) if s.is_empty() => Ok(None),
            _ => string_where(
                "owner/repo, like acme/widgets, or null to land locally",
                is_repo,
            )(input)
            .map(Some),
        });
        let base_branch = self.get("target.base_branch", string_where(branch, is_branch));
        let target = TargetConfig {
            repo: repo.clone().flatten(),
            repo_from_origin: repo.is_none(),
            base_branch_from_checkout: base_branch.is_none(),
            base_branch: base_branch.unwrap_or(d.target.base_branch),
            specs_dir: self
                .get(
                    "target.specs_dir",
                    string_where(relative, is_repo_relative_path),
                )
                .unwrap_or(d.target.specs_dir),
            clone_url: self.get("target.clone_url", string),
        };
        let runtime = RuntimeConfig {
            default: self
                .get("runtime.default", runtime_kind)
                .unwrap_or(d.runtime.default),
            max_workers: self
                .get("runtime.max_workers", int(1, MAX_WORKERS_LIMIT))
                .unwrap_or(d.runtime.max_workers),
        };
        let merge = MergeConfig {
            auto_merge: self
                .get("merge.auto_merge", boolean)
                .unwrap_or(d.merge.auto_merge),
            strategy: self
                .get(
                    "merge.strategy",
                    choice(&[
                        ("squash", MergeStrategy::Squash),
                        ("merge", MergeStrategy::Merge),
                    ]),
                )
                .unwrap_or(d.merge.strategy),
            delete_branch: self
                .get("merge.delete_branch", boolean)
                .unwrap_or(d.merge.delete_branch),
        };
        let join_token_env = self
            .get("join_token_env", string_where(env_name, is_env_name))
            .unwrap_or(d.join_token_env);
        let join_token = overrides
            .join_token
            .clone()
            .or_else(|| env.get(&join_token_env).cloned())
            .filter(|token| !token.is_empty())
            .map(Secret);
        let listen_set = self.get("listen", socket_addr);
        let listen = listen_set.unwrap_or(d.listen);
        if !listen.ip().is_loopback() && join_token.is_none() {
            self.errors.push(ConfigError::ListenWithoutToken {
                addr: listen.to_string(),
                token_env: join_token_env.clone(),
            });
        }
        let tls = self.tls(listen);

        Config {
            overlay: self.get("overlay", string).unwrap_or(d.overlay),
            base_ref: self.get("base_ref", string),
            target,
            runtime,
            local_workers: self.get("local_workers", int(0, MAX_WORKERS_LIMIT)),
            merge,
            poll_interval: self
                .get(
                    "poll_interval",
                    duration(POLL_INTERVAL_MIN, POLL_INTERVAL_MAX),
                )
                .unwrap_or(d.poll_interval),
            max_task_rounds: self
                .get("max_task_rounds", int(1, 1000))
                .unwrap_or(d.max_task_rounds),
            max_cycles: self
                .get("max_cycles", int(1, 1_000_000))
                .unwrap_or(d.max_cycles),
            max_action_attempts: self
                .get("max_action_attempts", int(1, 100))
                .unwrap_or(d.max_action_attempts),
            // 0 is allowed: conflicts then go straight back to the loop without a resolver.
            max_rebase_attempts: self
                .get("max_rebase_attempts", int(0, 100))
                .unwrap_or(d.max_rebase_attempts),
            max_spec_failures: self
                .get("max_spec_failures", int(1, 1000))
                .unwrap_or(d.max_spec_failures),
            // The PM may propose at most MAX_PROPOSALS tasks per session; a batch of specs
            // must leave room for more than one task each.
            max_specs_per_intake: self
                .get("max_specs_per_intake", int(1, 50))
                .unwrap_or(d.max_specs_per_intake),
            // Up to 1 MiB: max_specs_per_intake (at most 50) of them stay below the prompt
            // limit of the worker protocol (hyperloop_proto::MAX_PROMPT_BYTES).
            max_spec_bytes: self
                .get("max_spec_bytes", int(1024, 1024 * 1024))
                .unwrap_or(d.max_spec_bytes),
            branch_prefix: self
                .get(
                    "branch_prefix",
                    string_where("a branch prefix like hyperloop/", is_branch_prefix),
                )
                .unwrap_or(d.branch_prefix),
            listen,
            listen_defaulted: listen_set.is_none(),
            advertise: self.get(
                "advertise",
                string_where("a URL like https://coordinator-1:7070", is_http_url),
            ),
            tls,
            join_token_env,
            join_token,
            allow_command_gates: overrides.allow_command_gates,
            admin_token: overrides
                .admin_token
                .clone()
                .or_else(|| env.get(ADMIN_TOKEN_ENV).cloned())
                .filter(|token| !token.is_empty())
                .map(Secret),
            agents_unconfined: overrides.no_confine,
            agent_writable: overrides.agent_writable.clone(),
            etcd: EtcdConfig {
                endpoints: self
                    .get(
                        "etcd.endpoints",
                        list(
                            ListSyntax::Commas,
                            "a list of etcd endpoints like [\"http://10.0.0.1:2379\"]",
                            is_etcd_endpoint,
                        ),
                    )
                    .unwrap_or(d.etcd.endpoints),
                prefix: self.get(
                    "etcd.prefix",
                    string_where("a key prefix", |p| !p.contains(char::is_whitespace)),
                ),
                lease_ttl: self
                    .get("etcd.lease_ttl", duration(LEASE_TTL_MIN, LEASE_TTL_MAX))
                    .unwrap_or(d.etcd.lease_ttl),
            },
            github: GithubConfig {
                api_url: self.get(
                    "github.api_url",
                    string_where("a URL like https://github.example.com/api/v3", is_http_url),
                ),
            },
            notifications: NotificationsConfig {
                kind: self
                    .get(
                        "notifications.type",
                        choice(&[
                            ("github-comment", NotificationKind::GithubComment),
                            ("null", NotificationKind::None),
                            ("none", NotificationKind::None),
                        ]),
                    )
                    .unwrap_or(d.notifications.kind),
                webhooks: self.webhooks(env),
            },
            observability: self.observability(d.observability),
            dashboard: self.dashboard(d.dashboard),
            agent: self.agent(d.agent),
        }
    }

    /// `notifications.webhooks.<name>.*`. A `secret_env` must name a variable that is set:
    /// a webhook configured to be signed is never sent unsigned.
    fn webhooks(&mut self, env: &BTreeMap<String, String>) -> BTreeMap<String, WebhookConfig> {
        use parse::*;
        let mut hooks = BTreeMap::new();
        for name in self.raw.names_under("notifications.webhooks") {
            let at = format!("notifications.webhooks.{name}");
            let origin = Origin::File {
                file: self.file.to_owned(),
                key: at.clone(),
            };
            if !is_role_name(&name) {
                self.errors.push(ConfigError::InvalidValue {
                    at: origin.clone(),
                    expected: "a webhook name made of letters, digits, `-` and `_`".to_owned(),
                    found: format!("{name:?}"),
                });
            }
            let url = self.get(
                &format!("{at}.url"),
                string_where(
                    "a URL like https://hooks.example.com/hyperloop",
                    is_http_url,
                ),
            );
            let secret_env = self.get(
                &format!("{at}.secret_env"),
                string_where("an environment variable name like MY_SECRET", is_env_name),
            );
            let secret = secret_env
                .as_ref()
                .and_then(|var| env.get(var))
                .filter(|v| !v.is_empty())
                .map(|v| Secret(v.clone()));
            if let (Some(var), None) = (&secret_env, &secret) {
                self.errors.push(ConfigError::InvalidValue {
                    at: Origin::File {
                        file: self.file.to_owned(),
                        key: format!("{at}.secret_env"),
                    },
                    expected: format!(
                        "the name of a set environment variable (export {var} with the signing \
                         secret, or remove `secret_env` to send unsigned)"
                    ),
                    found: format!("{var}, which is not set"),
                });
            }
            let Some(url) = url else {
                self.require(&format!("{at}.url"), "for every webhook");
                continue;
            };
            let verbose = self.get(&format!("{at}.verbose"), boolean).unwrap_or(false);
            hooks.insert(
                name,
                WebhookConfig {
                    url,
                    secret_env,
                    secret,
                    verbose,
                },
            );
        }
        hooks
    }

    /// `observability.*`. Any `otel` key turns trace export on.
    fn observability(&mut self, d: ObservabilityConfig) -> ObservabilityConfig {
        use parse::*;
        let env_name = || string_where("an environment variable name like MY_TOKEN", is_env_name);
        let url = "a URL like https://matrix.example.com";

        let homeserver = self.get(
            "observability.matrix.homeserver",
            string_where(url, is_http_url),
        );
        let matrix = MatrixConfig {
            homeserver: homeserver.unwrap_or_default(),
            registration_token_env: self
                .get("observability.matrix.registration_token_env", env_name()),
            bot_username: self.get("observability.matrix.bot_username", string),
            room_id: self.get("observability.matrix.room_id", string),
            token_env: self.get("observability.matrix.token_env", env_name()),
            verbose: self
                .get("observability.matrix.verbose", boolean)
                .unwrap_or(false),
            invite_user: self.get("observability.matrix.invite_user", string),
        };
        let matrix = self
            .raw
            .has_section("observability.matrix")
            .then_some(matrix);
        if let Some(matrix) = &matrix {
            self.require(
                "observability.matrix.homeserver",
                "for Matrix notifications",
            );
            if matrix.registration_token_env.is_none() && matrix.token_env.is_none() {
                self.require(
                    "observability.matrix.registration_token_env",
                    "for Matrix notifications, unless `observability.matrix.token_env` names \
                     an existing bot's access token",
                );
            }
        }

        let otel = OtelConfig {
            endpoint: self.get(
                "observability.otel.endpoint",
                string_where("a URL like http://localhost:4317", is_http_url),
            ),
            service_name: self.get("observability.otel.service_name", string),
            protocol: self.get(
                "observability.otel.protocol",
                choice(&[
                    ("grpc", OtelProtocol::Grpc),
                    ("http/protobuf", OtelProtocol::HttpProtobuf),
                    ("http", OtelProtocol::HttpProtobuf),
                ]),
            ),
        };
        let otel = self.raw.has_section("observability.otel").then_some(otel);

        ObservabilityConfig {
            log_format: self
                .get(
                    "observability.log_format",
                    choice(&[("console", LogFormat::Console), ("json", LogFormat::Json)]),
                )
                .unwrap_or(d.log_format),
            log_level: self
                .get(
                    "observability.log_level",
                    choice(&[
                        ("trace", LogLevel::Trace),
                        ("debug", LogLevel::Debug),
                        ("info", LogLevel::Info),
                        ("warning", LogLevel::Warning),
                        ("warn", LogLevel::Warning),
                        ("error", LogLevel::Error),
                    ]),
                )
                .unwrap_or(d.log_level),
            prometheus: self.get("observability.prometheus", boolean),
            matrix,
            otel,
        }
    }

    /// `dashboard.*`. Nothing serves a dashboard yet, so `enabled: true` is refused, and so is
    /// a `listen` address other than the default unless `enabled: false` says it is unused.
    /// `events_limit` sizes the state's event journal and is always accepted.
    fn dashboard(&mut self, d: DashboardConfig) -> DashboardConfig {
        use parse::*;
        const FEATURE: &str = "the web dashboard";
        let enabled = self.get("dashboard.enabled", boolean);
        if enabled == Some(true) {
            let on = |input: &Input| boolean(input) == Ok(true);
            self.refuse(
                "dashboard.enabled",
                on,
                FEATURE,
                "set it to false or remove it",
            );
        }
        let listen = self.get("dashboard.listen", socket_addr);
        if listen.is_some_and(|l| l != d.listen) && enabled != Some(false) {
            let elsewhere = |input: &Input| socket_addr(input).is_ok_and(|l| l != d.listen);
            self.refuse(
                "dashboard.listen",
                elsewhere,
                FEATURE,
                "remove it, or set `dashboard.enabled: false`",
            );
        }
        DashboardConfig {
            enabled: enabled.unwrap_or(d.enabled),
            listen: listen.unwrap_or(d.listen),
            events_limit: self
                .get("dashboard.events_limit", int(1, 1_000_000))
                .unwrap_or(d.events_limit),
        }
    }

    /// Reports `key` as a setting whose feature does not exist yet, at the highest-precedence
    /// place that gave it a value `asks` for the feature.
    fn refuse(
        &mut self,
        key: &str,
        asks: impl Fn(&Input) -> bool,
        feature: &'static str,
        fix: &'static str,
    ) {
        let entries = self.raw.values.get(key).map_or(&[][..], Vec::as_slice);
        if let Some(given) = entries.iter().rev().find(|e| asks(&e.input)) {
            self.errors.push(ConfigError::NotImplemented {
                at: given.origin.clone(),
                feature,
                fix,
            });
        }
    }

    /// Reports `key` as missing unless some value was given for it (an invalid value has
    /// already been reported; "missing" on top would mislead).
    fn require(&mut self, key: &str, needed_for: &'static str) {
        if !self.raw.values.contains_key(key) {
            self.errors.push(ConfigError::MissingKey {
                file: self.file.to_owned(),
                key: key.to_owned(),
                needed_for,
            });
        }
    }

    fn agent(&mut self, d: AgentConfig) -> AgentConfig {
        let defaults = self.agent_fields("agent");
        let default_command_parsed = defaults.command.is_some();
        let mut agent = AgentConfig {
            runtime: defaults.runtime.unwrap_or(d.runtime),
            command: defaults.command.unwrap_or(d.command),
            model: defaults.model,
            max_turns: defaults.max_turns,
            timeout: defaults.timeout.unwrap_or(d.timeout),
            budget_usd: defaults.budget_usd,
            env_passthrough: defaults.env_passthrough.unwrap_or(d.env_passthrough),
            git_identity: crate::step::GitIdentity {
                name: self
                    .get("agent.git_identity.name", parse::string)
                    .unwrap_or(d.git_identity.name),
                email: self
                    .get("agent.git_identity.email", parse::string)
                    .unwrap_or(d.git_identity.email),
            },
            labels: defaults.labels.unwrap_or(d.labels),
            roles: BTreeMap::new(),
        };
        for role in self.raw.names_under("agent.roles") {
            if !parse::is_role_name(&role) {
                self.errors.push(ConfigError::InvalidValue {
                    at: Origin::File {
                        file: self.file.to_owned(),
                        key: format!("agent.roles.{role}"),
                    },
                    expected: "a role name made of letters, digits, `-` and `_`".to_owned(),
                    found: format!("{role:?}"),
                });
            }
            let overrides = self.agent_fields(&format!("agent.roles.{role}"));
            agent.roles.insert(role, overrides);
        }

        // An agent that would be started with `runtime: command` needs something to run. A
        // command that was given but invalid has already been reported.
        let invalid = |key: &str, parsed: bool| !parsed && self.raw.values.contains_key(key);
        let default_invalid = invalid("agent.command", default_command_parsed);
        let mut missing = Vec::new();
        if agent.runtime == AgentRuntime::Command && agent.command.is_empty() && !default_invalid {
            missing.push(ConfigError::MissingAgentCommand {
                file: self.file.to_owned(),
                who: "`agent`".to_owned(),
                key: "agent.command".to_owned(),
            });
        }
        for (role, overrides) in &agent.roles {
            let key = format!("agent.roles.{role}.command");
            let command = overrides.command.as_ref().unwrap_or(&agent.command);
            if overrides.runtime == Some(AgentRuntime::Command)
                && command.is_empty()
                && !invalid(&key, overrides.command.is_some())
                && !default_invalid
            {
                missing.push(ConfigError::MissingAgentCommand {
                    file: self.file.to_owned(),
                    who: format!("role `{role}`"),
                    key,
                });
            }
        }
        self.errors.extend(missing);
        agent
    }

    /// The agent fields under `prefix` (`agent` or `agent.roles.<role>`), each `None` if unset.
    fn agent_fields(&mut self, prefix: &str) -> RoleOverrides {
        use parse::*;
        let key = |field: &str| format!("{prefix}.{field}");
        RoleOverrides {
            runtime: self.get(
                &key("runtime"),
                choice(&[
                    ("claude", AgentRuntime::Claude),
                    ("command", AgentRuntime::Command),
                ]),
            ),
            command: self.get(
                &key("command"),
                list(
                    ListSyntax::Words,
                    "a command as a list, like [\"./my-agent\", \"--flag\"]",
                    |_| true,
                ),
            ),
            model: self.get(&key("model"), string),
            max_turns: self.get(&key("max_turns"), int(1, 10_000)),
            timeout: self.get(
                &key("timeout"),
                duration(AGENT_TIMEOUT_MIN, AGENT_TIMEOUT_MAX),
            ),
            budget_usd: self.get(&key("budget_usd"), positive_float),
            env_passthrough: self.get(
                &key("env_passthrough"),
                list(
                    ListSyntax::Commas,
                    "a list of environment variable names like [AWS_PROFILE]; hyperloop's own \
                     secrets (GITHUB_TOKEN, GH_TOKEN, HYPERLOOP_*) cannot be passed from the \
                     repository (a worker's operator can: hyperloop-worker --pass-env NAME)",
                    is_passable_env_name,
                ),
            ),
            labels: self.get(&key("labels"), labels),
        }
    }

    /// `tls.*`: a certificate needs its key (and the other way round), and a non-loopback
    /// endpoint without TLS needs an explicit `allow_plaintext`.
    fn tls(&mut self, listen: SocketAddr) -> TlsConfig {
        use parse::*;
        let tls = TlsConfig {
            cert: self.get("tls.cert", string),
            key: self.get("tls.key", string),
            client_ca: self.get("tls.client_ca", string),
            allow_plaintext: self.get("tls.allow_plaintext", boolean).unwrap_or(false),
        };
        let missing = match (&tls.cert, &tls.key, &tls.client_ca) {
            (Some(_), None, _) => Some(("tls.key", "serving TLS with tls.cert")),
            (None, Some(_), _) => Some(("tls.cert", "serving TLS with tls.key")),
            (None, None, Some(_)) => Some(("tls.cert", "mutual TLS with tls.client_ca")),
            _ => None,
        };
        if let Some((key, needed_for)) = missing {
            self.require(key, needed_for);
        }
        if !listen.ip().is_loopback() && tls.cert.is_none() && !tls.allow_plaintext {
            self.errors.push(ConfigError::PlaintextListen {
                addr: listen.to_string(),
            });
        }
        tls
    }
}

/// `runtime: local`, with a dedicated message for the original tool's `ambient`.
fn runtime_kind(input: &Input) -> Parsed<RuntimeKind> {
    match input {
        Input::Yaml(serde_yaml::Value::String(s)) if s == "ambient" => Err(Invalid::AmbientRuntime),
        Input::Text(s) if s.trim() == "ambient" => Err(Invalid::AmbientRuntime),
        _ => parse::choice(&[("local", RuntimeKind::Local)])(input),
    }
}

fn reject(invalid: Invalid, at: Origin) -> ConfigError {
    match invalid {
        Invalid::Type { expected, found } => ConfigError::InvalidValue {
            at,
            expected,
            found,
        },
        Invalid::Range { min, max, found } => ConfigError::OutOfRange {
            at,
            min,
            max,
            found,
        },
        Invalid::AmbientRuntime => ConfigError::UnsupportedRuntime { at },
    }
}

#[cfg(test)]
mod tests;
