//! `ConfigError`: every way a configuration can be rejected, each naming where and how to fix it.

use std::fmt;

/// Where a configuration value came from. Error messages start with it so the user knows
/// which file line, environment variable or flag to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key in the configuration file, spelled as the user wrote it (flat or nested).
    File { file: String, key: String },
    /// An environment variable, and the configuration key it sets.
    Env { var: String, key: &'static str },
    /// A command-line flag, and the configuration key it sets.
    Cli {
        flag: &'static str,
        key: &'static str,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, key } => write!(f, "{file}: `{key}`"),
            Origin::Env { var, key } => write!(f, "environment variable {var} (`{key}`)"),
            Origin::Cli { flag, key } => write!(f, "{flag} (`{key}`)"),
        }
    }
}

/// Why a configuration was rejected. [`ConfigError::Several`] carries every problem found in
/// one pass, so a user fixes the file once instead of once per error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{column}: malformed YAML: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "{file}: the top level must be a mapping of settings (`key: value` lines), got {found}"
    )]
    NotAMapping { file: String, found: String },

    #[error("{file}: unknown key `{key}`{}", suggestion_text(.suggestion.as_deref()))]
    UnknownKey {
        file: String,
        key: String,
        suggestion: Option<String>,
    },

    #[error(
        "{file}: `{first}` and `{second}` are the same setting in the flat and nested layouts \
         but have different values; keep only one of them"
    )]
    Conflict {
        file: String,
        first: String,
        second: String,
    },

    #[error("{at}: expected {expected}, got {found}")]
    InvalidValue {
        at: Origin,
        expected: String,
        found: String,
    },

    #[error("{at} must be between {min} and {max}, got {found}")]
    OutOfRange {
        at: Origin,
        min: String,
        max: String,
        found: String,
    },

    #[error(
        "{at}: runtime `ambient` is not supported; hyperloop runs agents on its own workers. \
         Use `runtime: local` (or remove the key) and choose the agent program with \
         `agent.runtime` (claude or command)"
    )]
    UnsupportedRuntime { at: Origin },

    /// A setting hyperloop knows but nothing acts on yet: accepting it would silently do
    /// nothing. The key stays in the table (so typos near it still get a suggestion).
    #[error("{at}: this version of hyperloop does not implement {feature} yet; {fix}")]
    NotImplemented {
        at: Origin,
        feature: &'static str,
        fix: &'static str,
    },

    #[error("{file}: `{key}` is required {needed_for}")]
    MissingKey {
        file: String,
        key: String,
        needed_for: &'static str,
    },

    #[error(
        "{file}: {who} uses `runtime: command` but no command is set; set `{key}` to the \
         program and its arguments, e.g. `command: [\"./my-agent\", \"--flag\"]`"
    )]
    MissingAgentCommand {
        file: String,
        who: String,
        key: String,
    },

    #[error(
        "`listen` is {addr}, which is not a loopback address, but no join token is set; set \
         one in environment variable {token_env} (or pass --join-token), or listen on \
         127.0.0.1"
    )]
    ListenWithoutToken { addr: String, token_env: String },

    #[error(
        "listen = {addr} is reachable from other machines but the endpoint has no TLS: set \
         tls.cert and tls.key (HYPERLOOP_TLS_CERT / HYPERLOOP_TLS_KEY, or --tls-cert / \
         --tls-key), or set tls.allow_plaintext: true on a trusted network"
    )]
    PlaintextListen { addr: String },

    #[error("{} configuration problems:\n{}", .0.len(), bullet_list(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// Every single problem, flattening [`ConfigError::Several`].
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().flat_map(ConfigError::problems).collect(),
            one => vec![one],
        }
    }

    /// One error if there is one problem, [`ConfigError::Several`] for more, `None` for none.
    pub(crate) fn collect(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Several(errors)),
        }
    }
}

fn suggestion_text(suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => "; it is not a hyperloop setting, remove it (`hyperloop-coordinator run --help` \
                 lists the settings)"
            .to_owned(),
    }
}

fn bullet_list(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
    lines.join("\n")
}
