use super::*;
use std::collections::BTreeMap;

/// An in-memory tree of files; remote bases map a clone URL + ref to a directory in it.
#[derive(Default)]
struct Mem {
    files: BTreeMap<PathBuf, String>,
    remotes: BTreeMap<(String, Option<String>), PathBuf>,
}

impl Mem {
    fn with(files: &[(&str, &str)]) -> Self {
        let mut m = Self::default();
        for (p, c) in files {
            m.files.insert(PathBuf::from(p), (*c).to_owned());
        }
        m
    }
}

impl FileSource for Mem {
    fn entry(&self, path: &Path) -> EntryKind {
        if self.files.contains_key(path) {
            EntryKind::File
        } else if self.files.keys().any(|k| k.starts_with(path)) {
            EntryKind::Dir
        } else {
            EntryKind::Missing
        }
    }
    fn read(&self, path: &Path) -> Result<String, SourceError> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| SourceError::Read {
                path: path.to_owned(),
                reason: "missing".into(),
            })
    }
    fn fetch_remote(&self, remote: &RemoteRef) -> Result<PathBuf, SourceError> {
        self.remotes
            .get(&(remote.clone_url.clone(), remote.reference.clone()))
            .cloned()
            .ok_or_else(|| SourceError::Fetch {
                url: remote.clone_url.clone(),
                reference: remote.reference.clone().unwrap_or_default(),
                reason: "unknown".into(),
            })
    }
}

fn agent(name: &str, guidelines: &str) -> String {
    format!(
        "apiVersion: hyperloop.io/v1\nkind: Agent\nmetadata:\n  name: {name}\nprompt: p\nguidelines: {guidelines}\n"
    )
}

const BASE_K: &str = "resources:\n- agents.yaml\n";

fn base_files() -> Vec<(&'static str, String)> {
    vec![
        ("/r/base/kustomization.yaml", BASE_K.to_owned()),
        (
            "/r/base/agents.yaml",
            format!(
                "{}---\n{}",
                agent("verifier", "v"),
                agent("implementer", "i")
            ),
        ),
    ]
}

fn build(extra: &[(&str, &str)], dir: &str) -> Result<Composition, ComposeError> {
    let base = base_files();
    let mut files: Vec<(&str, &str)> = base.iter().map(|(p, c)| (*p, c.as_str())).collect();
    files.extend_from_slice(extra);
    compose(&Mem::with(&files), Path::new(dir))
}

fn field<'a>(c: &'a Composition, kind: &str, name: &str, key: &str) -> Option<&'a Value> {
    c.get(kind, name).and_then(|r| r.value.get(key))
}

#[test]
fn resources_are_sorted_in_kustomize_legacy_order() {
    let c = build(&[], "/r/base").expect("builds");
    let names: Vec<String> = c.resources.iter().map(|r| r.id().name).collect();
    assert_eq!(names, ["implementer", "verifier"]);
    let process = "apiVersion: hyperloop.io/v1\nkind: Process\nmetadata:\n  name: default\n";
    let other = "apiVersion: aaa.io/v1\nkind: Zed\nmetadata:\n  name: z\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns\n";
    let c = build(
        &[
            (
                "/r/o/kustomization.yaml",
                "resources:\n- ../base\n- p.yaml\n- o.yaml\n",
            ),
            ("/r/o/p.yaml", process),
            ("/r/o/o.yaml", other),
        ],
        "/r/o",
    )
    .expect("builds");
    let ids: Vec<String> = c.resources.iter().map(|r| r.id().to_string()).collect();
    assert_eq!(
        ids,
        [
            "Namespace.v1/ns",
            "Zed.v1.aaa.io/z",
            "Agent.v1.hyperloop.io/implementer",
            "Agent.v1.hyperloop.io/verifier",
            "Process.v1.hyperloop.io/default"
        ]
    );
}

