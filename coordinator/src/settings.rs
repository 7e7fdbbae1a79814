//! Reads `.hyperloop.yaml` and the `HYPERLOOP_*` environment and hands them to the pure
//! validator in `hyperloop_shared::config`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use hyperloop_shared::config::{Config, ConfigError, Overrides};

/// The default configuration file, relative to the repository root.
pub const CONFIG_FILE: &str = ".hyperloop.yaml";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{}: cannot read the configuration file: {source}; check the path given with -c/--config", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    /// The file that was read, or `None` when no file exists and defaults apply.
    pub file: Option<PathBuf>,
}

/// Loads the configuration of the repository at `root`. `explicit` is `-c FILE`; without it
/// `<root>/.hyperloop.yaml` is read if present, and a missing file means all defaults.
///
/// # Errors
/// An unreadable explicit file, or any validation problem reported by [`Config::load`].
pub fn load(
    root: &Path,
    explicit: Option<&Path>,
    overrides: &Overrides,
) -> Result<Settings, SettingsError> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => (root.join(CONFIG_FILE), false),
    };
    let (text, file) = match std::fs::read_to_string(&path) {
        Ok(text) => (text, Some(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !required => (String::new(), None),
        Err(source) => return Err(SettingsError::Read { path, source }),
    };
    let label = file
        .as_deref()
        .map_or_else(|| CONFIG_FILE.to_owned(), |p| display_relative(root, p));
    let config = Config::load(&text, &label, &process_env(), overrides)?;
    Ok(Settings { config, file })
}

/// What the coordinator decided from the checkout for settings that were left out, for the
/// caller to say so.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inferred {
    /// `target.repo` and the `origin` URL it came from.
    pub repo: Option<(String, String)>,
    /// `target.base_branch` when it is not the default `main`.
    pub base_branch: Option<String>,
}

impl Inferred {
    /// One line per decision, naming the key that overrides it.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some((repo, origin)) = &self.repo {
            notes.push(format!(
                "target.repo inferred as {repo} from the GitHub origin remote {origin}: landing \
                 through pull requests; set `target.repo: null` or pass `--repo ''` to merge \
                 locally instead"
            ));
        }
        if let Some(branch) = &self.base_branch {
            notes.push(format!(
                "target.base_branch is `{branch}`, the branch this checkout is on, because the \
                 repository has no `main`; set `target.base_branch` (or --base-branch) to choose \
                 another"
            ));
        }
        notes
    }
}

/// Fills the settings that default from the checkout when they were left out: `target.repo`
/// from a GitHub `origin` remote (seed 001: "default: inferred from git remote"), and
/// `target.base_branch` from the checked-out branch when the repository has no `main` (a
/// `master` repository works without a configuration file). Afterwards both are decided.
pub fn infer(root: &Path, config: &mut Config) -> Inferred {
    let repo = git2::Repository::open(root).ok();
    let mut inferred = Inferred::default();
    if config.target.repo_from_origin && config.target.repo.is_none() {
        inferred.repo = repo.as_ref().and_then(|repo| {
            let origin = repo.find_remote("origin").ok()?.url().ok()?.to_owned();
            Some((hyperloop_shared::origin::github_repo(&origin)?, origin))
        });
        config
            .target
            .repo
            .clone_from(&inferred.repo.as_ref().map(|(r, _)| r.clone()));
    }
    if config.target.base_branch_from_checkout {
        inferred.base_branch = repo
            .as_ref()
            .and_then(|repo| checkout_branch_without(repo, &config.target.base_branch));
        if let Some(branch) = &inferred.base_branch {
            config.target.base_branch.clone_from(branch);
        }
        config.target.base_branch_from_checkout = false;
    }
    inferred
}

/// The branch HEAD is on, when the repository has no `default` branch and HEAD is a born
/// branch (a detached or unborn HEAD leaves the default, which then fails naming it).
fn checkout_branch_without(repo: &git2::Repository, default: &str) -> Option<String> {
    if repo
        .find_reference(&format!("refs/heads/{default}"))
        .is_ok()
    {
        return None;
    }
    let head = repo.head().ok()?;
    if !head.is_branch() {
        return None;
    }
    head.shorthand().ok().map(str::to_owned)
}

/// The validator reads only `HYPERLOOP_*` variables and the one `join_token_env` names (which
/// may be anything), so it gets the whole environment; non-UTF-8 entries cannot be settings.
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn display_relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_default_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let settings = load(dir.path(), None, &Overrides::default()).unwrap();
        assert_eq!(settings.file, None);
        assert_eq!(settings.config.target.base_branch, "main");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let err = load(dir.path(), Some(&missing), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("nope.yaml"), "{err}");
    }

    #[test]
    fn errors_name_the_file_relative_to_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "max_workerz: 3\n").unwrap();
        let err = load(dir.path(), None, &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(".hyperloop.yaml: unknown key `max_workerz`"),
            "{text}"
        );
        assert!(text.contains("max_workers"), "{text}");
    }
}
