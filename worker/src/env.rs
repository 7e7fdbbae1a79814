//! The agent's environment, built explicitly from an allow-list.
//!
//! Agents run with `--permission-mode bypassPermissions` and can read every variable they
//! are given, so nothing reaches them by accident: the worker host's environment is filtered
//! through [`ALLOWED_VARS`] and [`ALLOWED_PREFIXES`], then the step's `env_passthrough` names
//! and the coordinator's `extra_env` are added, and the `HYPERLOOP_*` context goes last so an
//! agent always sees the true values. `GIT_*` from the host never passes (a `GIT_DIR` inherited
//! from a hook would point the agent's git at another repository).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

/// Host variables every agent gets when set: the executable search path, home, locale,
/// time zone and terminal type, plus single-name model-provider settings (Claude Code's
/// config dir, Vertex AI region and Google credentials file).
pub const ALLOWED_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "TZ",
    "TERM",
    "CLAUDE_CONFIG_DIR",
    "CLOUD_ML_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// Host variable prefixes every agent gets: locale (`LC_*`), the Anthropic API and Claude
/// Code settings (`ANTHROPIC_*` includes `ANTHROPIC_VERTEX_PROJECT_ID` and the Bedrock/Vertex
/// base URLs; `CLAUDE_CODE_*` includes `CLAUDE_CODE_USE_BEDROCK`/`_USE_VERTEX`), Bedrock
/// credentials and region (`AWS_*`) and Claude Code's per-model Vertex regions
/// (`VERTEX_REGION_*`).
pub const ALLOWED_PREFIXES: &[&str] = &[
    "LC_",
    "ANTHROPIC_",
    "CLAUDE_CODE_",
    "AWS_",
    "VERTEX_REGION_",
];

/// Whether a host variable reaches agents without being named in `env_passthrough`.
pub fn is_allowed_by_default(name: &str) -> bool {
    ALLOWED_VARS.contains(&name) || ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The complete agent environment.
///
/// `host` is the worker's own environment; `passthrough` names further host variables to
/// hand through (`GIT_*` names are refused); `extra` is set as given (the coordinator's
/// per-role variables); `context` (the `HYPERLOOP_*` variables) wins over everything.
pub fn agent_env(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    passthrough: &[String],
    extra: &HashMap<String, String>,
    context: &[(&'static str, String)],
) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    for (name, value) in host {
        let Some(text) = name.to_str() else { continue };
        if text.starts_with("GIT_") {
            continue;
        }
        if is_allowed_by_default(text) || passthrough.iter().any(|p| p == text) {
            env.insert(name, value);
        }
    }
    for (name, value) in extra {
        env.insert(OsString::from(name), OsString::from(value));
    }
    for (name, value) in context {
        env.insert(OsString::from(name), OsString::from(value));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn names(env: &BTreeMap<OsString, OsString>) -> Vec<String> {
        env.keys()
            .map(|k| k.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn only_allow_listed_passthrough_extra_and_context_variables_reach_the_agent() {
        let env = agent_env(
            host(&[
                ("PATH", "/usr/bin"),
                ("HOME", "/home/w"),
                ("LC_ALL", "C.UTF-8"),
                ("ANTHROPIC_API_KEY", "k"),
                ("AWS_REGION", "eu-west-1"),
                ("GITHUB_TOKEN", "ghp_leak"),
                ("GIT_DIR", "/elsewhere"),
                ("GIT_ASKPASS", "/bin/askpass"),
                ("SSH_AUTH_SOCK", "/tmp/agent"),
                ("NPM_TOKEN", "npm"),
                ("HYPERLOOP_ROLE", "spoofed"),
            ]),
            &["NPM_TOKEN".to_owned(), "GIT_ASKPASS".to_owned()],
            &HashMap::from([("EXTRA".to_owned(), "1".to_owned())]),
            &[("HYPERLOOP_ROLE", "verifier".to_owned())],
        );
        assert_eq!(
            names(&env),
            [
                "ANTHROPIC_API_KEY",
                "AWS_REGION",
                "EXTRA",
                "HOME",
                "HYPERLOOP_ROLE",
                "LC_ALL",
                "NPM_TOKEN",
                "PATH"
            ]
        );
        assert_eq!(env[&OsString::from("HYPERLOOP_ROLE")], "verifier");
    }
}
