//! GitHub's GraphQL schema (npm `@octokit/graphql-schema`) as a request checker.
//!
//! Every query the fake receives is parsed and fully validated against the schema with
//! `apollo-compiler` (field names, argument and input types, fragments, variable usage), and
//! its `variables` are coerced to the operation's declared types. The fake answers only the
//! operations it implements (see [`super`]).

use std::sync::OnceLock;

use apollo_compiler::executable::{Selection, SelectionSet};
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use serde_json::Value;

use super::schema::graphql_schema_path;

/// The schema, parsed once per process. GitHub's SDL is taken as valid (it is the published
/// schema; we check requests against it, not it against the spec).
pub fn schema() -> &'static Valid<Schema> {
    static ONCE: OnceLock<Valid<Schema>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let path = graphql_schema_path();
        let sdl = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let schema = match Schema::parse(sdl, &path) {
            Ok(s) => s,
            Err(with_errors) => with_errors.partial,
        };
        Valid::assume_valid(schema)
    })
}

/// A validated GraphQL request: the operation's root fields with their arguments (variables
/// substituted) as JSON, and the response keys the answer's `data` must carry.
#[derive(Debug)]
pub struct Request {
    /// `query`, `mutation` or `subscription`.
    pub kind: String,
    /// (response key, field name, arguments) of each root field.
    pub root_fields: Vec<(String, String, Value)>,
    document: Valid<ExecutableDocument>,
    operation_name: Option<String>,
}

/// Parses and validates `body` (`{"query": ..., "variables": ..., "operationName": ...}`).
pub fn check(body: &Value) -> Result<Request, String> {
    let schema = schema();
    let query = body["query"]
        .as_str()
        .ok_or("a GraphQL request needs a string `query`")?;
    let document = ExecutableDocument::parse_and_validate(schema, query, "request.graphql")
        .map_err(|e| format!("invalid GraphQL operation: {}", e.errors))?;
    let operation_name = body["operationName"].as_str().map(str::to_string);
    let operation = document
        .operations
        .get(operation_name.as_deref())
        .map_err(|_| "no (or an ambiguous) operation to run".to_string())?;
    let variables = match &body["variables"] {
        Value::Null => Default::default(),
        v @ Value::Object(_) => {
            serde_json::from_value(v.clone()).map_err(|e| format!("GraphQL `variables`: {e}"))?
        }
        _ => return Err("GraphQL `variables` must be an object".into()),
    };
    let variables = apollo_compiler::request::coerce_variable_values(schema, operation, &variables)
        .map_err(|e| format!("GraphQL variables: {}", e.message()))?;
    let variables: Value =
        serde_json::to_value(variables.into_inner()).expect("variables are JSON");
    let mut root_fields = Vec::new();
    for sel in &operation.selection_set.selections {
        let Selection::Field(field) = sel else {
            return Err("the fake expects plain root fields (no fragments)".into());
        };
        let mut args = serde_json::Map::new();
        for arg in &field.arguments {
            args.insert(arg.name.to_string(), value_json(&arg.value, &variables));
        }
        root_fields.push((
            field.response_key().to_string(),
            field.name.to_string(),
            Value::Object(args),
        ));
    }
    let kind = operation.operation_type.to_string();
    Ok(Request {
        kind,
        root_fields,
        document,
        operation_name,
    })
}

impl Request {
    /// Checks that `data` answers every field the operation selected (recursively, by
    /// response key), so an answer the client cannot decode is noticed.
    pub fn check_response(&self, data: &Value) -> Result<(), String> {
        let op = self
            .document
            .operations
            .get(self.operation_name.as_deref())
            .map_err(|_| "operation vanished".to_string())?;
        covers(&op.selection_set, data, "data")
    }
}

fn covers(set: &SelectionSet, data: &Value, at: &str) -> Result<(), String> {
    match data {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| covers(set, v, &format!("{at}[{i}]"))),
        Value::Object(map) => {
            for sel in &set.selections {
                match sel {
                    Selection::Field(f) => {
                        let key = f.response_key().as_str();
                        let v = map.get(key).ok_or(format!("{at}.{key} is missing"))?;
                        if !f.selection_set.selections.is_empty() {
                            covers(&f.selection_set, v, &format!("{at}.{key}"))?;
                        }
                    }
                    Selection::InlineFragment(frag) => covers(&frag.selection_set, data, at)?,
                    Selection::FragmentSpread(_) => {}
                }
            }
            Ok(())
        }
        _ if set.selections.is_empty() => Ok(()),
        other => Err(format!(
            "{at} is {other} but the operation selects fields of it"
        )),
    }
}

fn value_json(v: &apollo_compiler::ast::Value, variables: &Value) -> Value {
    use apollo_compiler::ast::Value as V;
    match v {
        V::Null => Value::Null,
        V::Enum(e) => Value::String(e.to_string()),
        V::Variable(name) => variables[name.as_str()].clone(),
        V::String(s) => Value::String(s.clone()),
        V::Float(f) => f
            .try_to_f64()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        V::Int(i) => i.try_to_i32().map_or(Value::Null, Value::from),
        V::Boolean(b) => Value::Bool(*b),
        V::List(items) => Value::Array(items.iter().map(|i| value_json(i, variables)).collect()),
        V::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), value_json(v, variables)))
                .collect(),
        ),
    }
}
