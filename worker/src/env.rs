//! The agent's environment, built explicitly from an allow-list.
//!
//! Agents run with `--permission-mode bypassPermissions` and can read every variable they
//! are given, so nothing reaches them by accident: the worker host's environment is filtered
//! through [`BASE`] and the runtime's own [`AllowList`] (its model-provider settings), then the
//! step's `env_passthrough` names and the coordinator's `extra_env` are added, and the
//! `HYPERLOOP_*` context goes last so an agent always sees the true values. `GIT_*` from the
//! host never passes (a `GIT_DIR` inherited from a hook would point the agent's git at another
//! repository).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

use hyperloop_shared::config::is_hyperloop_secret;
use hyperloop_shared::step::GitIdentity;

/// Host variables let through by exact name or by prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowList {
    pub names: &'static [&'static str],
    pub prefixes: &'static [&'static str],
}

impl AllowList {
    /// Whether `name` is on the list.
    pub fn allows(&self, name: &str) -> bool {
        self.names.contains(&name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// Host variables every agent gets when set, whatever its runtime: the executable search
/// path, home, locale (`LANG`, `LC_*`), time zone and terminal type.
pub const BASE: AllowList = AllowList {
    names: &["PATH", "HOME", "LANG", "TZ", "TERM"],
    prefixes: &["LC_"],
};

/// The complete agent environment.
///
/// `host` is the worker's own environment, of which [`BASE`] and `runtime` (the variables the
/// agent's runtime needs) pass; `passthrough` names further host variables the step asks for
/// (`GIT_*` and hyperloop's own secrets are refused: the repository's config, which anyone
/// who can commit writes, asked for them; see [`is_hyperloop_secret`]); `operator` names variables the worker's operator
/// hands to every agent (only `GIT_*` refused); `extra` is set as given (the coordinator's
/// per-role variables); `context` (the `HYPERLOOP_*` variables) wins over everything.
pub fn agent_env(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    runtime: &AllowList,
    passthrough: &[String],
    operator: &[String],
    extra: &HashMap<String, String>,
    context: &[(&'static str, String)],
) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    for (name, value) in host {
        let Some(text) = name.to_str() else { continue };
        if text.starts_with("GIT_") {
            continue;
        }
        let asked = passthrough.iter().any(|p| p == text) && !is_hyperloop_secret(text);
        if BASE.allows(text) || runtime.allows(text) || asked || operator.iter().any(|p| p == text)
        {
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

/// The `GIT_AUTHOR_*`/`GIT_COMMITTER_*` variables that give an agent `identity`, for each half
/// (name, email) that neither `env` (the coordinator's `extra_env` may set them) nor git's own
/// config in the worktree provides. Without them, every commit on a machine with no global
/// git identity (fresh HOME, containers, CI) fails and the task spins until `max_cycles`.
pub fn git_identity_env(
    env: &BTreeMap<OsString, OsString>,
    git_has_name: bool,
    git_has_email: bool,
    identity: &GitIdentity,
) -> Vec<(OsString, OsString)> {
    let mut vars = Vec::new();
    let halves = [
        (
            git_has_name,
            ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"],
            &identity.name,
        ),
        (
            git_has_email,
            ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"],
            &identity.email,
        ),
    ];
    for (git_has, names, value) in halves {
        if git_has {
            continue;
        }
        for name in names {
            if !env.contains_key(&OsString::from(name)) {
                vars.push((OsString::from(name), OsString::from(value)));
            }
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claude::PROVIDER_ENV;

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
            &PROVIDER_ENV,
            &["NPM_TOKEN".to_owned(), "GIT_ASKPASS".to_owned()],
            &[],
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

    #[test]
    fn the_repository_cannot_pass_hyperloops_secrets_but_the_workers_operator_can() {
        let host = host(&[
            ("HYPERLOOP_TOKEN", "join-secret"),
            ("GITHUB_TOKEN", "ghp_secret"),
            ("GH_TOKEN", "gho_secret"),
            ("NPM_TOKEN", "npm"),
        ]);
        let asked: Vec<String> = ["HYPERLOOP_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "NPM_TOKEN"]
            .map(str::to_owned)
            .to_vec();
        let env = agent_env(host.clone(), &BASE, &asked, &[], &HashMap::new(), &[]);
        assert_eq!(names(&env), ["NPM_TOKEN"]);
        let operator = vec!["GITHUB_TOKEN".to_owned()];
        let env = agent_env(host, &BASE, &asked, &operator, &HashMap::new(), &[]);
        assert_eq!(names(&env), ["GITHUB_TOKEN", "NPM_TOKEN"]);
    }

    #[test]
    fn an_agent_without_any_git_identity_commits_as_the_configured_one() {
        let id = GitIdentity {
            name: "Bot".to_owned(),
            email: "bot@example.invalid".to_owned(),
        };
        let vars = git_identity_env(&BTreeMap::new(), false, false, &id);
        let names: Vec<_> = vars.iter().map(|(k, _)| k.to_string_lossy()).collect();
        assert_eq!(
            names,
            [
                "GIT_AUTHOR_NAME",
                "GIT_COMMITTER_NAME",
                "GIT_AUTHOR_EMAIL",
                "GIT_COMMITTER_EMAIL"
            ]
        );
        assert_eq!(vars[0].1, "Bot");
        assert_eq!(vars[3].1, "bot@example.invalid");
    }

    #[test]
    fn an_identity_git_or_the_coordinator_already_gives_is_kept() {
        let id = GitIdentity::default();
        assert!(git_identity_env(&BTreeMap::new(), true, true, &id).is_empty());
        let env = BTreeMap::from([(OsString::from("GIT_AUTHOR_EMAIL"), OsString::from("a@b"))]);
        let vars = git_identity_env(&env, true, false, &id);
        let names: Vec<_> = vars.iter().map(|(k, _)| k.to_string_lossy()).collect();
        assert_eq!(names, ["GIT_COMMITTER_EMAIL"]);
    }
}
