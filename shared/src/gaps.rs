//! Which gaps are open. A spec's gap closes only when accepted tasks cover it or the PM found
//! it satisfied; a spec that keeps failing is given up at its current version after
//! `max_spec_failures` failures, so one bad spec cannot spend forever or stall `run`.
//!
//! Pure: the reconcile loop passes in what intake saw and the counters kept in
//! [`Meta::spec_failures`](crate::state::Meta::spec_failures), and records what comes back.

use std::collections::{BTreeMap, BTreeSet};

use crate::intake::Rejection;
use crate::model::{SpecPath, Task};
use crate::state::SpecFailures;

/// What one intake session's proposals mean for a spec it was asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Accepted tasks close the gap.
    Covered,
    /// The PM proposed nothing for it: the code already satisfies it.
    Satisfied,
    /// Still open, with the reason the next intake is shown.
    Open(String),
}

impl Coverage {
    pub fn closes(&self) -> bool {
        !matches!(self, Coverage::Open(_))
    }
}

/// Decides, per asked spec, whether the session closed its gap. Silence means satisfied (the
/// PM is told to propose nothing for a satisfied spec) unless a rejected proposal named no
/// known spec: then it may have been meant for any silent one, and they all stay open.
pub fn coverage(
    asked: &BTreeSet<SpecPath>,
    created: &[Task],
    rejections: &[Rejection],
) -> BTreeMap<SpecPath, Coverage> {
    let covered: BTreeSet<&SpecPath> = created.iter().map(|t| &t.spec_ref.path).collect();
    let unattributed = rejections.iter().find(|r| r.spec.is_none());
    asked
        .iter()
        .map(|path| {
            let rejected: Vec<&str> = rejections
                .iter()
                .filter(|r| r.spec.as_ref() == Some(path))
                .map(|r| r.finding.as_str())
                .collect();
            let coverage = if covered.contains(path) {
                Coverage::Covered
            } else if !rejected.is_empty() {
                Coverage::Open(format!(
                    "every proposal for {path} was rejected: {}",
                    rejected.join("; ")
                ))
            } else if let Some(r) = unattributed {
                Coverage::Open(format!(
                    "no task was accepted for {path}, and a proposal named no known spec: {}",
                    r.finding
                ))
            } else {
                Coverage::Satisfied
            };
            (path.clone(), coverage)
        })
        .collect()
}

/// Why `path` was given up at version `blob`, if it was.
pub fn given_up<'a>(
    failures: &'a BTreeMap<SpecPath, SpecFailures>,
    path: &SpecPath,
    blob: &str,
) -> Option<&'a str> {
    failures
        .get(path)
        .filter(|f| f.blob == blob)
        .and_then(|f| f.failed.as_deref())
}

/// Counts one failure against `path` at `blob` (a new version starts from zero). Returns the
/// reason when this failure reaches `limit` and gives the spec up.
pub fn count_failure(
    failures: &mut BTreeMap<SpecPath, SpecFailures>,
    path: &SpecPath,
    blob: &str,
    why: &str,
    limit: u32,
) -> Option<String> {
    let entry = failures.entry(path.clone()).or_default();
    if entry.blob != blob {
        *entry = SpecFailures {
            blob: blob.to_owned(),
            ..SpecFailures::default()
        };
    }
    if entry.failed.is_some() {
        return None;
    }
    entry.count += 1;
    if entry.count < limit {
        return None;
    }
    let reason = format!(
        "{path} failed {} time(s) at this version (max_spec_failures is {limit}); last: {why}. \
         Change the spec, or run `hyperloopctl retry spec {path}` after fixing the cause",
        entry.count
    );
    entry.failed = Some(reason.clone());
    Some(reason)
}

/// Gives up a spec's current version at once, for a reason no retry can fix (its text
/// cannot be used). Returns the recorded reason, or `None` if it was given up already.
pub fn give_up(
    failures: &mut BTreeMap<SpecPath, SpecFailures>,
    path: &SpecPath,
    blob: &str,
    why: &str,
) -> Option<String> {
    let entry = failures.entry(path.clone()).or_default();
    if entry.blob == blob && entry.failed.is_some() {
        return None;
    }
    let reason = format!(
        "{path} cannot be used: {why}. Fix the file; its next version is reconciled as usual"
    );
    *entry = SpecFailures {
        blob: blob.to_owned(),
        count: 1,
        failed: Some(reason.clone()),
    };
    Some(reason)
}

