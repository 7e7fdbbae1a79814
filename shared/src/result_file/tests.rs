use super::*;
use crate::model::Verdict::{Fail, Pass};

use ProposalProblem as P;
use Violation as V;

fn step() -> Expected {
    Expected::new(Subject::Task(TaskId(7)), 3, "verifier")
}

fn intake() -> Expected {
    Expected::new(Subject::Intake, 2, "pm")
}

const HEAD: &str = "---\ntask_id: task-007\nround: 3\nrole: verifier\n";
const PM_HEAD: &str = "---\ntask_id: intake\nround: 2\nrole: pm\nverdict: pass\n";

/// Evaluates `text` and checks the invariant every rejection must satisfy: a fail, with every
/// violation's message in the detail, and no proposals.
fn run(text: &str, expected: &Expected) -> Outcome {
    let outcome = evaluate(Some(text), expected);
    if !outcome.violations.is_empty() {
        assert_eq!(
            outcome.result.verdict, Fail,
            "a rejected file must fail: {text:?}"
        );
        assert!(outcome.proposals.is_empty());
        for v in &outcome.violations {
            assert!(outcome.result.detail.contains(&v.to_string()));
        }
        assert!(outcome.result.detail.contains(&expected.front_matter()));
    }
    outcome
}

fn check(text: &str, expected: &Expected, want: &[Violation]) {
    let got = run(text, expected).violations;
    assert_eq!(got, want, "for input:\n{text}");
}

fn check_proposal(tasks_yaml: &str, want: &[(usize, ProposalProblem)]) {
    let text = format!("{PM_HEAD}tasks:\n{tasks_yaml}---\n");
    let want: Vec<Violation> = want
        .iter()
        .map(|(index, problem)| V::Proposal {
            index: *index,
            problem: problem.clone(),
        })
        .collect();
    check(&text, &intake(), &want);
}

#[test]
fn a_missing_file_is_a_fail_not_a_pass() {
    let outcome = evaluate(None, &step());
    assert_eq!(outcome.violations, [V::Missing]);
    assert_eq!(outcome.result.verdict, Fail);
    insta::assert_snapshot!(outcome.result.detail);
}

#[test]
fn structural_problems_are_named() {
    let cases: &[(&str, Violation)] = &[
        ("", V::NoFrontMatter),
        ("All good, tests pass.\n", V::NoFrontMatter),
        ("verdict: pass\n", V::NoFrontMatter),
        ("```markdown\n---\nverdict: pass\n---\n```\n", V::Fenced),
        (
            "---\ntask_id: task-007\nround: 3\n",
            V::UnterminatedFrontMatter,
        ),
        ("---\n- pass\n---\n", V::FrontMatterNotMapping),
        ("---\njust words\n---\n", V::FrontMatterNotMapping),
    ];
    for (text, want) in cases {
        check(text, &step(), std::slice::from_ref(want));
    }
}

#[test]
fn malformed_yaml_reports_the_line_in_the_file() {
    let text = "\n---\ntask_id: task-007\nround: [3\nrole: verifier\n---\n";
    let got = run(text, &step()).violations;
    let [V::MalformedYaml { line, message }] = got.as_slice() else {
        panic!("expected one MalformedYaml, got {got:?}");
    };
    assert!(line.is_some_and(|l| (4..=6).contains(&l)), "line {line:?}");
    assert!(!message.contains(" at line "), "{message}");

    let dup = format!("{HEAD}verdict: pass\nverdict: fail\n---\n");
    assert!(matches!(
        run(&dup, &step()).violations.as_slice(),
        [V::MalformedYaml { .. }]
    ));
}

