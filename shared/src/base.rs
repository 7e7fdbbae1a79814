//! The default agents and process (the `base/` folder), embedded at compile time so `init`,
//! `compose` and `run` work offline.

/// Every file of `base/`, as (path relative to `base/`, contents).
pub const FILES: &[(&str, &str)] = &[
    (
        "kustomization.yaml",
        include_str!("../../base/kustomization.yaml"),
    ),
    (
        "implementer.yaml",
        include_str!("../../base/implementer.yaml"),
    ),
    ("verifier.yaml", include_str!("../../base/verifier.yaml")),
    ("pm.yaml", include_str!("../../base/pm.yaml")),
    (
        "process-improver.yaml",
        include_str!("../../base/process-improver.yaml"),
    ),
    (
        "rebase-resolver.yaml",
        include_str!("../../base/rebase-resolver.yaml"),
    ),
    ("process.yaml", include_str!("../../base/process.yaml")),
];