#[test]
fn components_apply_after_resources_and_before_own_patches() {
    let comp = "kind: Component\nresources:\n- extra.yaml\npatches:\n- patch: |-\n    apiVersion: hyperloop.io/v1\n    kind: Agent\n    metadata:\n      name: implementer\n    guidelines: comp\n    c: 1\n";
    let ov = "resources:\n- ../base\ncomponents:\n- ../comp\npatches:\n- patch: |-\n    apiVersion: hyperloop.io/v1\n    kind: Agent\n    metadata:\n      name: implementer\n    guidelines: overlay\n";
    let extra = agent("extra", "e");
    let c = build(
        &[
            ("/r/comp/kustomization.yaml", comp),
            ("/r/comp/extra.yaml", &extra),
            ("/r/ov/kustomization.yaml", ov),
        ],
        "/r/ov",
    )
    .expect("builds");
    assert_eq!(
        field(&c, "Agent", "implementer", "guidelines"),
        Some(&Value::from("overlay"))
    );
    assert_eq!(
        field(&c, "Agent", "implementer", "c"),
        Some(&Value::from(1))
    );
    assert!(c.get("Agent", "extra").is_some());
}

#[test]
fn legacy_strategic_merge_patches_apply_before_patches_and_json6902_last() {
    let k = "resources:\n- ../base\npatchesJson6902:\n- target: {kind: Agent, name: implementer}\n  patch: '[{op: replace, path: /guidelines, value: json}]'\npatches:\n- path: p.yaml\npatchesStrategicMerge:\n- |-\n  apiVersion: hyperloop.io/v1\n  kind: Agent\n  metadata:\n    name: implementer\n  guidelines: psm\n  psm: true\n";
    let p = "apiVersion: hyperloop.io/v1\nkind: Agent\nmetadata:\n  name: implementer\nguidelines: patches\n";
    let c = build(
        &[("/r/o/kustomization.yaml", k), ("/r/o/p.yaml", p)],
        "/r/o",
    )
    .expect("builds");
    assert_eq!(
        field(&c, "Agent", "implementer", "guidelines"),
        Some(&Value::from("json"))
    );
    assert_eq!(
        field(&c, "Agent", "implementer", "psm"),
        Some(&Value::from(true))
    );
    assert!(c.warnings.iter().any(|w| matches!(
        w,
        Warning::Deprecated {
            field: "patchesJson6902",
            ..
        }
    )));
}

#[test]
fn a_target_that_matches_nothing_is_a_no_op_with_a_warning_naming_the_patch() {
    let k = "resources:\n- ../base\npatches:\n- path: nothing.yaml\n  target:\n    kind: Agent\n    name: impl\n";
    let p = "kind: Agent\nmetadata:\n  name: x\nguidelines: changed\n";
    let c = build(
        &[("/r/o/kustomization.yaml", k), ("/r/o/nothing.yaml", p)],
        "/r/o",
    )
    .expect("builds");
    assert_eq!(
        field(&c, "Agent", "implementer", "guidelines"),
        Some(&Value::from("i"))
    );
    let text = c.warnings[0].to_string();
    assert!(
        text.contains("patch `nothing.yaml`") && text.contains("name=impl"),
        "{text}"
    );
}

#[test]
fn a_regex_target_patches_every_match_and_keeps_names() {
    let k = "resources:\n- ../base\npatches:\n- target: {name: '.*er'}\n  patch: |-\n    kind: Agent\n    metadata:\n      name: renamed\n      labels: {x: y}\n    guidelines: all\n";
    let c = build(&[("/r/o/kustomization.yaml", k)], "/r/o").expect("builds");
    for name in ["implementer", "verifier"] {
        assert_eq!(
            field(&c, "Agent", name, "guidelines"),
            Some(&Value::from("all"))
        );
    }
}

#[test]
fn an_untargeted_patch_for_a_missing_resource_is_an_error_like_kubectl() {
    let k = "resources:\n- ../base\npatches:\n- patch: |-\n    kind: Agent\n    metadata:\n      name: nothere\n    guidelines: x\n";
    let err = build(&[("/r/o/kustomization.yaml", k)], "/r/o").expect_err("fails");
    let text = err.to_string();
    assert!(
        text.contains("no resource matches")
            && text.contains("nothere")
            && text.contains("patches #1"),
        "{text}"
    );
}

