//! Accepting the PM's proposals: the coordinator, not the agent, decides which proposals
//! become tasks and assigns their ids. The result file parser has already checked each
//! proposal's shape; this checks them against the world (known specs, existing tasks).

use std::collections::{BTreeMap, BTreeSet};

use crate::decide::dependency_cycles;
use crate::model::{Proposal, SpecPath, SpecRef, Task, TaskId, TaskStatus};

/// The outcome of one intake: tasks to create (ids assigned, in proposal order) and one
/// finding per rejected proposal, which the next PM run is shown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Intake {
    pub created: Vec<Task>,
    pub rejections: Vec<Rejection>,
}

/// A rejected proposal: the finding the next PM run is shown, and the known spec it was for
/// (`None` when it named no known spec), whose gap therefore stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub spec: Option<SpecPath>,
    pub finding: String,
}

/// Turns `proposals` into tasks pinned to `commit`. `specs` are the spec paths that exist at
/// `commit`; `existing` are the current tasks; ids start at `next_id`.
///
/// A proposal is rejected when its spec is unknown, it duplicates an unfinished task, it
/// depends on an unknown or failed task, or on a rejected proposal (transitively).
pub fn accept(
    proposals: &[Proposal],
    specs: &BTreeSet<SpecPath>,
    existing: &BTreeMap<TaskId, Task>,
    commit: &str,
    next_id: u64,
) -> Intake {
    let mut out = Intake::default();
    let mut by_key: BTreeMap<&str, TaskId> = BTreeMap::new();
    let mut rejected_keys: BTreeSet<&str> = BTreeSet::new();
    let mut next = next_id;
    let reject = |out: &mut Intake, p: &Proposal, why: String| {
        out.rejections.push(Rejection {
            spec: SpecPath::parse(&p.spec).ok().filter(|s| specs.contains(s)),
            finding: format!(
                "proposal {:?} (spec {}) was rejected: {why}",
                p.title, p.spec
            ),
        });
    };

    for p in proposals {
        let spec = match SpecPath::parse(&p.spec) {
            Ok(s) if specs.contains(&s) => s,
            Ok(_) | Err(_) => {
                reject(
                    &mut out,
                    p,
                    "no such spec; use one of the spec paths listed in the prompt".into(),
                );
                reject_key(p, &mut rejected_keys);
                continue;
            }
        };
        if let Some(dup) = existing
            .values()
            .find(|t| !t.status.is_terminal() && t.title == p.title && t.spec_ref.path == spec)
        {
            reject(
                &mut out,
                p,
                format!(
                    "it duplicates unfinished {}; do not propose it again",
                    dup.id
                ),
            );
            reject_key(p, &mut rejected_keys);
            continue;
        }
        match resolve_deps(p, existing, &by_key, &rejected_keys) {
            Ok(deps) => {
                let id = TaskId(next);
                next += 1;
                if let Some(key) = p.key.as_deref() {
                    by_key.insert(key, id);
                }
                let spec_ref = SpecRef {
                    path: spec,
                    commit: commit.to_owned(),
                };
                out.created.push(Task {
                    deps,
                    ..Task::new(id, p.title.clone(), spec_ref)
                });
            }
            Err(why) => {
                reject(&mut out, p, why);
                reject_key(p, &mut rejected_keys);
            }
        }
    }

    // Existing tasks never depend on new ones, so a cycle can only be among new tasks; the
    // result-file check already rejects key cycles, this is the last line of defence.
    let cycles = dependency_cycles(&out.created);
    if !cycles.is_empty() {
        let members: BTreeSet<TaskId> = cycles.iter().flat_map(|c| c.members.clone()).collect();
        for cycle in &cycles {
            let spec = out
                .created
                .iter()
                .find(|t| cycle.members.contains(&t.id))
                .map(|t| t.spec_ref.path.clone());
            out.rejections.push(Rejection {
                spec,
                finding: format!(
                    "proposals forming the dependency cycle {cycle} were rejected; break the cycle"
                ),
            });
        }
        out.created.retain(|t| !members.contains(&t.id));
    }
    out
}

fn reject_key<'a>(p: &'a Proposal, rejected: &mut BTreeSet<&'a str>) {
    if let Some(key) = p.key.as_deref() {
        rejected.insert(key);
    }
}