/// The specs one intake session is asked about: pending ones that were not given up, at most
/// `batch` of them in path order, so a PM session never gets more than it can answer.
pub fn intake_batch<'a>(
    pending: impl IntoIterator<Item = &'a SpecPath>,
    failures: &BTreeMap<SpecPath, SpecFailures>,
    blob_of: impl Fn(&SpecPath) -> Option<&'a str>,
    batch: usize,
) -> Vec<SpecPath> {
    pending
        .into_iter()
        .filter(|p| blob_of(p).is_none_or(|blob| given_up(failures, p, blob).is_none()))
        .take(batch)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpecRef, TaskId};

    fn spec(name: &str) -> SpecPath {
        SpecPath::parse(&format!("specs/{name}.md")).unwrap()
    }

    fn task(id: u64, name: &str) -> Task {
        Task::new(
            TaskId(id),
            format!("Build {name}"),
            SpecRef {
                path: spec(name),
                commit: "c1".into(),
            },
        )
    }

    fn rejection(name: Option<&str>) -> Rejection {
        Rejection {
            spec: name.map(spec),
            finding: format!("bad proposal for {name:?}"),
        }
    }

    /// One case: asked specs, names of specs with accepted tasks, rejections → which close.
    fn check(asked: &[&str], created: &[&str], rejected: &[Option<&str>], expected_open: &[&str]) {
        let asked: BTreeSet<SpecPath> = asked.iter().map(|n| spec(n)).collect();
        let created: Vec<Task> = created
            .iter()
            .enumerate()
            .map(|(i, n)| task(i as u64 + 1, n))
            .collect();
        let rejections: Vec<Rejection> = rejected.iter().map(|n| rejection(*n)).collect();
        let out = coverage(&asked, &created, &rejections);
        let open: Vec<String> = out
            .iter()
            .filter(|(_, c)| !c.closes())
            .map(|(p, _)| p.to_string())
            .collect();
        let expected: Vec<String> = expected_open.iter().map(|n| spec(n).to_string()).collect();
        assert_eq!(open, expected, "asked {asked:?}, created {created:?}");
    }

    #[test]
    fn a_gap_closes_only_when_tasks_cover_it_or_the_pm_proposes_nothing() {
        // Accepted tasks close their specs; silence means satisfied.
        check(&["a", "b"], &["a"], &[], &[]);
        // Every proposal for b rejected: b stays open, a closes.
        check(&["a", "b"], &["a"], &[Some("b")], &["b"]);
        // A rejection for a spec that also got an accepted task still closes it.
        check(&["a"], &["a"], &[Some("a")], &[]);
        // A proposal naming an unknown spec: every silent spec stays open.
        check(&["a", "b", "c"], &["a"], &[None], &["b", "c"]);
        // Nothing proposed at all: all satisfied.
        check(&["a", "b"], &[], &[], &[]);
    }

    #[test]
    fn an_open_spec_carries_the_rejections_as_its_reason() {
        let asked: BTreeSet<SpecPath> = [spec("b")].into();
        let out = coverage(&asked, &[], &[rejection(Some("b"))]);
        let Coverage::Open(why) = &out[&spec("b")] else {
            panic!("b should stay open: {out:?}");
        };
        assert!(why.contains("bad proposal"), "{why}");
    }

    #[test]
    fn a_spec_is_given_up_after_the_limit_and_a_new_version_starts_from_zero() {
        let mut failures = BTreeMap::new();
        let a = spec("a");
        assert_eq!(count_failure(&mut failures, &a, "v1", "x", 3), None);
        assert_eq!(count_failure(&mut failures, &a, "v1", "x", 3), None);
        assert_eq!(given_up(&failures, &a, "v1"), None);
        let reason = count_failure(&mut failures, &a, "v1", "tests fail", 3).unwrap();
        assert!(
            reason.contains("hyperloopctl retry spec specs/a.md"),
            "{reason}"
        );
        assert!(reason.contains("tests fail"), "{reason}");
        assert_eq!(given_up(&failures, &a, "v1"), Some(reason.as_str()));
        // Counting more changes nothing once given up.
        assert_eq!(count_failure(&mut failures, &a, "v1", "x", 3), None);
        // The spec changed: it is not given up at the new version, and counts anew.
        assert_eq!(given_up(&failures, &a, "v2"), None);
        assert_eq!(count_failure(&mut failures, &a, "v2", "x", 3), None);
        assert_eq!(failures[&a].count, 1);
    }

    #[test]
    fn intake_batches_skip_given_up_specs_and_stop_at_the_batch_size() {
        let mut failures = BTreeMap::new();
        let specs: Vec<SpecPath> = ["a", "b", "c", "d"].iter().map(|n| spec(n)).collect();
        count_failure(&mut failures, &specs[1], "v1", "x", 1);
        let batch = intake_batch(&specs, &failures, |_| Some("v1"), 2);
        assert_eq!(batch, vec![specs[0].clone(), specs[2].clone()]);
        // A new version of the given-up spec is asked about again.
        let batch = intake_batch(&specs, &failures, |_| Some("v2"), 10);
        assert_eq!(batch, specs);
    }
}
