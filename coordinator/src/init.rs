//! `hyperloop-coordinator init`: scaffolds a repository for hyperloop.
//!
//! Creates what is missing, never overwrites (files are created with `O_EXCL`, so even a
//! concurrent edit is safe), works offline with hyperloop's embedded base, and validates the
//! resulting composition like `run` would.
//!
//! Deliberately not created:
//! - a `specs/README.md`: every `*.md` under `specs/` is a spec, so a README would become
//!   work for the PM. An empty `specs/` gets a `.gitkeep` (hidden files are not specs).
//! - a `.gitignore` entry for `.hyperloop/result.md`: agents write it in worker worktrees,
//!   which exclude it through `info/exclude`; the user's checkout never holds one.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use hyperloop_shared::compose::BASE_URL;
use hyperloop_shared::config::Overrides;
use hyperloop_shared::project::Project;

use crate::compose::{CacheDir, compose_project};
use crate::settings::{self, CONFIG_FILE};

/// The overlay folder init scaffolds (the default of the `overlay` setting).
pub const AGENTS_DIR: &str = ".hyperloop/agents";

/// Whether init made an entry or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    Created,
    Exists,
}

/// One scaffolded file or folder, relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitEntry {
    pub path: String,
    pub status: EntryStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub root: PathBuf,
    pub entries: Vec<InitEntry>,
    /// Agent names of the validated composition.
    pub agents: Vec<String>,
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in &self.entries {
            let status = match entry.status {
                EntryStatus::Created => "Created",
                EntryStatus::Exists => "Exists ",
            };
            writeln!(f, "{status} {}", entry.path)?;
        }
        writeln!(
            f,
            "The composition is valid: agents {}. Add specs under specs/, then run \
             `hyperloop-coordinator run`.",
            self.agents.join(", ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{} is not a git repository; run `git init` there first, or pass --path to a \
         repository's root",
        path.display()
    )]
    NotARepository { path: PathBuf },
    #[error(
        "{} is inside the git repository at {}; run init at the repository's root \
         (--path {})",
        path.display(), root.display(), root.display()
    )]
    NotRepositoryRoot { path: PathBuf, root: PathBuf },
    #[error("{}: cannot create: {source}; check the permissions of the repository", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the scaffolded composition does not validate: {reason}; fix \
         .hyperloop.yaml or {AGENTS_DIR}/kustomization.yaml (or the overlay it names) and run \
         init again"
    )]
    Invalid { reason: String },
}

/// Scaffolds the repository at `path`. `overlay` (a kustomize resource such as
/// `github.com/org/agents//overlays/api?ref=v1`, itself including a base) replaces `base_ref`
/// in the agents kustomization; without either, hyperloop's own base ([`BASE_URL`]) is used,
/// which is served from the binary, so init needs no network.
///
/// # Errors
/// `path` is not the root of a git working tree, a file cannot be written, or the composition
/// does not validate.
pub fn init(
    path: &Path,
    base_ref: Option<&str>,
    overlay: Option<&str>,
) -> Result<InitReport, InitError> {
    check_repository_root(path)?;
    let resource = overlay
        .or(base_ref)
        .filter(|r| !r.trim().is_empty())
        .unwrap_or(BASE_URL);
    let agents_kustomization = format!(
        "# The composition point: base agent definitions, this project's patches, and the\n\
         # process Component that the process-improver maintains.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources:\n\
         - {resource}\n\
         components:\n\
         - process\n"
    );
    let mut entries = vec![
        create_file(path, CONFIG_FILE, CONFIG_TEMPLATE)?,
        create_file(
            path,
            &format!("{AGENTS_DIR}/kustomization.yaml"),
            &agents_kustomization,
        )?,
        create_file(
            path,
            &format!("{AGENTS_DIR}/process/kustomization.yaml"),
            PROCESS_COMPONENT,
        )?,
        create_file(
            path,
            &format!("{AGENTS_DIR}/process/process.yaml"),
            &default_process(),
        )?,
    ];
    entries.push(create_specs_dir(path)?);
    entries.push(create_checks_dir(path)?);

    // Validate what `run` will compose: the settings as loaded (an existing configuration
    // may name another overlay), through the same code path.
    let invalid = |reason: String| InitError::Invalid { reason };
    let settings =
        settings::load(path, None, &Overrides::default()).map_err(|e| invalid(e.to_string()))?;
    let config = &settings.config;
    let (composition, _) = compose_project(
        path,
        &config.overlay,
        config.base_ref.as_deref(),
        &CacheDir::from_env(),
    )
    .map_err(|e| invalid(e.to_string()))?;
    let project = Project::from_composition(&composition).map_err(|e| invalid(e.to_string()))?;
    Ok(InitReport {
        root: path.to_owned(),
        entries,
        agents: project.agents.keys().cloned().collect(),
    })
}

