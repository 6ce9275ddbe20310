//! The params file: the JSON object that the jump host passes in (the mounted ConfigMap).

use std::path::Path;

use serde_json::Value;

use crate::error::{Location, Problem, Problems};

/// Reads the params file, which must hold one JSON object.
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
}
