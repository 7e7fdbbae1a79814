//! File-system and git adapters for composition.
//!
//! [`compose_dir`] builds a kustomization folder from the local file system through the pure
//! resolver in [`hyperloop_shared::compose`]. Remote git bases are fetched with the `git` CLI
//! (so the user's credential helpers and ssh config apply) into a cache, and hyperloop's own
//! base at this version ([`BASE_URL`]) is served from the embedded files without network.
//!
//! Cache layout and guarantees:
//! - `$XDG_CACHE_HOME/hyperloop/git/<repo>-<hash of url and ref>/` (fallback
//!   `~/.cache/hyperloop/git/...`) holds one checkout per (clone URL, ref).
//! - An entry is fetched once and reused: a commit id never changes, and a tag or branch is
//!   deliberately pinned at its first fetch so composition is repeatable and offline.
//!   To pick up a moved tag or branch, set `HYPERLOOP_COMPOSE_REFRESH=1` (or
//!   [`CacheDir::refresh`]) once, or delete the entry's folder.
//! - A fetch happens in a temporary folder inside the cache and is renamed into place only
//!   when complete. An interrupted fetch leaves at most a `.tmp-*` folder, which is never
//!   read; concurrent fetches of one entry both succeed and one rename wins.

pub use hyperloop_shared::compose::{BASE_URL, ComposeError, Composition, render};

use hyperloop_shared::compose::{
    EntryKind, FileSource, RemoteRef, SourceError, WithEmbeddedBase, compose, normalize,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where fetched remote bases are kept.
#[derive(Debug, Clone)]
pub struct CacheDir {
    root: PathBuf,
    refresh: bool,
}

impl CacheDir {
    /// A cache rooted at `root` (the `git/` folder is created inside it on first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            refresh: false,
        }
    }

    /// The user's cache: `$XDG_CACHE_HOME/hyperloop`, else `~/.cache/hyperloop`;
    /// `HYPERLOOP_COMPOSE_REFRESH=1` refetches tags and branches.
    pub fn from_env() -> Self {
        let root = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("hyperloop");
        let refresh =
            std::env::var("HYPERLOOP_COMPOSE_REFRESH").is_ok_and(|v| v == "1" || v == "true");
        Self { root, refresh }
    }

    /// Refetch tags and branches even if cached (commit ids are always reused).
    #[must_use]
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// The cache's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder a (clone URL, ref) pair is cached in.
    pub fn entry_path(&self, remote: &RemoteRef) -> PathBuf {
        let reference = remote.reference.as_deref().unwrap_or("HEAD");
        let key = format!("{}\n{}", remote.clone_url, reference);
        let name: String = remote
            .repository_key()
            .rsplit('/')
            .next()
            .unwrap_or("repo")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root
            .join("git")
            .join(format!("{name}-{:016x}", fnv1a(key.as_bytes())))
    }
}

/// FNV-1a: a stable, dependency-free hash for cache folder names (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds the kustomization in `dir` (relative paths are taken from the current directory).
///
/// # Errors
/// See [`ComposeError`]: unreadable or invalid files, failed fetches, patch errors.
pub fn compose_dir(dir: &Path, cache: &CacheDir) -> Result<Composition, ComposeError> {
    let abs = absolute(dir)?;
    let source = WithEmbeddedBase::new(FsSource {
        cache: cache.clone(),
    });
    compose(&source, &normalize(&abs))
}

/// What a project's composition was built from, for messages and `--dry-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompositionSource {
    /// The project overlay: a kustomization folder in the repository or a remote git overlay.
    Overlay(String),
    /// The overlay folder holds patch files but no kustomization (seed 001's in-repo layout):
    /// they were applied to the base through the implied kustomization shown here.
    Implied {
        /// The overlay setting.
        overlay: String,
        /// The kustomization hyperloop composed in its place.
        kustomization: String,
    },
    /// No overlay kustomization exists; the base (`base_ref`, or hyperloop's embedded base)
    /// was composed alone.
    BaseOnly(String),
}