#[test]
fn patch_delete_removes_a_resource() {
    let k = "resources:\n- ../base\npatches:\n- patch: |-\n    $patch: delete\n    apiVersion: hyperloop.io/v1\n    kind: Agent\n    metadata:\n      name: verifier\n";
    let c = build(&[("/r/o/kustomization.yaml", k)], "/r/o").expect("builds");
    assert!(c.get("Agent", "verifier").is_none());
    assert_eq!(c.resources.len(), 1);
}

#[test]
fn duplicate_ids_are_an_error_naming_both_files() {
    let dup = agent("verifier", "again");
    let k = "resources:\n- ../base\n- dup.yaml\n";
    let err = build(
        &[("/r/o/kustomization.yaml", k), ("/r/o/dup.yaml", &dup)],
        "/r/o",
    )
    .expect_err("fails");
    let text = err.to_string();
    assert!(
        text.contains("already registered id Agent.v1.hyperloop.io/verifier"),
        "{text}"
    );
    assert!(text.contains("/r/base/agents.yaml"), "{text}");
}

#[test]
fn files_outside_the_root_are_refused_but_folders_with_a_kustomization_are_not() {
    let err = build(
        &[(
            "/r/o/kustomization.yaml",
            "resources:\n- ../base/agents.yaml\n",
        )],
        "/r/o",
    )
    .expect_err("fails");
    assert!(matches!(err, ComposeError::OutsideRoot { .. }), "{err}");
    let err = build(
        &[(
            "/r/o/kustomization.yaml",
            "patches:\n- path: ../base/agents.yaml\n",
        )],
        "/r/o",
    )
    .expect_err("fails");
    assert!(matches!(err, ComposeError::OutsideRoot { .. }), "{err}");
    assert!(
        build(
            &[("/r/o/kustomization.yaml", "resources:\n- ../base\n")],
            "/r/o"
        )
        .is_ok()
    );
}

#[test]
fn cycles_between_kustomizations_are_detected() {
    let err = build(
        &[
            ("/r/a/kustomization.yaml", "resources:\n- ../b\n"),
            ("/r/b/kustomization.yaml", "resources:\n- ../a\n"),
        ],
        "/r/a",
    )
    .expect_err("fails");
    assert_eq!(
        err.to_string(),
        "cycle between kustomizations: /r/a -> /r/b -> /r/a"
    );
}

#[test]
fn unsupported_and_unknown_fields_and_wrong_kinds_are_refused() {
    let err = build(&[("/r/o/kustomization.yaml", "namePrefix: x-\n")], "/r/o").expect_err("fails");
    assert!(
        err.to_string().contains("`namePrefix` is not supported"),
        "{err}"
    );
    let err = build(&[("/r/o/kustomization.yaml", "resourcez: []\n")], "/r/o").expect_err("fails");
    assert!(
        err.to_string().contains("unknown field `resourcez`"),
        "{err}"
    );
    let err = build(
        &[
            ("/r/o/kustomization.yaml", "resources:\n- ../c\n"),
            ("/r/c/kustomization.yaml", "kind: Component\n"),
        ],
        "/r/o",
    )
    .expect_err("fails");
    assert!(
        err.to_string().contains("list it under `components:`"),
        "{err}"
    );
    let err = build(
        &[("/r/o/kustomization.yaml", "resources:\n- nope.yaml\n")],
        "/r/o",
    )
    .expect_err("fails");
    assert!(
        err.to_string().contains("`nope.yaml` does not exist"),
        "{err}"
    );
}

#[test]
fn json6902_without_target_and_failing_ops_name_the_patch() {
    let k = "resources:\n- ../base\npatches:\n- patch: '[{op: add, path: /x, value: 1}]'\n";
    let err = build(&[("/r/o/kustomization.yaml", k)], "/r/o").expect_err("fails");
    assert!(err.to_string().contains("needs a `target:`"), "{err}");
    let k = "resources:\n- ../base\npatches:\n- target: {kind: Agent}\n  patch: '[{op: remove, path: /nope}]'\n";
    let err = build(&[("/r/o/kustomization.yaml", k)], "/r/o").expect_err("fails");
    assert!(
        err.to_string()
            .contains("cannot apply to Agent.v1.hyperloop.io/"),
        "{err}"
    );
}