#[test]
fn field_problems_are_each_reported() {
    let cases: Vec<(String, Vec<Violation>)> = vec![
        (
            "---\n---\n".into(),
            vec![
                V::MissingField("task_id"),
                V::MissingField("round"),
                V::MissingField("role"),
                V::MissingField("verdict"),
            ],
        ),
        (
            format!("{HEAD}---\nLooks fine.\n"),
            vec![V::MissingField("verdict")],
        ),
        (
            format!("{HEAD}verdict: PASS\n---\n"),
            vec![V::BadVerdict("`PASS`".into())],
        ),
        (
            format!("{HEAD}verdict: Fail\n---\n"),
            vec![V::BadVerdict("`Fail`".into())],
        ),
        (
            format!("{HEAD}verdict: passed\n---\n"),
            vec![V::BadVerdict("`passed`".into())],
        ),
        (
            format!("{HEAD}verdict: true\n---\n"),
            vec![V::BadVerdict("the boolean `true`".into())],
        ),
        (
            format!("{HEAD}verdict:\n---\n"),
            vec![V::BadVerdict("empty (null)".into())],
        ),
        (
            "---\ntask_id: task-007\nround: \"3\"\nrole: verifier\nverdict: pass\n---\n".into(),
            vec![V::WrongType {
                field: "round",
                expected: "a whole number such as `3`",
                found: "the string \"3\"".into(),
            }],
        ),
        (
            "---\ntask_id: task-007\nround: -1\nrole: verifier\nverdict: pass\n---\n".into(),
            vec![V::WrongType {
                field: "round",
                expected: "a whole number such as `3`",
                found: "the number `-1`".into(),
            }],
        ),
        (
            "---\ntask_id: 7\nround: 3\nrole: verifier\nverdict: pass\n---\n".into(),
            vec![V::WrongType {
                field: "task_id",
                expected: "a string such as `task-007`",
                found: "the number `7`".into(),
            }],
        ),
        (
            "---\ntask_id: task-007\nround: 3\nrole: [verifier]\nverdict: pass\n---\n".into(),
            vec![V::WrongType {
                field: "role",
                expected: "a string such as `verifier`",
                found: "a list".into(),
            }],
        ),
        (
            format!("{HEAD}verdit: pass\n---\n"),
            vec![
                V::UnknownField {
                    field: "verdit".into(),
                    suggestion: Some("verdict"),
                },
                V::MissingField("verdict"),
            ],
        ),
        (
            format!("{HEAD}verdict: pass\nstatus: complete\nnotes: hi\n---\n"),
            vec![
                V::UnknownField {
                    field: "status".into(),
                    suggestion: Some("verdict"),
                },
                V::UnknownField {
                    field: "notes".into(),
                    suggestion: None,
                },
            ],
        ),
        (
            format!("{HEAD}verdict: pass\ntasks: []\n---\n"),
            vec![V::TasksNotAllowed {
                role: "verifier".into(),
            }],
        ),
    ];
    for (text, want) in &cases {
        check(text, &step(), want);
    }
}

#[test]
fn a_stale_file_from_another_round_role_or_task_is_rejected() {
    let cases: &[(&str, Violation)] = &[
        (
            "---\ntask_id: task-007\nround: 2\nrole: verifier\nverdict: pass\n---\n",
            V::RoundMismatch {
                found: 2,
                expected: 3,
            },
        ),
        (
            "---\ntask_id: task-007\nround: 3\nrole: implementer\nverdict: pass\n---\n",
            V::RoleMismatch {
                found: "implementer".into(),
                expected: "verifier".into(),
            },
        ),
        (
            "---\ntask_id: task-006\nround: 3\nrole: verifier\nverdict: pass\n---\n",
            V::TaskIdMismatch {
                found: "task-006".into(),
                expected: Subject::Task(TaskId(7)),
            },
        ),
        (
            "---\ntask_id: intake\nround: 3\nrole: verifier\nverdict: pass\n---\n",
            V::TaskIdMismatch {
                found: "intake".into(),
                expected: Subject::Task(TaskId(7)),
            },
        ),
    ];
    for (text, want) in cases {
        check(text, &step(), std::slice::from_ref(want));
    }
}

#[test]
fn a_stale_pass_becomes_a_fail_that_does_not_quote_the_stale_body() {
    let text = "---\ntask_id: task-007\nround: 2\nrole: implementer\nverdict: pass\n---\n\
                Implemented everything.\n";
    let outcome = run(text, &step());
    assert!(!outcome.result.detail.contains("Implemented everything"));
    insta::assert_snapshot!(outcome.result.detail);
}

#[test]
fn a_rejected_file_for_this_step_keeps_the_agents_findings() {
    let text = format!("{HEAD}verdict: FAIL\n---\n- `cargo test` fails in auth::tests::expiry\n");
    let outcome = run(&text, &step());
    assert!(outcome.result.detail.contains("auth::tests::expiry"));
    insta::assert_snapshot!(outcome.result.detail);
}

#[test]
fn valid_files_are_accepted_with_their_body_as_detail() {
    let pass = run(
        &format!("{HEAD}verdict: pass\n---\n\nAll checks green.\n"),
        &step(),
    );
    assert!(pass.is_accepted());
    assert_eq!(pass.result, WorkerResult::pass("All checks green."));

    let fail = run(
        &format!("{HEAD}verdict: fail\n---\n- missing test for expiry\n"),
        &step(),
    );
    assert_eq!(fail.result, WorkerResult::fail("- missing test for expiry"));
    assert!(fail.is_accepted());

    let silent_fail = run(&format!("{HEAD}verdict: fail\n---\n"), &step());
    assert_eq!(silent_fail.result.verdict, Fail);
    assert!(silent_fail.result.detail.contains("no findings"));

    // Padding-insensitive task ids; the body may itself contain `---` lines.
    let text = "---\ntask_id: task-7\nround: 3\nrole: verifier\nverdict: pass\n---\na\n---\nb\n";
    assert_eq!(run(text, &step()).result, WorkerResult::pass("a\n---\nb"));
}

