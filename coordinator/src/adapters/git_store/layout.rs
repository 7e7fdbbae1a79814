//! Where each record lives in the state tree (API Boundary: the embedded store's on-disk
//! layout; it mirrors the etcd key layout). Pure: names in, names out.
//!
//! ```text
//! meta.json
//! tasks/<id % 100, 2 digits>/task-<id>.json
//! reviews/<id % 100, 2 digits>/task-<id>/<order, 6 digits>.json
//! specs/<fnv1a(path) % 256, 2 hex>/<path, `%` and `/` percent-encoded>.json
//! assignments/task-<id>.json
//! events/<seq / 1000>/<seq>.json
//! ```
//!
//! Shard directories keep every tree small, so a batch rewrites only the few trees on the
//! paths to what it touched: at 100,000 tasks a task shard holds ~1,000 entries (~40 KB).

use hyperloop_shared::model::{SpecPath, TaskId};

pub const META: &str = "meta.json";
pub const TASKS: &str = "tasks";
pub const REVIEWS: &str = "reviews";
pub const SPECS: &str = "specs";
pub const ASSIGNMENTS: &str = "assignments";
pub const EVENTS: &str = "events";

/// Task shards: by the id's last two decimal digits, so ids assigned in sequence spread evenly.
const TASK_SHARDS: u64 = 100;
/// Events per journal directory. Appends touch the newest directory only, trimming removes
/// whole old directories, so neither rewrites a tree of `journal_limit` entries.
pub const EVENTS_PER_DIR: u64 = 1_000;
const SPEC_SHARDS: u64 = 256;

pub fn task_shard(id: TaskId) -> String {
    format!("{:02}", id.0 % TASK_SHARDS)
}

pub fn task_file(id: TaskId) -> String {
    format!("{id}.json")
}

pub fn task_key(id: TaskId) -> String {
    format!("{TASKS}/{}/{}", task_shard(id), task_file(id))
}

pub fn review_dir(id: TaskId) -> String {
    format!("{REVIEWS}/{}/{id}", task_shard(id))
}

pub fn review_file(order: u64) -> String {
    format!("{order:06}.json")
}

pub fn assignment_key(id: TaskId) -> String {
    format!("{ASSIGNMENTS}/{}", task_file(id))
}

pub fn spec_shard(path: &SpecPath) -> String {
    format!("{:02x}", fnv1a(path.as_str().as_bytes()) % SPEC_SHARDS)
}

pub fn spec_file(path: &SpecPath) -> String {
    let mut name = String::with_capacity(path.as_str().len() + 5);
    for c in path.as_str().chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            c => name.push(c),
        }
    }
    name.push_str(".json");
    name
}

pub fn spec_key(path: &SpecPath) -> String {
    format!("{SPECS}/{}/{}", spec_shard(path), spec_file(path))
}

pub fn event_dir(seq: u64) -> String {
    (seq / EVENTS_PER_DIR).to_string()
}

pub fn event_key(seq: u64) -> String {
    format!("{EVENTS}/{}/{seq}.json", event_dir(seq))
}

/// The task a `task-<id>.json` file or `task-<id>` directory name stands for.
pub fn parse_task_name(name: &str) -> Option<TaskId> {
    name.strip_suffix(".json").unwrap_or(name).parse().ok()
}

/// The decimal number in `<n>.json` (review order, event seq) or `<n>` (event directory).
pub fn parse_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json").unwrap_or(name);
    let plain = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| digits.parse().ok()).flatten()
}

/// The spec path a spec file name encodes.
pub fn parse_spec_name(name: &str) -> Option<SpecPath> {
    let encoded = name.strip_suffix(".json")?;
    let mut path = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        path.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("%25") => path.push('%'),
            Some("%2F") => path.push('/'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    path.push_str(rest);
    let path = SpecPath::parse(&path).ok()?;
    // Exactly one encoding is valid, so two names cannot hold the same spec.
    (spec_file(&path) == name).then_some(path)
}

/// FNV-1a: stable across builds and platforms (std's hasher is not), so shards never move.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_shard_tasks_by_last_digits_and_events_by_thousands() {
        assert_eq!(task_key(TaskId(7)), "tasks/07/task-007.json");
        assert_eq!(task_key(TaskId(12345)), "tasks/45/task-12345.json");
        assert_eq!(review_dir(TaskId(12345)), "reviews/45/task-12345");
        assert_eq!(review_file(12), "000012.json");
        assert_eq!(assignment_key(TaskId(3)), "assignments/task-003.json");
        assert_eq!(event_key(999), "events/0/999.json");
        assert_eq!(event_key(1000), "events/1/1000.json");
    }

    #[test]
    fn spec_names_round_trip_and_only_one_encoding_is_accepted() {
        for path in [
            "specs/auth.md",
            "a/b%2F/c.md",
            "top.md",
            "with space/100%.md",
        ] {
            let path = SpecPath::parse(path).unwrap();
            let name = spec_file(&path);
            assert!(!name.contains('/'), "{name}");
            assert_eq!(parse_spec_name(&name), Some(path.clone()), "{name}");
            assert_eq!(spec_shard(&path).len(), 2);
        }
        assert_eq!(
            spec_file(&SpecPath::parse("specs/a%.md").unwrap()),
            "specs%2Fa%25.md.json"
        );
        assert_eq!(
            parse_spec_name("specs%2fa.md.json"),
            None,
            "lower-case escape"
        );
        assert_eq!(parse_spec_name("a%.md.json"), None, "bare percent");
        assert_eq!(parse_spec_name("specs%2Fa.md"), None, "no .json");
    }

    #[test]
    fn names_that_are_not_ours_do_not_parse() {
        assert_eq!(parse_task_name("task-012.json"), Some(TaskId(12)));
        assert_eq!(parse_task_name("notes.txt"), None);
        assert_eq!(parse_number("000012.json"), Some(12));
        assert_eq!(parse_number("12"), Some(12));
        for bad in ["", ".json", "+1.json", "1e3", "x.json"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }
}
