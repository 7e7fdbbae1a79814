//! kustomize-semantics composition of `kind: Agent` and `kind: Process` resources.
//!
//! [`compose`] builds a kustomization the way `kubectl kustomize` (kustomize v5) does, over a
//! [`FileSource`] so that this crate performs no I/O; [`render`] prints the result in the same
//! bytes kubectl prints. Supported kustomization fields: `resources` (files, folders with a
//! kustomization, remote git bases), `bases`, `components`, `patches`, `patchesStrategicMerge`
//! and `patchesJson6902`. Other kustomize fields are refused by name rather than ignored, so
//! a composition never silently differs from kubectl's.
//!
//! Order of a build, as in kustomize: accumulate `resources` in order (each sub-kustomization
//! fully built first), then apply each component in order (its resources join the
//! accumulated set and its patches apply to everything accumulated so far), then the
//! kustomization's own patches (`patchesStrategicMerge`, then `patches`, then
//! `patchesJson6902`). The final list is sorted in kustomize's legacy order.
//!
//! Architecture Invariant: no file system, process or network access here; remote bases are
//! resolved by the [`FileSource`] adapter (git CLI and cache in the coordinator).

mod emit;
mod patch;
mod remote;
mod selector;

pub use remote::{RemoteRef, RemoteUrlError};
pub use selector::{Selector, SelectorError};

use patch::{Merged, Op};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// File names kustomize accepts for a kustomization, in the order it looks for them.
pub const KUSTOMIZATION_FILE_NAMES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The canonical remote base of hyperloop's own `base/` at this version. The coordinator's
/// source serves it from [`crate::base::FILES`] instead of fetching, so composition works
/// offline; kubectl with network access fetches the same files.
pub const BASE_URL: &str = concat!(
    "github.com/hyperloop-dev/hyperloop//base?ref=v",
    env!("CARGO_PKG_VERSION")
);

/// What a path is, as far as a [`FileSource`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A readable file.
    File,
    /// A directory.
    Dir,
    /// Nothing there.
    Missing,
}

/// Where composition reads files from. Paths are absolute and lexically normalised.
pub trait FileSource {
    /// What `path` is.
    fn entry(&self, path: &Path) -> EntryKind;
    /// The UTF-8 contents of the file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read.
    fn read(&self, path: &Path) -> Result<String, SourceError>;
    /// Makes the repository of `remote` available at `remote.reference` and returns the
    /// directory of its checkout root (the resolver appends `remote.subdir`).
    ///
    /// # Errors
    /// When the repository or ref cannot be fetched.
    fn fetch_remote(&self, remote: &RemoteRef) -> Result<PathBuf, SourceError>;
}

/// A failure of a [`FileSource`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// A remote base could not be fetched.
    #[error("cannot fetch remote base {url} (ref {reference}): {reason}")]
    Fetch {
        /// The clone URL.
        url: String,
        /// The ref asked for (`HEAD` when none).
        reference: String,
        /// What git said, and what to do about it.
        reason: String,
    },
}

