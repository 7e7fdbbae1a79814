//! Gate evaluation without the evaluating: where a gate stands ([`GateStatus`]), which leaf
//! gates an `all` gate stands for ([`leaves`]), how their answers add up ([`combine`]), and
//! the operator's consent that `command` gates need ([`refuse_command_gates`]).
//!
//! Evaluators (GitHub, a command runner, a test double) answer for one leaf each; the
//! coordinator expands and combines with these functions, so every evaluator agrees on what
//! an `all` gate means.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::pipeline::{GateDef, GateKind, Process};

/// Where a gate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStatus {
    Cleared,
    /// Not yet; what is missing, for humans.
    Waiting {
        reasons: Vec<String>,
    },
    /// It will not clear as things are (e.g. a failing CI check): the step fails with these
    /// findings.
    Failed {
        findings: Vec<String>,
    },
}

/// A gate name that `gates:` does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gate `{gate}` is not defined under gates: in the process; define it or fix the name")]
pub struct UndefinedGate {
    pub gate: String,
}

/// The leaf gates `gate` stands for, in `require` order, each once: itself unless it is an
/// `all` gate, whose requirements are expanded recursively. A gate met again (a repeated
/// requirement, or a cycle, which the parser rejects anyway) is skipped, so this terminates.
///
/// # Errors
/// `gate` or a gate it requires is not defined.
pub fn leaves(
    gate: &str,
    defs: &BTreeMap<String, GateDef>,
) -> Result<Vec<(String, GateKind)>, UndefinedGate> {
    let mut out = Vec::new();
    let mut stack = vec![gate];
    let mut seen = BTreeSet::new();
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        let def = defs.get(name).ok_or_else(|| UndefinedGate {
            gate: name.to_owned(),
        })?;
        match &def.kind {
            GateKind::All { require } => stack.extend(require.iter().rev().map(String::as_str)),
            kind => out.push((name.to_owned(), kind.clone())),
        }
    }
    Ok(out)
}

/// The status of gates that must all clear: failed if any failed (with every finding),
/// else waiting if any waits (with every reason), else cleared. No statuses: cleared.
pub fn combine(statuses: impl IntoIterator<Item = GateStatus>) -> GateStatus {
    let mut reasons = Vec::new();
    let mut findings = Vec::new();
    for status in statuses {
        match status {
            GateStatus::Cleared => {}
            GateStatus::Waiting { reasons: r } => reasons.extend(r),
            GateStatus::Failed { findings: f } => findings.extend(f),
        }
    }
    if !findings.is_empty() {
        GateStatus::Failed { findings }
    } else if !reasons.is_empty() {
        GateStatus::Waiting { reasons }
    } else {
        GateStatus::Cleared
    }
}

/// What lets `task` past a gate of `kind`, for a person: the end of a sentence starting "to
/// let it continue, ...".
pub fn clears(kind: &GateKind, task: crate::model::TaskId) -> String {
    match kind {
        GateKind::Label { label } => format!("add the label `{label}` to the pull request"),
        GateKind::PrApproval => {
            "approve the pull request (a review of its current head)".to_owned()
        }
        GateKind::CiStatus => "nothing: it waits for CI to pass on the current head".to_owned(),
        GateKind::All { require } => format!("clear every one of the gates {}", require.join(", ")),
        GateKind::Manual => format!("run `hyperloopctl approve {task}`"),
        GateKind::Command { run, .. } => format!(
            "nothing: it waits for `{}` to pass on the task's branch",
            command_line(run)
        ),
    }
}

/// A command gate's `run` as one line for messages, quoted the way a shell would need it
/// (`sh -c 'make lint'`), so what a human reads is what they can paste.
pub fn command_line(run: &[String]) -> String {
    let quote = |arg: &String| {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            arg.clone()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    run.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// The command gates of a process its operator has not allowed to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CommandGatesRefused {
    /// Where the process came from (its file, for the message).
    pub file: String,
    /// Each command gate's name and `run`.
    pub gates: Vec<(String, Vec<String>)>,
}

impl fmt::Display for CommandGatesRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (gate, run)) in self.gates.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "{}: gate `{gate}` is a command gate: start the coordinator with \
                 --allow-command-gates to let it run `{}` on this host, or remove the gate",
                self.file,
                command_line(run)
            )?;
        }
        Ok(())
    }
}

