//! The Kubernetes manifests in `deploy/` build with `kubectl kustomize`, and every hyperloop
//! environment variable they set is one the binaries read (a renamed setting must not leave a
//! manifest that silently does nothing).

use std::path::Path;
use std::process::Command;

/// Variables the binaries read beyond the configuration keys: command-line flags with an
/// environment fallback (`--path`, and the worker's flags).
const FLAG_VARIABLES: &[&str] = &[
    "HYPERLOOP_PATH",
    "HYPERLOOP_JOIN",
    "HYPERLOOP_TOKEN",
    "HYPERLOOP_NAME",
    "HYPERLOOP_TLS_CA",
];

#[test]
fn kubernetes_manifests_build_and_set_only_known_variables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is required (tests/setup installs it)");
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/kubernetes failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known: Vec<String> = hyperloop_shared::config::env_vars()
        .into_iter()
        .map(|(name, _)| name)
        .chain(FLAG_VARIABLES.iter().map(|v| (*v).to_owned()))
        // Where the join token is read from, unless `join_token_env` names another variable.
        .chain([hyperloop_shared::config::Config::default().join_token_env])
        .collect();
    let set: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|name| name.starts_with("HYPERLOOP_"))
        .collect();
    assert!(set.contains(&"HYPERLOOP_ETCD_ENDPOINTS"), "{yaml}");
    for name in set {
        assert!(
            known.iter().any(|k| k == name),
            "deploy/kubernetes sets {name}, which hyperloop does not read"
        );
    }
    for kind in ["kind: StatefulSet", "kind: Deployment", "clusterIP: None"] {
        assert!(yaml.contains(kind), "{kind} missing:\n{yaml}");
    }
}
