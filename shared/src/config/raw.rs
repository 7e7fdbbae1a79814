//! Stage one: gather every value the user gave, from the file, the environment and the command
//! line, keyed by canonical path. Nothing is typed yet; unknown keys and malformed YAML are
//! caught here.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::Overrides;
use super::error::{ConfigError, Origin};
use super::keys::{self, KEYS};
use super::parse::{Input, describe_yaml};

/// One value as given, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawValue {
    pub origin: Origin,
    pub input: Input,
}

/// Every given value per canonical key, lowest precedence first: file, environment, CLI.
#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub values: BTreeMap<String, Vec<RawValue>>,
}

impl RawConfig {
    fn push(&mut self, key: String, origin: Origin, input: Input) {
        self.values
            .entry(key)
            .or_default()
            .push(RawValue { origin, input });
    }

    /// Whether anything was given for a key under `section` (e.g. `observability.matrix`).
    pub fn has_section(&self, section: &str) -> bool {
        let prefix = format!("{section}.");
        self.values.keys().any(|k| k.starts_with(&prefix))
    }

    /// The distinct middle segments of keys `prefix.<name>.…`: the role names.
    pub fn names_under(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("{prefix}.");
        let names: std::collections::BTreeSet<String> = self
            .values
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter_map(|rest| rest.split_once('.').map(|(name, _)| name.to_owned()))
            .collect();
        names.into_iter().collect()
    }

    /// Reads the file. Malformed YAML or a non-mapping top level is returned at once, since
    /// nothing below it can be trusted; key problems are added to `errors` and reading goes on.
    pub fn read_file(
        &mut self,
        text: &str,
        file: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Result<(), ConfigError> {
        let document: Value =
            serde_yaml::from_str(text).map_err(|e| syntax_error(file, text, &e))?;
        match document {
            // An empty file (or only comments) means "all defaults".
            Value::Null => Ok(()),
            Value::Mapping(map) => {
                self.walk(file, "", &map, errors);
                Ok(())
            }
            other => Err(ConfigError::NotAMapping {
                file: file.to_owned(),
                found: describe_yaml(&other),
            }),
        }
    }

    fn walk(&mut self, file: &str, prefix: &str, map: &Mapping, errors: &mut Vec<ConfigError>) {
        for (name, value) in map {
            let name = match name {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => describe_yaml(other),
            };
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            let origin = || Origin::File {
                file: file.to_owned(),
                key: path.clone(),
            };
            // `runtime` is both a flat key (`runtime: local`) and a section, so a mapping value
            // decides: descend into sections, otherwise the value belongs to the key.
            match (keys::canonical(&path), keys::is_section(&path), value) {
                (_, true, Value::Mapping(inner)) => self.walk(file, &path, inner, errors),
                // `key:` with nothing after it (or `~`) means "use the default".
                // ... except `target.repo: null`, which forces local landing.
                (Some(canonical), _, Value::Null) if canonical == "target.repo" => {
                    self.push(canonical, origin(), Input::Yaml(Value::Null));
                }
                (Some(_), _, Value::Null) | (None, true, Value::Null) => {}
                (Some(canonical), _, value) => {
                    self.push(canonical, origin(), Input::Yaml(value.clone()));
                }
                (None, true, other) => errors.push(ConfigError::InvalidValue {
                    at: origin(),
                    expected: "a mapping of settings (a section)".to_owned(),
                    found: describe_yaml(other),
                }),
                (None, false, _) => errors.push(ConfigError::UnknownKey {
                    file: file.to_owned(),
                    suggestion: keys::suggest(&path),
                    key: path,
                }),
            }
        }
    }

    /// Picks up `HYPERLOOP_*` variables named in the key table. An empty variable counts as
    /// unset, the usual shell convention for clearing one.
    pub fn read_env(&mut self, env: &BTreeMap<String, String>) {
        for key in KEYS {
            let Some(var) = key.env_var() else { continue };
            if let Some(value) = env.get(&var).filter(|v| !v.is_empty()) {
                let origin = Origin::Env { var, key: key.path };
                self.push(key.path.to_owned(), origin, Input::Text(value.clone()));
            }
        }
    }

    pub fn read_overrides(&mut self, overrides: &Overrides) {
        let mut cli = |flag: &'static str, key: &'static str, value: Option<Value>| {
            if let Some(value) = value {
                self.push(
                    key.to_owned(),
                    Origin::Cli { flag, key },
                    Input::Yaml(value),
                );
            }
        };
        let text = |s: &Option<String>| s.clone().map(Value::String);
        let number = |n: Option<u32>| n.map(|n| Value::Number(n.into()));
        cli("--repo", "target.repo", text(&overrides.repo));
        cli(
            "--base-branch",
            "target.base_branch",
            text(&overrides.base_branch),
        );
        cli(
            "--max-workers",
            "runtime.max_workers",
            number(overrides.max_workers),
        );
        cli(
            "--local-workers",
            "local_workers",
            number(overrides.local_workers),
        );
        cli("--listen", "listen", text(&overrides.listen));
        cli(
            "--etcd",
            "etcd.endpoints",
            overrides
                .etcd_endpoints
                .clone()
                .map(|urls| Value::Sequence(urls.into_iter().map(Value::String).collect())),
        );
        cli("--etcd-prefix", "etcd.prefix", text(&overrides.etcd_prefix));
        cli("--advertise", "advertise", text(&overrides.advertise));
        cli("--tls-cert", "tls.cert", text(&overrides.tls_cert));
        cli("--tls-key", "tls.key", text(&overrides.tls_key));
        cli(
            "--tls-client-ca",
            "tls.client_ca",
            text(&overrides.tls_client_ca),
        );
        cli("--overlay", "overlay", text(&overrides.overlay));
        cli("--base-ref", "base_ref", text(&overrides.base_ref));
        cli(
            "--log-format",
            "observability.log_format",
            text(&overrides.log_format),
        );
    }
}

fn syntax_error(file: &str, text: &str, error: &serde_yaml::Error) -> ConfigError {
    // The library appends " at line L column C"; the location is already in our prefix.
    let message = error.to_string();
    let message = match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    let reported = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let (line, column) = duplicate_key_location(text, &message, reported.0).unwrap_or(reported);
    ConfigError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// The library reports a duplicate key at the start of its mapping; point at the duplicate
/// instead: the second line from there on that starts with that key.
fn duplicate_key_location(text: &str, message: &str, from_line: usize) -> Option<(usize, usize)> {
    let (_, rest) = message.split_once("duplicate entry with key \"")?;
    let key = rest.strip_suffix('"')?;
    let prefix = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(from_line.saturating_sub(1))
        .filter_map(|(index, line)| {
            let body = line.trim_start();
            body.starts_with(&prefix)
                .then(|| (index + 1, line.len() - body.len() + 1))
        })
        .nth(1)
}