#[test]
fn tolerates_bom_crlf_and_leading_blank_lines() {
    let text = "\u{feff}\r\n---  \r\ntask_id: task-007\r\nround: 3\r\nrole: verifier\r\n\
                verdict: pass\r\n---\r\nok\r\n";
    let outcome = run(text, &step());
    assert!(outcome.is_accepted(), "{:?}", outcome.violations);
    assert_eq!(outcome.result, WorkerResult::pass("ok"));
}

#[test]
fn oversized_and_binary_input_is_rejected_before_parsing() {
    let huge = format!("{HEAD}verdict: pass\n---\n{}", "x".repeat(MAX_RESULT_BYTES));
    assert_eq!(
        run(&huge, &step()).violations,
        [V::TooLarge { bytes: huge.len() }]
    );
    let outcome = evaluate_bytes(Some(huge.as_bytes()), &step());
    assert_eq!(outcome.violations, [V::TooLarge { bytes: huge.len() }]);
    assert!(outcome.result.detail.contains("256 KiB"));

    let binary = [0xff, 0xfe, 0x00, 0x2d];
    assert_eq!(
        evaluate_bytes(Some(&binary), &step()).violations,
        [V::NotUtf8]
    );
    assert_eq!(evaluate_bytes(None, &step()).violations, [V::Missing]);
    let ok = format!("{HEAD}verdict: pass\n---\n");
    assert!(evaluate_bytes(Some(ok.as_bytes()), &step()).is_accepted());
}

#[test]
fn intake_accepts_proposals_and_normalises_task_id_deps() {
    let text = format!(
        "{PM_HEAD}tasks:\n\
         \x20 - key: login\n\
         \x20   title: \"Add POST /auth/login: returns a JWT\"\n\
         \x20   spec: specs/auth.md\n\
         \x20   deps: []\n\
         \x20 - title: Reject expired tokens\n\
         \x20   spec: specs/auth.md\n\
         \x20   deps: [login, task-4, task-004]\n\
         \x20 - title: Document the API\n\
         \x20   spec: specs/docs/api.md\n\
         ---\nTwo gaps in auth, one in docs.\n"
    );
    let outcome = run(&text, &intake());
    assert!(outcome.is_accepted(), "{:?}", outcome.violations);
    assert_eq!(
        outcome.result,
        WorkerResult::pass("Two gaps in auth, one in docs.")
    );
    assert_eq!(
        outcome.proposals,
        [
            Proposal {
                key: Some("login".into()),
                title: "Add POST /auth/login: returns a JWT".into(),
                spec: "specs/auth.md".into(),
                deps: vec![],
            },
            Proposal {
                key: None,
                title: "Reject expired tokens".into(),
                spec: "specs/auth.md".into(),
                deps: vec!["login".into(), "task-004".into()],
            },
            Proposal {
                key: None,
                title: "Document the API".into(),
                spec: "specs/docs/api.md".into(),
                deps: vec![],
            },
        ]
    );
}

#[test]
fn intake_with_nothing_to_do_is_a_pass_with_no_proposals() {
    let outcome = run(
        &format!("{PM_HEAD}tasks: []\n---\nAll specs satisfied.\n"),
        &intake(),
    );
    assert!(outcome.is_accepted());
    assert_eq!(outcome.result.verdict, Pass);
    assert!(outcome.proposals.is_empty());
}

#[test]
fn intake_tasks_field_problems() {
    check(&format!("{PM_HEAD}---\n"), &intake(), &[V::TasksMissing]);
    check(
        &format!("{PM_HEAD}tasks:\n---\n"),
        &intake(),
        &[V::WrongType {
            field: "tasks",
            expected: "a list of tasks (write `tasks: []` for none)",
            found: "empty (null)".into(),
        }],
    );
    check(
        &format!("{PM_HEAD}proposals: []\n---\n"),
        &intake(),
        &[
            V::UnknownField {
                field: "proposals".into(),
                suggestion: Some("tasks"),
            },
            V::TasksMissing,
        ],
    );
    let many: String = (0..=MAX_PROPOSALS)
        .map(|i| format!("  - title: t{i}\n    spec: specs/a.md\n"))
        .collect();
    check(
        &format!("{PM_HEAD}tasks:\n{many}---\n"),
        &intake(),
        &[V::TooManyProposals {
            count: MAX_PROPOSALS + 1,
        }],
    );
}

