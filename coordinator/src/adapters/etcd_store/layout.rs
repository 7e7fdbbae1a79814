//! Where each record lives under the store's prefix (API Boundary: the etcd key layout; the
//! embedded store mirrors it). Pure: names in, names out.
//!
//! ```text
//! <prefix>/revision                          {"revision":N,"next_event_seq":M}
//! <prefix>/meta                              Meta
//! <prefix>/tasks/<id>                        Task
//! <prefix>/reviews/<id>/<revision, 20 digits>.<index in batch, 10 digits>    Review
//! <prefix>/specs/<path, percent-encoded>     SpecRecord
//! <prefix>/assignments/<id>                  Assignment
//! <prefix>/events/<seq, 20 digits>           Event
//! <prefix>/election/<lease id, hex>          a candidate's gRPC URL (etcd's election API,
//!                                            see `etcd_election`; not a store record)
//! ```
//!
//! Values are JSON. Ids are plain decimal (`tasks/42`); everything whose keys must sort in
//! order (reviews, events) is zero-padded, because etcd ranges sort bytewise. A review's
//! order is the store revision that added it plus its index in that batch, so adding one
//! needs no read of the existing reviews.

use hyperloop_shared::model::{SpecPath, TaskId};
use serde::{Deserialize, Serialize};

use crate::ports::state_store::Revision;

pub const REVISION: &str = "revision";
pub const META: &str = "meta";
pub const TASKS: &str = "tasks/";
pub const REVIEWS: &str = "reviews/";
pub const SPECS: &str = "specs/";
pub const ASSIGNMENTS: &str = "assignments/";
pub const EVENTS: &str = "events/";
/// The election's name: candidates' keys are `election/<lease id>`, owned by etcd's election
/// API. They sort between `assignments/` and `events/`, so a load skips them by range.
pub const ELECTION: &str = "election";

/// The first candidate key of the election.
pub fn election_start() -> String {
    format!("{ELECTION}/")
}

/// The record under `<prefix>/revision`: the store version every `apply` compares, and the
/// journal counter, so numbering an event needs no extra key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub revision: Revision,
    /// The seq the next journaled event gets (events start at 1).
    pub next_event_seq: u64,
}

impl RevisionRecord {
    /// What an absent `revision` key means: an empty store.
    pub const EMPTY: RevisionRecord = RevisionRecord {
        revision: Revision(0),
        next_event_seq: 1,
    };
}

/// A store prefix in canonical form: no trailing slash, every key is `<prefix>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// `"/hyperloop/"`, `"/hyperloop"` and `"hyperloop"` are different prefixes only in
    /// their leading slash; a trailing one is dropped.
    pub fn new(prefix: &str) -> Self {
        Self(prefix.trim_end_matches('/').to_owned())
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.0)
    }

    /// The first key after every key of this store (`<prefix>0`, as `'0'` follows `'/'`).
    pub fn end(&self) -> String {
        format!("{}0", self.0)
    }

    /// The part of `key` after `<prefix>/`, if `key` belongs to this store.
    pub fn name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.0.as_str())?.strip_prefix('/')
    }
}

pub fn task(id: TaskId) -> String {
    format!("{TASKS}{}", id.0)
}

pub fn review(id: TaskId, revision: Revision, index: usize) -> String {
    format!("{REVIEWS}{}/{:020}.{index:010}", id.0, revision.0)
}

pub fn spec(path: &SpecPath) -> String {
    format!("{SPECS}{}", encode_path(path.as_str()))
}

pub fn assignment(id: TaskId) -> String {
    format!("{ASSIGNMENTS}{}", id.0)
}

pub fn event(seq: u64) -> String {
    format!("{EVENTS}{seq:020}")
}

/// The first key after every event key (`events0`, as `'0'` follows `'/'`).
pub fn events_end() -> String {
    "events0".to_owned()
}

/// Percent-encodes every byte but `[A-Za-z0-9._/-]`, so a key stays printable for
/// `etcdctl` and a path with `%` or spaces maps to exactly one key.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'/' | b'-' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A decimal id as written by [`task`] and friends; `None` for anything else (leading
/// zeros included, so every id has exactly one key).
pub fn parse_id(text: &str) -> Option<TaskId> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(TaskId)
}

