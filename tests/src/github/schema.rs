//! GitHub's published REST description (npm `@octokit/openapi`) as a request/response checker.
//!
//! The description is OpenAPI 3.0: its schemas are JSON Schema draft 4 plus `nullable: true`.
//! Each body schema is translated (`nullable` becomes a `null` type or an `anyOf` with
//! `{"type": "null"}`) and compiled with the `jsonschema` crate, together with the translated
//! `components.schemas` so that `#/components/schemas/...` references resolve unchanged.
//! Formats (`date-time`, `uri`, ...) are checked too. Compiled validators are cached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

/// Where `tests/setup` puts the OpenAPI description (override: `HYPERLOOP_GITHUB_OPENAPI`).
pub fn openapi_path() -> PathBuf {
    tool_file(
        "HYPERLOOP_GITHUB_OPENAPI",
        "octokit-openapi-23.0.2/package/generated/api.github.com.json",
    )
}

/// Where `tests/setup` puts the GraphQL SDL (override: `HYPERLOOP_GITHUB_GRAPHQL_SCHEMA`).
pub fn graphql_schema_path() -> PathBuf {
    tool_file(
        "HYPERLOOP_GITHUB_GRAPHQL_SCHEMA",
        "octokit-graphql-schema-15.26.1/package/schema.graphql",
    )
}

/// A file installed by `tests/setup`: `$var` if set, else under `~/.cache/hyperloop-tools`
/// (or `$HYPERLOOP_TOOLS`). Panics with how to install it when it is missing: tests that
/// need GitHub's schema never skip.
fn tool_file(var: &str, default: &str) -> PathBuf {
    let path = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => {
            let tools = std::env::var_os("HYPERLOOP_TOOLS").map_or_else(
                || {
                    let home = std::env::var_os("HOME").unwrap_or_default();
                    PathBuf::from(home).join(".cache/hyperloop-tools")
                },
                PathBuf::from,
            );
            tools.join(default)
        }
    };
    assert!(
        path.is_file(),
        "{} is missing: run tests/setup (it installs GitHub's published API descriptions \
         from npm), or point {var} at the file",
        path.display()
    );
    path
}

/// The REST operations of GitHub's OpenAPI description, loaded once per process.
pub struct OpenApi {
    doc: Value,
    /// `components.schemas`, translated, shared by every compiled validator.
    components: Value,
    /// Path templates split into segments (`None` is a `{parameter}`).
    templates: Vec<(String, Vec<Option<String>>)>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The operation a request was matched to.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub template: String,
    pub method: String,
    /// Path parameters by name, percent-decoded.
    pub params: HashMap<String, String>,
}

