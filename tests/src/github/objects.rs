//! Response bodies, built from the examples GitHub publishes in its OpenAPI description
//! (`components.examples`: recorded-looking full objects) with the fake's state patched in.

use serde_json::{Value, json};

use super::schema::OpenApi;

/// `components.examples.<name>.value`; a list example yields its first item.
pub fn example(name: &str) -> Value {
    let v = &OpenApi::get().doc()["components"]["examples"][name]["value"];
    assert!(
        !v.is_null(),
        "GitHub's OpenAPI description has no example `{name}`"
    );
    match v {
        Value::Array(items) => items[0].clone(),
        v => v.clone(),
    }
}

/// Sets `fields` (a JSON object) on `base`, replacing whole values.
pub fn patch(mut base: Value, fields: Value) -> Value {
    if let (Value::Object(b), Value::Object(f)) = (&mut base, fields) {
        b.extend(f);
    }
    base
}

/// A user with a stable id derived from the login.
pub fn user(login: &str) -> Value {
    let id = login
        .bytes()
        .fold(1000u64, |h, b| (h * 31 + u64::from(b)) % 1_000_000_007);
    patch(
        example("simple-user"),
        json!({
            "login": login,
            "id": id,
            "node_id": format!("U_{id}"),
            "url": format!("https://api.github.com/users/{login}"),
            "html_url": format!("https://github.com/{login}"),
        }),
    )
}

/// A label of the given name.
pub fn label(name: &str, id: u64) -> Value {
    patch(
        example("label"),
        json!({
            "id": id,
            "node_id": format!("LA_{id}"),
            "name": name,
            "description": "",
            "default": false,
        }),
    )
}