/// The kustomization file names kustomize accepts, in its order of preference.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The default of the `overlay` setting: missing, it means "no customisation".
const DEFAULT_OVERLAY: &str = ".hyperloop/agents";

/// The process overlay folder inside the overlay (seed 000's `process/process.yaml`).
const PROCESS_DIR: &str = "process";

/// Builds a project's composition from the `overlay` setting (a folder relative to `root`, or
/// a remote git overlay `URL//subdir?ref=REF`):
///
/// - a folder with a kustomization is composed as it is; every YAML file beside it (and in
///   its `process/`) must be used by it, so no patch is silently ignored;
/// - a folder with patch files but no kustomization (seed 001's in-repo layout) is composed
///   through an implied kustomization: the base, every file as a patch, `process/` as a
///   component (or its files as patches when it has no kustomization either);
/// - the default folder missing or empty composes the base alone — `base_ref` if set, else
///   hyperloop's embedded base — so a repository needs zero setup;
/// - any other missing folder, a remote overlay without a kustomization, or a `base_ref`
///   that is unusable or ignored is a [`ComposeError::Setting`] naming the key and the fix.
///
/// # Errors
/// See [`ComposeError`].
pub fn compose_project(
    root: &Path,
    overlay: &str,
    base_ref: Option<&str>,
    cache: &CacheDir,
) -> Result<(Composition, CompositionSource), ComposeError> {
    let setting = |key: &'static str, value: &str, reason: String| ComposeError::Setting {
        key,
        value: value.to_owned(),
        reason,
    };
    let overlay_dir = locate(root, overlay, cache).map_err(|e| setting("overlay", overlay, e))?;
    let source = ProjectSource::new(cache, Some(overlay_dir.clone()));
    let kustomization = find_kustomization(&overlay_dir);
    let remote = RemoteRef::looks_remote(overlay);
    let base = base_ref.unwrap_or(BASE_URL);

    if let Some(kustomization) = kustomization {
        if let Some(base_ref) = base_ref {
            // The overlay's kustomization chooses its own base; a base_ref it does not name
            // would be silently ignored.
            let text = std::fs::read_to_string(&kustomization).unwrap_or_default();
            if !text.contains(base_ref) {
                return Err(setting(
                    "base_ref",
                    base_ref,
                    format!(
                        "it cannot apply: the overlay {} has its own kustomization, whose \
                         `resources:` choose the base; put `- {base_ref}` in the `resources:` \
                         of {} in place of the base listed there, and remove `base_ref`",
                        overlay,
                        kustomization.display()
                    ),
                ));
            }
        }
        let composition = compose(&source, &overlay_dir)?;
        if !remote {
            source.refuse_unused(&overlay_dir, &kustomization)?;
        }
        return Ok((composition, CompositionSource::Overlay(overlay.to_owned())));
    }
    if remote {
        return Err(setting(
            "overlay",
            overlay,
            format!(
                "the remote folder {} has no kustomization.yaml; check the `//subdir` and \
                 `?ref=` of the URL (the folder must hold the overlay's kustomization.yaml)",
                overlay_dir.display()
            ),
        ));
    }
    // Validate base_ref before it is used, so its errors name the key.
    let base_dir = match base_ref {
        Some(base_ref) => Some(
            locate(root, base_ref, cache)
                .and_then(|dir| match find_kustomization(&dir) {
                    Some(_) => Ok(dir),
                    None if source.entry(&dir) == EntryKind::Dir => Err(format!(
                        "{} exists but has no kustomization.yaml",
                        dir.display()
                    )),
                    None => Err(format!("{} does not exist", dir.display())),
                })
                .map_err(|e| {
                    setting(
                        "base_ref",
                        base_ref,
                        format!(
                            "it cannot apply: {e}; point it at a kustomization folder such as \
                             `{BASE_URL}`, or remove it to use hyperloop's embedded base"
                        ),
                    )
                })?,
        ),
        None => None,
    };
    let patches = overlay_patches(&overlay_dir);
    if patches.is_empty() && !overlay_dir.join(PROCESS_DIR).is_dir() {
        let (dir, label) = match base_dir {
            Some(dir) => (dir, base.to_owned()),
            None => (source.base_dir(), format!("{BASE_URL} (embedded)")),
        };
        let composition = compose(&source, &dir).map_err(|e| match base_ref {
            Some(b) => setting(
                "base_ref",
                b,
                format!("it cannot apply: {e}; fix the base or remove `base_ref`"),
            ),
            None => e,
        })?;
        return Ok((composition, CompositionSource::BaseOnly(label)));
    }
    let text = implied_kustomization(base, &overlay_dir, &patches);
    let source = source.with_implied(overlay_dir.join("kustomization.yaml"), text.clone());
    let composition = compose(&source, &overlay_dir).map_err(|e| {
        setting(
            "overlay",
            overlay,
            format!(
                "the folder has no kustomization.yaml, so hyperloop applied its files to the \
                 base through this implied one:\n{text}and that failed: {e}\nfix the patch \
                 file, or write {}/kustomization.yaml yourself",
                overlay_dir.display()
            ),
        )
    })?;
    Ok((
        composition,
        CompositionSource::Implied {
            overlay: overlay.to_owned(),
            kustomization: text,
        },
    ))
}

