//! The params files: JSON objects that the jump host passes in, the plain ones (a mounted
//! ConfigMap) and the secret ones (a mounted Secret), merged into the one `params` object.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::base::error::{Location, Problem, Problems};

/// The params of every file, merged, and what came from the secret files.
#[derive(Debug, Default)]
pub struct Merged {
    pub params: Value,
    /// Each secret file's object: every value in it is masked, whatever its name.
    pub secret: Vec<Value>,
}

/// Reads the plain files, then the secret ones, each a JSON object; a key of a later file
/// replaces that key of an earlier one whole. Every file's problems are reported at once.
pub fn load_all(plain: &[PathBuf], secret: &[PathBuf]) -> Result<Merged, Problems> {
    let mut problems = Problems::default();
    let mut params = Map::new();
    let mut merged = Merged::default();
    for (path, is_secret) in plain
        .iter()
        .map(|p| (p, false))
        .chain(secret.iter().map(|p| (p, true)))
    {
        match load(path) {
            Ok(Value::Object(object)) => {
                if is_secret {
                    merged.secret.push(Value::Object(object.clone()));
                }
                params.extend(object);
            }
            Ok(_) => unreachable!("load returns objects only"),
            Err(p) => problems.extend(p),
        }
    }
    if !problems.0.is_empty() {
        return Err(problems);
    }
    merged.params = Value::Object(params);
    Ok(merged)
}

/// Reads one params file, which must hold one JSON object.
pub fn load(path: &Path) -> Result<Value, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems::one(
            Problem::new(format!("cannot read the params file: {e}"))
                .at(Location::file(path))
                .hint("pass --params FILE (a JSON object) or set BOOTSTRAPPER_PARAMS"),
        )
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Value, Problems> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let location = Location {
            file: path.to_path_buf(),
            line: (e.line() > 0).then_some((e.line(), e.column())),
        };
        Problems::one(Problem::new(format!("the params file is not valid JSON: {e}")).at(location))
    })?;
    if !value.is_object() {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => unreachable!(),
        };
        return Err(Problems::one(
            Problem::new(format!("the params file holds {kind}, not a JSON object"))
                .at(Location::file(path))
                .hint("write the parameters as {\"name\": value, ...}"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_names_line_and_column() {
        let err = parse(Path::new("p.json"), "{\n  \"a\": 1,\n  \"b\" 2\n}").unwrap_err();
        assert_eq!(err.0[0].location.as_ref().unwrap().line, Some((3, 7)));
    }

    #[test]
    fn params_must_be_an_object() {
        let err = parse(Path::new("p.json"), "[1, 2]").unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
    }

    #[test]
    fn later_files_win_key_by_key_and_secret_files_come_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let a = file("a.json", r#"{"x": 1, "y": {"deep": 1}, "z": 1}"#);
        let b = file("b.json", r#"{"y": {"other": 2}}"#);
        let s = file("s.json", r#"{"z": "s3cret", "w": true}"#);
        let merged = load_all(&[a, b], &[s]).unwrap();
        assert_eq!(
            merged.params,
            serde_json::json!({"x": 1, "y": {"other": 2}, "z": "s3cret", "w": true})
        );
        assert_eq!(
            merged.secret,
            [serde_json::json!({"z": "s3cret", "w": true})]
        );
    }

    #[test]
    fn every_bad_file_is_named_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, "{}").unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\n  \"a\" 1\n}").unwrap();
        let missing = dir.path().join("missing.json");
        let err = load_all(&[good, bad.clone()], std::slice::from_ref(&missing)).unwrap_err();
        let locations: Vec<_> = err.0.iter().map(|p| p.location.clone().unwrap()).collect();
        assert_eq!(locations.len(), 2, "{err}");
        assert_eq!(locations[0].file, bad);
        assert_eq!(locations[0].line, Some((2, 7)));
        assert_eq!(locations[1].file, missing);
    }
}