#[test]
fn remote_bases_are_resolved_through_the_source() {
    let mut m = Mem::with(&[(
        "/r/o/kustomization.yaml",
        "resources:\n- https://git.example/org/repo//base?ref=v1\n",
    )]);
    for (p, c) in base_files() {
        m.files
            .insert(PathBuf::from(p.replace("/r/", "/cache/x/")), c);
    }
    m.remotes.insert(
        ("https://git.example/org/repo".into(), Some("v1".into())),
        PathBuf::from("/cache/x"),
    );
    let c = compose(&m, Path::new("/r/o")).expect("builds");
    assert_eq!(c.resources.len(), 2);
    let mut m = Mem::with(&[(
        "/r/o/kustomization.yaml",
        "resources:\n- https://git.example/org/repo//base?ref=v2\n",
    )]);
    m.remotes.clear();
    let err = compose(&m, Path::new("/r/o")).expect_err("fails");
    assert!(
        err.to_string().contains("https://git.example/org/repo"),
        "{err}"
    );
}

#[test]
fn the_canonical_base_url_is_served_from_the_embedded_files() {
    let embedded = WithEmbeddedBase::new(Mem::with(&[(
        "/p/kustomization.yaml",
        &format!("resources:\n- {BASE_URL}\n"),
    )]));
    let via_url = compose(&embedded, Path::new("/p")).expect("builds offline");
    let mut local = Mem::default();
    for (p, c) in crate::base::FILES {
        local
            .files
            .insert(PathBuf::from("/b").join(p), (*c).to_owned());
    }
    let direct = compose(&local, Path::new("/b")).expect("builds");
    assert_eq!(render(&via_url), render(&direct));
    assert!(!direct.resources.is_empty());
}

#[test]
fn patches_need_kind_and_name_and_untargeted_ones_an_exact_id_like_kubectl() {
    // The README's style (no metadata) is refused by kubectl too.
    let k = "resources:\n- ../base\npatches:\n- path: p.yaml\n  target: {kind: Agent, name: implementer}\n";
    let p = "kind: Agent\nname: implementer\nguidelines: x\n";
    let err = build(
        &[("/r/o/kustomization.yaml", k), ("/r/o/p.yaml", p)],
        "/r/o",
    )
    .expect_err("fails");
    assert!(
        err.to_string().contains("patch `p.yaml`") && err.to_string().contains("metadata.name"),
        "{err}"
    );
    let k = "resources:\n- ../base\npatches:\n- patch: |-\n    kind: Agent\n    metadata:\n      name: implementer\n    guidelines: x\n";
    let err =
        build(&[("/r/o/kustomization.yaml", k)], "/r/o").expect_err("no apiVersion, no match");
    assert!(
        matches!(err, ComposeError::PatchTargetMissing { .. }),
        "{err}"
    );
}

#[test]
fn a_patched_field_records_the_patch_file_that_last_set_it() {
    let src = Mem::with(&[
        (
            "/o/kustomization.yaml",
            "resources:\n- base.yaml\npatches:\n- path: p.yaml\n- path: ops.yaml\n  target: {kind: Agent, name: a}\n",
        ),
        ("/o/base.yaml", &agent("a", "g")),
        (
            "/o/p.yaml",
            "apiVersion: hyperloop.io/v1\nkind: Agent\nmetadata:\n  name: a\nguidelines: patched\n",
        ),
        (
            "/o/ops.yaml",
            "- op: replace\n  path: /prompt\n  value: q\n",
        ),
    ]);
    let c = compose(&src, Path::new("/o")).unwrap();
    let a = c.get("Agent", "a").unwrap();
    assert_eq!(a.set_by["guidelines"], PathBuf::from("/o/p.yaml"));
    assert_eq!(a.set_by["prompt"], PathBuf::from("/o/ops.yaml"));
    assert!(!a.set_by.contains_key("metadata"));
}