/// The local folder of an `overlay`/`base_ref` value: a remote is fetched and its `//subdir`
/// joined; a local path is taken relative to `root`. A local folder that does not exist is
/// an error, except the default overlay (no customisation yet).
fn locate(root: &Path, entry: &str, cache: &CacheDir) -> Result<PathBuf, String> {
    if RemoteRef::looks_remote(entry) {
        let remote = RemoteRef::parse(entry)
            .map_err(|e| format!("{e}; write it as `URL//FOLDER?ref=TAG`, e.g. `{BASE_URL}`"))?;
        let checkout = WithEmbeddedBase::new(FsSource {
            cache: cache.clone(),
        })
        .fetch_remote(&remote)
        .map_err(|e| e.to_string())?;
        let dir = normalize(&checkout.join(&remote.subdir));
        return Ok(dir);
    }
    let dir = normalize(&absolute(&root.join(entry)).map_err(|e| e.to_string())?);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(format!(
            "{} is a file; point it at the folder that holds kustomization.yaml",
            dir.display()
        )),
        Err(_) if entry.trim_end_matches('/') == DEFAULT_OVERLAY => Ok(dir),
        Err(_) => Err(format!(
            "the folder {} does not exist; fix the path (relative to the repository root), \
             or remove the key to use the default ({DEFAULT_OVERLAY}/, which \
             `hyperloop-coordinator init` scaffolds)",
            dir.display()
        )),
    }
}

fn find_kustomization(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES.iter().find_map(|f| {
        let p = dir.join(f);
        // The embedded base is virtual: ask the source there, the disk elsewhere.
        let source = WithEmbeddedBase::new(NoFiles);
        (source.entry(&p) == EntryKind::File || p.is_file()).then_some(p)
    })
}

/// YAML files directly in `dir`, sorted, kustomization files excluded.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && !p
                    .file_name()
                    .is_some_and(|n| KUSTOMIZATION_FILES.iter().any(|k| n == *k))
        })
        .collect();
    files.sort();
    files
}

/// The patch files of an overlay folder without a kustomization, relative to it: its YAML
/// files, and those of `process/` unless `process/` has a kustomization (then a component).
fn overlay_patches(dir: &Path) -> Vec<String> {
    let process = dir.join(PROCESS_DIR);
    let mut files = yaml_files(dir);
    if find_kustomization(&process).is_none() {
        files.extend(yaml_files(&process));
    }
    files
        .iter()
        .filter_map(|f| f.strip_prefix(dir).ok())
        .map(|f| f.display().to_string())
        .collect()
}

