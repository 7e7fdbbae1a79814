//! The one table of `.hyperloop.yaml` keys. Unknown-key detection, layout aliases, environment
//! variable names and the generated reference all read it, so docs and code cannot drift.

/// One setting. `path` is the canonical (nested-layout) dotted path; `*` stands for a role
/// name under `agent.roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub path: &'static str,
    /// The flat-layout spelling shown in the seeds, when there is one. Never has wildcards.
    pub flat: Option<&'static str>,
    pub help: &'static str,
}

const fn key(path: &'static str, help: &'static str) -> Key {
    Key {
        path,
        flat: None,
        help,
    }
}

const fn flat(path: &'static str, flat: &'static str, help: &'static str) -> Key {
    Key {
        path,
        flat: Some(flat),
        help,
    }
}

/// Every accepted key. Environment variables are derived from this, see [`Key::env_var`].
pub const KEYS: &[Key] = &[
    key(
        "overlay",
        "project overlay: a local kustomization directory or a git URL",
    ),
    key(
        "base_ref",
        "base agent definitions to build on; unset = the ones built into hyperloop",
    ),
    flat(
        "target.repo",
        "repo",
        "GitHub repository owner/repo; unset = land work locally",
    ),
    flat(
        "target.base_branch",
        "base_branch",
        "branch specs are read from and work is merged into; unset and no `main` in the \
         repository = the branch the checkout is on",
    ),
    key(
        "target.specs_dir",
        "directory holding the markdown specs, relative to the repository",
    ),
    flat(
        "runtime.default",
        "runtime",
        "where workers run; only `local` is supported",
    ),
    flat(
        "runtime.max_workers",
        "max_workers",
        "maximum number of tasks worked on at once",
    ),
    key(
        "local_workers",
        "workers started inside the coordinator; unset = max_workers",
    ),
    key(
        "merge.auto_merge",
        "merge verified work without waiting for a human",
    ),
    key(
        "merge.strategy",
        "how work lands on the base branch: squash | merge",
    ),
    key(
        "merge.delete_branch",
        "delete a task's branch after it is merged",
    ),
    key(
        "poll_interval",
        "how often external state (GitHub, remote specs) is polled",
    ),
    key("max_task_rounds", "rounds a task may take before it fails"),
    key(
        "max_cycles",
        "consecutive cycles without progress after which `run` stops (exit code 3)",
    ),
    key(
        "max_action_attempts",
        "errors an action may hit before its loop restarts",
    ),
    key(
        "max_rebase_attempts",
        "rebase-conflict resolutions tried before the loop restarts",
    ),
    key(
        "max_spec_failures",
        "failures of one spec version before it is given up (exit code 4)",
    ),
    key(
        "max_specs_per_intake",
        "specs one PM session is asked about; more are split across sessions",
    ),
    key(
        "max_spec_bytes",
        "largest spec sent to an agent; a bigger one is given up with a finding",
    ),
    key(
        "branch_prefix",
        "prefix of task branches, e.g. hyperloop/task-007",
    ),
    key(
        "listen",
        "address of the coordinator's gRPC endpoint (workers, hyperloopctl)",
    ),
    key(
        "advertise",
        "URL workers and hyperloopctl use to reach this coordinator; unset = derived from listen",
    ),
    key(
        "target.clone_url",
        "URL workers fetch from and push to; unset = this checkout (single host) or its origin (etcd)",
    ),
    key(
        "tls.cert",
        "PEM certificate chain the gRPC endpoint serves; enables TLS",
    ),
    key("tls.key", "PEM private key of tls.cert"),
    key(
        "tls.client_ca",
        "PEM CA certificates client certificates must chain to; enables mutual TLS",
    ),
    key(
        "tls.allow_plaintext",
        "allow plain TCP on a non-loopback listen address (trusted networks only)",
    ),
    key(
        "join_token_env",
        "environment variable holding the token workers must present",
    ),
    key(
        "etcd.endpoints",
        "etcd endpoints; empty = embedded single-host store",
    ),
    key(
        "etcd.prefix",
        "etcd key prefix; unset = derived from the repository's origin URL",
    ),
    key(
        "etcd.lease_ttl",
        "leader lease time to live: how soon a standby takes over a dead leader",
    ),
    key(
        "github.api_url",
        "GitHub REST API URL (GitHub Enterprise: https://HOST/api/v3); unset = api.github.com",
    ),
    key(
        "notifications.type",
        "how humans are told a gate waits: github-comment | null",
    ),
    key(
        "notifications.webhooks.*.url",
        "URL every event is POSTed to as JSON (one webhook per name)",
    ),
    key(
        "notifications.webhooks.*.secret_env",
        "environment variable holding the webhook's HMAC-SHA256 signing secret",
    ),
    key(
        "notifications.webhooks.*.verbose",
        "also send spawns, cycles and intake runs, not only what a person acts on",
    ),
    key("observability.log_format", "log output: console | json"),
    key(
        "observability.log_level",
        "least severe level logged: debug | info | warning | error",
    ),
    key(
        "observability.prometheus",
        "serve Prometheus /metrics on the coordinator's address: true | false; unset = only on loopback",
    ),
    key(
        "observability.matrix.homeserver",
        "Matrix homeserver URL; enables Matrix notifications",
    ),
    key(
        "observability.matrix.registration_token_env",
        "env var with a registration token: the bot registers itself and creates a room",
    ),
    key(
        "observability.matrix.bot_username",
        "bot user name; unset = hyperloop-<repo name>",
    ),
    key(
        "observability.matrix.room_id",
        "room to post in; unset = create one",
    ),
    key(
        "observability.matrix.token_env",
        "env var with an existing bot access token",
    ),
    key(
        "observability.matrix.verbose",
        "also send low-signal events (spawns, cycles, intake)",
    ),
    key(
        "observability.matrix.invite_user",
        "user invited to a room hyperloop creates",
    ),
    key(
        "observability.otel.endpoint",
        "OTLP endpoint URL for trace and metric export; any otel key turns export on \
         (unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _METRICS_ENDPOINT, \
         OTEL_EXPORTER_OTLP_ENDPOINT, then localhost:4317 for grpc, :4318 for http)",
    ),
    key(
        "observability.otel.service_name",
        "service.name reported to OpenTelemetry (unset: OTEL_SERVICE_NAME, then hyperloop)",
    ),
    key(
        "observability.otel.protocol",
        "OTLP transport: grpc or http/protobuf (alias http); unset: \
         OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf for an endpoint on port 4318 or \
         ending in /v1/traces, else grpc",
    ),
    key(
        "dashboard.enabled",
        "serve the read-only web dashboard (not implemented yet: only false is accepted)",
    ),
    key(
        "dashboard.listen",
        "address the dashboard listens on (not implemented yet: only the default is accepted)",
    ),
    key(
        "dashboard.events_limit",
        "events kept in the journal for replay",
    ),
    key("agent.runtime", "agent program: claude | command"),
    key(
        "agent.command",
        "argv of the agent program when runtime is command",
    ),
    key(
        "agent.model",
        "model name passed to the agent; unset = the runtime's default",
    ),
    key(
        "agent.max_turns",
        "turn limit per agent session; unset = no limit",
    ),
    key("agent.timeout", "time limit per agent step"),
    key(
        "agent.budget_usd",
        "cost limit per agent step in US dollars; unset = no limit",
    ),
    key(
        "agent.env_passthrough",
        "extra environment variable names handed to agents",
    ),
    key(
        "agent.git_identity.name",
        "author/committer name for agents' commits when the worker's git has none",
    ),
    key(
        "agent.git_identity.email",
        "author/committer email for agents' commits when the worker's git has none",
    ),
    key(
        "agent.labels",
        "worker labels a step requires, like [gpu=a100]; steps only go to matching workers",
    ),
    key("agent.roles.*.runtime", "per-role agent.runtime"),
    key("agent.roles.*.command", "per-role agent.command"),
    key("agent.roles.*.model", "per-role agent.model"),
    key("agent.roles.*.max_turns", "per-role agent.max_turns"),
    key("agent.roles.*.timeout", "per-role agent.timeout"),
    key("agent.roles.*.budget_usd", "per-role agent.budget_usd"),
    key(
        "agent.roles.*.labels",
        "per-role agent.labels (replaces the list)",
    ),
    key(
        "agent.roles.*.env_passthrough",
        "per-role agent.env_passthrough (replaces the list)",
    ),
];

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "HYPERLOOP_";

