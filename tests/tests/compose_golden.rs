//! Golden tests: hyperloop's composer against `kubectl kustomize` (kustomize v5.5).
//!
//! Each case is a folder `tests/fixtures/compose/<case>/` with
//! - `input/`: the kustomization tree that is composed (its root holds the kustomization);
//! - `expected.yaml`: what `kubectl kustomize input/` prints, committed;
//! - optionally `warnings.txt`: one line per warning we must report (substring match);
//! - optionally `repos/<name>/`: folders turned into bare git repositories at test time
//!   (`<tmp>/repos/<name>.git`, branch `main`, tag `v0.1.0`); the repository named
//!   `hyperloop` additionally gets the workspace's real `base/` folder. Files in `input/`
//!   may then say `{{REPOS}}`, which is replaced by that temp folder, so remote bases are
//!   referenced as `file://{{REPOS}}/gitops.git//overlays/api?ref=main`. Cases with repos
//!   are copied to a temp folder first; the others are composed in place (so `base_only`
//!   can reference the real `base/` by relative path).
//!
//! Two checks per case: our output is byte-identical to `expected.yaml`, and kubectl's
//! output still is too (so goldens cannot drift). kubectl is required; without it the test
//! fails and says how to install it.
//!
//! REGENERATE the goldens (e.g. after `base/` prompts change) with one command:
//!
//!     HYPERLOOP_UPDATE_GOLDEN=1 cargo test -p hyperloop-tests --test compose_golden
//!
//! then review `git diff tests/fixtures/compose`.

use hyperloop_coordinator::compose::{CacheDir, compose_dir, render};
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_KUBECTL: &str = "kubectl (with kustomize v5) is required for the compose golden tests: \
     install it, e.g. `curl -LO https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl && \
     install kubectl /usr/local/bin/` or your distribution's kubernetes-client package, then rerun";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/compose")
}

fn workspace_base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../base")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/compose exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "expected at least five compose fixtures, found {}",
        cases.len()
    );
    cases
}

/// A case ready to compose: the input folder (in place or materialized) and the temp folder
/// that must outlive it.
struct Materialized {
    input: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=golden",
            "-c",
            "user.email=golden@example.invalid",
        ])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_tree(from: &Path, to: &Path, subst: &dyn Fn(String) -> String) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readable") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dest, subst);
        } else {
            let text = std::fs::read_to_string(e.path()).expect("utf-8 fixture");
            std::fs::write(dest, subst(text)).expect("write");
        }
    }
}

fn materialize(case: &Path) -> Materialized {
    let repos = case.join("repos");
    if !repos.is_dir() {
        return Materialized {
            input: case.join("input"),
            _tmp: None,
        };
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let repos_out = tmp.path().join("repos");
    let repos_str = repos_out.display().to_string();
    let subst = move |t: String| t.replace("{{REPOS}}", &repos_str);
    std::fs::create_dir_all(&repos_out).expect("mkdir");
    for e in std::fs::read_dir(&repos).expect("repos") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let work = tmp.path().join("work").join(&name);
        copy_tree(&e.path(), &work, &subst);
        if name == "hyperloop" {
            copy_tree(&workspace_base(), &work.join("base"), &|t| t);
        }
        git(&work, &["init", "-q"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "fixture"]);
        git(&work, &["tag", "v0.1.0"]);
        git(
            &repos_out,
            &[
                "clone",
                "-q",
                "--bare",
                &work.display().to_string(),
                &format!("{name}.git"),
            ],
        );
    }
    let input = tmp.path().join("input");
    copy_tree(&case.join("input"), &input, &subst);
    Materialized {
        input,
        _tmp: Some(tmp),
    }
}

fn name(case: &Path) -> String {
    case.file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned()
}

fn updating() -> bool {
    std::env::var("HYPERLOOP_UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

fn kubectl_kustomize(input: &Path) -> String {
    let out = match Command::new("kubectl").arg("kustomize").arg(input).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run kubectl ({e}). {INSTALL_KUBECTL}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn our_composition_is_byte_identical_to_the_committed_kubectl_output() {
    let mut failures = Vec::new();
    for case in cases() {
        let m = materialize(&case);
        let cache = tempfile::tempdir().expect("tmp");
        let composition = match compose_dir(&m.input, &CacheDir::new(cache.path())) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}: compose failed: {e}", name(&case)));
                continue;
            }
        };
        let ours = render(&composition);
        if updating() {
            // Regenerate here too, so this test never races the other one's rewrite.
            std::fs::write(case.join("expected.yaml"), kubectl_kustomize(&m.input))
                .expect("write golden");
        }
        let golden = std::fs::read_to_string(case.join("expected.yaml")).unwrap_or_default();
        if ours != golden {
            failures.push(format!(
                "{}: output differs from expected.yaml\n--- ours ---\n{ours}--- expected ---\n{golden}",
                name(&case)
            ));
        }
        let warnings: Vec<String> = composition
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected_warnings =
            std::fs::read_to_string(case.join("warnings.txt")).unwrap_or_default();
        for want in expected_warnings.lines().filter(|l| !l.trim().is_empty()) {
            if !warnings.iter().any(|w| w.contains(want)) {
                failures.push(format!(
                    "{}: no warning containing `{want}`; got {warnings:?}",
                    name(&case)
                ));
            }
        }
        let patch_warnings = warnings
            .iter()
            .filter(|w| w.contains("matches no resource"))
            .count();
        if expected_warnings.trim().is_empty() && patch_warnings > 0 {
            failures.push(format!("{}: unexpected warnings {warnings:?}", name(&case)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn committed_goldens_match_what_kubectl_prints_now() {
    let mut stale = Vec::new();
    for case in cases() {
        let m = materialize(&case);
        let theirs = kubectl_kustomize(&m.input);
        let path = case.join("expected.yaml");
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        if theirs != golden {
            if updating() {
                std::fs::write(&path, &theirs).expect("write golden");
            } else {
                stale.push(format!(
                    "{}:\n--- kubectl ---\n{theirs}--- committed ---\n{golden}",
                    name(&case)
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "committed goldens differ from kubectl's output; regenerate with \
         `HYPERLOOP_UPDATE_GOLDEN=1 cargo test -p hyperloop-tests --test compose_golden` and review:\n{}",
        stale.join("\n\n")
    );
}
