//! Data-driven tests for loading: `check` compares a whole `Config` against the defaults with
//! the expected changes applied; `check_errors` compares every reported message.

use super::*;

const FILE: &str = ".hyperloop.yaml";

fn env_map(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_all(
    yaml: &str,
    env: &[(&str, &str)],
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    Config::load(yaml, FILE, &env_map(env), overrides)
}

/// Loads `yaml` (with `env` and `overrides`) and expects the defaults changed by `edit`.
fn check_with(
    yaml: &str,
    env: &[(&str, &str)],
    overrides: &Overrides,
    edit: impl FnOnce(&mut Config),
) {
    let mut expected = Config::default();
    edit(&mut expected);
    // A repository given is never inferred.
    if expected.target.repo.is_some() {
        expected.target.repo_from_origin = false;
    }
    // An address given is never moved.
    if expected.listen != Config::default().listen {
        expected.listen_defaulted = false;
    }
    // Likewise a base branch given is never taken from the checkout.
    if expected.target.base_branch != Config::default().target.base_branch {
        expected.target.base_branch_from_checkout = false;
    }
    match load_all(yaml, env, overrides) {
        Ok(actual) => assert_eq!(actual, expected, "for input:\n{yaml}"),
        Err(error) => panic!("for input:\n{yaml}\nunexpected error: {error}"),
    }
}

fn check(yaml: &str, edit: impl FnOnce(&mut Config)) {
    check_with(yaml, &[], &Overrides::default(), edit);
}

/// Expects loading to fail with exactly these messages, in order.
fn check_errors_with(yaml: &str, env: &[(&str, &str)], overrides: &Overrides, expected: &[&str]) {
    let error = match load_all(yaml, env, overrides) {
        Ok(config) => panic!("for input:\n{yaml}\nexpected errors, got {config:#?}"),
        Err(error) => error,
    };
    let actual: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
    assert_eq!(actual, expected, "for input:\n{yaml}");
}

fn check_errors(yaml: &str, expected: &[&str]) {
    check_errors_with(yaml, &[], &Overrides::default(), expected);
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn empty_or_comment_only_files_give_all_defaults() {
    for yaml in ["", "\n", "# nothing here\n", "---\n", "~"] {
        check(yaml, |_| {});
    }
}

#[test]
fn defaults_match_the_documented_values() {
    let d = Config::default();
    assert_eq!(d.overlay, ".hyperloop/agents/");
    assert_eq!(d.base_ref, None);
    assert_eq!(d.target.repo, None);
    assert_eq!(d.target.base_branch, "main");
    assert_eq!(d.target.specs_dir, "specs");
    assert_eq!(d.runtime.default, RuntimeKind::Local);
    assert_eq!(d.runtime.max_workers, 6);
    assert_eq!(d.local_workers, None);
    assert_eq!(d.local_worker_count(), 6);
    assert!(d.merge.auto_merge);
    assert_eq!(d.merge.strategy, MergeStrategy::Squash);
    assert!(d.merge.delete_branch);
    assert_eq!(d.poll_interval, secs(30));
    assert_eq!(d.max_task_rounds, 50);
    assert_eq!(d.max_cycles, 200);
    assert_eq!(d.max_action_attempts, 3);
    assert_eq!(d.max_rebase_attempts, 3);
    assert_eq!(d.branch_prefix, "hyperloop/");
    assert_eq!(d.listen.to_string(), "127.0.0.1:7070");
    assert_eq!(d.join_token_env, "HYPERLOOP_JOIN_TOKEN");
    assert_eq!(d.join_token, None);
    assert!(d.etcd.endpoints.is_empty());
    assert_eq!(d.etcd.prefix, None);
    assert_eq!(d.notifications.kind, NotificationKind::None);
    assert_eq!(d.observability.log_format, LogFormat::Console);
    assert_eq!(d.observability.log_level, LogLevel::Info);
    assert_eq!(d.observability.matrix, None);
    assert_eq!(d.observability.otel, None);
    assert!(!d.dashboard.enabled);
    assert_eq!(d.dashboard.listen.to_string(), "127.0.0.1:8787");
    assert_eq!(d.dashboard.events_limit, 1000);
    assert_eq!(d.agent.runtime, AgentRuntime::Claude);
    assert!(d.agent.command.is_empty());
    assert_eq!(d.agent.model, None);
    assert_eq!(d.agent.max_turns, None);
    assert_eq!(d.agent.timeout, secs(30 * 60));
    assert_eq!(d.agent.budget_usd, None);
    assert!(d.agent.env_passthrough.is_empty());
    assert!(d.agent.roles.is_empty());
}

#[test]
fn the_flat_layout_from_the_seed_loads() {
    let yaml = "
overlay: .hyperloop/agents/
base_branch: main
runtime: local                          # local | ambient

max_workers: 6
poll_interval: 30
max_task_rounds: 50
max_action_attempts: 3

notifications:
  type: github-comment                  # github-comment | null (default: null)
";
    check(yaml, |c| {
        c.notifications.kind = NotificationKind::GithubComment;
        // The seed spells out `base_branch: main`: never taken from the checkout.
        c.target.base_branch_from_checkout = false;
    });
}

/// The seed's `observability.matrix` section is checked in `the_seeds_matrix_sections_load`.
#[test]
fn the_nested_layout_from_the_seed_loads() {
    let yaml = r#"
overlay: .hyperloop/agents/    # local path or git URL to kustomization dir
base_ref: github.com/jsell-rh/hyperloop//base?ref=v1.0.0

target:
  repo: owner/repo
  base_branch: main
  specs_dir: specs

runtime:
  default: local
  max_workers: 6

merge:
  auto_merge: true
  strategy: squash
  delete_branch: true

poll_interval: 30
max_task_rounds: 50
max_cycles: 200
max_rebase_attempts: 3

observability:
  log_format: console
  log_level: info
"#;
    check(yaml, |c| {
        c.base_ref = Some("github.com/jsell-rh/hyperloop//base?ref=v1.0.0".into());
        c.target.repo = Some("owner/repo".into());
        c.target.base_branch_from_checkout = false;
    });
}

/// Every key but those of features that do not exist yet (the
/// dashboard, which may only be spelled out as off).
#[test]
fn every_key_of_an_implemented_feature_can_be_set() {
    let yaml = r#"
overlay: git@github.com:org/gitops//overlays/api
base_ref: github.com/org/hyperloop//base?ref=v2
target: {repo: acme/widgets, base_branch: trunk, specs_dir: docs/specs, clone_url: "ssh://git@host/acme/widgets.git"}
runtime: {default: local, max_workers: 12}
local_workers: 0
merge: {auto_merge: false, strategy: merge, delete_branch: false}
poll_interval: 2m
max_task_rounds: 7
max_cycles: 9
max_action_attempts: 4
max_rebase_attempts: 0
branch_prefix: hl-
listen: "[::1]:9000"
advertise: "https://coordinator-1:9000"
tls: {cert: /etc/hl/cert.pem, key: /etc/hl/key.pem, client_ca: /etc/hl/ca.pem, allow_plaintext: true}
join_token_env: MY_JOIN_TOKEN
etcd: {endpoints: ["http://10.0.0.1:2379", "etcd-2:2379"], prefix: /hl/acme, lease_ttl: 5s}
github: {api_url: "https://github.example.com/api/v3"}
notifications: {type: github-comment}
observability:
  log_format: json
  log_level: warning
  otel: {endpoint: "http://collector:4317", service_name: hl-test, protocol: grpc}
dashboard: {enabled: false, listen: "0.0.0.0:8080", events_limit: 50}
agent:
  runtime: command
  command: ["./agent.sh", "--fast"]
  model: opus
  max_turns: 40
  timeout: 1h30m
  budget_usd: 2.5
  env_passthrough: [AWS_PROFILE]
  labels: {os: linux}
  roles:
    verifier:
      runtime: claude
      command: [other]
      model: sonnet
      max_turns: 10
      timeout: 600
      budget_usd: 1
      env_passthrough: []
      labels: [gpu=a100, os=linux]
"#;
    check(yaml, |c| {
        c.overlay = "git@github.com:org/gitops//overlays/api".into();
        c.base_ref = Some("github.com/org/hyperloop//base?ref=v2".into());
        c.target = TargetConfig {
            repo: Some("acme/widgets".into()),
            repo_from_origin: false,
            base_branch: "trunk".into(),
            base_branch_from_checkout: false,
            specs_dir: "docs/specs".into(),
            clone_url: Some("ssh://git@host/acme/widgets.git".into()),
        };
        c.runtime.max_workers = 12;
        c.local_workers = Some(0);
        c.merge = MergeConfig {
            auto_merge: false,
            strategy: MergeStrategy::Merge,
            delete_branch: false,
        };
        c.poll_interval = secs(120);
        c.max_task_rounds = 7;
        c.max_cycles = 9;
        c.max_action_attempts = 4;
        c.max_rebase_attempts = 0;
        c.branch_prefix = "hl-".into();
        c.listen = "[::1]:9000".parse().expect("address");
        c.join_token_env = "MY_JOIN_TOKEN".into();
        c.advertise = Some("https://coordinator-1:9000".into());
        c.tls = TlsConfig {
            cert: Some("/etc/hl/cert.pem".into()),
            key: Some("/etc/hl/key.pem".into()),
            client_ca: Some("/etc/hl/ca.pem".into()),
            allow_plaintext: true,
        };
        c.etcd = EtcdConfig {
            endpoints: vec!["http://10.0.0.1:2379".into(), "etcd-2:2379".into()],
            prefix: Some("/hl/acme".into()),
            lease_ttl: secs(5),
        };
        c.github.api_url = Some("https://github.example.com/api/v3".into());
        c.notifications.kind = NotificationKind::GithubComment;
        c.observability = ObservabilityConfig {
            log_format: LogFormat::Json,
            log_level: LogLevel::Warning,
            prometheus: None,
            matrix: None,
            otel: Some(OtelConfig {
                endpoint: Some("http://collector:4317".to_owned()),
                service_name: Some("hl-test".to_owned()),
                protocol: Some(OtelProtocol::Grpc),
            }),
        };
        c.dashboard = DashboardConfig {
            enabled: false,
            listen: "0.0.0.0:8080".parse().expect("address"),
            events_limit: 50,
        };
        c.agent = AgentConfig {
            runtime: AgentRuntime::Command,
            command: vec!["./agent.sh".into(), "--fast".into()],
            model: Some("opus".into()),
            max_turns: Some(40),
            timeout: secs(5400),
            budget_usd: Some(2.5),
            env_passthrough: vec!["AWS_PROFILE".into()],
            git_identity: crate::step::GitIdentity::default(),
            labels: BTreeMap::from([("os".into(), "linux".into())]),
            roles: BTreeMap::from([(
                "verifier".to_owned(),
                RoleOverrides {
                    runtime: Some(AgentRuntime::Claude),
                    command: Some(vec!["other".into()]),
                    model: Some("sonnet".into()),
                    max_turns: Some(10),
                    timeout: Some(secs(600)),
                    budget_usd: Some(1.0),
                    env_passthrough: Some(vec![]),
                    labels: Some(BTreeMap::from([
                        ("gpu".into(), "a100".into()),
                        ("os".into(), "linux".into()),
                    ])),
                },
            )]),
        };
    });
}

#[test]
fn null_values_and_empty_sections_mean_default() {
    check(
        "max_workers:\nmerge:\nnotifications: {type: null}\nagent: {roles: {pm: }}",
        |_| {},
    );
    // Except `repo: ~`: an explicit "land locally", not "infer from origin".
    check("repo: ~\n", |c| c.target.repo_from_origin = false);
}

#[test]
fn one_setting_in_both_layouts_must_agree() {
    check("base_branch: dev\ntarget: {base_branch: dev}", |c| {
        c.target.base_branch = "dev".into()
    });
    check("max_workers: 4\nruntime: {max_workers: 4}", |c| {
        c.runtime.max_workers = 4
    });
    check_errors(
        "base_branch: main\ntarget:\n  base_branch: develop\n",
        &["\
.hyperloop.yaml: `base_branch` and `target.base_branch` are the same setting in the flat and \
nested layouts but have different values; keep only one of them"],
    );
    check_errors(
        "runtime: {max_workers: 8}\nmax_workers: 4\nrepo: a/b\ntarget: {repo: a/c}",
        &[
            ".hyperloop.yaml: `repo` and `target.repo` are the same setting in the flat and nested \
             layouts but have different values; keep only one of them",
            ".hyperloop.yaml: `runtime.max_workers` and `max_workers` are the same setting in the \
             flat and nested layouts but have different values; keep only one of them",
        ],
    );
}

#[test]
fn unknown_keys_name_the_full_path_and_the_closest_key() {
    let cases: &[(&str, &str)] = &[
        (
            "merge: {stratgy: merge}",
            "unknown key `merge.stratgy`; did you mean `merge.strategy`?",
        ),
        (
            "max_worker: 3",
            "unknown key `max_worker`; did you mean `max_workers`?",
        ),
        (
            "poll_intervl: 3",
            "unknown key `poll_intervl`; did you mean `poll_interval`?",
        ),
        (
            "target: {max_workers: 3}",
            "unknown key `target.max_workers`; did you mean `runtime.max_workers`?",
        ),
        (
            "agent: {roles: {verifier: {modle: x}}}",
            "unknown key `agent.roles.verifier.modle`; did you mean `agent.roles.verifier.model`?",
        ),
        (
            "observability: {matrix: {room: x}}",
            "unknown key `observability.matrix.room`; did you mean `observability.matrix.room_id`?",
        ),
        (
            "dashboard: {enable: false}",
            "unknown key `dashboard.enable`; did you mean `dashboard.enabled`?",
        ),
        (
            "observability: {otel: {endpont: 'http://o:4317'}}",
            "unknown key `observability.otel.endpont`; did you mean `observability.otel.endpoint`?",
        ),
        (
            "ambient: {project_id: x}",
            "unknown key `ambient`; it is not a hyperloop setting, remove it \
             (`hyperloop-coordinator run --help` lists the settings)",
        ),
        (
            "42: x",
            "unknown key `42`; it is not a hyperloop setting, remove it \
             (`hyperloop-coordinator run --help` lists the settings)",
        ),
    ];
    for (yaml, message) in cases {
        check_errors(yaml, &[&format!("{FILE}: {message}")]);
    }
}

#[test]
fn malformed_yaml_reports_file_line_and_column() {
    let error = load_all(
        "merge:\n  strategy: squash\n bad: [\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("malformed");
    match &error {
        ConfigError::Syntax {
            file,
            line,
            column,
            message,
        } => {
            assert_eq!(file, FILE);
            assert_eq!((*line, *column), (3, 2), "{error}");
            assert!(
                !message.contains(" at line "),
                "location not repeated: {message}"
            );
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .starts_with(".hyperloop.yaml:3:2: malformed YAML: "),
        "{error}"
    );

    let duplicate = load_all(
        "max_workers: 1\nmax_workers: 2\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("dup");
    assert_eq!(
        duplicate.to_string(),
        ".hyperloop.yaml:2:1: malformed YAML: duplicate entry with key \"max_workers\""
    );
    let nested = load_all(
        "merge:\n  strategy: squash\n  strategy: merge\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("dup");
    assert_eq!(
        nested.to_string(),
        ".hyperloop.yaml:3:3: malformed YAML: merge: duplicate entry with key \"strategy\""
    );
}

#[test]
fn the_top_level_must_be_a_mapping() {
    let message = |found: &str| {
        format!(
            "{FILE}: the top level must be a mapping of settings (`key: value` lines), got {found}"
        )
    };
    check_errors("- a\n- b", &[&message("a list")]);
    check_errors("just words", &[&message("\"just words\"")]);
    check_errors("3", &[&message("3")]);
}

#[test]
fn wrong_types_name_the_key_and_what_to_write() {
    let cases: &[(&str, &str)] = &[
        (
            "poll_interval: soon",
            "`poll_interval`: expected a duration like 30s or 5m, got \"soon\"",
        ),
        (
            "max_workers: six",
            "`max_workers`: expected a whole number, got \"six\"",
        ),
        (
            "max_workers: '6'",
            "`max_workers`: expected a whole number, got \"6\"",
        ),
        (
            "max_cycles: 2.5",
            "`max_cycles`: expected a whole number, got 2.5",
        ),
        (
            "merge: squash",
            "`merge`: expected a mapping of settings (a section), got \"squash\"",
        ),
        (
            "merge: {auto_merge: 'yes'}",
            "`merge.auto_merge`: expected true or false, got \"yes\"",
        ),
        (
            "merge: {strategy: rebase}",
            "`merge.strategy`: expected one of `squash`, `merge`, got \"rebase\"",
        ),
        (
            "runtime: docker",
            "`runtime`: expected one of `local`, got \"docker\"",
        ),
        (
            "repo: widgets",
            "`repo`: expected owner/repo, like acme/widgets, or null to land locally, got \"widgets\"",
        ),
        (
            "base_branch: 'my branch'",
            "`base_branch`: expected a branch name like main (no spaces, `..` or `~^:?*[\\`), \
             got \"my branch\"",
        ),
        (
            "target: {specs_dir: ../elsewhere}",
            "`target.specs_dir`: expected a path inside the repository, like specs (relative, no \
             `..`), got \"../elsewhere\"",
        ),
        (
            "listen: localhost:7070",
            "`listen`: expected an IP address and port like 127.0.0.1:7070 or [::1]:7070, got \
             \"localhost:7070\"",
        ),
        (
            "overlay: ''",
            "`overlay`: expected a non-empty string, got \"\"",
        ),
        ("overlay: [a]", "`overlay`: expected a string, got a list"),
        (
            "etcd: {endpoints: http://x:2379}",
            "`etcd.endpoints`: expected a list of etcd endpoints like [\"http://10.0.0.1:2379\"], \
             got \"http://x:2379\"",
        ),
        (
            "notifications: {type: slack}",
            "`notifications.type`: expected one of `github-comment`, `null`, `none`, got \"slack\"",
        ),
        (
            "observability: {log_level: verbose}",
            "`observability.log_level`: expected one of `trace`, `debug`, `info`, `warning`, \
             `warn`, `error`, got \"verbose\"",
        ),
        (
            "agent: {command: ./agent.sh, runtime: command}",
            "`agent.command`: expected a command as a list, like [\"./my-agent\", \"--flag\"], \
             got \"./agent.sh\"",
        ),
        (
            "agent: {env_passthrough: [GOOD, not-a-name]}",
            "`agent.env_passthrough`: expected a list of environment variable names like \
             [AWS_PROFILE]; hyperloop's own secrets (GITHUB_TOKEN, GH_TOKEN, HYPERLOOP_*) cannot \
             be passed from the repository (a worker's operator can: hyperloop-worker --pass-env \
             NAME), got a list",
        ),
        // The repository cannot hand the worker's own credentials to its agents.
        (
            "agent: {roles: {implementer: {env_passthrough: [HYPERLOOP_TOKEN]}}}",
            "`agent.roles.implementer.env_passthrough`: expected a list of environment variable \
             names like [AWS_PROFILE]; hyperloop's own secrets (GITHUB_TOKEN, GH_TOKEN, \
             HYPERLOOP_*) cannot be passed from the repository (a worker's operator can: \
             hyperloop-worker --pass-env NAME), got a list",
        ),
        (
            "agent: {budget_usd: 0}",
            "`agent.budget_usd`: expected a number greater than 0, like 2.5, got 0",
        ),
        (
            "agent: {model: !custom x}",
            "`agent.model`: expected a string, got a value tagged !custom",
        ),
    ];
    for (yaml, message) in cases {
        check_errors(yaml, &[&format!("{FILE}: {message}")]);
    }
}

#[test]
fn values_out_of_range_name_the_allowed_range() {
    let cases: &[(&str, &str)] = &[
        (
            "max_workers: 0",
            "`max_workers` must be between 1 and 1024, got 0",
        ),
        (
            "runtime: {max_workers: 5000}",
            "`runtime.max_workers` must be between 1 and 1024, got 5000",
        ),
        (
            "max_task_rounds: 0",
            "`max_task_rounds` must be between 1 and 1000, got 0",
        ),
        (
            "max_action_attempts: -1",
            "`max_action_attempts` must be between 1 and 100, got -1",
        ),
        (
            "max_rebase_attempts: 101",
            "`max_rebase_attempts` must be between 0 and 100, got 101",
        ),
        (
            "max_cycles: 0",
            "`max_cycles` must be between 1 and 1000000, got 0",
        ),
        (
            "local_workers: 2000",
            "`local_workers` must be between 0 and 1024, got 2000",
        ),
        (
            "poll_interval: 0",
            "`poll_interval` must be between 1s and 24h, got 0s",
        ),
        (
            "poll_interval: 2d",
            "`poll_interval`: expected a duration like 30s or 5m, got \"2d\"",
        ),
        (
            "poll_interval: 25h",
            "`poll_interval` must be between 1s and 24h, got 25h",
        ),
        (
            "agent: {timeout: 48h}",
            "`agent.timeout` must be between 1s and 24h, got 48h",
        ),
        (
            "agent: {max_turns: 0}",
            "`agent.max_turns` must be between 1 and 10000, got 0",
        ),
        (
            "dashboard: {events_limit: 0}",
            "`dashboard.events_limit` must be between 1 and 1000000, got 0",
        ),
    ];
    for (yaml, message) in cases {
        check_errors(yaml, &[&format!("{FILE}: {message}")]);
    }
}

#[test]
fn durations_accept_seconds_and_unit_strings() {
    for (yaml, expected) in [
        ("poll_interval: 45", 45),
        ("poll_interval: 90s", 90),
        ("poll_interval: 30m", 1800),
        ("poll_interval: 2h", 7200),
        ("poll_interval: 1h30m", 5400),
    ] {
        check(yaml, |c| c.poll_interval = secs(expected));
    }
}

#[test]
fn ambient_runtime_explains_where_agents_run() {
    let fix = "runtime `ambient` is not supported; hyperloop runs agents on its own workers. Use \
               `runtime: local` (or remove the key) and choose the agent program with \
               `agent.runtime` (claude or command)";
    check_errors("runtime: ambient", &[&format!("{FILE}: `runtime`: {fix}")]);
    check_errors(
        "runtime: {default: ambient}",
        &[&format!("{FILE}: `runtime.default`: {fix}")],
    );
    check_errors_with(
        "",
        &[("HYPERLOOP_RUNTIME", "ambient")],
        &Overrides::default(),
        &[&format!(
            "environment variable HYPERLOOP_RUNTIME (`runtime.default`): {fix}"
        )],
    );
}

#[test]
fn a_command_runtime_needs_a_command() {
    check_errors(
        "agent: {runtime: command}",
        &["\
.hyperloop.yaml: `agent` uses `runtime: command` but no command is set; set `agent.command` to \
the program and its arguments, e.g. `command: [\"./my-agent\", \"--flag\"]`"],
    );
    check_errors(
        "agent: {runtime: command, command: []}",
        &["\
.hyperloop.yaml: `agent` uses `runtime: command` but no command is set; set `agent.command` to \
the program and its arguments, e.g. `command: [\"./my-agent\", \"--flag\"]`"],
    );
    check_errors(
        "agent: {roles: {checker: {runtime: command}}}",
        &["\
.hyperloop.yaml: role `checker` uses `runtime: command` but no command is set; set \
`agent.roles.checker.command` to the program and its arguments, e.g. \
`command: [\"./my-agent\", \"--flag\"]`"],
    );
    // A role may take its command from the defaults, or bring its own.
    check(
        "agent: {command: [./a], roles: {checker: {runtime: command}}}",
        |c| {
            c.agent.command = vec!["./a".into()];
            c.agent.roles.insert(
                "checker".into(),
                RoleOverrides {
                    runtime: Some(AgentRuntime::Command),
                    ..Default::default()
                },
            );
        },
    );
}

#[test]
fn role_names_are_checked() {
    check_errors(
        "agent: {roles: {'my role': {model: x}}}",
        &[
            ".hyperloop.yaml: `agent.roles.my role`: expected a role name made of letters, digits, \
           `-` and `_`, got \"my role\"",
        ],
    );
}

#[test]
fn agent_for_merges_role_overrides_over_defaults() {
    let yaml = "
agent:
  model: sonnet
  max_turns: 30
  timeout: 20m
  budget_usd: 5
  env_passthrough: [AWS_PROFILE, NPM_TOKEN]
  roles:
    verifier: {model: opus, timeout: 10m}
    pm: {env_passthrough: []}
    scripted: {runtime: command, command: [./check.sh, --strict], budget_usd: 0.5, max_turns: 3}
";
    let config = load_all(yaml, &[], &Overrides::default()).expect("valid");
    let base = ResolvedAgent {
        role: String::new(),
        program: AgentProgram::Claude,
        model: Some("sonnet".into()),
        max_turns: Some(30),
        timeout: secs(1200),
        budget_usd: Some(5.0),
        env_passthrough: vec!["AWS_PROFILE".into(), "NPM_TOKEN".into()],
        labels: BTreeMap::new(),
    };
    let check = |role: &str, edit: &dyn Fn(&mut ResolvedAgent)| {
        let mut expected = ResolvedAgent {
            role: role.to_owned(),
            ..base.clone()
        };
        edit(&mut expected);
        assert_eq!(config.agent_for(role), expected, "role {role}");
    };
    check("implementer", &|_| {});
    check("verifier", &|a| {
        a.model = Some("opus".into());
        a.timeout = secs(600);
    });
    check("pm", &|a| a.env_passthrough = vec![]);
    check("scripted", &|a| {
        a.program = AgentProgram::Command(vec!["./check.sh".into(), "--strict".into()]);
        a.budget_usd = Some(0.5);
        a.max_turns = Some(3);
    });

    let defaults = Config::default().agent_for("implementer");
    assert_eq!(defaults.program, AgentProgram::Claude);
    assert_eq!(defaults.timeout, secs(1800));
    assert_eq!(
        (defaults.model, defaults.max_turns, defaults.budget_usd),
        (None, None, None)
    );
}

#[test]
fn environment_variables_override_the_file() {
    let env = [
        ("HYPERLOOP_MAX_WORKERS", "9"),
        ("HYPERLOOP_BASE_BRANCH", "develop"),
        ("HYPERLOOP_MERGE_STRATEGY", "merge"),
        ("HYPERLOOP_AGENT_MODEL", "opus"),
        ("HYPERLOOP_POLL_INTERVAL", "5m"),
        ("HYPERLOOP_MERGE_AUTO_MERGE", "no"),
        ("HYPERLOOP_AGENT_COMMAND", "./run agent"),
        ("HYPERLOOP_AGENT_RUNTIME", "command"),
        ("HYPERLOOP_AGENT_ENV_PASSTHROUGH", "A,B"),
        ("HYPERLOOP_AGENT_BUDGET_USD", "1.25"),
        ("HYPERLOOP_ETCD_ENDPOINTS", "http://a:2379,http://b:2379"),
        ("HYPERLOOP_REPO", ""), // empty counts as unset
        ("UNRELATED", "x"),
    ];
    let yaml = "max_workers: 2\ntarget: {base_branch: main}\nmerge: {strategy: squash}";
    check_with(yaml, &env, &Overrides::default(), |c| {
        c.runtime.max_workers = 9;
        c.target.base_branch = "develop".into();
        c.merge.strategy = MergeStrategy::Merge;
        c.merge.auto_merge = false;
        c.agent.model = Some("opus".into());
        c.poll_interval = secs(300);
        c.agent.runtime = AgentRuntime::Command;
        c.agent.command = vec!["./run".into(), "agent".into()];
        c.agent.env_passthrough = vec!["A".into(), "B".into()];
        c.agent.budget_usd = Some(1.25);
        c.etcd.endpoints = vec!["http://a:2379".into(), "http://b:2379".into()];
    });
}

#[test]
fn bad_environment_values_name_the_variable() {
    check_errors_with(
        "",
        &[
            ("HYPERLOOP_MAX_WORKERS", "many"),
            ("HYPERLOOP_POLL_INTERVAL", "0"),
            ("HYPERLOOP_MERGE_DELETE_BRANCH", "sometimes"),
        ],
        &Overrides::default(),
        &[
            "environment variable HYPERLOOP_MAX_WORKERS (`runtime.max_workers`): expected a whole \
             number, got \"many\"",
            "environment variable HYPERLOOP_MERGE_DELETE_BRANCH (`merge.delete_branch`): expected \
             true or false, got \"sometimes\"",
            "environment variable HYPERLOOP_POLL_INTERVAL (`poll_interval`) must be between 1s \
             and 24h, got 0s",
        ],
    );
}

#[test]
fn precedence_is_defaults_then_file_then_env_then_cli() {
    let cli = Overrides {
        max_workers: Some(3),
        ..Default::default()
    };
    let env = [("HYPERLOOP_MAX_WORKERS", "2")];
    let file = "max_workers: 1";
    let max_workers = |yaml: &str, env: &[(&str, &str)], overrides: &Overrides| {
        load_all(yaml, env, overrides)
            .expect("valid")
            .runtime
            .max_workers
    };
    assert_eq!(max_workers("", &[], &Overrides::default()), 6);
    assert_eq!(max_workers(file, &[], &Overrides::default()), 1);
    assert_eq!(max_workers(file, &env, &Overrides::default()), 2);
    assert_eq!(max_workers(file, &env, &cli), 3);
    assert_eq!(max_workers("", &[], &cli), 3);
}

#[test]
fn command_line_overrides_apply_and_are_validated() {
    let overrides = Overrides {
        repo: Some("acme/api".into()),
        base_branch: Some("trunk".into()),
        max_workers: Some(2),
        local_workers: Some(0),
        listen: Some("127.0.0.1:0".into()),
        etcd_endpoints: Some(vec!["http://e:2379".into()]),
        etcd_prefix: Some("/x".into()),
        join_token: Some("s3cret".into()),
        overlay: Some("overlays/dev".into()),
        base_ref: Some("github.com/o/r//base?ref=v1".into()),
        advertise: Some("http://127.0.0.1:7171".into()),
        tls_cert: Some("c.pem".into()),
        tls_key: Some("k.pem".into()),
        tls_client_ca: Some("ca.pem".into()),
        allow_command_gates: true,
        admin_token: Some("op-secret".into()),
        log_format: Some("json".into()),
        no_confine: true,
        agent_writable: vec!["/cache".into()],
    };
    check_with("repo: acme/old", &[], &overrides, |c| {
        c.target.repo = Some("acme/api".into());
        c.target.base_branch = "trunk".into();
        c.runtime.max_workers = 2;
        c.local_workers = Some(0);
        c.listen = "127.0.0.1:0".parse().expect("address");
        c.etcd.endpoints = vec!["http://e:2379".into()];
        c.etcd.prefix = Some("/x".into());
        c.join_token = Some(Secret::new("s3cret"));
        c.overlay = "overlays/dev".into();
        c.base_ref = Some("github.com/o/r//base?ref=v1".into());
        c.advertise = Some("http://127.0.0.1:7171".into());
        c.tls = TlsConfig {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            client_ca: Some("ca.pem".into()),
            allow_plaintext: false,
        };
        c.allow_command_gates = true;
        c.admin_token = Some(Secret::new("op-secret"));
        c.agents_unconfined = true;
        c.agent_writable = vec!["/cache".into()];
        c.observability.log_format = LogFormat::Json;
    });
    check_errors_with(
        "",
        &[],
        &Overrides {
            max_workers: Some(0),
            etcd_endpoints: Some(vec!["not an endpoint".into()]),
            ..Default::default()
        },
        &[
            "--max-workers (`runtime.max_workers`) must be between 1 and 1024, got 0",
            "--etcd (`etcd.endpoints`): expected a list of etcd endpoints like \
             [\"http://10.0.0.1:2379\"], got a list",
        ],
    );
}

#[test]
fn listening_beyond_loopback_needs_a_join_token() {
    let message = "`listen` is 0.0.0.0:7070, which is not a loopback address, but no join token \
                   is set; set one in environment variable HYPERLOOP_JOIN_TOKEN (or pass \
                   --join-token), or listen on 127.0.0.1";
    let plaintext = "listen = 0.0.0.0:7070 is reachable from other machines but the endpoint \
                     has no TLS: set tls.cert and tls.key (HYPERLOOP_TLS_CERT / \
                     HYPERLOOP_TLS_KEY, or --tls-cert / --tls-key), or set \
                     tls.allow_plaintext: true on a trusted network";
    check_errors("listen: 0.0.0.0:7070", &[message, plaintext]);
    check_errors_with(
        "listen: 0.0.0.0:7070",
        &[("HYPERLOOP_JOIN_TOKEN", "t0k")],
        &Overrides::default(),
        &[plaintext],
    );
    check_with(
        "listen: 0.0.0.0:7070\ntls: {cert: c.pem, key: k.pem}",
        &[("HYPERLOOP_JOIN_TOKEN", "t0k")],
        &Overrides::default(),
        |c| {
            c.listen = "0.0.0.0:7070".parse().expect("address");
            c.join_token = Some(Secret::new("t0k"));
            c.tls.cert = Some("c.pem".into());
            c.tls.key = Some("k.pem".into());
        },
    );
    check_errors(
        "tls: {cert: c.pem}",
        &[".hyperloop.yaml: `tls.key` is required serving TLS with tls.cert"],
    );
    check_with(
        "listen: 0.0.0.0:7070\njoin_token_env: CUSTOM\ntls: {allow_plaintext: true}",
        &[("CUSTOM", "t0k"), ("HYPERLOOP_JOIN_TOKEN", "ignored")],
        &Overrides::default(),
        |c| {
            c.listen = "0.0.0.0:7070".parse().expect("address");
            c.tls.allow_plaintext = true;
            c.join_token_env = "CUSTOM".into();
            c.join_token = Some(Secret::new("t0k"));
        },
    );
    check_with("listen: '[::1]:7070'", &[], &Overrides::default(), |c| {
        c.listen = "[::1]:7070".parse().expect("address");
    });
}

#[test]
fn the_join_token_never_shows_in_debug_or_yaml() {
    let config = load_all(
        "",
        &[("HYPERLOOP_JOIN_TOKEN", "hunter2")],
        &Overrides::default(),
    )
    .expect("valid");
    assert_eq!(
        config.join_token.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    let yaml = serde_yaml::to_string(&config).expect("serializable");
    assert!(!yaml.contains("hunter2"), "{yaml}");
}

/// Expects each YAML text alone to fail with exactly its messages (`FILE: ` prepended).
fn check_refused(cases: &[(&str, &[&str])]) {
    for (yaml, messages) in cases {
        let expected: Vec<String> = messages.iter().map(|m| format!("{FILE}: {m}")).collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check_errors(yaml, &expected);
    }
}

const NO_DASHBOARD: &str = "this version of hyperloop does not implement the web dashboard yet";

#[test]
fn turning_the_dashboard_on_is_refused_until_the_dashboard_exists() {
    let enabled = format!("`dashboard.enabled`: {NO_DASHBOARD}; set it to false or remove it");
    let listen =
        format!("`dashboard.listen`: {NO_DASHBOARD}; remove it, or set `dashboard.enabled: false`");
    check_refused(&[
        ("dashboard: {enabled: true}", &[&enabled]),
        (
            "dashboard:\n  enabled: true\n  events_limit: 50",
            &[&enabled],
        ),
        (
            "dashboard: {enabled: true, listen: '0.0.0.0:9000'}",
            &[&enabled, &listen],
        ),
    ]);
    check_errors_with(
        "",
        &[("HYPERLOOP_DASHBOARD_ENABLED", "true")],
        &Overrides::default(),
        &[&format!(
            "environment variable HYPERLOOP_DASHBOARD_ENABLED (`dashboard.enabled`): \
             {NO_DASHBOARD}; set it to false or remove it"
        )],
    );
    // The refusal names where `true` came from, not a later value that was itself invalid.
    check_errors_with(
        "dashboard: {enabled: true}",
        &[("HYPERLOOP_DASHBOARD_ENABLED", "maybe")],
        &Overrides::default(),
        &[
            "environment variable HYPERLOOP_DASHBOARD_ENABLED (`dashboard.enabled`): expected \
             true or false, got \"maybe\"",
            &format!("{FILE}: {enabled}"),
        ],
    );
}

#[test]
fn a_dashboard_address_is_refused_unless_the_dashboard_is_spelled_out_as_off() {
    let listen =
        format!("`dashboard.listen`: {NO_DASHBOARD}; remove it, or set `dashboard.enabled: false`");
    check_refused(&[
        ("dashboard: {listen: '0.0.0.0:9000'}", &[&listen]),
        ("dashboard: {listen: '127.0.0.1:8788'}", &[&listen]),
    ]);
}

#[test]
fn the_seeds_matrix_sections_load() {
    let seed = "observability:\n  matrix:\n    homeserver: https://matrix.example.com\n    \
                registration_token_env: MATRIX_REGISTRATION_TOKEN\n    verbose: false\n";
    check(seed, |c| {
        c.observability.matrix = Some(MatrixConfig {
            homeserver: "https://matrix.example.com".into(),
            registration_token_env: Some("MATRIX_REGISTRATION_TOKEN".into()),
            bot_username: None,
            room_id: None,
            token_env: None,
            verbose: false,
            invite_user: None,
        });
    });
    let manual = "observability: {matrix: {homeserver: 'https://m.org', token_env: T, \
                  room_id: '!r:m.org', verbose: true, invite_user: '@me:m.org', bot_username: hl}}";
    check(manual, |c| {
        c.observability.matrix = Some(MatrixConfig {
            homeserver: "https://m.org".into(),
            registration_token_env: None,
            bot_username: Some("hl".into()),
            room_id: Some("!r:m.org".into()),
            token_env: Some("T".into()),
            verbose: true,
            invite_user: Some("@me:m.org".into()),
        });
    });
}

#[test]
fn a_matrix_section_needs_a_homeserver_and_a_credential() {
    let credential = "`observability.matrix.registration_token_env` is required for Matrix \
                      notifications, unless `observability.matrix.token_env` names an existing \
                      bot's access token";
    let homeserver = "`observability.matrix.homeserver` is required for Matrix notifications";
    check_refused(&[
        (
            "observability: {matrix: {room_id: '!r:m.org', token_env: T}}",
            &[homeserver],
        ),
        (
            "observability: {matrix: {verbose: false}}",
            &[homeserver, credential],
        ),
        (
            "observability: {matrix: {homeserver: 'https://m.org'}}",
            &[credential],
        ),
        // A malformed value is reported alone, not as missing on top.
        (
            "observability: {matrix: {homeserver: matrix.org, token_env: T}}",
            &["`observability.matrix.homeserver`: expected a URL like \
               https://matrix.example.com, got \"matrix.org\""],
        ),
    ]);
}

fn otel(endpoint: Option<&str>, service_name: Option<&str>) -> Option<OtelConfig> {
    Some(OtelConfig {
        endpoint: endpoint.map(str::to_owned),
        service_name: service_name.map(str::to_owned),
        protocol: None,
    })
}

#[test]
fn an_otel_section_turns_export_on_with_only_the_keys_it_gives() {
    check(
        "observability: {otel: {endpoint: 'http://o:4317', service_name: hl}}",
        |c| c.observability.otel = otel(Some("http://o:4317"), Some("hl")),
    );
    check("observability: {otel: {service_name: hl}}", |c| {
        c.observability.otel = otel(None, Some("hl"));
    });
    check_with(
        "",
        &[("HYPERLOOP_OBSERVABILITY_OTEL_ENDPOINT", "http://otel:4317")],
        &Overrides::default(),
        |c| c.observability.otel = otel(Some("http://otel:4317"), None),
    );
    // The standard variables are the exporter's business (hyperloop_worker::otel), not the
    // config's: on their own they add no otel section.
    check_with(
        "",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317")],
        &Overrides::default(),
        |_| {},
    );
}

#[test]
fn the_otel_protocol_is_grpc_or_http_protobuf_with_http_as_its_alias() {
    for (given, protocol) in [
        ("grpc", OtelProtocol::Grpc),
        ("http/protobuf", OtelProtocol::HttpProtobuf),
        ("http", OtelProtocol::HttpProtobuf),
    ] {
        check(
            &format!("observability: {{otel: {{protocol: '{given}'}}}}"),
            |c| {
                c.observability.otel = Some(OtelConfig {
                    protocol: Some(protocol),
                    ..OtelConfig::default()
                });
            },
        );
    }
    for wrong in ["thrift", "http/json"] {
        let error = load_all(
            &format!("observability: {{otel: {{protocol: '{wrong}'}}}}"),
            &[],
            &Overrides::default(),
        )
        .expect_err("an unsupported protocol");
        assert!(
            error.to_string().contains("observability.otel.protocol"),
            "{error}"
        );
    }
}

#[test]
fn defaults_and_features_spelled_out_as_off_still_load() {
    for yaml in [
        "dashboard: {enabled: false}",
        "dashboard: {listen: '127.0.0.1:8787'}",
        "dashboard: {enabled: false, listen: '127.0.0.1:8787', events_limit: 1000}",
        "dashboard: {enabled: ~, listen: ~}",
        "observability: {matrix: ~, otel: ~}",
        "observability: {matrix: {}, otel: {}}",
    ] {
        check(yaml, |_| {});
    }
    check_with(
        "",
        &[("HYPERLOOP_DASHBOARD_ENABLED", "false")],
        &Overrides::default(),
        |_| {},
    );
    // The environment turns off what the file turned on.
    check_with(
        "dashboard: {enabled: true}",
        &[("HYPERLOOP_DASHBOARD_ENABLED", "false")],
        &Overrides::default(),
        |_| {},
    );
    // An address for a dashboard that is off is unused, not a request for one.
    check("dashboard: {enabled: false, listen: '0.0.0.0:8080'}", |c| {
        c.dashboard.listen = "0.0.0.0:8080".parse().expect("address");
    });
    // `events_limit` sizes the state's event journal, which exists.
    check("dashboard: {events_limit: 100000}", |c| {
        c.dashboard.events_limit = 100_000;
    });
    // What `--dry-run` prints for these sections loads back.
    let printed = serde_yaml::to_string(&Config::default()).expect("serializable");
    for line in ["  enabled: false", "  matrix: null", "  otel: null"] {
        assert!(
            printed.lines().any(|l| l == line),
            "missing {line:?} in:\n{printed}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml =
        "max_workers: 0\nmerge: {stratgy: x}\npoll_interval: soon\nagent: {runtime: command}";
    let error = load_all(yaml, &[], &Overrides::default()).expect_err("invalid");
    assert_eq!(error.problems().len(), 4, "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("4 configuration problems:\n  - .hyperloop.yaml: "),
        "{text}"
    );
}

#[test]
fn serialized_config_loads_back_to_the_same_value() {
    let yaml = "
target: {repo: a/b}
poll_interval: 1h30m
notifications: {type: github-comment}
dashboard: {enabled: false, listen: '0.0.0.0:8080'}
agent:
  runtime: command
  command: [x]
  budget_usd: 0.1
  roles: {verifier: {model: opus, timeout: 90}}
";
    for config in [
        Config::default(),
        load_all(yaml, &[], &Overrides::default()).expect("valid"),
    ] {
        let text = serde_yaml::to_string(&config).expect("serializable");
        let mut reloaded = load_all(&text, &[], &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}\nin:\n{text}"));
        // The printed form spells the default address out, which then counts as chosen.
        assert_eq!(reloaded.listen, config.listen);
        reloaded.listen_defaulted = config.listen_defaulted;
        assert_eq!(reloaded, config, "round trip of:\n{text}");
    }
}

#[test]
fn dry_run_output_uses_the_nested_layout() {
    let mut config = Config::default();
    config.target.base_branch_from_checkout = false; // decided, as dry run prints it
    let text = serde_yaml::to_string(&config).expect("serializable");
    for line in [
        "overlay: .hyperloop/agents/",
        "  base_branch: main",
        "  max_workers: 6",
        "  strategy: squash",
        "poll_interval: 30s",
        "  timeout: 30m",
        "  type: null",
        "listen: 127.0.0.1:7070",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[test]
fn the_resolver_reads_every_key_in_the_table() {
    let mut raw = RawConfig::default();
    let mut errors = Vec::new();
    raw.read_file(
        "agent: {roles: {r: {model: m}}}\nnotifications: {webhooks: {r: {url: 'http://x'}}}",
        FILE,
        &mut errors,
    )
    .expect("valid");
    let mut resolver = Resolver {
        raw: &raw,
        file: FILE,
        errors,
        read: Vec::new(),
    };
    resolver.config(&BTreeMap::new(), &Overrides::default());
    for key in keys::KEYS {
        let concrete = key.path.replace('*', "r");
        assert!(
            resolver.read.contains(&concrete),
            "{concrete} is in the table but never read"
        );
    }
    for read in &resolver.read {
        assert!(
            keys::canonical(read).as_deref() == Some(read.as_str()),
            "{read} not in table"
        );
    }
}

#[test]
fn the_reference_lists_every_key_with_env_var_and_default() {
    let reference = reference();
    assert_eq!(reference.len(), keys::KEYS.len());
    let row = |key: &str| {
        reference
            .iter()
            .find(|r| r.key == key)
            .expect("documented")
            .clone()
    };
    let check = |key: &str, env: Option<&str>, default: &str| {
        let r = row(key);
        assert_eq!(
            (r.env.as_deref(), r.default.as_str()),
            (env, default),
            "{key}"
        );
    };
    check("runtime.max_workers", Some("HYPERLOOP_MAX_WORKERS"), "6");
    check("target.base_branch", Some("HYPERLOOP_BASE_BRANCH"), "main");
    check("merge.strategy", Some("HYPERLOOP_MERGE_STRATEGY"), "squash");
    check("agent.model", Some("HYPERLOOP_AGENT_MODEL"), "unset");
    check("agent.timeout", Some("HYPERLOOP_AGENT_TIMEOUT"), "30m");
    check("poll_interval", Some("HYPERLOOP_POLL_INTERVAL"), "30s");
    check(
        "merge.auto_merge",
        Some("HYPERLOOP_MERGE_AUTO_MERGE"),
        "true",
    );
    check("etcd.endpoints", Some("HYPERLOOP_ETCD_ENDPOINTS"), "[]");
    check("listen", Some("HYPERLOOP_LISTEN"), "127.0.0.1:7070");
    check(
        "dashboard.enabled",
        Some("HYPERLOOP_DASHBOARD_ENABLED"),
        "false",
    );
    check(
        "notifications.type",
        Some("HYPERLOOP_NOTIFICATIONS_TYPE"),
        "unset",
    );
    check("agent.roles.*.model", None, "inherits from agent");
    assert!(reference.iter().all(|r| !r.help.is_empty()));

    let vars = env_vars();
    assert!(vars.contains(&("HYPERLOOP_MAX_WORKERS".to_owned(), "runtime.max_workers")));
    assert_eq!(
        vars.len(),
        keys::KEYS.iter().filter(|k| !k.path.contains('*')).count()
    );
}

#[test]
fn target_repo_unset_is_inferred_but_null_or_empty_forces_local_landing() {
    let load = |yaml: &str, repo: Option<&str>| {
        let overrides = Overrides {
            repo: repo.map(str::to_owned),
            ..Overrides::default()
        };
        Config::load(yaml, ".hyperloop.yaml", &BTreeMap::new(), &overrides).unwrap()
    };
    let unset = load("max_workers: 2\n", None);
    assert_eq!(
        (unset.target.repo, unset.target.repo_from_origin),
        (None, true)
    );
    for yaml in [
        "target:\n  repo: null\n",
        "target:\n  repo: ''\n",
        "repo: ~\n",
    ] {
        let c = load(yaml, None);
        assert_eq!(
            (c.target.repo, c.target.repo_from_origin),
            (None, false),
            "{yaml}"
        );
    }
    let flag = load("target:\n  repo: acme/widgets\n", Some(""));
    assert_eq!(
        (flag.target.repo, flag.target.repo_from_origin),
        (None, false)
    );
    let set = load("", Some("acme/widgets"));
    assert_eq!(set.target.repo.as_deref(), Some("acme/widgets"));
    assert!(!set.target.repo_from_origin);
}

#[test]
fn webhooks_are_named_sinks_with_a_url_and_a_secret_read_from_the_environment() {
    let yaml = "notifications:
  type: github-comment
  webhooks:
    ops: {url: 'https://hooks.example.com/h', secret_env: OPS_HOOK_SECRET, verbose: true}
    audit: {url: 'http://127.0.0.1:9/audit'}
";
    let config = load_all(
        yaml,
        &[("OPS_HOOK_SECRET", "s3cr3t-hook")],
        &Overrides::default(),
    )
    .expect("valid");
    let ops = &config.notifications.webhooks["ops"];
    assert_eq!(ops.url, "https://hooks.example.com/h");
    assert_eq!(ops.secret.as_ref().map(Secret::expose), Some("s3cr3t-hook"));
    assert!(ops.verbose);
    let audit = &config.notifications.webhooks["audit"];
    assert!(audit.secret.is_none() && !audit.verbose);
    // The secret never appears in the printed configuration.
    let printed = serde_yaml::to_string(&config).unwrap();
    assert!(printed.contains("secret_env: OPS_HOOK_SECRET") && !printed.contains("s3cr3t-hook"));

    let error = load_all(yaml, &[], &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "`notifications.webhooks.ops.secret_env`: expected the name of a set \
             environment variable (export OPS_HOOK_SECRET with the signing secret, or remove \
             `secret_env` to send unsigned), got OPS_HOOK_SECRET, which is not set"
        ),
        "{error}"
    );
    let error = load_all(
        "notifications: {webhooks: {ops: {verbose: true}}}",
        &[],
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("`notifications.webhooks.ops.url` is required"),
        "{error}"
    );
    let error = load_all(
        "notifications: {webhooks: {ops: {url: 'ftp://x', sekret_env: X}}}",
        &[],
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("notifications.webhooks.ops.url"), "{error}");
    assert!(
        error.contains("did you mean `notifications.webhooks.ops.secret_env`?"),
        "{error}"
    );
}