/// Why composition failed. Every variant names the file involved and, where there is one,
/// the fix.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// Reading a file or fetching a remote base failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A setting (`overlay`, `base_ref`) points at something that cannot be composed.
    #[error("`{key}: {value}` (in .hyperloop.yaml, or its flag/environment variable): {reason}")]
    Setting {
        /// The configuration key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and the fix.
        reason: String,
    },
    /// A directory used as a kustomization root has no kustomization file.
    #[error(
        "no kustomization in {dir}: add a kustomization.yaml listing `resources:` (or point at a folder that has one)"
    )]
    NoKustomization {
        /// The directory.
        dir: PathBuf,
    },
    /// A kustomization or resource file is not valid YAML of the expected shape.
    #[error("{file}: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The kustomization uses a kustomize feature hyperloop's composer does not implement.
    #[error(
        "{file}: field `{field}` is not supported by hyperloop's built-in composer (supported: resources, components, patches, patchesStrategicMerge, patchesJson6902); express it as a patch instead"
    )]
    UnsupportedField {
        /// The kustomization file.
        file: PathBuf,
        /// The field.
        field: String,
    },
    /// The kustomization has a field kustomize does not know either.
    #[error("{file}: unknown field `{field}` in a kustomization (kustomize rejects it too)")]
    UnknownField {
        /// The kustomization file.
        file: PathBuf,
        /// The field.
        field: String,
    },
    /// A `Component` used as a resource, or a `Kustomization` used as a component.
    #[error("{file}: is a {found} but is used as a {expected}; list it under `{hint}:` instead")]
    WrongKind {
        /// The kustomization file.
        file: PathBuf,
        /// What the referring kustomization expected.
        expected: &'static str,
        /// What the file declares.
        found: String,
        /// The field it belongs in.
        hint: &'static str,
    },
    /// A resource lacks `kind` or `metadata.name`.
    #[error(
        "{file}: a resource has no `{field}`; every resource needs apiVersion, kind and metadata.name"
    )]
    MissingField {
        /// The file.
        file: PathBuf,
        /// The missing field.
        field: &'static str,
    },
    /// Two resources have the same id.
    #[error(
        "{file}: may not add resource with an already registered id {id} (first from {first}); remove one of them or patch instead"
    )]
    DuplicateId {
        /// The id.
        id: Box<ResId>,
        /// Where the first came from.
        first: PathBuf,
        /// Where the duplicate came from.
        file: PathBuf,
    },
    /// A local file outside the kustomization root (kustomize's load restrictor).
    #[error(
        "{kustomization}: security: file {file} is not in or below {root}; move it under the kustomization, or reference a folder that has its own kustomization"
    )]
    OutsideRoot {
        /// The kustomization referring to it.
        kustomization: PathBuf,
        /// The file.
        file: PathBuf,
        /// The kustomization's root.
        root: PathBuf,
    },
    /// Kustomizations refer to each other in a loop.
    #[error("cycle between kustomizations: {}", .chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The directories in the loop, first repeated at the end.
        chain: Vec<PathBuf>,
    },
    /// A listed resource or patch file does not exist.
    #[error("{kustomization}: `{entry}` does not exist ({path})")]
    NotFound {
        /// The kustomization listing it.
        kustomization: PathBuf,
        /// The entry as written.
        entry: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A resource entry looks remote but cannot be parsed.
    #[error("{kustomization}: {source}")]
    RemoteUrl {
        /// The kustomization listing it.
        kustomization: PathBuf,
        /// The parse error.
        source: RemoteUrlError,
    },
    /// A patch without `target:` names a resource that does not exist (kubectl fails too).
    #[error(
        "{patch}: no resource matches strategic merge patch {id}; fix its apiVersion/kind/metadata.name or add a `target:`"
    )]
    PatchTargetMissing {
        /// Which patch.
        patch: PatchOrigin,
        /// The id it names.
        id: Box<ResId>,
    },
    /// A patch is malformed (bad target regex, JSON6902 without a target, ...).
    #[error("{patch}: {reason}")]
    InvalidPatch {
        /// Which patch.
        patch: PatchOrigin,
        /// What is wrong.
        reason: String,
    },
    /// A JSON6902 operation failed on a resource.
    #[error("{patch}: cannot apply to {id}: {reason}")]
    Json6902 {
        /// Which patch.
        patch: PatchOrigin,
        /// The resource.
        id: Box<ResId>,
        /// Which operation failed and why.
        reason: String,
    },
}

/// Where a patch was declared, for messages: the kustomization, the field and position, and
/// the patch file when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchOrigin {
    /// The kustomization file.
    pub kustomization: PathBuf,
    /// `patches`, `patchesStrategicMerge` or `patchesJson6902`.
    pub field: &'static str,
    /// 1-based position in that list.
    pub index: usize,
    /// The patch file (`path:`), if not inline.
    pub path: Option<String>,
}

impl fmt::Display for PatchOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(
                f,
                "patch `{p}` ({} #{} in {})",
                self.field,
                self.index,
                self.kustomization.display()
            ),
            None => write!(
                f,
                "inline patch ({} #{} in {})",
                self.field,
                self.index,
                self.kustomization.display()
            ),
        }
    }
}

