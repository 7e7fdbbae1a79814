//! A composed project: the agent templates and the process, validated against each other
//! (every `agent:` step has a template). This is what the coordinator runs with.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::compose::{Composition, display_path};
use crate::pipeline::{Process, ProcessError};
use crate::prompt::{AgentTemplate, TemplateError, agent_templates};

/// The process used when a composition has several: the one the base ships and overlays patch.
pub const DEFAULT_PROCESS: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub agents: BTreeMap<String, AgentTemplate>,
    pub process: Process,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    #[error("{origin}: {source}")]
    Template {
        origin: String,
        source: TemplateError,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(
        "the composition has no `kind: Process` resource; include hyperloop's base (which \
         defines `default`) in `resources:` or add a Process"
    )]
    NoProcess,
    #[error(
        "the composition has several processes ({}) and none is named `{DEFAULT_PROCESS}`; \
         keep one, or name the one to run `{DEFAULT_PROCESS}`",
        .names.join(", ")
    )]
    AmbiguousProcess { names: Vec<String> },
}

impl Project {
    /// Reads the agents and the process out of a composition and validates the process
    /// against the agents.
    ///
    /// # Errors
    /// An unusable Agent (named with its file), no or ambiguous Process, or every problem in
    /// the Process (see [`ProcessError`]).
    pub fn from_composition(composition: &Composition) -> Result<Project, ProjectError> {
        let mut agents = BTreeMap::new();
        let mut processes = Vec::new();
        for resource in &composition.resources {
            let origin = display_path(&resource.origin);
            // Composition keeps JSON values; templates and processes read YAML values.
            let value: Value =
                serde_yaml::to_value(&resource.value).map_err(|e| ProjectError::Template {
                    origin: origin.clone(),
                    source: TemplateError::WrongType {
                        name: e.to_string(),
                        field: "(document)",
                        expected: "a mapping",
                    },
                })?;
            match value.get("kind").and_then(Value::as_str) {
                Some("Agent") => {
                    let more = agent_templates(std::slice::from_ref(&value)).map_err(|source| {
                        ProjectError::Template {
                            origin: origin.clone(),
                            source,
                        }
                    })?;
                    for (name, template) in more {
                        if agents.insert(name.clone(), template).is_some() {
                            return Err(ProjectError::Template {
                                origin,
                                source: TemplateError::Duplicate { name },
                            });
                        }
                    }
                }
                Some("Process") => processes.push((value, origin, resource.set_by.clone())),
                _ => {}
            }
        }
        let names: Vec<&String> = agents.keys().collect();
        let name_of = |v: &Value| {
            v.get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (doc, origin, set_by) = match processes.len() {
            0 => return Err(ProjectError::NoProcess),
            1 => processes.swap_remove(0),
            _ => {
                let at = processes
                    .iter()
                    .position(|(v, _, _)| name_of(v) == DEFAULT_PROCESS)
                    .ok_or_else(|| ProjectError::AmbiguousProcess {
                        names: processes.iter().map(|(v, _, _)| name_of(v)).collect(),
                    })?;
                processes.swap_remove(at)
            }
        };
        let process =
            Process::parse(&doc, &origin, &names).map_err(|e| attribute_to_patches(e, &set_by))?;
        Ok(Project { agents, process })
    }
}

/// Names the file each problem came from: a field an overlay patch replaced (typically
/// `pipeline`) is blamed on that patch, not on the base file it was patched into. When all
/// problems come from one patch, it becomes the error's source; otherwise each problem is
/// prefixed with its file.
fn attribute_to_patches(
    mut err: ProcessError,
    set_by: &BTreeMap<String, std::path::PathBuf>,
) -> ProcessError {
    let file_of = |at: &str| {
        let field = at.split(['.', '[']).next().unwrap_or_default();
        set_by.get(field).map(|p| display_path(p))
    };
    let files: Vec<Option<String>> = err.problems.iter().map(|p| file_of(&p.at)).collect();
    if files.iter().all(|f| f.is_none()) {
        return err;
    }
    if let Some(Some(first)) = files.first()
        && files.iter().all(|f| f.as_ref() == Some(first))
    {
        err.source = format!("{first} (a patch of {})", err.source);
        return err;
    }
    for (problem, file) in err.problems.iter_mut().zip(files) {
        if let Some(file) = file {
            problem.at = format!("{file}: {}", problem.at);
        }
    }
    err
}

/// The embedded base alone, for tests of what runs on it.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};

