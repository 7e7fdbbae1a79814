//! Where a task is in its pipeline, in a form that survives restarts and pipeline edits.
//!
//! A [`Position`] is an index path to a leaf step, the identity (kind and name) of that
//! step, and the [`Fingerprint`] of the pipeline the path was computed against. The path alone
//! makes duplicate step names unambiguous; the identity and fingerprint let the executor notice
//! that the pipeline changed underneath a task instead of silently running the wrong step.
//!
//! Persisted form (one short string, e.g. in a task record):
//! `0.1/agent:verifier@9f2c04e1a3b5d786` — dot-separated indices, `/`, kind `:` name, `@`,
//! 16 hex digits of the fingerprint.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The three kinds of leaf step. Loops are containers and never a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepKind {
    Agent,
    Gate,
    Action,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Agent => "agent",
            StepKind::Gate => "gate",
            StepKind::Action => "action",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(StepKind::Agent),
            "gate" => Some(StepKind::Gate),
            "action" => Some(StepKind::Action),
            _ => None,
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a leaf step: its kind and its name (agent role, gate or action name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepRef {
    pub kind: StepKind,
    pub name: String,
}

impl StepRef {
    pub fn new(kind: StepKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.name)
    }
}

/// Longest accepted step name. Names travel in positions, events and branch-less labels, so
/// keep them short.
pub const MAX_STEP_NAME_LEN: usize = 100;

/// Step names are restricted to the characters of Kubernetes-style resource names (plus `_`
/// and `.`), which keeps the persisted position format unambiguous without escaping.
pub(crate) fn is_valid_step_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_STEP_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A stable 64-bit hash of a pipeline's structure (kinds, names, nesting). Stable across
/// Rust releases and platforms because it is FNV-1a over our own canonical encoding, not
/// `std::hash`, whose output may change between releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// 64-bit FNV-1a (Fowler–Noll–Vo), constants from the reference definition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Length-prefixed so that `["ab", "c"]` and `["a", "bc"]` hash differently.
    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(&u64::try_from(s.len()).unwrap_or(u64::MAX).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    pub(crate) fn finish(self) -> Fingerprint {
        Fingerprint(self.0)
    }
}

/// A task's place in its pipeline. See the module docs for the persisted form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub(crate) path: Vec<u32>,
    pub(crate) step: StepRef,
    pub(crate) pipeline: Fingerprint,
}

impl Position {
    /// Index path from the top-level pipeline down to the leaf, e.g. `[0, 1]` is the second
    /// step inside the first top-level step (a loop).
    pub fn path(&self) -> &[u32] {
        &self.path
    }

    /// The identity of the step this position points at.
    pub fn step(&self) -> &StepRef {
        &self.step
    }

    /// Fingerprint of the pipeline this position was computed against.
    pub fn pipeline(&self) -> Fingerprint {
        self.pipeline
    }

    /// The path in the notation used by validation messages: `pipeline[0].loop[1]`.
    pub fn path_label(&self) -> String {
        path_label(&self.path)
    }
}

pub(crate) fn path_label(path: &[u32]) -> String {
    let mut out = String::from("pipeline");
    for (depth, i) in path.iter().enumerate() {
        if depth > 0 {
            out.push_str(".loop");
        }
        out.push_str(&format!("[{i}]"));
    }
    out
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, i) in self.path.iter().enumerate() {
            if n > 0 {
                f.write_str(".")?;
            }
            write!(f, "{i}")?;
        }
        write!(
            f,
            "/{}:{}@{}",
            self.step.kind, self.step.name, self.pipeline
        )
    }
}

/// Why a persisted position string could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pipeline position {input:?}: {reason}; expected e.g. `0.1/agent:verifier@9f2c04e1a3b5d786`"
)]
pub struct ParsePositionError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ParsePositionError {
            input: s.to_owned(),
            reason,
        };
        let (rest, hex) = s
            .rsplit_once('@')
            .ok_or_else(|| bad("missing `@<fingerprint>`"))?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the fingerprint must be 16 hex digits"));
        }
        let fingerprint = u64::from_str_radix(hex, 16)
            .map_err(|_| bad("the fingerprint must be 16 hex digits"))?;
        let (path, step) = rest
            .split_once('/')
            .ok_or_else(|| bad("missing `/` between path and step"))?;
        let path = path
            .split('.')
            .map(|i| {
                if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("the path must be dot-separated indices"));
                }
                i.parse::<u32>()
                    .map_err(|_| bad("a path index is too large"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (kind, name) = step
            .split_once(':')
            .ok_or_else(|| bad("missing `:` between step kind and name"))?;
        let kind = StepKind::parse(kind)
            .ok_or_else(|| bad("the step kind must be agent, gate or action"))?;
        if !is_valid_step_name(name) {
            return Err(bad("invalid step name"));
        }
        Ok(Position {
            path,
            step: StepRef::new(kind, name),
            pipeline: Fingerprint(fingerprint),
        })
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(path: &[u32], kind: StepKind, name: &str, fp: u64) -> Position {
        Position {
            path: path.to_vec(),
            step: StepRef::new(kind, name),
            pipeline: Fingerprint(fp),
        }
    }

    #[test]
    fn positions_render_compactly_and_parse_back() {
        let p = pos(&[0, 1], StepKind::Agent, "verifier", 0x9f2c_04e1_a3b5_d786);
        assert_eq!(p.to_string(), "0.1/agent:verifier@9f2c04e1a3b5d786");
        assert_eq!(p.to_string().parse::<Position>(), Ok(p.clone()));
        assert_eq!(p.path_label(), "pipeline[0].loop[1]");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"0.1/agent:verifier@9f2c04e1a3b5d786\"");
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
    }

    #[test]
    fn malformed_positions_are_rejected_with_a_reason() {
        for bad in [
            "",
            "0/agent:x",
            "0/agent:x@123",
            "0/agent:x@zzzzzzzzzzzzzzzz",
            "agent:x@0000000000000000",
            "/agent:x@0000000000000000",
            "0..1/agent:x@0000000000000000",
            "0/loop:x@0000000000000000",
            "0/agent@0000000000000000",
            "0/agent:@0000000000000000",
            "0/agent:a b@0000000000000000",
            "99999999999/agent:x@0000000000000000",
        ] {
            assert!(
                bad.parse::<Position>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv1a::new();
            h.bytes(s.as_bytes());
            h.finish().0
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn step_names_are_limited_to_resource_name_characters() {
        for good in ["implementer", "merge-pr", "a_b.c", "X1"] {
            assert!(is_valid_step_name(good), "{good}");
        }
        for bad in ["", "a b", "a/b", "a:b", "a@b", "ü", &"x".repeat(101)] {
            assert!(!is_valid_step_name(bad), "{bad}");
        }
    }
}