/// Something worth telling the user that does not stop composition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A patch's `target:` selected no resource; kubectl applies nothing and says nothing.
    PatchMatchedNothing {
        /// Which patch.
        patch: PatchOrigin,
        /// Its target.
        target: Selector,
    },
    /// A deprecated kustomization field (kubectl warns too).
    Deprecated {
        /// The kustomization file.
        file: PathBuf,
        /// The field.
        field: &'static str,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::PatchMatchedNothing { patch, target } => {
                write!(
                    f,
                    "{patch}: target {target} matches no resource; the patch changes nothing"
                )
            }
            Warning::Deprecated { file, field } => {
                write!(
                    f,
                    "{}: `{field}` is deprecated; use `patches` (or `resources`) instead",
                    file.display()
                )
            }
        }
    }
}

/// A resource's identity: group, version, kind, name and namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResId {
    /// API group (`""` for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`""` when absent).
    pub namespace: String,
}

impl ResId {
    fn of(v: &Value) -> Self {
        let s = |p: &[&str]| {
            let mut cur = v;
            for k in p {
                cur = match cur.get(k) {
                    Some(c) => c,
                    None => return String::new(),
                };
            }
            cur.as_str().unwrap_or_default().to_owned()
        };
        let api = s(&["apiVersion"]);
        let (group, version) = selector::split_api_version(&api);
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: s(&["kind"]),
            name: s(&["metadata", "name"]),
            namespace: s(&["metadata", "namespace"]),
        }
    }

    /// kustomize's legacy output order: some well-known kinds first and last, otherwise by
    /// `group_version_kind`, then namespace (none sorts last), then name.
    fn legacy_key(&self) -> (i32, String, String, String) {
        const FIRST: &[&str] = &[
            "Namespace",
            "ResourceQuota",
            "StorageClass",
            "CustomResourceDefinition",
            "ServiceAccount",
            "PodSecurityPolicy",
            "Role",
            "ClusterRole",
            "RoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "Secret",
            "Endpoints",
            "Service",
            "LimitRange",
            "PriorityClass",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Deployment",
            "StatefulSet",
            "CronJob",
            "PodDisruptionBudget",
        ];
        const LAST: &[&str] = &[
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ];
        let order = if let Some(i) = FIRST.iter().position(|k| *k == self.kind) {
            i as i32 - FIRST.len() as i32
        } else if let Some(i) = LAST.iter().position(|k| *k == self.kind) {
            i as i32 + 1
        } else {
            0
        };
        let or = |s: &str, d: &str| {
            if s.is_empty() {
                d.to_owned()
            } else {
                s.to_owned()
            }
        };
        let gvk = format!(
            "{}_{}_{}",
            or(&self.group, "~G"),
            or(&self.version, "~V"),
            or(&self.kind, "~K")
        );
        (order, gvk, or(&self.namespace, "~X"), or(&self.name, "~N"))
    }
}

impl fmt::Display for ResId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gv = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}.{}", self.version, self.group)
        };
        write!(f, "{}.{}/{}", self.kind, gv, self.name)?;
        if !self.namespace.is_empty() {
            write!(f, ".{}", self.namespace)?;
        }
        Ok(())
    }
}

/// One resolved resource and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource body.
    pub value: Value,
    /// The file it was loaded from.
    pub origin: PathBuf,
    /// For each top-level field a patch changed, the file of the last patch that changed it
    /// (the patch file, or the kustomization of an inline patch), so that errors in e.g. a
    /// patched `pipeline` name the overlay file rather than the base.
    pub set_by: std::collections::BTreeMap<String, PathBuf>,
}

impl Resource {
    /// Its identity.
    pub fn id(&self) -> ResId {
        ResId::of(&self.value)
    }
}

/// The result of [`compose`]: resources in output order, and warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Composition {
    /// Resources in kustomize's output order.
    pub resources: Vec<Resource>,
    /// Things the user should know; composition still succeeded.
    pub warnings: Vec<Warning>,
}

impl Composition {
    /// The resource with this kind and name, if any.
    pub fn get(&self, kind: &str, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| {
            let id = r.id();
            id.kind == kind && id.name == name
        })
    }
}