fn implied_kustomization(base: &str, dir: &Path, patches: &[String]) -> String {
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\n"
    );
    if find_kustomization(&dir.join(PROCESS_DIR)).is_some() {
        text.push_str("components:\n- process\n");
    }
    if !patches.is_empty() {
        text.push_str("patches:\n");
        for p in patches {
            text.push_str(&format!("- path: {p}\n"));
        }
    }
    text
}

/// The file system, git cache and embedded base, plus what a project adds: seed shorthand
/// in overlay files, an implied kustomization, and a record of what was read.
struct ProjectSource {
    inner: WithEmbeddedBase<FsSource>,
    overlay_dir: Option<PathBuf>,
    implied: Option<(PathBuf, String)>,
    read: std::cell::RefCell<std::collections::BTreeSet<PathBuf>>,
}

impl ProjectSource {
    fn new(cache: &CacheDir, overlay_dir: Option<PathBuf>) -> Self {
        Self {
            inner: WithEmbeddedBase::new(FsSource {
                cache: cache.clone(),
            }),
            overlay_dir,
            implied: None,
            read: Default::default(),
        }
    }

    fn with_implied(mut self, path: PathBuf, text: String) -> Self {
        self.implied = Some((path, text));
        self
    }

    fn base_dir(&self) -> PathBuf {
        self.inner.base_dir()
    }

