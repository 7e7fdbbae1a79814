//! Turning one raw value (a YAML node or an environment string) into a typed value.
//! Every parser says what it expected, so errors can tell the user what to write instead.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use serde_yaml::Value;

/// A value before typing. Environment variables and YAML need different leniency: `"6"` is a
/// fine `HYPERLOOP_MAX_WORKERS` but a quoted string where the file wants a number is a mistake.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    Yaml(Value),
    Text(String),
}

/// Why one value was rejected; the caller adds where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Invalid {
    Type {
        expected: String,
        found: String,
    },
    Range {
        min: String,
        max: String,
        found: String,
    },
    AmbientRuntime,
}

pub(crate) type Parsed<T> = Result<T, Invalid>;

fn wrong(expected: impl Into<String>, input: &Input) -> Invalid {
    Invalid::Type {
        expected: expected.into(),
        found: describe(input),
    }
}

/// A short description of what the user wrote, for "got …".
pub(crate) fn describe(input: &Input) -> String {
    match input {
        Input::Text(text) => format!("{text:?}"),
        Input::Yaml(value) => describe_yaml(value),
    }
}

pub(crate) fn describe_yaml(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn in_range<T: PartialOrd + Display>(value: T, min: T, max: T) -> Parsed<T> {
    if value < min || value > max {
        return Err(Invalid::Range {
            min: min.to_string(),
            max: max.to_string(),
            found: value.to_string(),
        });
    }
    Ok(value)
}

/// A plain string. YAML numbers are accepted as their text (`base_branch: 2024`).
pub(crate) fn string(input: &Input) -> Parsed<String> {
    let text = match input {
        Input::Text(text) => text.clone(),
        Input::Yaml(Value::String(s)) => s.clone(),
        Input::Yaml(Value::Number(n)) => n.to_string(),
        other => return Err(wrong("a string", other)),
    };
    if text.trim().is_empty() {
        return Err(wrong("a non-empty string", input));
    }
    Ok(text)
}

/// A string further checked by `valid`, which describes the expected shape on failure.
pub(crate) fn string_where(
    expected: &'static str,
    valid: fn(&str) -> bool,
) -> impl Fn(&Input) -> Parsed<String> {
    move |input| {
        let text = string(input).map_err(|_| wrong(expected, input))?;
        if valid(&text) {
            Ok(text)
        } else {
            Err(wrong(expected, input))
        }
    }
}

/// A whole number in `min..=max`.
pub(crate) fn int(min: u32, max: u32) -> impl Fn(&Input) -> Parsed<u32> {
    move |input| {
        let number: i128 = match input {
            Input::Yaml(Value::Number(n)) => match n.as_i64() {
                Some(i) => i.into(),
                None => match n.as_u64() {
                    Some(u) => u.into(),
                    None => return Err(wrong("a whole number", input)),
                },
            },
            Input::Text(text) => text
                .trim()
                .parse()
                .map_err(|_| wrong("a whole number", input))?,
            other => return Err(wrong("a whole number", other)),
        };
        in_range(number, min.into(), max.into()).map(|n| u32::try_from(n).unwrap_or(max))
    }
}

/// A positive, finite number (money).
pub(crate) fn positive_float(input: &Input) -> Parsed<f64> {
    let number = match input {
        Input::Yaml(Value::Number(n)) => n.as_f64(),
        Input::Text(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    match number {
        Some(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(wrong("a number greater than 0, like 2.5", input)),
    }
}

pub(crate) fn boolean(input: &Input) -> Parsed<bool> {
    match input {
        Input::Yaml(Value::Bool(b)) => Ok(*b),
        Input::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(wrong("true or false", input)),
        },
        other => Err(wrong("true or false", other)),
    }
}

/// A duration in `min..=max`: whole seconds, or a string like `90s`, `30m`, `1h30m`.
pub(crate) fn duration(min: Duration, max: Duration) -> impl Fn(&Input) -> Parsed<Duration> {
    const EXPECTED: &str = "a duration like 30s or 5m";
    move |input| {
        let parsed = match input {
            Input::Yaml(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
            Input::Yaml(Value::String(s)) => parse_duration(s),
            Input::Text(text) => parse_duration(text),
            _ => None,
        };
        let value = parsed.ok_or_else(|| wrong(EXPECTED, input))?;
        if value < min || value > max {
            return Err(Invalid::Range {
                min: format_duration(min),
                max: format_duration(max),
                found: format_duration(value),
            });
        }
        Ok(value)
    }
}

/// Parses `45`, `90s`, `30m`, `2h`, `1h30m`, `1h0m5s`. Units go from hours down to seconds,
/// each at most once, so `30m1h` (almost certainly a typo) is rejected.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = u64::MAX;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if digits.is_empty() || unit >= last_unit {
            return None;
        }
        let amount: u64 = digits.parse().ok()?;
        total = total.checked_add(amount.checked_mul(unit)?)?;
        digits.clear();
        last_unit = unit;
    }
    // Trailing digits without a unit (`1h30`) are ambiguous; so is an empty string.
    if !digits.is_empty() || last_unit == u64::MAX {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// The inverse of [`parse_duration`] for whole seconds: `5400s` → `1h30m`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// How a list is written in an environment variable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ListSyntax {
    /// `a,b,c`: names and URLs never contain commas.
    Commas,
    /// `prog --flag value`: a command line; use a JSON array when an argument has spaces.
    Words,
}

/// A list of non-empty strings, each checked by `item`. In an environment variable it is a
/// JSON array or, more conveniently, separated per `syntax`.
pub(crate) fn list(
    syntax: ListSyntax,
    expected: &'static str,
    item: fn(&str) -> bool,
) -> impl Fn(&Input) -> Parsed<Vec<String>> {
    move |input| {
        let items: Vec<String> = match input {
            Input::Yaml(Value::Sequence(seq)) => seq
                .iter()
                .map(|v| string(&Input::Yaml(v.clone())))
                .collect::<Result<_, _>>()
                .map_err(|_| wrong(expected, input))?,
            Input::Text(text) if text.trim_start().starts_with('[') => {
                serde_json::from_str(text).map_err(|_| wrong(expected, input))?
            }
            Input::Text(text) => match syntax {
                ListSyntax::Commas => text
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                ListSyntax::Words => text.split_whitespace().map(str::to_owned).collect(),
            },
            other => return Err(wrong(expected, other)),
        };
        if items.iter().all(|i| !i.trim().is_empty() && item(i)) {
            Ok(items)
        } else {
            Err(wrong(expected, input))
        }
    }
}

/// One of a fixed set of words, e.g. `squash | merge`.
pub(crate) fn choice<T: Copy>(
    choices: &'static [(&'static str, T)],
) -> impl Fn(&Input) -> Parsed<T> {
    move |input| {
        let text = match input {
            Input::Yaml(Value::String(s)) => Some(s.as_str()),
            Input::Text(t) => Some(t.trim()),
            _ => None,
        };
        text.and_then(|t| choices.iter().find(|(name, _)| *name == t))
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
                wrong(format!("one of {}", names.join(", ")), input)
            })
    }
}

