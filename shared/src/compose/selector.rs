//! Patch targets: kustomize's `target:` selector (group, version, kind, name and namespace as
//! anchored regular expressions, label and annotation selectors).

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A patch `target:` as written in a kustomization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// API group (`hyperloop.io`); exact match when set.
    #[serde(default)]
    pub group: Option<String>,
    /// API version (`v1`); exact match when set.
    #[serde(default)]
    pub version: Option<String>,
    /// Kind; exact match when set.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name; a regular expression anchored at both ends, as in kustomize.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace; anchored regular expression.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kubernetes label selector (`a=b,c in (d,e),!f`).
    #[serde(default)]
    pub label_selector: Option<String>,
    /// Kubernetes-style selector over annotations.
    #[serde(default)]
    pub annotation_selector: Option<String>,
}

/// Why a selector could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} `{text}`: {reason}")]
pub struct SelectorError {
    /// Which field of the target.
    pub field: &'static str,
    /// Its text.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

/// A selector ready to test resources against.
#[derive(Debug)]
pub(crate) struct CompiledSelector {
    sel: Selector,
    name: Option<Regex>,
    namespace: Option<Regex>,
    labels: Vec<Requirement>,
    annotations: Vec<Requirement>,
}

impl Selector {
    pub(crate) fn compile(&self) -> Result<CompiledSelector, SelectorError> {
        let rx = |field, t: &Option<String>| {
            t.as_deref()
                .map(|t| {
                    Regex::new(t).map_err(|reason| SelectorError {
                        field,
                        text: t.to_owned(),
                        reason,
                    })
                })
                .transpose()
        };
        let reqs = |field, t: &Option<String>| {
            t.as_deref()
                .map(|t| {
                    parse_requirements(t).map_err(|reason| SelectorError {
                        field,
                        text: t.to_owned(),
                        reason,
                    })
                })
                .transpose()
                .map(Option::unwrap_or_default)
        };
        Ok(CompiledSelector {
            name: rx("name", &self.name)?,
            namespace: rx("namespace", &self.namespace)?,
            labels: reqs("labelSelector", &self.label_selector)?,
            annotations: reqs("annotationSelector", &self.annotation_selector)?,
            sel: self.clone(),
        })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields = [
            ("group", &self.group),
            ("version", &self.version),
            ("kind", &self.kind),
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("labelSelector", &self.label_selector),
            ("annotationSelector", &self.annotation_selector),
        ];
        let parts: Vec<String> = fields
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

impl CompiledSelector {
    pub(crate) fn matches(&self, res: &Value) -> bool {
        let api = res.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let (group, version) = split_api_version(api);
        let kind = res.get("kind").and_then(Value::as_str).unwrap_or("");
        let meta = res.get("metadata");
        let str_at = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let map_at = |k: &str| -> BTreeMap<String, String> {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w.is_empty() || w == have)
        };
        eq(&self.sel.group, group)
            && eq(&self.sel.version, version)
            && eq(&self.sel.kind, kind)
            && self
                .name
                .as_ref()
                .is_none_or(|r| r.is_match(str_at("name")))
            && self
                .namespace
                .as_ref()
                .is_none_or(|r| r.is_match(str_at("namespace")))
            && requirements_match(&self.labels, &map_at("labels"))
            && requirements_match(&self.annotations, &map_at("annotations"))
    }
}

/// Splits `group/version` (`v1` alone is the core group).
pub(crate) fn split_api_version(api: &str) -> (&str, &str) {
    match api.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api),
    }
}

#[derive(Debug)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

fn requirements_match(reqs: &[Requirement], map: &BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Exists(k) => map.contains_key(k),
        Requirement::NotExists(k) => !map.contains_key(k),
        Requirement::In(k, vs) => map.get(k).is_some_and(|v| vs.contains(v)),
        Requirement::NotIn(k, vs) => map.get(k).is_none_or(|v| !vs.contains(v)),
    })
}

/// Parses the Kubernetes selector syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`, `k`, `!k`, joined by commas.
fn parse_requirements(text: &str) -> Result<Vec<Requirement>, String> {
    // Split on commas that are not inside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let list = |s: &str| -> Result<Vec<String>, String> {
        let inner = s
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or("expected (a,b,...)")?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let mut reqs = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotIn(k.trim().to_owned(), vec![v.trim().to_owned()])
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::In(k.trim().to_owned(), vec![v.trim().to_owned()])
        } else if let Some((k, v)) = part.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_owned(), list(v)?)
        } else if let Some((k, v)) = part.split_once(" in ") {
            Requirement::In(k.trim().to_owned(), list(v)?)
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().to_owned())
        } else if part.contains([' ', '(', ')']) {
            return Err(format!("cannot parse `{part}`"));
        } else {
            Requirement::Exists(part.to_owned())
        };
        reqs.push(req);
    }
    Ok(reqs)
}