    use crate::compose::{
        Composition, EntryKind, FileSource, RemoteRef, SourceError, WithEmbeddedBase, compose,
    };

    /// A source with nothing but the embedded base.
    struct Nothing;

    impl FileSource for Nothing {
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
                reason: "offline".into(),
            })
        }
    }

    pub(crate) fn base() -> Composition {
        let source = WithEmbeddedBase::new(Nothing);
        compose(&source, &source.base_dir()).expect("the embedded base composes")
    }

    pub(crate) fn base_project() -> super::Project {
        super::Project::from_composition(&base()).expect("the embedded base is a project")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::base;
    use super::*;

    #[test]
    fn the_embedded_base_is_a_valid_project() {
        let project = Project::from_composition(&base()).unwrap();
        let roles: Vec<_> = project.agents.keys().map(String::as_str).collect();
        assert_eq!(
            roles,
            [
                "implementer",
                "pm",
                "process-improver",
                "rebase-resolver",
                "verifier"
            ]
        );
        assert_eq!(project.process.name, DEFAULT_PROCESS);
        assert_eq!(project.process.source, "<embedded>/base/process.yaml");
    }

    #[test]
    fn a_pipeline_naming_a_missing_agent_is_rejected_with_the_fix() {
        let mut composition = base();
        composition
            .resources
            .retain(|r| r.value["metadata"]["name"] != "verifier");
        let err = Project::from_composition(&composition).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("verifier"), "{text}");
        assert!(text.contains("process.yaml"), "{text}");
    }

    #[test]
    fn a_composition_without_a_process_is_rejected() {
        let mut composition = base();
        composition
            .resources
            .retain(|r| r.value["kind"] != "Process");
        assert_eq!(
            Project::from_composition(&composition),
            Err(ProjectError::NoProcess)
        );
    }

    #[test]
    fn several_processes_need_one_named_default() {
        let mut composition = base();
        let mut other = composition
            .resources
            .iter()
            .find(|r| r.value["kind"] == "Process")
            .unwrap()
            .clone();
        other.value["metadata"]["name"] = "fast".into();
        composition.resources.push(other.clone());
        assert_eq!(
            Project::from_composition(&composition)
                .unwrap()
                .process
                .name,
            "default"
        );
        composition
            .resources
            .retain(|r| r.value["metadata"]["name"] != "default");
        composition.resources.push(other);
        assert!(matches!(
            Project::from_composition(&composition),
            Err(ProjectError::AmbiguousProcess { .. })
        ));
    }

    #[test]
    fn a_bad_step_from_a_patch_is_blamed_on_the_patch_not_the_base() {
        let mut composition = base();
        let process = composition
            .resources
            .iter_mut()
            .find(|r| r.value["kind"] == "Process")
            .unwrap();
        process.value["pipeline"] = serde_json::json!([
            {"loop": [{"agent": "implementer"}, {"agent": "security-reviewer"}]}
        ]);
        process.set_by.insert(
            "pipeline".into(),
            "/repo/.hyperloop/agents/process-patch.yaml".into(),
        );
        let text = Project::from_composition(&composition)
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with(
                "invalid process definition in /repo/.hyperloop/agents/process-patch.yaml \
                 (a patch of <embedded>/base/process.yaml)"
            ),
            "{text}"
        );
        assert!(
            text.contains("pipeline[0].loop[1]: no agent template for role `security-reviewer`"),
            "{text}"
        );
    }

    #[test]
    fn problems_from_different_files_each_name_their_file() {
        let mut composition = base();
        let process = composition
            .resources
            .iter_mut()
            .find(|r| r.value["kind"] == "Process")
            .unwrap();
        process.value["pipeline"] = serde_json::json!([{"agent": "nobody"}]);
        process.value["hooks"] = serde_json::json!({"after_reap": [{"type": "nope"}]});
        process.set_by.insert("pipeline".into(), "/p.yaml".into());
        let text = Project::from_composition(&composition)
            .unwrap_err()
            .to_string();
        assert!(text.contains("in <embedded>/base/process.yaml"), "{text}");
        assert!(text.contains("\n  /p.yaml: pipeline[0]"), "{text}");
        assert!(text.contains("\n  hooks"), "{text}");
    }
}