impl OpenApi {
    /// The description, read and indexed on first use.
    pub fn get() -> &'static OpenApi {
        static ONCE: OnceLock<OpenApi> = OnceLock::new();
        ONCE.get_or_init(|| {
            let path = openapi_path();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let doc: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
            OpenApi::new(doc)
        })
    }

    /// The whole description.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    fn new(doc: Value) -> OpenApi {
        let components = translate(&doc["components"]["schemas"]);
        let templates = doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .keys()
                    .map(|t| {
                        let segs = t
                            .trim_start_matches('/')
                            .split('/')
                            .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                            .collect();
                        (t.clone(), segs)
                    })
                    .collect()
            })
            .unwrap_or_default();
        OpenApi {
            doc,
            components,
            templates,
            validators: Mutex::default(),
        }
    }

    /// The operation for `method` on `path` (no query), preferring templates with more literal
    /// segments (`/pulls/comments` over `/pulls/{pull_number}`).
    pub fn find(&self, method: &str, path: &str) -> Option<Operation> {
        let method = method.to_ascii_lowercase();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(usize, &str, Vec<String>)> = None;
        for (template, tsegs) in &self.templates {
            // A trailing `{ref}` (git refs like `heads/hyperloop/task-001`) spans the rest.
            let spans_rest = template.ends_with("/{ref}") && segs.len() > tsegs.len();
            let values: Vec<String> = if spans_rest {
                let mut v: Vec<String> = segs[..tsegs.len() - 1]
                    .iter()
                    .map(|s| (*s).to_string())
                    .collect();
                v.push(segs[tsegs.len() - 1..].join("/"));
                v
            } else if tsegs.len() == segs.len() {
                segs.iter().map(|s| (*s).to_string()).collect()
            } else {
                continue;
            };
            if !tsegs
                .iter()
                .zip(&values)
                .all(|(t, s)| t.as_deref().is_none_or(|t| t == s))
                || self.doc["paths"][template][&method].is_null()
            {
                continue;
            }
            let literal = tsegs.iter().filter(|t| t.is_some()).count();
            if best.as_ref().is_none_or(|(n, _, _)| literal > *n) {
                best = Some((literal, template, values));
            }
        }
        let (_, template, values) = best?;
        let params = template
            .trim_start_matches('/')
            .split('/')
            .zip(&values)
            .filter_map(|(t, s)| {
                let name = t.strip_prefix('{')?.strip_suffix('}')?;
                Some((name.to_string(), percent_decode(s)))
            })
            .collect();
        let op = &self.doc["paths"][template][&method];
        Some(Operation {
            id: op["operationId"].as_str().unwrap_or_default().to_string(),
            template: template.to_string(),
            method,
            params,
        })
    }

    /// Checks a request body against the operation's `requestBody` schema. `Ok` when valid
    /// (or when the operation takes no body and none was sent).
    pub fn check_request(&self, op: &Operation, body: Option<&Value>) -> Result<(), String> {
        let spec = self.resolve(&self.doc["paths"][&op.template][&op.method]["requestBody"]);
        let Some(spec) = spec.filter(|s| !s.is_null()) else {
            return match body {
                None => Ok(()),
                Some(_) => Err(format!("{} takes no request body", op.id)),
            };
        };
        let Some(body) = body else {
            return if spec["required"] == true {
                Err(format!("{} requires a request body", op.id))
            } else {
                Ok(())
            };
        };
        let schema = &spec["content"]["application/json"]["schema"];
        if schema.is_null() {
            return Err(format!("{} has no application/json request body", op.id));
        }
        self.validate(
            &format!("{} {} request", op.method, op.template),
            schema,
            body,
        )
    }

    /// Checks a response: its status must be documented for the operation, and its body must
    /// match the documented schema (a documented body-less status must have no body).
    pub fn check_response(
        &self,
        op: &Operation,
        status: u16,
        body: Option<&Value>,
    ) -> Result<(), String> {
        let responses = &self.doc["paths"][&op.template][&op.method]["responses"];
        let Some(spec) = self.resolve(&responses[status.to_string()]) else {
            return Err(format!(
                "{} does not document status {status} (documented: {})",
                op.id,
                responses
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ));
        };
        let schema = &spec["content"]["application/json"]["schema"];
        match (schema.is_null(), body) {
            (true, None) => Ok(()),
            (true, Some(_)) => Err(format!("{} status {status} documents no body", op.id)),
            (false, None) => Err(format!("{} status {status} needs a body", op.id)),
            (false, Some(body)) => self.validate(
                &format!("{} {} response {status}", op.method, op.template),
                schema,
                body,
            ),
        }
    }

    /// Follows a `$ref` into `components` (one level, as the description uses them).
    fn resolve<'a>(&'a self, v: &'a Value) -> Option<&'a Value> {
        if v.is_null() {
            return None;
        }
        match v["$ref"].as_str() {
            Some(r) => self.doc.pointer(r.strip_prefix('#')?),
            None => Some(v),
        }
    }

    fn validate(&self, key: &str, schema: &Value, body: &Value) -> Result<(), String> {
        let validator = {
            let mut cache = self.validators.lock().expect("validator cache");
            match cache.get(key) {
                Some(v) => v.clone(),
                None => {
                    let mut root = translate(schema);
                    if let Value::Object(m) = &mut root {
                        m.insert(
                            "components".into(),
                            json!({"schemas": self.components.clone()}),
                        );
                    } else {
                        root = json!({"allOf": [root], "components": {"schemas": self.components.clone()}});
                    }
                    let v = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft4)
                        .should_validate_formats(true)
                        .build(&root)
                        .unwrap_or_else(|e| panic!("compile the schema of {key}: {e}"));
                    let v = Arc::new(v);
                    cache.insert(key.to_string(), v.clone());
                    v
                }
            }
        };
        let errors: Vec<String> = validator
            .iter_errors(body)
            .take(10)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{key}: {}", errors.join("; ")))
        }
    }
}

/// OpenAPI 3.0 schema → JSON Schema: `nullable: true` admits `null`; `example`s dropped.
fn translate(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(translate).collect()),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "nullable" | "example" | "examples" => {}
                    // Property names and enum values are data, not schemas.
                    "properties" | "patternProperties" => {
                        let props = v
                            .as_object()
                            .map(|p| p.iter().map(|(k, v)| (k.clone(), translate(v))).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "enum" | "required" | "default" => {
                        out.insert(k.clone(), v.clone());
                    }
                    _ => {
                        out.insert(k.clone(), translate(v));
                    }
                }
            }
            if m.get("nullable") != Some(&Value::Bool(true)) {
                return Value::Object(out);
            }
            if let Some(Value::Array(e)) = out.get_mut("enum")
                && !e.contains(&Value::Null)
            {
                e.push(Value::Null);
            }
            match out.get("type").cloned() {
                Some(Value::String(t)) => {
                    out.insert("type".into(), json!([t, "null"]));
                    Value::Object(out)
                }
                _ => json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
            }
        }
        other => other.clone(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `%XX` escapes in a URL component (for query values too).
pub fn decode_component(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}