#[test]
fn a_failed_intake_proposes_nothing() {
    let text = "---\ntask_id: intake\nround: 2\nrole: pm\nverdict: fail\n---\nspecs/x.md is \
                contradictory.\n";
    let outcome = run(text, &intake());
    assert!(outcome.is_accepted());
    assert_eq!(outcome.result.verdict, Fail);
    assert!(outcome.proposals.is_empty());
}

#[test]
fn bad_proposals_are_each_reported() {
    let long = "x".repeat(MAX_TITLE_CHARS + 1);
    let cases: Vec<(String, Vec<(usize, ProposalProblem)>)> = vec![
        ("  - just a title\n".into(), vec![(0, P::NotMapping)]),
        ("  - spec: specs/a.md\n".into(), vec![(0, P::MissingField("title"))]),
        ("  - title: T\n".into(), vec![(0, P::MissingField("spec"))]),
        ("  - title: \"  \"\n    spec: specs/a.md\n".into(), vec![(0, P::EmptyTitle)]),
        ("  - title: \"a\\nb\"\n    spec: specs/a.md\n".into(), vec![(0, P::MultilineTitle)]),
        (
            format!("  - title: {long}\n    spec: specs/a.md\n"),
            vec![(
                0,
                P::TitleTooLong {
                    chars: MAX_TITLE_CHARS + 1,
                },
            )],
        ),
        (
            "  - title: 42\n    spec: specs/a.md\n".into(),
            vec![(
                0,
                P::WrongType {
                    field: "title",
                    expected: "a string",
                    found: "the number `42`".into(),
                },
            )],
        ),
        (
            "  - title: T\n    spec: ../secrets.md\n".into(),
            vec![(0, P::BadSpec(SpecPath::parse("../secrets.md").unwrap_err()))],
        ),
        (
            "  - title: T\n    spec: /etc/passwd\n".into(),
            vec![(0, P::BadSpec(SpecPath::parse("/etc/passwd").unwrap_err()))],
        ),
        (
            "  - title: T\n    spec: specs/a.md@abc123\n".into(),
            vec![(0, P::BadSpec(SpecPath::parse("specs/a.md@abc123").unwrap_err()))],
        ),
        (
            "  - title: T\n    spec: specs/a.md\n    depends_on: [task-001]\n".into(),
            vec![(
                0,
                P::UnknownField {
                    field: "depends_on".into(),
                    suggestion: Some("deps"),
                },
            )],
        ),
        (
            "  - key: a\n    title: T\n    spec: specs/a.md\n  - key: a\n    title: U\n    spec: specs/a.md\n"
                .into(),
            vec![(1, P::DuplicateKey("a".into()))],
        ),
        (
            "  - key: task-001\n    title: T\n    spec: specs/a.md\n".into(),
            vec![(
                0,
                P::BadKey {
                    key: "task-001".into(),
                    reason: "looks like a task id; task ids are assigned by the coordinator, so pick another name",
                },
            )],
        ),
        (
            "  - key: a b\n    title: T\n    spec: specs/a.md\n".into(),
            vec![(
                0,
                P::BadKey {
                    key: "a b".into(),
                    reason: "may contain only letters, digits, `.`, `_` and `-`",
                },
            )],
        ),
        (
            "  - key: 5\n    title: T\n    spec: specs/a.md\n".into(),
            vec![(
                0,
                P::WrongType {
                    field: "key",
                    expected: "a string such as `login-endpoint`",
                    found: "the number `5`".into(),
                },
            )],
        ),
        (
            "  - title: T\n    spec: specs/a.md\n    deps: [nope]\n".into(),
            vec![(0, P::UnknownDependency("nope".into()))],
        ),
        (
            "  - title: T\n    spec: specs/a.md\n    deps: [\"../task-001\"]\n".into(),
            vec![(0, P::UnknownDependency("../task-001".into()))],
        ),
        (
            "  - key: a\n    title: T\n    spec: specs/a.md\n    deps: [a]\n".into(),
            vec![(0, P::SelfDependency("a".into()))],
        ),
        (
            "  - title: T\n    spec: specs/a.md\n    deps: task-001\n".into(),
            vec![(
                0,
                P::WrongType {
                    field: "deps",
                    expected: "a list such as `[task-004]`",
                    found: "the string \"task-001\"".into(),
                },
            )],
        ),
        (
            "  - title: T\n    spec: specs/a.md\n    deps: [1]\n".into(),
            vec![(
                0,
                P::WrongType {
                    field: "deps",
                    expected: "a list of keys or task ids (strings)",
                    found: "the number `1`".into(),
                },
            )],
        ),
        (
            "  - title: T\n    spec: specs/a.md\n  - title: T\n    spec: specs/a.md\n".into(),
            vec![(1, P::DuplicateProposal)],
        ),
        (
            // Several problems in several entries are all reported at once.
            "  - title: \"\"\n    spec: /x.md\n  - title: ok\n    spec: specs/a.md\n    deps: [zzz]\n"
                .into(),
            vec![
                (0, P::EmptyTitle),
                (0, P::BadSpec(SpecPath::parse("/x.md").unwrap_err())),
                (1, P::UnknownDependency("zzz".into())),
            ],
        ),
    ];
    for (yaml, want) in &cases {
        check_proposal(yaml, want);
    }
}