    /// A YAML file beside the overlay's kustomization (or in its `process/`) that no
    /// kustomization read would be silently ignored: refuse it, saying what to add.
    fn refuse_unused(&self, dir: &Path, kustomization: &Path) -> Result<(), ComposeError> {
        let read = self.read.borrow();
        let process = dir.join(PROCESS_DIR);
        for (folder, files) in [
            (dir, yaml_files(dir)),
            (process.as_path(), yaml_files(&process)),
        ] {
            for file in files {
                if read.contains(&file) {
                    continue;
                }
                let listing =
                    find_kustomization(folder).unwrap_or_else(|| kustomization.to_owned());
                let rel = file
                    .strip_prefix(folder)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                return Err(ComposeError::Parse {
                    file: file.clone(),
                    reason: format!(
                        "no kustomization uses this file, so it would be ignored; add \
                         `- path: {rel}` under `patches:` in {} (or delete the file)",
                        listing.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl FileSource for ProjectSource {
    fn entry(&self, path: &Path) -> EntryKind {
        if self.implied.as_ref().is_some_and(|(p, _)| p == path) {
            return EntryKind::File;
        }
        self.inner.entry(path)
    }

    fn read(&self, path: &Path) -> Result<String, SourceError> {
        if let Some((p, text)) = &self.implied
            && p == path
        {
            return Ok(text.clone());
        }
        let text = self.inner.read(path)?;
        self.read.borrow_mut().insert(path.to_owned());
        let in_overlay = self
            .overlay_dir
            .as_ref()
            .is_some_and(|d| path.starts_with(d));
        let is_kustomization = path
            .file_name()
            .is_some_and(|n| KUSTOMIZATION_FILES.iter().any(|k| n == *k));
        if in_overlay && !is_kustomization {
            return Ok(shorthand(&text, path).unwrap_or(text));
        }
        Ok(text)
    }

    fn fetch_remote(&self, remote: &RemoteRef) -> Result<PathBuf, SourceError> {
        self.inner.fetch_remote(remote)
    }
}

/// A source with no files, to ask [`WithEmbeddedBase`] about its virtual paths.
struct NoFiles;

impl FileSource for NoFiles {
    fn entry(&self, _: &Path) -> EntryKind {
        EntryKind::Missing
    }
    fn read(&self, path: &Path) -> Result<String, SourceError> {
        Err(SourceError::Read {
            path: path.to_owned(),
            reason: "not found".into(),
        })
    }
    fn fetch_remote(&self, remote: &RemoteRef) -> Result<PathBuf, SourceError> {
        Err(SourceError::Read {
            path: PathBuf::from(&remote.original),
            reason: "not fetched".into(),
        })
    }
}

/// The seeds' shorthand for overlay files, rewritten into the resource shape kustomize
/// needs (`None` when the file is not shorthand):
/// - `kind: Agent` / `name: implementer` / `annotations:` at the top level (seed 001) →
///   `apiVersion: hyperloop.io/v1` and `metadata: {name, annotations}`;
/// - a `process.yaml` with `pipeline:` but no `kind` (seed 000) → the `default` Process.
fn shorthand(text: &str, path: &Path) -> Option<String> {
    use serde_yaml::{Mapping, Value};
    let mut doc: Value = serde_yaml::from_str(text).ok()?;
    let map = doc.as_mapping_mut()?;
    let key = |k: &str| Value::String(k.to_owned());
    let mut changed = false;
    if !map.contains_key("kind")
        && map.contains_key("pipeline")
        && path.file_stem().is_some_and(|s| s == "process")
    {
        map.insert(key("kind"), key("Process"));
        if !map.contains_key("name") && !map.contains_key("metadata") {
            map.insert(key("name"), key(hyperloop_shared::project::DEFAULT_PROCESS));
        }
        changed = true;
    }
    let kind = map.get("kind").and_then(Value::as_str)?.to_owned();
    if !matches!(kind.as_str(), "Agent" | "Process") {
        return changed.then(|| serde_yaml::to_string(&doc).ok()).flatten();
    }
    let mut metadata = match map.remove("metadata") {
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            map.insert(key("metadata"), other);
            return None;
        }
        None => Mapping::new(),
    };
    if let Some(name) = map.get("name").filter(|v| v.is_string()).cloned()
        && !metadata.contains_key("name")
    {
        map.remove("name");
        metadata.insert(key("name"), name);
        changed = true;
    }
    if let Some(Value::Mapping(annotations)) = map.get("annotations").cloned() {
        map.remove("annotations");
        let into = metadata
            .entry(key("annotations"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Some(into) = into.as_mapping_mut() {
            for (k, v) in annotations {
                into.entry(k).or_insert(v);
            }
        }
        changed = true;
    }
    if changed && !map.contains_key("apiVersion") {
        map.insert(key("apiVersion"), key("hyperloop.io/v1"));
    }
    map.insert(key("metadata"), Value::Mapping(metadata));
    changed.then(|| serde_yaml::to_string(&doc).ok()).flatten()
}

fn absolute(path: &Path) -> Result<PathBuf, ComposeError> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().map_err(|e| SourceError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(cwd.join(path))
}

/// The local file system plus the git cache.
struct FsSource {
    cache: CacheDir,
}

impl FileSource for FsSource {
    fn entry(&self, path: &Path) -> EntryKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => EntryKind::Dir,
            Ok(_) => EntryKind::File,
            Err(_) => EntryKind::Missing,
        }
    }

    fn read(&self, path: &Path) -> Result<String, SourceError> {
        std::fs::read_to_string(path).map_err(|e| SourceError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    fn fetch_remote(&self, remote: &RemoteRef) -> Result<PathBuf, SourceError> {
        fetch(&self.cache, remote)
    }
}

/// Makes `remote` available in the cache and returns its checkout folder.
///
/// # Errors
/// [`SourceError::Fetch`] with git's message and a hint.
pub fn fetch(cache: &CacheDir, remote: &RemoteRef) -> Result<PathBuf, SourceError> {
    let entry = cache.entry_path(remote);
    let reference = remote
        .reference
        .clone()
        .unwrap_or_else(|| "HEAD".to_owned());
    let is_commit = reference.len() == 40 && reference.chars().all(|c| c.is_ascii_hexdigit());
    if entry.is_dir() && (is_commit || !cache.refresh) {
        return Ok(entry);
    }
    let fail = |reason: String| SourceError::Fetch {
        url: remote.clone_url.clone(),
        reference: reference.clone(),
        reason,
    };
    let parent = entry.parent().unwrap_or(cache.root());
    std::fs::create_dir_all(parent).map_err(|e| {
        fail(format!(
            "cannot create cache folder {}: {e}",
            parent.display()
        ))
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(parent)
        .map_err(|e| {
            fail(format!(
                "cannot create a temporary folder in {}: {e}",
                parent.display()
            ))
        })?;
    let checkout = tmp.path();
    git(checkout, &["init", "-q"]).map_err(&fail)?;
    // A shallow fetch of the one ref; servers that refuse fetching a bare commit id get a
    // full fetch instead.
    if git(
        checkout,
        &["fetch", "-q", "--depth", "1", &remote.clone_url, &reference],
    )
    .is_err()
    {
        git(checkout, &["fetch", "-q", "--tags", &remote.clone_url, "+refs/heads/*:refs/remotes/origin/*"])
            .map_err(|e| fail(format!("{e}\nCheck that the URL is reachable with `git ls-remote {}` and that the ref exists.", remote.clone_url)))?;
        git(
            checkout,
            &[
                "rev-parse",
                "--verify",
                "-q",
                &format!("{reference}^{{commit}}"),
            ],
        )
        .map_err(|_| {
            fail(format!(
                "ref `{reference}` does not exist in the repository; fix `?ref=`"
            ))
        })?;
        git(checkout, &["checkout", "-q", "--detach", &reference]).map_err(&fail)?;
    } else {
        git(checkout, &["checkout", "-q", "--detach", "FETCH_HEAD"]).map_err(&fail)?;
    }
    let done = tmp.keep();
    if cache.refresh && entry.is_dir() {
        // Move the stale entry aside first so the rename below can succeed; readers of the
        // old entry keep working until it is removed.
        let stale = parent.join(format!(".stale-{}", std::process::id()));
        let _ = std::fs::rename(&entry, &stale);
        let _ = std::fs::remove_dir_all(&stale);
    }
    match std::fs::rename(&done, &entry) {
        Ok(()) => Ok(entry),
        // Another process finished the same fetch first: use theirs.
        Err(_) if entry.is_dir() => {
            let _ = std::fs::remove_dir_all(&done);
            Ok(entry)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&done);
            Err(fail(format!(
                "cannot move the checkout into {}: {e}",
                entry.display()
            )))
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .args(["-c", "advice.detachedHead=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git ({e}); install git and make sure it is on PATH"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?}");
    }

    /// A bare repository at `<tmp>/repo.git` whose `base/` holds one Agent; tag `v1`.
    fn bare_repo(tmp: &Path, guidelines: &str) -> String {
        let src = tmp.join("src");
        std::fs::create_dir_all(src.join("base")).expect("mkdir");
        std::fs::write(
            src.join("base/kustomization.yaml"),
            "resources:\n- a.yaml\n",
        )
        .expect("write");
        std::fs::write(
            src.join("base/a.yaml"),
            format!("apiVersion: hyperloop.io/v1\nkind: Agent\nmetadata:\n  name: a\nguidelines: {guidelines}\n"),
        )
        .expect("write");
        run(&src, &["init", "-q", "-b", "main"]);
        run(&src, &["add", "-A"]);
        run(&src, &["commit", "-qm", "init"]);
        run(&src, &["tag", "v1"]);
        run(tmp, &["clone", "-q", "--bare", "src", "repo.git"]);
        format!("file://{}", tmp.join("repo.git").display())
    }

    fn project(tmp: &Path, resource: &str) -> PathBuf {
        let p = tmp.join("project");
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(
            p.join("kustomization.yaml"),
            format!("resources:\n- {resource}\n"),
        )
        .expect("write");
        p
    }

    /// A fresh [`bare_repo`] (guidelines `first`), a project whose base is its tag `v1`, and an
    /// empty cache at `<tmp>/cache`: the repository's URL, the project and the cache.
    fn project_on_tag_v1(tmp: &Path) -> (String, PathBuf, CacheDir) {
        let url = bare_repo(tmp, "first");
        let p = project(tmp, &format!("{url}//base?ref=v1"));
        (url, p, CacheDir::new(tmp.join("cache")))
    }

    #[test]
    fn a_remote_base_is_fetched_once_then_served_from_the_cache() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (_, p, cache) = project_on_tag_v1(tmp.path());
        let c = compose_dir(&p, &cache).expect("composes");
        assert!(render(&c).contains("guidelines: first"));
        // The remote disappears: the cached checkout is still used.
        std::fs::remove_dir_all(tmp.path().join("repo.git")).expect("rm");
        let c = compose_dir(&p, &cache).expect("served from cache");
        assert!(render(&c).contains("guidelines: first"));
        let entries: Vec<_> = std::fs::read_dir(tmp.path().join("cache/git"))
            .expect("ls")
            .collect();
        assert_eq!(entries.len(), 1, "one entry and no leftovers");
    }

    #[test]
    fn refresh_refetches_a_moved_tag() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (url, p, cache) = project_on_tag_v1(tmp.path());
        compose_dir(&p, &cache).expect("composes");
        let src = tmp.path().join("src");
        std::fs::write(
            src.join("base/a.yaml"),
            "apiVersion: hyperloop.io/v1\nkind: Agent\nmetadata:\n  name: a\nguidelines: second\n",
        )
        .expect("write");
        run(&src, &["commit", "-qam", "two"]);
        run(&src, &["tag", "-f", "v1"]);
        run(&src, &["push", "-q", "-f", &url, "v1"]);
        assert!(render(&compose_dir(&p, &cache).expect("cached")).contains("first"));
        let c = compose_dir(&p, &cache.clone().refresh(true)).expect("refetched");
        assert!(render(&c).contains("guidelines: second"));
    }

    #[test]
    fn a_failed_or_interrupted_fetch_leaves_no_cache_entry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let url = bare_repo(tmp.path(), "first");
        let cache = CacheDir::new(tmp.path().join("cache"));
        // A leftover of a fetch killed midway: a partial temp folder.
        let git_dir = tmp.path().join("cache/git");
        std::fs::create_dir_all(git_dir.join(".tmp-killed/base")).expect("mkdir");
        let bad = project(tmp.path(), &format!("{url}//base?ref=nope"));
        let err = compose_dir(&bad, &cache)
            .expect_err("missing ref")
            .to_string();
        assert!(err.contains(&url) && err.contains("nope"), "{err}");
        let entry =
            cache.entry_path(&RemoteRef::parse(&format!("{url}//base?ref=nope")).expect("parses"));
        assert!(!entry.exists());
        // The partial folder is ignored and a good fetch still works.
        let good = project(tmp.path(), &format!("{url}//base?ref=v1"));
        assert!(render(&compose_dir(&good, &cache).expect("composes")).contains("first"));
        let missing = project(tmp.path(), &format!("{url}//nofolder?ref=v1"));
        let err = compose_dir(&missing, &cache)
            .expect_err("no folder")
            .to_string();
        assert!(
            err.contains("no kustomization in") && err.contains("nofolder"),
            "{err}"
        );
    }

    #[test]
    fn an_unreachable_remote_names_the_url_and_what_to_check() {
        let tmp = tempfile::tempdir().expect("tmp");
        let url = format!("file://{}/absent.git", tmp.path().display());
        let p = project(tmp.path(), &format!("{url}//base?ref=v1"));
        let err = compose_dir(&p, &CacheDir::new(tmp.path().join("cache")))
            .expect_err("fails")
            .to_string();
        assert!(err.contains(&url) && err.contains("git ls-remote"), "{err}");
    }

    #[test]
    fn the_canonical_base_needs_no_network() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = project(tmp.path(), BASE_URL);
        let c = compose_dir(&p, &CacheDir::new(tmp.path().join("cache"))).expect("offline");
        assert!(c.get("Process", "default").is_some());
        assert!(!tmp.path().join("cache").exists());
    }
}

/// Why the agents and pipeline could not be (re)composed from the checkout.
#[derive(Debug, thiserror::Error)]
pub enum ProjectLoadError {
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Project(#[from] hyperloop_shared::project::ProjectError),
    #[error(transparent)]
    CommandGates(#[from] hyperloop_shared::gates::CommandGatesRefused),
}