/// Prints a composition as `kubectl kustomize` would: multi-document YAML, byte for byte.
pub fn render(composition: &Composition) -> String {
    emit::render_values(composition.resources.iter().map(|r| &r.value))
}

/// Builds the kustomization in `dir` (absolute).
///
/// # Errors
/// See [`ComposeError`]; the first problem found stops the build.
pub fn compose(source: &dyn FileSource, dir: &Path) -> Result<Composition, ComposeError> {
    let mut b = Builder {
        source,
        stack: Vec::new(),
        warnings: Vec::new(),
    };
    let mut acc = Vec::new();
    b.build_into(&normalize(dir), Expect::Kustomization, &mut acc)?;
    acc.sort_by_cached_key(|r| r.id().legacy_key());
    Ok(Composition {
        resources: acc,
        warnings: b.warnings,
    })
}

/// Where [`WithEmbeddedBase`] mounts the embedded files: a NUL byte keeps it from ever
/// colliding with a real path.
const EMBEDDED_ROOT: &str = "/\u{0}hyperloop-embedded";

/// A path for messages: files of the embedded base read as `<embedded>/base/...`.
pub fn display_path(path: &Path) -> String {
    match path.strip_prefix(EMBEDDED_ROOT) {
        Ok(rel) => format!("<embedded>/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// A [`FileSource`] that serves [`BASE_URL`] (in any spelling of the same repository and
/// ref) from the files embedded in the binary and passes everything else to `inner`.
pub struct WithEmbeddedBase<S> {
    inner: S,
    base: RemoteRef,
    root: PathBuf,
}

impl<S: FileSource> WithEmbeddedBase<S> {
    /// Wraps `inner`. Embedded files appear under a virtual directory that cannot collide
    /// with real paths.
    pub fn new(inner: S) -> Self {
        let base = RemoteRef::parse(BASE_URL).unwrap_or_else(|_| RemoteRef {
            clone_url: String::new(),
            subdir: "base".into(),
            reference: None,
            original: BASE_URL.into(),
        });
        Self {
            inner,
            base,
            root: PathBuf::from(EMBEDDED_ROOT),
        }
    }

    /// The virtual directory holding the embedded `base/`, for composing the base alone.
    pub fn base_dir(&self) -> PathBuf {
        self.root.join("base")
    }

    fn embedded(&self, path: &Path) -> Option<Option<&'static str>> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let rel = rel.strip_prefix("base").ok()?;
        let rel = rel.to_str()?;
        Some(
            crate::base::FILES
                .iter()
                .find(|(p, _)| *p == rel)
                .map(|(_, c)| *c),
        )
    }
}

impl<S: FileSource> FileSource for WithEmbeddedBase<S> {
    fn entry(&self, path: &Path) -> EntryKind {
        if path == self.root || path == self.root.join("base") {
            return EntryKind::Dir;
        }
        match self.embedded(path) {
            Some(Some(_)) => EntryKind::File,
            Some(None) => EntryKind::Missing,
            None if path.starts_with(&self.root) => EntryKind::Missing,
            None => self.inner.entry(path),
        }
    }

    fn read(&self, path: &Path) -> Result<String, SourceError> {
        match self.embedded(path) {
            Some(Some(c)) => Ok(c.to_owned()),
            Some(None) => Err(SourceError::Read {
                path: path.to_owned(),
                reason: "not an embedded base file".into(),
            }),
            None => self.inner.read(path),
        }
    }

    fn fetch_remote(&self, remote: &RemoteRef) -> Result<PathBuf, SourceError> {
        if remote.repository_key() == self.base.repository_key()
            && remote.reference == self.base.reference
        {
            Ok(self.root.clone())
        } else {
            self.inner.fetch_remote(remote)
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Kustomization,
    Component,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    bases: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchEntry>,
    #[serde(default)]
    patches_strategic_merge: Vec<String>,
    #[serde(default)]
    patches_json6902: Vec<PatchEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchEntry {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    target: Option<Selector>,
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility; name/kind changes are not supported
    options: Option<Value>,
}

const SUPPORTED_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "bases",
    "components",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
];
const UNSUPPORTED_FIELDS: &[&str] = &[
    "namePrefix",
    "nameSuffix",
    "namespace",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "images",
    "imageTags",
    "replacements",
    "replicas",
    "vars",
    "sortOptions",
    "crds",
    "configMapGenerator",
    "secretGenerator",
    "helmGlobals",
    "helmCharts",
    "helmChartInflationGenerator",
    "generatorOptions",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "buildMetadata",
    "openapi",
];

struct Builder<'a> {
    source: &'a dyn FileSource,
    stack: Vec<PathBuf>,
    warnings: Vec<Warning>,
}

enum PatchBody {
    Smp(Vec<Value>),
    Json(Vec<Op>),
}

impl Builder<'_> {
    fn build_into(
        &mut self,
        dir: &Path,
        expect: Expect,
        acc: &mut Vec<Resource>,
    ) -> Result<(), ComposeError> {
        if let Some(pos) = self.stack.iter().position(|d| d == dir) {
            let mut chain = self.stack[pos..].to_vec();
            chain.push(dir.to_owned());
            return Err(ComposeError::Cycle { chain });
        }
        self.stack.push(dir.to_owned());
        let result = self.build_inner(dir, expect, acc);
        self.stack.pop();
        result
    }

    fn build_inner(
        &mut self,
        dir: &Path,
        expect: Expect,
        acc: &mut Vec<Resource>,
    ) -> Result<(), ComposeError> {
        let file = KUSTOMIZATION_FILE_NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| self.source.entry(p) == EntryKind::File)
            .ok_or_else(|| ComposeError::NoKustomization {
                dir: dir.to_owned(),
            })?;
        let k = self.load_kustomization(&file)?;
        let found = k.kind.clone().unwrap_or_else(|| "Kustomization".into());
        match (expect, found.as_str()) {
            (Expect::Kustomization, "Kustomization") | (Expect::Component, "Component") => {}
            (Expect::Kustomization, _) => {
                return Err(ComposeError::WrongKind {
                    file,
                    expected: "Kustomization",
                    found,
                    hint: "components",
                });
            }
            (Expect::Component, _) => {
                return Err(ComposeError::WrongKind {
                    file,
                    expected: "Component",
                    found,
                    hint: "resources",
                });
            }
        }

        // A kustomization's own resources start from nothing; a component works on the
        // resources its parent has accumulated so far.
        let mut own = Vec::new();
        let target: &mut Vec<Resource> = if expect == Expect::Component {
            acc
        } else {
            &mut own
        };
        for entry in k.resources.iter().chain(&k.bases) {
            let loaded = self.load_resource_entry(dir, &file, entry)?;
            for r in loaded {
                add_resource(target, r, &file)?;
            }
        }
        for entry in &k.components {
            let path = normalize(&dir.join(entry));
            match self.source.entry(&path) {
                EntryKind::Dir => self.build_into(&path, Expect::Component, target)?,
                EntryKind::File => {
                    return Err(ComposeError::WrongKind {
                        file: path,
                        expected: "Component",
                        found: "file".into(),
                        hint: "resources",
                    });
                }
                EntryKind::Missing => {
                    return Err(ComposeError::NotFound {
                        kustomization: file,
                        entry: entry.clone(),
                        path,
                    });
                }
            }
        }
        for (i, p) in k.patches_strategic_merge.iter().enumerate() {
            let origin = PatchOrigin {
                kustomization: file.clone(),
                field: "patchesStrategicMerge",
                index: i + 1,
                path: None,
            };
            let (body, origin) = self.load_psm(dir, &file, p, origin)?;
            self.apply(target, &body, None, &origin)?;
        }
        for (field, list) in [
            ("patches", &k.patches),
            ("patchesJson6902", &k.patches_json6902),
        ] {
            for (i, p) in list.iter().enumerate() {
                let origin = PatchOrigin {
                    kustomization: file.clone(),
                    field,
                    index: i + 1,
                    path: p.path.clone(),
                };
                let body = self.load_patch(dir, &file, p, &origin)?;
                self.apply(target, &body, p.target.as_ref(), &origin)?;
            }
        }
        if expect == Expect::Kustomization {
            for r in own {
                add_resource(acc, r, &file)?;
            }
        }
        Ok(())
    }

    fn load_kustomization(&mut self, file: &Path) -> Result<Kustomization, ComposeError> {
        let text = self.source.read(file)?;
        let parse_err = |reason: String| ComposeError::Parse {
            file: file.to_owned(),
            reason,
        };
        let raw: Value = serde_yaml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        let raw = if raw.is_null() {
            Value::Object(Default::default())
        } else {
            raw
        };
        let Some(map) = raw.as_object() else {
            return Err(parse_err("a kustomization must be a mapping".into()));
        };
        for key in map.keys() {
            if UNSUPPORTED_FIELDS.contains(&key.as_str()) {
                return Err(ComposeError::UnsupportedField {
                    file: file.to_owned(),
                    field: key.clone(),
                });
            }
            if !SUPPORTED_FIELDS.contains(&key.as_str()) {
                return Err(ComposeError::UnknownField {
                    file: file.to_owned(),
                    field: key.clone(),
                });
            }
        }
        for (field, name) in [
            ("bases", "bases"),
            ("patchesStrategicMerge", "patchesStrategicMerge"),
            ("patchesJson6902", "patchesJson6902"),
        ] {
            if map.contains_key(field) {
                self.warnings.push(Warning::Deprecated {
                    file: file.to_owned(),
                    field: name,
                });
            }
        }
        serde_json::from_value(raw).map_err(|e| parse_err(format!("invalid kustomization: {e}")))
    }

    /// Loads what one `resources:` entry refers to (already fully built for folders).
    fn load_resource_entry(
        &mut self,
        dir: &Path,
        file: &Path,
        entry: &str,
    ) -> Result<Vec<Resource>, ComposeError> {
        let path = normalize(&dir.join(entry));
        let kind = if RemoteRef::looks_remote(entry) && entry.contains("://") {
            EntryKind::Missing
        } else {
            self.source.entry(&path)
        };
        let mut out = Vec::new();
        match kind {
            EntryKind::File => {
                self.check_within(dir, file, &path)?;
                out = parse_resources(&path, &self.source.read(&path)?)?;
            }
            EntryKind::Dir => self.build_into(&path, Expect::Kustomization, &mut out)?,
            EntryKind::Missing if RemoteRef::looks_remote(entry) => {
                let remote = RemoteRef::parse(entry).map_err(|source| ComposeError::RemoteUrl {
                    kustomization: file.to_owned(),
                    source,
                })?;
                let root = self.source.fetch_remote(&remote)?;
                let sub = normalize(&root.join(&remote.subdir));
                if !sub.starts_with(&root) {
                    return Err(ComposeError::OutsideRoot {
                        kustomization: file.to_owned(),
                        file: sub,
                        root,
                    });
                }
                self.build_into(&sub, Expect::Kustomization, &mut out)?;
            }
            EntryKind::Missing => {
                return Err(ComposeError::NotFound {
                    kustomization: file.to_owned(),
                    entry: entry.to_owned(),
                    path,
                });
            }
        }
        Ok(out)
    }

    fn check_within(
        &self,
        root: &Path,
        kustomization: &Path,
        path: &Path,
    ) -> Result<(), ComposeError> {
        if path.starts_with(root) {
            Ok(())
        } else {
            Err(ComposeError::OutsideRoot {
                kustomization: kustomization.to_owned(),
                file: path.to_owned(),
                root: root.to_owned(),
            })
        }
    }

    fn read_patch_file(&self, dir: &Path, file: &Path, rel: &str) -> Result<String, ComposeError> {
        let path = normalize(&dir.join(rel));
        if self.source.entry(&path) != EntryKind::File {
            return Err(ComposeError::NotFound {
                kustomization: file.to_owned(),
                entry: rel.to_owned(),
                path,
            });
        }
        self.check_within(dir, file, &path)?;
        Ok(self.source.read(&path)?)
    }

    fn load_psm(
        &self,
        dir: &Path,
        file: &Path,
        entry: &str,
        mut origin: PatchOrigin,
    ) -> Result<(PatchBody, PatchOrigin), ComposeError> {
        let text = if !entry.contains('\n')
            && self.source.entry(&normalize(&dir.join(entry))) == EntryKind::File
        {
            origin.path = Some(entry.to_owned());
            self.read_patch_file(dir, file, entry)?
        } else {
            entry.to_owned()
        };
        let body = parse_patch(&text, &origin)?;
        Ok((body, origin))
    }

    fn load_patch(
        &self,
        dir: &Path,
        file: &Path,
        p: &PatchEntry,
        origin: &PatchOrigin,
    ) -> Result<PatchBody, ComposeError> {
        let text = match (&p.path, &p.patch) {
            (Some(path), None) => self.read_patch_file(dir, file, path)?,
            (None, Some(inline)) => inline.clone(),
            _ => {
                return Err(ComposeError::InvalidPatch {
                    patch: origin.clone(),
                    reason: "a patch needs exactly one of `path:` and `patch:`".into(),
                });
            }
        };
        parse_patch(&text, origin)
    }

    fn apply(
        &mut self,
        acc: &mut Vec<Resource>,
        body: &PatchBody,
        target: Option<&Selector>,
        origin: &PatchOrigin,
    ) -> Result<(), ComposeError> {
        let invalid = |reason: String| ComposeError::InvalidPatch {
            patch: origin.clone(),
            reason,
        };
        let Some(target) = target else {
            let PatchBody::Smp(docs) = body else {
                return Err(invalid(
                    "a JSON6902 patch needs a `target:` naming the resource it applies to".into(),
                ));
            };
            for doc in docs {
                let want = ResId::of(doc);
                let idx = acc.iter().position(|r| {
                    let id = r.id();
                    // Exact id, as kustomize's GetById: a patch without apiVersion
                    // matches nothing.
                    want.group == id.group
                        && want.version == id.version
                        && want.kind == id.kind
                        && want.name == id.name
                        && want.namespace == id.namespace
                });
                let Some(idx) = idx else {
                    return Err(ComposeError::PatchTargetMissing {
                        patch: origin.clone(),
                        id: Box::new(want),
                    });
                };
                record_fields(&mut acc[idx], doc_fields(doc), origin);
                apply_smp(acc, idx, doc);
            }
            return Ok(());
        };
        let compiled = target
            .compile()
            .map_err(|e| invalid(format!("target {e}")))?;
        let selected: Vec<ResId> = acc
            .iter()
            .filter(|r| compiled.matches(&r.value))
            .map(Resource::id)
            .collect();
        if selected.is_empty() {
            self.warnings.push(Warning::PatchMatchedNothing {
                patch: origin.clone(),
                target: target.clone(),
            });
            return Ok(());
        }
        for id in selected {
            let Some(idx) = acc.iter().position(|r| r.id() == id) else {
                continue;
            };
            match body {
                PatchBody::Smp(docs) => {
                    for doc in docs {
                        record_fields(&mut acc[idx], doc_fields(doc), origin);
                        if !apply_smp(acc, idx, doc) {
                            break;
                        }
                    }
                }
                PatchBody::Json(ops) => {
                    let fields = ops.iter().filter_map(|op| op.top_field()).collect();
                    record_fields(&mut acc[idx], fields, origin);
                    patch::apply_json6902(&mut acc[idx].value, ops).map_err(|reason| {
                        ComposeError::Json6902 {
                            patch: origin.clone(),
                            id: Box::new(id.clone()),
                            reason,
                        }
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// The top-level fields a strategic merge patch sets (its identity fields excluded).
fn doc_fields(doc: &Value) -> Vec<String> {
    doc.as_object()
        .map(|o| {
            o.keys()
                .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Notes that the patch at `origin` changed `fields` of `resource`.
fn record_fields(resource: &mut Resource, fields: Vec<String>, origin: &PatchOrigin) {
    let file = match &origin.path {
        Some(p) => normalize(
            &origin
                .kustomization
                .parent()
                .unwrap_or(Path::new("/"))
                .join(p),
        ),
        None => origin.kustomization.clone(),
    };
    for field in fields {
        resource.set_by.insert(field, file.clone());
    }
}

/// Merges `doc` into `acc[idx]` keeping its apiVersion, kind, name and namespace (kustomize
/// restores them after a merge). Returns false when the patch deleted the resource.
fn apply_smp(acc: &mut Vec<Resource>, idx: usize, doc: &Value) -> bool {
    let old = acc[idx].value.clone();
    match patch::strategic_merge(Some(&old), doc) {
        Merged::Delete => {
            acc.remove(idx);
            false
        }
        Merged::Keep(mut v) => {
            if let Some(obj) = v.as_object_mut() {
                for key in ["apiVersion", "kind"] {
                    match old.get(key) {
                        Some(val) => obj.insert(key.to_owned(), val.clone()),
                        None => obj.remove(key),
                    };
                }
                let meta = obj
                    .entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(meta) = meta.as_object_mut() {
                    for key in ["name", "namespace"] {
                        match old.get("metadata").and_then(|m| m.get(key)) {
                            Some(val) => meta.insert(key.to_owned(), val.clone()),
                            None => meta.remove(key),
                        };
                    }
                }
            }
            acc[idx].value = v;
            true
        }
    }
}

fn add_resource(acc: &mut Vec<Resource>, r: Resource, file: &Path) -> Result<(), ComposeError> {
    let id = r.id();
    if let Some(first) = acc.iter().find(|x| x.id() == id) {
        return Err(ComposeError::DuplicateId {
            id: Box::new(id),
            first: first.origin.clone(),
            file: file.to_owned(),
        });
    }
    acc.push(r);
    Ok(())
}

fn parse_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(de).map_err(|e| e.to_string())?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn parse_resources(path: &Path, text: &str) -> Result<Vec<Resource>, ComposeError> {
    let docs = parse_docs(text).map_err(|reason| ComposeError::Parse {
        file: path.to_owned(),
        reason,
    })?;
    let mut out = Vec::new();
    for v in docs {
        if !v.is_object() {
            return Err(ComposeError::Parse {
                file: path.to_owned(),
                reason: "a resource must be a mapping".into(),
            });
        }
        let id = ResId::of(&v);
        if id.kind.is_empty() {
            return Err(ComposeError::MissingField {
                file: path.to_owned(),
                field: "kind",
            });
        }
        if id.name.is_empty() {
            return Err(ComposeError::MissingField {
                file: path.to_owned(),
                field: "metadata.name",
            });
        }
        out.push(Resource {
            value: v,
            origin: path.to_owned(),
            set_by: Default::default(),
        });
    }
    Ok(out)
}

fn parse_patch(text: &str, origin: &PatchOrigin) -> Result<PatchBody, ComposeError> {
    let invalid = |reason: String| ComposeError::InvalidPatch {
        patch: origin.clone(),
        reason,
    };
    let docs = parse_docs(text).map_err(&invalid)?;
    match docs.as_slice() {
        [Value::Array(_)] => {
            let ops: Vec<Op> = serde_json::from_value(docs[0].clone())
                .map_err(|e| invalid(format!("not a list of JSON6902 operations: {e}")))?;
            Ok(PatchBody::Json(ops))
        }
        [] => Err(invalid("the patch is empty".into())),
        _ if docs.iter().all(Value::is_object) => {
            for doc in &docs {
                let id = ResId::of(doc);
                if id.kind.is_empty() || id.name.is_empty() {
                    return Err(invalid(
                        "a strategic merge patch needs `kind` and `metadata.name` (kubectl cannot parse it \
                         either); add them, e.g. `kind: Agent` and `metadata: {name: implementer}`"
                            .into(),
                    ));
                }
            }
            Ok(PatchBody::Smp(docs))
        }
        _ => Err(invalid(
            "a patch must be a mapping (strategic merge) or a list of operations (JSON6902)".into(),
        )),
    }
}

/// Lexical normalisation (`a/./b/../c` → `a/c`); never touches the file system.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests;