#[test]
fn dependency_cycles_among_keys_are_rejected() {
    let text = format!(
        "{PM_HEAD}tasks:\n\
         \x20 - {{key: a, title: A, spec: specs/a.md, deps: [c]}}\n\
         \x20 - {{key: b, title: B, spec: specs/a.md, deps: [a]}}\n\
         \x20 - {{key: c, title: C, spec: specs/a.md, deps: [b]}}\n\
         \x20 - {{key: d, title: D, spec: specs/a.md, deps: [a]}}\n\
         ---\n"
    );
    let got = run(&text, &intake()).violations;
    assert_eq!(
        got,
        [V::DependencyCycle(vec![
            "a".into(),
            "c".into(),
            "b".into(),
            "a".into()
        ])]
    );
}

#[test]
fn the_expected_front_matter_round_trips_through_evaluate() {
    for expected in [
        step(),
        intake(),
        Expected::new(Subject::Improvement, 4, "process-improver"),
    ] {
        let outcome = run(&expected.front_matter(), &expected);
        assert!(
            outcome.is_accepted(),
            "{expected:?}: {:?}",
            outcome.violations
        );
        assert_eq!(outcome.result.verdict, Pass);
    }
}

#[test]
fn contract_text_for_a_task_step() {
    insta::assert_snapshot!(contract(&step()));
}

#[test]
fn contract_text_for_intake_teaches_proposals() {
    insta::assert_snapshot!(contract(&intake()));
}

#[test]
fn the_intake_contract_example_is_itself_valid() {
    // Pull the `tasks:` example out of the contract and evaluate it: the example the PM is
    // taught must pass the validator that judges it.
    let contract = contract(&intake());
    let example = contract
        .split("```\n")
        .find(|block| block.starts_with("tasks:"))
        .expect("the contract has a tasks example");
    let text = format!("{PM_HEAD}{example}---\n");
    let outcome = run(&text, &intake());
    assert!(outcome.is_accepted(), "{:?}", outcome.violations);
    assert_eq!(outcome.proposals.len(), 2);
}

#[test]
fn truncate_respects_char_boundaries() {
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("héllo", 3), "hé");
    assert_eq!(truncate("abc", 10), "abc");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn assert_never_silent(outcome: &Outcome) {
        if !outcome.is_accepted() {
            assert_eq!(outcome.result.verdict, Fail);
            assert!(outcome.proposals.is_empty());
            assert!(!outcome.result.detail.is_empty());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_rejections_always_fail(text in ".{0,400}") {
            assert_never_silent(&evaluate(Some(&text), &step()));
            assert_never_silent(&evaluate(Some(&text), &intake()));
        }

        #[test]
        fn arbitrary_front_matter_lines_never_pass_unless_exactly_right(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("task_id: task-007".to_owned()),
                    Just("task_id: task-008".to_owned()),
                    Just("round: 3".to_owned()),
                    Just("round: 4".to_owned()),
                    Just("role: verifier".to_owned()),
                    Just("verdict: pass".to_owned()),
                    Just("verdict: fail".to_owned()),
                    Just("tasks: []".to_owned()),
                    "[a-z_]{1,8}: [a-z0-9 ]{0,8}",
                ],
                0..8,
            )
        ) {
            let text = format!("---\n{}\n---\nbody\n", lines.join("\n"));
            let outcome = evaluate(Some(&text), &step());
            assert_never_silent(&outcome);
            if outcome.result.verdict == Pass {
                for line in ["task_id: task-007", "round: 3", "role: verifier", "verdict: pass"] {
                    prop_assert!(lines.iter().any(|l| l == line), "passed without {line}: {text}");
                }
            }
        }
    }
}