/// A small backtracking regular-expression matcher covering the RE2 syntax people put in
/// patch targets: literals, `.`, classes `[a-z]`/`[^x]`, `\d \w \s` and escapes, groups
/// (`(...)`, `(?:...)`), alternation and the quantifiers `* + ? {m,n}` (greedy or lazy).
/// Matching is always anchored at both ends, as kustomize anchors target names.
#[derive(Debug)]
pub(crate) struct Regex {
    alt: Alt,
}

type Alt = Vec<Vec<Piece>>;

#[derive(Debug)]
struct Piece {
    atom: Atom,
    min: usize,
    max: usize,
}

#[derive(Debug)]
enum Atom {
    Char(char),
    Any,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    Group(Alt),
    Start,
    End,
}

impl Regex {
    pub(crate) fn new(pattern: &str) -> Result<Self, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut pos = 0;
        let alt = parse_alt(&chars, &mut pos)?;
        if pos != chars.len() {
            return Err(format!("unexpected `{}` at position {pos}", chars[pos]));
        }
        Ok(Self { alt })
    }

    pub(crate) fn is_match(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        match_alt(&self.alt, &chars, 0, &mut |end| end == chars.len())
    }
}

fn parse_alt(c: &[char], pos: &mut usize) -> Result<Alt, String> {
    let mut alt = vec![Vec::new()];
    while *pos < c.len() && c[*pos] != ')' {
        if c[*pos] == '|' {
            *pos += 1;
            alt.push(Vec::new());
            continue;
        }
        let atom = parse_atom(c, pos)?;
        let (mut min, mut max) = (1, 1);
        if let Some(&q) = c.get(*pos) {
            match q {
                '*' => (min, max) = (0, usize::MAX),
                '+' => (min, max) = (1, usize::MAX),
                '?' => (min, max) = (0, 1),
                '{' => {
                    let close = c[*pos..]
                        .iter()
                        .position(|&x| x == '}')
                        .ok_or("unclosed `{`")?
                        + *pos;
                    let body: String = c[*pos + 1..close].iter().collect();
                    let (a, b) = body
                        .split_once(',')
                        .map_or((body.as_str(), Some(body.as_str())), |(a, b)| (a, Some(b)));
                    min = a
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad repetition `{{{body}}}`"))?;
                    max = match b.map(str::trim) {
                        Some("") => usize::MAX,
                        Some(b) => b
                            .parse()
                            .map_err(|_| format!("bad repetition `{{{body}}}`"))?,
                        None => min,
                    };
                    *pos = close;
                }
                _ => {}
            }
            if matches!(q, '*' | '+' | '?' | '{') {
                *pos += 1;
                // Laziness does not change whether an anchored match exists.
                if c.get(*pos) == Some(&'?') {
                    *pos += 1;
                }
            }
        }
        if let Some(seq) = alt.last_mut() {
            seq.push(Piece { atom, min, max });
        }
    }
    Ok(alt)
}

fn parse_atom(c: &[char], pos: &mut usize) -> Result<Atom, String> {
    let ch = c[*pos];
    *pos += 1;
    Ok(match ch {
        '.' => Atom::Any,
        '^' => Atom::Start,
        '$' => Atom::End,
        '(' => {
            if c.get(*pos) == Some(&'?') {
                if c.get(*pos + 1) == Some(&':') {
                    *pos += 2;
                } else {
                    return Err("unsupported group flag".to_owned());
                }
            }
            let inner = parse_alt(c, pos)?;
            if c.get(*pos) != Some(&')') {
                return Err("missing `)`".to_owned());
            }
            *pos += 1;
            Atom::Group(inner)
        }
        '[' => {
            let negated = c.get(*pos) == Some(&'^');
            if negated {
                *pos += 1;
            }
            let mut items = Vec::new();
            let mut first = true;
            loop {
                let Some(&x) = c.get(*pos) else {
                    return Err("missing `]`".to_owned());
                };
                *pos += 1;
                if x == ']' && !first {
                    break;
                }
                first = false;
                let lo = if x == '\\' {
                    let e = *c.get(*pos).ok_or("trailing `\\`")?;
                    *pos += 1;
                    if let Some(class) = class_escape(e) {
                        items.extend(class);
                        continue;
                    }
                    e
                } else {
                    x
                };
                if c.get(*pos) == Some(&'-') && c.get(*pos + 1).is_some_and(|&h| h != ']') {
                    items.push((lo, c[*pos + 1]));
                    *pos += 2;
                } else {
                    items.push((lo, lo));
                }
            }
            Atom::Class { negated, items }
        }
        '\\' => {
            let e = *c.get(*pos).ok_or("trailing `\\`")?;
            *pos += 1;
            match class_escape(e) {
                Some(items) => Atom::Class {
                    negated: false,
                    items,
                },
                None if e.is_ascii_alphanumeric() => {
                    let negated = matches!(e, 'D' | 'W' | 'S');
                    match class_escape(e.to_ascii_lowercase()) {
                        Some(items) if negated => Atom::Class { negated, items },
                        _ => return Err(format!("unsupported escape `\\{e}`")),
                    }
                }
                None => Atom::Char(e),
            }
        }
        '*' | '+' | '?' | '{' => return Err(format!("missing argument to repetition `{ch}`")),
        other => Atom::Char(other),
    })
}