const CONFIG_TEMPLATE: &str = "\
# hyperloop configuration. Every key is optional; the commented values are the defaults.
# `hyperloop-coordinator run --dry-run` prints the resolved configuration.
overlay: .hyperloop/agents/
# target:
#   base_branch: main    # specs are read from, and work lands on, this branch
#   specs_dir: specs     # markdown specs, searched recursively
#   repo: owner/repo     # set to land work through GitHub pull requests
# runtime:
#   max_workers: 6       # tasks worked on at once
# merge:
#   strategy: squash     # or: merge
#   delete_branch: true
";

const PROCESS_COMPONENT: &str = "\
# The process overlay, applied on top of the base and the project's patches: process.yaml
# (the pipeline; edit it to change the steps), plus the patches the process-improver writes
# to add learned guidelines to agents.
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches:
- path: process.yaml
";

/// The base's default Process, as the file users edit to change the pipeline (seed 000's
/// `.hyperloop/agents/process/process.yaml`).
fn default_process() -> String {
    let base = hyperloop_shared::base::FILES
        .iter()
        .find(|(p, _)| *p == "process.yaml")
        .map_or("", |(_, text)| text);
    format!(
        "# The pipeline every task goes through; edit it to change the steps. It starts as \
         hyperloop's\n# default (implement, verify, merge). Step primitives: `agent: ROLE`, \
         `gate: NAME`,\n# `action: NAME`, `loop: [STEPS]`.\n{base}"
    )
}

/// `path` must be the top of a (non-bare) git working tree: scaffolding a subfolder would
/// leave `run` in the root without configuration.
fn check_repository_root(path: &Path) -> Result<(), InitError> {
    let not_repo = || InitError::NotARepository {
        path: path.to_owned(),
    };
    let canonical = path.canonicalize().map_err(|_| not_repo())?;
    match git2::Repository::discover(&canonical) {
        Ok(repo) => match repo.workdir().and_then(|w| w.canonicalize().ok()) {
            Some(root) if root == canonical => Ok(()),
            Some(root) => Err(InitError::NotRepositoryRoot {
                path: path.to_owned(),
                root,
            }),
            None => Err(not_repo()),
        },
        Err(_) => Err(not_repo()),
    }
}

fn create_file(root: &Path, rel: &str, text: &str) -> Result<InitEntry, InitError> {
    let path = root.join(rel);
    let write_err = |source| InitError::Write {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let status = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(text.as_bytes()).map_err(write_err)?;
            EntryStatus::Created
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => EntryStatus::Exists,
        Err(e) => return Err(write_err(e)),
    };
    Ok(InitEntry {
        path: rel.to_owned(),
        status,
    })
}

/// `.hyperloop/checks/`: executables hyperloop runs in the worktree after an agent reports
/// pass (the process-improver adds them). The `.gitkeep` is not executable, so not a check.
fn create_checks_dir(root: &Path) -> Result<InitEntry, InitError> {
    let dir = ".hyperloop/checks";
    let entry = if root.join(dir).is_dir() {
        EntryStatus::Exists
    } else {
        create_file(root, &format!("{dir}/.gitkeep"), "")?.status
    };
    Ok(InitEntry {
        path: format!("{dir}/"),
        status: entry,
    })
}

/// `specs/`, with a `.gitkeep` so git keeps it while it has no specs.
fn create_specs_dir(root: &Path) -> Result<InitEntry, InitError> {
    let dir = root.join("specs");
    let has_entries = match std::fs::read_dir(&dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => return Err(InitError::Write { path: dir, source }),
    };
    if has_entries {
        return Ok(InitEntry {
            path: "specs/".to_owned(),
            status: EntryStatus::Exists,
        });
    }
    let entry = create_file(root, "specs/.gitkeep", "")?;
    Ok(InitEntry {
        path: "specs/".to_owned(),
        status: entry.status,
    })
}