/// Which record a name (the key after the prefix) holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'n> {
    Revision,
    Meta,
    Task(TaskId),
    Review(TaskId),
    Spec(&'n str),
    Assignment(TaskId),
    Event(u64),
}

/// Classifies a name; `None` if no version of the layout uses it.
pub fn classify(name: &str) -> Option<Record<'_>> {
    match name {
        REVISION => return Some(Record::Revision),
        META => return Some(Record::Meta),
        _ => {}
    }
    if let Some(id) = name.strip_prefix(TASKS) {
        return parse_id(id).map(Record::Task);
    }
    if let Some(rest) = name.strip_prefix(REVIEWS) {
        let (id, order) = rest.split_once('/')?;
        let (revision, index) = order.split_once('.')?;
        let well_formed = revision.len() == 20
            && index.len() == 10
            && revision
                .bytes()
                .chain(index.bytes())
                .all(|b| b.is_ascii_digit());
        return well_formed
            .then(|| parse_id(id))
            .flatten()
            .map(Record::Review);
    }
    if let Some(path) = name.strip_prefix(SPECS) {
        return (!path.is_empty()).then_some(Record::Spec(path));
    }
    if let Some(id) = name.strip_prefix(ASSIGNMENTS) {
        return parse_id(id).map(Record::Assignment);
    }
    if let Some(seq) = name.strip_prefix(EVENTS) {
        return (seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()))
            .then(|| seq.parse().ok())
            .flatten()
            .map(Record::Event);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_layout_writes_classifies_back() {
        let path = SpecPath::parse("specs/nested/with space%.md").unwrap();
        assert_eq!(spec(&path), "specs/specs/nested/with%20space%25.md");
        let cases = [
            (REVISION.to_owned(), Record::Revision),
            (META.to_owned(), Record::Meta),
            (task(TaskId(42)), Record::Task(TaskId(42))),
            (
                review(TaskId(7), Revision(12), 3),
                Record::Review(TaskId(7)),
            ),
            (assignment(TaskId(0)), Record::Assignment(TaskId(0))),
            (event(9), Record::Event(9)),
            (spec(&path), Record::Spec("specs/nested/with%20space%25.md")),
        ];
        for (key, record) in cases {
            assert_eq!(classify(&key), Some(record), "{key}");
        }
    }

    #[test]
    fn names_no_layout_uses_are_unknown() {
        for name in [
            "tasks/notes.txt",
            "tasks/007",
            "tasks/",
            "reviews/7/12",
            "reviews/7/00000000000000000012.x",
            "events/9",
            "specs/",
            "leader",
            "metadata",
        ] {
            assert_eq!(classify(name), None, "{name}");
        }
    }

    #[test]
    fn reviews_and_events_sort_bytewise_in_the_order_they_were_written() {
        let r = |rev, i| review(TaskId(1), Revision(rev), i);
        assert!(r(9, 11) < r(10, 0));
        assert!(r(10, 9) < r(10, 10));
        assert!(event(9) < event(10));
        assert!(event(u64::MAX) < events_end());
    }

    #[test]
    fn election_keys_sort_apart_from_every_record() {
        let election = election_start();
        for name in [REVISION, META, TASKS, REVIEWS, SPECS, ASSIGNMENTS, EVENTS] {
            assert!(
                name < election.as_str() || name > events_end().as_str() || name == EVENTS,
                "{name} would fall into the range a load skips"
            );
        }
        assert!(ASSIGNMENTS < election.as_str() && election.as_str() < EVENTS);
    }

    #[test]
    fn a_prefix_owns_only_its_own_keys() {
        let p = Prefix::new("/hyperloop/");
        assert_eq!(p.key("meta"), "/hyperloop/meta");
        assert_eq!(p.name("/hyperloop/meta"), Some("meta"));
        assert_eq!(p.name("/hyperloop2/meta"), None);
        assert!(p.key("tasks/1") < p.end());
        assert_eq!(p.end(), "/hyperloop0");
    }
}
