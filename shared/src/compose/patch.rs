//! Patch semantics: strategic merge without a schema (what kustomize does for kinds it has no
//! OpenAPI schema for, such as `Agent` and `Process`) and JSON6902 operations.

use serde::Deserialize;
use serde_json::{Map, Value};

const DIRECTIVE: &str = "$patch";

/// Result of merging a patch into a node.
#[derive(Debug, PartialEq)]
pub(crate) enum Merged {
    Keep(Value),
    Delete,
}

/// Strategic merge of `patch` into `target` without a schema:
/// maps merge key by key, `null` deletes a key, lists and scalars are replaced,
/// `$patch: delete` removes the map it appears in and `$patch: replace` replaces it whole.
pub(crate) fn strategic_merge(target: Option<&Value>, patch: &Value) -> Merged {
    let Value::Object(patch_map) = patch else {
        return Merged::Keep(clean(patch));
    };
    match patch_map.get(DIRECTIVE).and_then(Value::as_str) {
        Some("delete") => return Merged::Delete,
        Some("replace") => {
            let mut replaced = patch_map.clone();
            replaced.remove(DIRECTIVE);
            return Merged::Keep(clean(&Value::Object(replaced)));
        }
        _ => {}
    }
    let mut out: Map<String, Value> = match target {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (key, pv) in patch_map {
        if key.starts_with('$') {
            // Other directives ($setElementOrder, $retainKeys, ...) only mean something with
            // a schema; kustomize drops them for schemaless kinds.
            continue;
        }
        if pv.is_null() {
            out.remove(key);
            continue;
        }
        match strategic_merge(out.get(key), pv) {
            Merged::Keep(v) => {
                out.insert(key.clone(), v);
            }
            Merged::Delete => {
                out.remove(key);
            }
        }
    }
    Merged::Keep(Value::Object(out))
}

/// A patch value placed where nothing was before: directives and nulls vanish.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(_) => match strategic_merge(None, v) {
            Merged::Keep(v) => v,
            Merged::Delete => Value::Object(Map::new()),
        },
        Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
        other => other.clone(),
    }
}

/// One RFC 6902 operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Op {
    op: String,
    path: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    from: Option<String>,
}

impl Op {
    /// The top-level field the operation writes (`/pipeline/0/agent` → `pipeline`), if any.
    pub(crate) fn top_field(&self) -> Option<String> {
        if self.op == "test" {
            return None;
        }
        let first = self.path.trim_start_matches('/').split('/').next()?;
        (!first.is_empty()).then(|| first.replace("~1", "/").replace("~0", "~"))
    }
}

/// Applies `ops` in order.
///
/// # Errors
/// A description of the first failing operation (missing path, failed `test`, ...).
pub(crate) fn apply_json6902(doc: &mut Value, ops: &[Op]) -> Result<(), String> {
    for (i, op) in ops.iter().enumerate() {
        apply_op(doc, op)
            .map_err(|e| format!("operation #{} ({} {}): {e}", i + 1, op.op, op.path))?;
    }
    Ok(())
}

fn apply_op(doc: &mut Value, op: &Op) -> Result<(), String> {
    let value = || op.value.clone().ok_or_else(|| "missing `value`".to_owned());
    let from = || op.from.clone().ok_or_else(|| "missing `from`".to_owned());
    match op.op.as_str() {
        "add" => add(doc, &op.path, value()?),
        "remove" => remove(doc, &op.path).map(drop),
        "replace" => {
            let v = value()?;
            let slot = get_mut(doc, &op.path)?;
            *slot = v;
            Ok(())
        }
        "move" => {
            let v = remove(doc, &from()?)?;
            add(doc, &op.path, v)
        }
        "copy" => {
            let v = get_mut(doc, &from()?)?.clone();
            add(doc, &op.path, v)
        }
        "test" => {
            let want = value()?;
            let have = get_mut(doc, &op.path)?;
            if *have == want {
                Ok(())
            } else {
                Err(format!("test failed: found {have}"))
            }
        }
        other => Err(format!(
            "unknown op `{other}` (expected add, remove, replace, move, copy or test)"
        )),
    }
}

fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or("a path must start with `/`")?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn get_mut<'a>(doc: &'a mut Value, path: &str) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens(path)? {
        cur = match cur {
            Value::Object(m) => m.get_mut(&t).ok_or_else(|| format!("no key `{t}`"))?,
            Value::Array(a) => {
                let i: usize = t
                    .parse()
                    .map_err(|_| format!("`{t}` is not a list index"))?;
                let len = a.len();
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} is out of range (length {len})"))?
            }
            _ => return Err(format!("cannot descend into a scalar at `{t}`")),
        };
    }
    Ok(cur)
}

fn split_parent(path: &str) -> Result<(String, String), String> {
    let mut toks = tokens(path)?;
    let last = toks
        .pop()
        .ok_or("the root cannot be the target of this operation")?;
    let parent: String = toks
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect();
    Ok((parent, last))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split_parent(path)?;
    match get_mut(doc, &parent)? {
        Value::Object(m) => {
            m.insert(last, v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse()
                    .map_err(|_| format!("`{last}` is not a list index"))?
            };
            if i > a.len() {
                return Err(format!("index {i} is out of range (length {})", a.len()));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("the parent of `{path}` is a scalar")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_parent(path)?;
    match get_mut(doc, &parent)? {
        Value::Object(m) => m.remove(&last).ok_or_else(|| format!("no key `{last}`")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("`{last}` is not a list index"))?;
            if i >= a.len() {
                return Err(format!("index {i} is out of range (length {})", a.len()));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("the parent of `{path}` is a scalar")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Option<Value> {
        match strategic_merge(Some(&target), &patch) {
            Merged::Keep(v) => Some(v),
            Merged::Delete => None,
        }
    }

    #[test]
    fn maps_merge_recursively_and_lists_are_replaced() {
        let out = smp(
            json!({"a": {"x": 1, "y": 2}, "l": [{"name": "a", "v": 1}], "s": "old"}),
            json!({"a": {"y": 3, "z": 4}, "l": [{"name": "b"}], "s": "new"}),
        );
        assert_eq!(
            out,
            Some(json!({"a": {"x": 1, "y": 3, "z": 4}, "l": [{"name": "b"}], "s": "new"}))
        );
    }

    #[test]
    fn null_deletes_a_key_and_directives_delete_or_replace_maps() {
        let out = smp(
            json!({"a": 1, "keep": {"x": 1, "y": 2}, "gone": {"x": 1}, "b": 2}),
            json!({"a": null, "keep": {"$patch": "replace", "only": 1}, "gone": {"$patch": "delete"}, "new": {"n": null, "m": 1}}),
        );
        assert_eq!(
            out,
            Some(json!({"keep": {"only": 1}, "b": 2, "new": {"m": 1}}))
        );
        assert_eq!(smp(json!({"a": 1}), json!({"$patch": "delete"})), None);
    }

    fn ops(v: Value) -> Vec<Op> {
        serde_json::from_value(v).expect("valid ops")
    }

    #[test]
    fn json6902_operations_follow_rfc_6902() {
        let mut doc = json!({"a": {"b": [1, 2]}, "c": "x", "d~/": 0});
        apply_json6902(
            &mut doc,
            &ops(json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "add", "path": "/a/b/0", "value": 0},
                {"op": "replace", "path": "/c", "value": "y"},
                {"op": "copy", "from": "/c", "path": "/e"},
                {"op": "move", "from": "/e", "path": "/f"},
                {"op": "remove", "path": "/d~0~1"},
                {"op": "test", "path": "/f", "value": "y"}
            ])),
        )
        .expect("applies");
        assert_eq!(doc, json!({"a": {"b": [0, 1, 2, 3]}, "c": "y", "f": "y"}));
    }

    #[test]
    fn json6902_errors_name_the_failing_operation() {
        let mut doc = json!({"a": 1});
        let err = apply_json6902(
            &mut doc,
            &ops(json!([{"op": "replace", "path": "/missing", "value": 1}])),
        )
        .expect_err("missing key");
        assert_eq!(err, "operation #1 (replace /missing): no key `missing`");
        let err = apply_json6902(
            &mut doc,
            &ops(json!([{"op": "test", "path": "/a", "value": 2}])),
        )
        .expect_err("test");
        assert!(err.contains("test failed"), "{err}");
        assert!(
            apply_json6902(
                &mut doc,
                &ops(json!([{"op": "add", "path": "/x/y", "value": 1}]))
            )
            .is_err()
        );
    }
}