impl Key {
    /// `HYPERLOOP_` + the shortest spelling of the key (the flat one when it exists),
    /// uppercased with `.` → `_`. Per-role keys have none: role names are free-form and may
    /// not survive the trip through a variable name.
    pub fn env_var(&self) -> Option<String> {
        let spelling = self.flat.unwrap_or(self.path);
        if spelling.contains('*') {
            return None;
        }
        Some(format!(
            "{ENV_PREFIX}{}",
            spelling.to_ascii_uppercase().replace('.', "_")
        ))
    }

    /// The spellings a file may use, canonical first.
    pub(crate) fn spellings(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.path).chain(self.flat)
    }
}

/// Does `pattern` (whose `*` segments match anything) match `path` segment by segment?
fn segments_match(pattern: &[&str], path: &[&str]) -> bool {
    pattern.len() == path.len() && pattern.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
}

fn split(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

/// The canonical concrete path for a key as written, if it names a setting.
/// `max_workers` → `runtime.max_workers`; `agent.roles.pm.model` stays as is.
pub(crate) fn canonical(written: &str) -> Option<String> {
    let path = split(written);
    KEYS.iter().find_map(|key| {
        if key.flat.is_some_and(|flat| flat == written) {
            return Some(key.path.to_owned());
        }
        let canon = split(key.path);
        segments_match(&canon, &path).then(|| {
            // Same length as `path` here; wildcards take the written segment.
            let concrete: Vec<&str> = canon
                .iter()
                .zip(&path)
                .map(|(c, w)| if *c == "*" { *w } else { *c })
                .collect();
            concrete.join(".")
        })
    })
}

/// Is `written` a section, i.e. a strict prefix of some key (`merge`, `agent.roles.pm`)?
pub(crate) fn is_section(written: &str) -> bool {
    let path = split(written);
    KEYS.iter().flat_map(Key::spellings).any(|s| {
        let pattern = split(s);
        pattern.len() > path.len() && segments_match(&pattern[..path.len()], &path)
    })
}

/// The known key closest to an unknown one, when one is close enough to be a likely typo,
/// or has the same last segment (a key put in the wrong section).
pub(crate) fn suggest(unknown: &str) -> Option<String> {
    let written = split(unknown);
    // Concrete candidates, keys and the sections above them (a misspelt section is reported
    // as one unknown key): role wildcards take the segment the user wrote in that position.
    let candidates: Vec<String> = KEYS
        .iter()
        .flat_map(Key::spellings)
        .flat_map(|s| s.match_indices('.').map(|(i, _)| &s[..i]).chain([s]))
        .map(|s| {
            split(s)
                .iter()
                .enumerate()
                .map(|(i, seg)| {
                    if *seg == "*" {
                        written.get(i).copied().unwrap_or(seg)
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();

    let best = candidates
        .iter()
        .map(|c| (levenshtein(unknown, c), c))
        .min_by_key(|(distance, _)| *distance)
        .filter(|(distance, c)| *distance <= typo_budget(c));
    if let Some((_, c)) = best {
        return Some(c.clone());
    }
    let last = written.last().copied().unwrap_or(unknown);
    candidates
        .iter()
        .filter(|c| !c.contains('*'))
        .map(|c| (levenshtein(last, c.rsplit('.').next().unwrap_or(c)), c))
        .min_by_key(|(distance, _)| *distance)
        .filter(|(distance, c)| *distance <= typo_budget(c.rsplit('.').next().unwrap_or(c)))
        .map(|(_, c)| c.clone())
}

/// How many edits still count as a typo: roughly one per four characters, at least one.
fn typo_budget(target: &str) -> usize {
    (target.chars().count() / 4).clamp(1, 3)
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by characters.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the dynamic-programming table is enough: row[j] = distance(a[..i], b[..j]).
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_single_edits() {
        let check = |a: &str, b: &str, expected: usize| {
            assert_eq!(levenshtein(a, b), expected, "{a} vs {b}");
            assert_eq!(levenshtein(b, a), expected, "{b} vs {a}");
        };
        check("", "", 0);
        check("", "abc", 3);
        check("strategy", "strategy", 0);
        check("stratgy", "strategy", 1);
        check("kitten", "sitting", 3);
        check("flaw", "lawn", 2);
        check("größe", "grosse", 3);
    }

    #[test]
    fn canonical_maps_flat_and_role_spellings() {
        let check = |written: &str, expected: Option<&str>| {
            assert_eq!(canonical(written).as_deref(), expected, "{written}");
        };
        check("max_workers", Some("runtime.max_workers"));
        check("runtime.max_workers", Some("runtime.max_workers"));
        check("base_branch", Some("target.base_branch"));
        check("repo", Some("target.repo"));
        check("runtime", Some("runtime.default"));
        check(
            "agent.roles.verifier.model",
            Some("agent.roles.verifier.model"),
        );
        check("agent.roles.verifier", None);
        check("merge", None);
        check("merge.stratgy", None);
    }

    #[test]
    fn sections_are_strict_prefixes_of_keys() {
        for section in [
            "merge",
            "runtime",
            "observability.matrix",
            "agent.roles",
            "agent.roles.x",
        ] {
            assert!(is_section(section), "{section}");
        }
        for not_section in [
            "merge.strategy",
            "max_workers",
            "agent.roles.x.model",
            "bogus",
        ] {
            assert!(!is_section(not_section), "{not_section}");
        }
    }

    #[test]
    fn suggestions_catch_typos_and_misplaced_keys() {
        let check = |unknown: &str, expected: Option<&str>| {
            assert_eq!(suggest(unknown).as_deref(), expected, "{unknown}");
        };
        check("merge.stratgy", Some("merge.strategy"));
        check("poll_intervall", Some("poll_interval"));
        check(
            "agent.roles.verifier.modle",
            Some("agent.roles.verifier.model"),
        );
        check("target.max_workers", Some("runtime.max_workers"));
        check("observability.log_levl", Some("observability.log_level"));
        check("merg", Some("merge"));
        check("observabilty", Some("observability"));
        check("agent.role", Some("agent.roles"));
        check("completely_unrelated", None);
        check("x", None);
    }

    #[test]
    fn env_vars_use_the_shortest_spelling() {
        let env = |path: &str| KEYS.iter().find(|k| k.path == path).and_then(Key::env_var);
        assert_eq!(
            env("runtime.max_workers").as_deref(),
            Some("HYPERLOOP_MAX_WORKERS")
        );
        assert_eq!(
            env("target.base_branch").as_deref(),
            Some("HYPERLOOP_BASE_BRANCH")
        );
        assert_eq!(
            env("merge.strategy").as_deref(),
            Some("HYPERLOOP_MERGE_STRATEGY")
        );
        assert_eq!(env("agent.model").as_deref(), Some("HYPERLOOP_AGENT_MODEL"));
        assert_eq!(env("etcd.prefix").as_deref(), Some("HYPERLOOP_ETCD_PREFIX"));
        assert_eq!(env("agent.roles.*.model"), None);
    }

    #[test]
    fn table_has_no_duplicate_spellings_or_env_vars() {
        let mut seen = std::collections::BTreeSet::new();
        for key in KEYS {
            for spelling in key.spellings() {
                assert!(
                    seen.insert(spelling.to_owned()),
                    "duplicate spelling {spelling}"
                );
            }
        }
        let mut vars = std::collections::BTreeSet::new();
        for var in KEYS.iter().filter_map(Key::env_var) {
            assert!(vars.insert(var.clone()), "duplicate env var {var}");
        }
    }
}