/// Worker labels: a mapping (`{gpu: a100}`) or a list of `k=v` (`[gpu=a100]`, or
/// `gpu=a100,os=linux` in an environment variable).
pub(crate) fn labels(input: &Input) -> Parsed<BTreeMap<String, String>> {
    let expected = "labels like {gpu: a100} or [gpu=a100, os=linux]";
    if let Input::Yaml(Value::Mapping(map)) = input {
        return map
            .iter()
            .map(|(k, v)| {
                let key = string(&Input::Yaml(k.clone()))?;
                let value = string(&Input::Yaml(v.clone()))?;
                Ok((key, value))
            })
            .collect::<Result<_, Invalid>>()
            .map_err(|_| wrong(expected, input));
    }
    let pairs = list(ListSyntax::Commas, expected, |item| {
        item.split_once('=')
            .is_some_and(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
    })(input)?;
    Ok(pairs
        .iter()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

pub(crate) fn socket_addr(input: &Input) -> Parsed<SocketAddr> {
    let expected = "an IP address and port like 127.0.0.1:7070 or [::1]:7070";
    let text = string(input).map_err(|_| wrong(expected, input))?;
    text.trim().parse().map_err(|_| wrong(expected, input))
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a POSIX shell accepts as a variable name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// hyperloop's own secrets (forge tokens, every `HYPERLOOP_*` setting, the join token among
/// them): the repository's `env_passthrough` never hands these to an agent; only a worker's
/// operator can (`hyperloop-worker --pass-env`).
pub fn is_hyperloop_secret(name: &str) -> bool {
    matches!(name, "GITHUB_TOKEN" | "GH_TOKEN") || name.starts_with("HYPERLOOP_")
}

/// An `env_passthrough` entry: a variable name that is not one of hyperloop's secrets.
pub(crate) fn is_passable_env_name(name: &str) -> bool {
    is_env_name(name) && !is_hyperloop_secret(name)
}

/// `owner/repo` with GitHub's allowed characters.
pub(crate) fn is_repo(repo: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(repo.split_once('/'), Some((owner, name)) if valid(owner) && valid(name))
}

/// A conservative subset of `git check-ref-format` for branch names.
pub(crate) fn is_branch(name: &str) -> bool {
    is_branch_prefix(name) && !name.ends_with('/')
}

/// Like [`is_branch`], but a trailing `/` is fine: task ids are appended to it.
pub(crate) fn is_branch_prefix(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
}

/// A relative path inside the repository, without `..`: agents and the coordinator resolve
/// it against the checkout, and it must not escape it.
pub(crate) fn is_repo_relative_path(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && !path.split('/').any(|part| part == "..")
        && !path.chars().any(char::is_control)
}

pub(crate) fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
}

/// An etcd endpoint: `host:port` or an http(s) URL.
pub(crate) fn is_etcd_endpoint(endpoint: &str) -> bool {
    if endpoint.contains("://") {
        return is_http_url(endpoint);
    }
    matches!(endpoint.rsplit_once(':'), Some((host, port))
        if !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok())
}

/// A role name as used in `agent.roles.<role>`: an agent's `name`.
pub(crate) fn is_role_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Input {
        Input::Yaml(serde_yaml::from_str(text).expect("test YAML"))
    }

    fn text(text: &str) -> Input {
        Input::Text(text.to_owned())
    }

    #[test]
    fn durations_parse_seconds_and_unit_strings() {
        let check = |input: &str, expected: Option<u64>| {
            assert_eq!(
                parse_duration(input),
                expected.map(Duration::from_secs),
                "{input:?}"
            );
        };
        check("0", Some(0));
        check("45", Some(45));
        check("90s", Some(90));
        check("30m", Some(1800));
        check("2h", Some(7200));
        check("1h30m", Some(5400));
        check("1h0m5s", Some(3605));
        check(" 5m ", Some(300));
        check("", None);
        check("soon", None);
        check("5", Some(5));
        check("1h30", None);
        check("30m1h", None);
        check("5mm", None);
        check("m", None);
        check("1.5h", None);
        check("-5s", None);
        check("99999999999999999999h", None);
    }

    #[test]
    fn durations_format_back_to_the_shortest_form() {
        let check = |secs: u64, expected: &str| {
            assert_eq!(format_duration(Duration::from_secs(secs)), expected);
            assert_eq!(parse_duration(expected), Some(Duration::from_secs(secs)));
        };
        check(0, "0s");
        check(30, "30s");
        check(60, "1m");
        check(1800, "30m");
        check(5400, "1h30m");
        check(3605, "1h5s");
        check(90061, "25h1m1s");
    }

    proptest::proptest! {
        #[test]
        fn formatted_durations_parse_back(secs in 0u64..10_000_000) {
            let duration = Duration::from_secs(secs);
            proptest::prop_assert_eq!(parse_duration(&format_duration(duration)), Some(duration));
        }
    }

    #[test]
    fn duration_values_from_yaml_and_env() {
        let parse = duration(Duration::from_secs(1), Duration::from_secs(3600));
        let check = |input: Input, expected: Parsed<u64>| {
            assert_eq!(parse(&input).map(|d| d.as_secs()), expected, "{input:?}");
        };
        let type_error = |found: &str| {
            Err(Invalid::Type {
                expected: "a duration like 30s or 5m".into(),
                found: found.into(),
            })
        };
        check(yaml("30"), Ok(30));
        check(yaml("30s"), Ok(30));
        check(yaml("'1h'"), Ok(3600));
        check(text("90"), Ok(90));
        check(text("2m"), Ok(120));
        check(yaml("soon"), type_error("\"soon\""));
        check(yaml("-3"), type_error("-3"));
        check(yaml("1.5"), type_error("1.5"));
        check(yaml("[1]"), type_error("a list"));
        check(
            yaml("0"),
            Err(Invalid::Range {
                min: "1s".into(),
                max: "1h".into(),
                found: "0s".into(),
            }),
        );
        check(
            text("2h"),
            Err(Invalid::Range {
                min: "1s".into(),
                max: "1h".into(),
                found: "2h".into(),
            }),
        );
    }

    #[test]
    fn integers_are_strict_in_yaml_and_parsed_from_env() {
        let parse = int(1, 1024);
        let check = |input: Input, expected: Parsed<u32>| {
            assert_eq!(parse(&input), expected, "{input:?}");
        };
        let range = |found: &str| {
            Err(Invalid::Range {
                min: "1".into(),
                max: "1024".into(),
                found: found.into(),
            })
        };
        let type_error = |found: &str| {
            Err(Invalid::Type {
                expected: "a whole number".into(),
                found: found.into(),
            })
        };
        check(yaml("6"), Ok(6));
        check(text(" 6 "), Ok(6));
        check(yaml("0"), range("0"));
        check(yaml("-1"), range("-1"));
        check(yaml("1025"), range("1025"));
        check(yaml("18446744073709551615"), range("18446744073709551615"));
        check(
            text("99999999999999999999999"),
            range("99999999999999999999999"),
        );
        check(yaml("'6'"), type_error("\"6\""));
        check(yaml("2.5"), type_error("2.5"));
        check(yaml("true"), type_error("true"));
        check(text("six"), type_error("\"six\""));
    }

    #[test]
    fn booleans_floats_and_strings() {
        assert_eq!(boolean(&yaml("true")), Ok(true));
        assert_eq!(boolean(&text("off")), Ok(false));
        assert_eq!(boolean(&text("TRUE")), Ok(true));
        assert!(
            boolean(&yaml("'yes'")).is_err(),
            "quoted strings are not booleans in YAML"
        );
        assert!(boolean(&text("maybe")).is_err());

        assert_eq!(positive_float(&yaml("2.5")), Ok(2.5));
        assert_eq!(positive_float(&yaml("3")), Ok(3.0));
        assert_eq!(positive_float(&text("0.75")), Ok(0.75));
        for bad in [
            yaml("0"),
            yaml("-1.0"),
            yaml(".nan"),
            yaml(".inf"),
            text("lots"),
        ] {
            assert!(positive_float(&bad).is_err(), "{bad:?}");
        }

        assert_eq!(string(&yaml("main")), Ok("main".into()));
        assert_eq!(string(&yaml("2024")), Ok("2024".into()));
        assert!(string(&yaml("''")).is_err());
        assert!(string(&yaml("[a]")).is_err());
        assert!(string(&yaml("true")).is_err());
    }

    #[test]
    fn lists_from_yaml_json_and_separated_env() {
        let names = list(ListSyntax::Commas, "a list of names", is_env_name);
        assert_eq!(names(&yaml("[A, B_2]")), Ok(vec!["A".into(), "B_2".into()]));
        assert_eq!(names(&text("A, B_2,")), Ok(vec!["A".into(), "B_2".into()]));
        assert_eq!(names(&text(r#"["A"]"#)), Ok(vec!["A".into()]));
        assert_eq!(names(&yaml("[]")), Ok(vec![]));
        assert!(names(&yaml("[1A]")).is_err());
        assert!(names(&yaml("A")).is_err(), "a bare string is not a list");
        assert!(names(&text("[broken")).is_err());

        let argv = list(ListSyntax::Words, "a command", |_| true);
        assert_eq!(
            argv(&text("./agent --fast")),
            Ok(vec!["./agent".into(), "--fast".into()])
        );
        assert_eq!(
            argv(&text(r#"["my agent", "-x"]"#)),
            Ok(vec!["my agent".into(), "-x".into()])
        );
    }

    #[test]
    fn choices_list_the_allowed_words() {
        let parse = choice(&[("squash", 1), ("merge", 2)]);
        assert_eq!(parse(&yaml("merge")), Ok(2));
        assert_eq!(parse(&text("squash")), Ok(1));
        assert_eq!(
            parse(&yaml("rebase")),
            Err(Invalid::Type {
                expected: "one of `squash`, `merge`".into(),
                found: "\"rebase\"".into()
            })
        );
    }

    #[test]
    fn shape_checks() {
        let check = |f: fn(&str) -> bool, good: &[&str], bad: &[&str]| {
            for g in good {
                assert!(f(g), "should accept {g:?}");
            }
            for b in bad {
                assert!(!f(b), "should reject {b:?}");
            }
        };
        check(
            is_env_name,
            &["PATH", "_X", "a1"],
            &["", "1A", "A-B", "A B"],
        );
        check(
            is_repo,
            &["org/repo", "a.b/c_d-e"],
            &["repo", "a/b/c", "/repo", "a b/c"],
        );
        check(
            is_branch,
            &["main", "release/1.0", "feature-x"],
            &["", "-x", "a..b", "a b", "x.lock", "x/", "a~1", "@{u}x@{"],
        );
        check(
            is_branch_prefix,
            &["hyperloop/", "hl-"],
            &["", "/x", "a..b"],
        );
        check(
            is_repo_relative_path,
            &["specs", "docs/specs", "."],
            &["/abs", "../up", "a/../b"],
        );
        check(
            is_etcd_endpoint,
            &["localhost:2379", "http://10.0.0.1:2379", "https://etcd"],
            &["localhost", "ftp://x", "host:port", ":2379"],
        );
        check(
            is_role_name,
            &["verifier", "rebase-resolver", "pm_2"],
            &["", "a.b", "a b"],
        );
        check(
            is_http_url,
            &["https://matrix.org", "http://x:4317"],
            &["matrix.org", "https://"],
        );
    }
}