/// Refuses a process that defines `command` gates (used or not: an `all` gate or a later
/// pipeline edit can reach any of them). The process is written by whoever can commit to the
/// repository, and a command gate runs on the coordinator's host, so running one takes the
/// operator's explicit consent (`--allow-command-gates`), not just a commit.
///
/// # Errors
/// Every command gate, by name, with its command.
pub fn refuse_command_gates(process: &Process) -> Result<(), CommandGatesRefused> {
    let gates: Vec<(String, Vec<String>)> = process
        .gates
        .iter()
        .filter_map(|(name, def)| match &def.kind {
            GateKind::Command { run, .. } => Some((name.clone(), run.clone())),
            _ => None,
        })
        .collect();
    if gates.is_empty() {
        Ok(())
    } else {
        Err(CommandGatesRefused {
            file: process.source.clone(),
            gates,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Gates from `name = spec` strings: `all:a,b` (an `all` gate), `command:argv words`,
    /// `manual`, `ci`, or anything else as a label gate with that label.
    fn defs(specs: &[(&str, &str)]) -> BTreeMap<String, GateDef> {
        specs
            .iter()
            .map(|(name, spec)| {
                let kind = match spec.split_once(':') {
                    Some(("all", require)) => GateKind::All {
                        require: require.split(',').map(str::to_owned).collect(),
                    },
                    Some(("command", run)) => GateKind::Command {
                        run: run.split(' ').map(str::to_owned).collect(),
                        timeout: Duration::from_secs(60),
                    },
                    _ if *spec == "manual" => GateKind::Manual,
                    _ if *spec == "ci" => GateKind::CiStatus,
                    _ => GateKind::Label {
                        label: (*spec).to_owned(),
                    },
                };
                (
                    (*name).to_owned(),
                    GateDef {
                        kind,
                        reviewers: vec![],
                    },
                )
            })
            .collect()
    }

    /// `gate`'s leaves as `name (type)`, or the error's message.
    fn check(specs: &[(&str, &str)], gate: &str, expected: &[&str]) {
        let got: Vec<String> = match leaves(gate, &defs(specs)) {
            Ok(leaves) => leaves
                .iter()
                .map(|(name, kind)| format!("{name} ({})", kind.type_name()))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        assert_eq!(got, expected, "leaves of {gate} in {specs:?}");
    }

    #[test]
    fn a_leaf_gate_is_its_own_only_leaf() {
        check(&[("lgtm", "lgtm")], "lgtm", &["lgtm (label)"]);
        check(&[("e2e", "command:make e2e")], "e2e", &["e2e (command)"]);
        check(&[("m", "manual")], "m", &["m (manual)"]);
    }

    #[test]
    fn all_gates_expand_recursively_in_require_order_each_leaf_once() {
        let specs = [
            ("lgtm", "lgtm"),
            ("ci", "ci"),
            ("e2e", "command:make e2e"),
            ("checks", "all:ci,e2e"),
            ("ship", "all:lgtm,checks,ci,lgtm"),
        ];
        check(&specs, "checks", &["ci (ci-status)", "e2e (command)"]);
        check(
            &specs,
            "ship",
            &["lgtm (label)", "ci (ci-status)", "e2e (command)"],
        );
    }

    #[test]
    fn a_cycle_terminates_and_an_undefined_gate_is_named() {
        check(
            &[("a", "all:b"), ("b", "all:a,c"), ("c", "manual")],
            "a",
            &["c (manual)"],
        );
        check(
            &[("ship", "all:lgtm,nope"), ("lgtm", "lgtm")],
            "ship",
            &["gate `nope` is not defined under gates: in the process; define it or fix the name"],
        );
        check(
            &[],
            "ship",
            &["gate `ship` is not defined under gates: in the process; define it or fix the name"],
        );
    }

    fn waiting(reason: &str) -> GateStatus {
        GateStatus::Waiting {
            reasons: vec![reason.to_owned()],
        }
    }

    fn failed(finding: &str) -> GateStatus {
        GateStatus::Failed {
            findings: vec![finding.to_owned()],
        }
    }

    #[test]
    fn failed_beats_waiting_beats_cleared_and_nothing_is_lost() {
        let cases: &[(Vec<GateStatus>, GateStatus)] = &[
            (vec![], GateStatus::Cleared),
            (
                vec![GateStatus::Cleared, GateStatus::Cleared],
                GateStatus::Cleared,
            ),
            (
                vec![waiting("a"), GateStatus::Cleared, waiting("b")],
                GateStatus::Waiting {
                    reasons: vec!["a".into(), "b".into()],
                },
            ),
            (
                vec![waiting("a"), failed("x"), GateStatus::Cleared, failed("y")],
                GateStatus::Failed {
                    findings: vec!["x".into(), "y".into()],
                },
            ),
        ];
        for (statuses, expected) in cases {
            assert_eq!(&combine(statuses.clone()), expected, "{statuses:?}");
        }
    }

    fn process(specs: &[(&str, &str)]) -> Process {
        let mut yaml = "apiVersion: hyperloop.io/v1\nkind: Process\nmetadata: {name: p}\n\
                        pipeline: [{agent: implementer}]\ngates:\n"
            .to_owned();
        for (name, def) in specs {
            yaml.push_str(&format!("  {name}: {def}\n"));
        }
        Process::parse_str(&yaml, "process.yaml", &["implementer"]).expect("valid process")
    }

    #[test]
    fn command_gates_are_refused_by_name_with_the_way_to_allow_them() {
        assert_eq!(
            refuse_command_gates(&process(&[("lgtm", "{type: label}")])),
            Ok(())
        );
        let refused = refuse_command_gates(&process(&[
            ("lgtm", "{type: label}"),
            ("e2e", "{type: command, run: [make, e2e]}"),
            ("lint", "{type: command, run: [sh, -c, 'make lint']}"),
        ]))
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "process.yaml: gate `e2e` is a command gate: start the coordinator with \
             --allow-command-gates to let it run `make e2e` on this host, or remove the gate\n\
             process.yaml: gate `lint` is a command gate: start the coordinator with \
             --allow-command-gates to let it run `sh -c 'make lint'` on this host, or remove \
             the gate"
        );
    }

    #[test]
    fn a_command_line_quotes_what_a_shell_would_split_or_expand() {
        let line =
            |run: &[&str]| command_line(&run.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            line(&["make", "e2e", "V=1", "./ci/run.sh"]),
            "make e2e V=1 ./ci/run.sh"
        );
        assert_eq!(
            line(&["sh", "-c", "make lint && make test"]),
            "sh -c 'make lint && make test'"
        );
        assert_eq!(
            line(&["echo", "it's", "", "$HOME"]),
            r"echo 'it'\''s' '' '$HOME'"
        );
    }
}