fn resolve_deps(
    p: &Proposal,
    existing: &BTreeMap<TaskId, Task>,
    by_key: &BTreeMap<&str, TaskId>,
    rejected_keys: &BTreeSet<&str>,
) -> Result<Vec<TaskId>, String> {
    let mut deps = Vec::new();
    for dep in &p.deps {
        let id = if let Some(id) = by_key.get(dep.as_str()) {
            *id
        } else if rejected_keys.contains(dep.as_str()) {
            return Err(format!("it depends on `{dep}`, which was rejected"));
        } else if let Ok(id) = dep.parse::<TaskId>() {
            match existing.get(&id) {
                None => return Err(format!("it depends on {id}, which does not exist")),
                Some(t) if t.status == TaskStatus::Failed => {
                    return Err(format!(
                        "it depends on {id}, which failed; depend on the task that replaces it, or on nothing"
                    ));
                }
                Some(_) => id,
            }
        } else {
            return Err(format!(
                "it depends on `{dep}`, which is neither an earlier proposal's key nor a task id"
            ));
        };
        if !deps.contains(&id) {
            deps.push(id);
        }
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(key: Option<&str>, title: &str, spec: &str, deps: &[&str]) -> Proposal {
        Proposal {
            key: key.map(str::to_owned),
            title: title.into(),
            spec: spec.into(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn specs() -> BTreeSet<SpecPath> {
        ["specs/a.md", "specs/b.md"]
            .into_iter()
            .map(|s| SpecPath::parse(s).unwrap())
            .collect()
    }

    fn existing(status: TaskStatus) -> BTreeMap<TaskId, Task> {
        let mut out = accept(
            &[proposal(None, "Old work", "specs/a.md", &[])],
            &specs(),
            &BTreeMap::new(),
            "abc123",
            3,
        )
        .created;
        out[0].status = status;
        out.into_iter().map(|t| (t.id, t)).collect()
    }

    #[test]
    fn proposals_become_tasks_with_assigned_ids_pinned_deps_resolved() {
        let intake = accept(
            &[
                proposal(Some("api"), "Build the API", "specs/a.md", &[]),
                proposal(None, "Use the API", "specs/b.md", &["api", "task-003"]),
            ],
            &specs(),
            &existing(TaskStatus::Complete),
            "abc123",
            7,
        );
        assert_eq!(intake.rejections, Vec::<Rejection>::new());
        let ids: Vec<_> = intake.created.iter().map(|t| t.id).collect();
        assert_eq!(ids, [TaskId(7), TaskId(8)]);
        assert_eq!(intake.created[1].deps, [TaskId(7), TaskId(3)]);
        assert_eq!(intake.created[0].spec_ref.to_string(), "specs/a.md@abc123");
        assert_eq!(intake.created[0].status, TaskStatus::NotStarted);
    }

    #[test]
    fn bad_proposals_are_rejected_with_a_finding_and_dependents_follow() {
        let intake = accept(
            &[
                proposal(Some("x"), "Unknown spec", "specs/zzz.md", &[]),
                proposal(None, "Needs x", "specs/a.md", &["x"]),
                proposal(None, "Needs a ghost", "specs/a.md", &["task-099"]),
                proposal(None, "Needs junk", "specs/a.md", &["later"]),
                proposal(None, "Path trick", "../etc/passwd", &[]),
            ],
            &specs(),
            &BTreeMap::new(),
            "abc123",
            1,
        );
        assert!(intake.created.is_empty());
        let text: Vec<&str> = intake
            .rejections
            .iter()
            .map(|r| r.finding.as_str())
            .collect();
        let text = text.join("\n");
        for expected in [
            "\"Unknown spec\" (spec specs/zzz.md) was rejected: no such spec",
            "\"Needs x\" (spec specs/a.md) was rejected: it depends on `x`, which was rejected",
            "task-099, which does not exist",
            "neither an earlier proposal's key nor a task id",
            "\"Path trick\" (spec ../etc/passwd) was rejected: no such spec",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn depending_on_a_failed_task_or_duplicating_an_open_one_is_rejected() {
        // One proposal, next id 4, next to task-003 (on specs/a.md) in `status`.
        let propose = |title: &str, spec: &str, deps: &[&str], status: TaskStatus| {
            accept(
                &[proposal(None, title, spec, deps)],
                &specs(),
                &existing(status),
                "abc123",
                4,
            )
        };
        let failed = propose("After old", "specs/b.md", &["task-003"], TaskStatus::Failed);
        assert!(
            failed.rejections[0]
                .finding
                .contains("task-003, which failed")
        );
        let duplicate = propose("Old work", "specs/a.md", &[], TaskStatus::InProgress);
        assert!(
            duplicate.rejections[0]
                .finding
                .contains("duplicates unfinished task-003")
        );
        let redo = propose("Old work", "specs/a.md", &[], TaskStatus::Failed);
        assert_eq!(redo.created.len(), 1, "a failed task may be proposed again");
    }
}
