//! Strict reading of typed objects (Kubernetes objects above all): k8s-openapi's types skip fields
//! they do not know, so a misspelled field in a file would be dropped without a word. An object
//! is read strictly when it serializes back to exactly what was read.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// `value` as a `T`, refused when a field would be lost or changed on the way: the message
/// names the first such field by its path.
pub fn from_value<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(&value, &back, String::new()) {
        None => Ok(typed),
        Some(path) => Err(format!(
            "`{path}` is not a field of this kind of object (or not of this type): check its spelling and place"
        )),
    }
}

/// The path of the first place where `read` holds something that `back` does not.
fn first_difference(read: &Value, back: &Value, path: String) -> Option<String> {
    match (read, back) {
        (Value::Object(read), Value::Object(back)) => read.iter().find_map(|(key, value)| {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match back.get(key) {
                // A null or empty value written out is the same as none.
                None if value.is_null() || is_empty(value) => None,
                None => Some(here),
                Some(other) => first_difference(value, other, here),
            }
        }),
        (Value::Array(read), Value::Array(back)) if read.len() == back.len() => read
            .iter()
            .zip(back)
            .enumerate()
            .find_map(|(i, (r, b))| first_difference(r, b, format!("{path}[{i}]"))),
        // Numbers may come back in another form (1 and 1.0); quantities as strings.
        (Value::Number(r), Value::Number(b)) if r.as_f64() == b.as_f64() => None,
        (Value::Number(r), Value::String(b)) if r.to_string() == *b => None,
        (read, back) if read == back => None,
        _ => Some(if path.is_empty() { ".".into() } else { path }),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;
    use serde_json::json;

    #[test]
    fn a_misspelled_field_is_named() {
        let good = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "a"},
            "spec": {"template": {"spec": {"containers": [{"name": "engine", "image": "x"}]}}}});
        assert!(from_value::<Job>(good.clone()).is_ok());
        let mut bad = good;
        bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
        assert_eq!(
            from_value::<Job>(bad).unwrap_err(),
            "`spec.template.spec.containers[0].imagePullPolicyy` is not a field of this kind of object (or not of this type): check its spelling and place"
        );
    }
}