fn class_escape(e: char) -> Option<Vec<(char, char)>> {
    match e {
        'd' => Some(vec![('0', '9')]),
        'w' => Some(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')]),
        's' => Some(vec![
            (' ', ' '),
            ('\t', '\t'),
            ('\n', '\n'),
            ('\r', '\r'),
            ('\u{c}', '\u{c}'),
        ]),
        _ => None,
    }
}

fn match_alt(alt: &Alt, t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    alt.iter().any(|seq| match_seq(seq, t, pos, k))
}

fn match_seq(seq: &[Piece], t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    let Some((first, rest)) = seq.split_first() else {
        return k(pos);
    };
    match_repeat(first, 0, t, pos, &mut |p| match_seq(rest, t, p, k))
}

fn match_repeat(
    p: &Piece,
    count: usize,
    t: &[char],
    pos: usize,
    k: &mut dyn FnMut(usize) -> bool,
) -> bool {
    // Greedy: try one more repetition first (if it consumes input), then stop here.
    if count < p.max
        && match_atom(&p.atom, t, pos, &mut |next| {
            (next != pos || count < p.min) && match_repeat(p, count + 1, t, next, k)
        })
    {
        return true;
    }
    count >= p.min && k(pos)
}

fn match_atom(a: &Atom, t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match a {
        Atom::Char(c) => t.get(pos) == Some(c) && k(pos + 1),
        Atom::Any => t.get(pos).is_some_and(|&c| c != '\n') && k(pos + 1),
        Atom::Class { negated, items } => {
            t.get(pos)
                .is_some_and(|&c| items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated)
                && k(pos + 1)
        }
        Atom::Group(alt) => match_alt(alt, t, pos, k),
        Atom::Start => pos == 0 && k(pos),
        Atom::End => pos == t.len() && k(pos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_anchored_regular_expressions() {
        let cases = [
            ("impl", "implementer", false),
            ("impl.*", "implementer", true),
            ("implementer", "implementer", true),
            ("(pm|verifier)", "verifier", true),
            ("pm|verifier", "pmx", false),
            ("[a-z]+-resolver", "rebase-resolver", true),
            ("rebase-[^r].*", "rebase-resolver", false),
            ("agent-\\d{2}", "agent-07", true),
            ("agent-\\d{2}", "agent-7", false),
            ("a.c", "a.c", true),
            ("a\\.c", "abc", false),
            ("x*", "", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                Regex::new(pattern).expect("compiles").is_match(text),
                want,
                "{pattern} ~ {text}"
            );
        }
        assert!(Regex::new("(unclosed").is_err());
        assert!(Regex::new("*x").is_err());
    }

    #[test]
    fn targets_select_by_gvk_name_labels_and_annotations() {
        let res = json!({
            "apiVersion": "hyperloop.io/v1", "kind": "Agent",
            "metadata": {"name": "implementer", "labels": {"tier": "core"}, "annotations": {"team": "api"}}
        });
        let sel = |s: Selector| s.compile().expect("compiles").matches(&res);
        assert!(sel(Selector {
            kind: Some("Agent".into()),
            ..Default::default()
        }));
        assert!(!sel(Selector {
            kind: Some("Process".into()),
            ..Default::default()
        }));
        assert!(sel(Selector {
            group: Some("hyperloop.io".into()),
            version: Some("v1".into()),
            ..Default::default()
        }));
        assert!(!sel(Selector {
            version: Some("v2".into()),
            ..Default::default()
        }));
        assert!(sel(Selector {
            label_selector: Some("tier=core".into()),
            ..Default::default()
        }));
        assert!(sel(Selector {
            label_selector: Some("tier in (core, edge),!legacy".into()),
            ..Default::default()
        }));
        assert!(!sel(Selector {
            label_selector: Some("tier!=core".into()),
            ..Default::default()
        }));
        assert!(sel(Selector {
            annotation_selector: Some("team".into()),
            ..Default::default()
        }));
        assert!(!sel(Selector {
            annotation_selector: Some("team notin (api)".into()),
            ..Default::default()
        }));
    }
}
