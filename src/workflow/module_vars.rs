//! The `variable` blocks of a step's root module, checked against what the step sets: a name
//! the module does not declare is almost always a typo (terraform only warns about it), and a
//! required variable without a value makes terraform fail after the steps before it ran.

use std::path::Path;

use hcl::edit::structure::Body;
use serde_json::Value;

use crate::base::error::{Location, Problem, Problems};
use crate::workflow::tfvars;
use crate::workflow::var_types::{Type, Validation};

/// A variable the module declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    /// No `default`: terraform needs a value for it.
    pub required: bool,
    pub declared_at: Location,
    /// Its `type`, when it is one [`Type`] knows.
    pub ty: Option<Type>,
    pub validations: Vec<Validation>,
}

/// The variables declared by the `*.tf` and `*.tf.json` files of the module in `dir`.
pub fn read(dir: &Path) -> Result<Vec<Variable>, Problems> {
    let files = match tfvars::files_named(dir, |name| {
        name.ends_with(".tf") || name.ends_with(".tf.json")
    }) {
        Ok(files) => files,
        Err(e) => {
            return Err(Problems::one(
                Problem::new(format!("cannot read the module's files: {e}"))
                    .at(Location::file(dir)),
            ))
        }
    };
    let mut variables = Vec::new();
    let mut problems = Problems::default();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                problems
                    .push(Problem::new(format!("cannot read it: {e}")).at(Location::file(&file)));
                continue;
            }
        };
        let found = if file.to_string_lossy().ends_with(".json") {
            json_variables(&file, &text)
        } else {
            hcl_variables(&file, &text)
        };
        match found {
            Ok(found) => variables.extend(found),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(variables)
    } else {
        Err(problems)
    }
}

/// The text of each `*.tf` and `*.tf.json` file of the module in `dir`, and whether it is
/// JSON; `None` when the directory or one of them cannot be read.
fn module_texts(dir: &Path) -> Option<Vec<(bool, String)>> {
    let files = tfvars::files_named(dir, |name| {
        name.ends_with(".tf") || name.ends_with(".tf.json")
    })
    .ok()?;
    files
        .iter()
        .map(|file| {
            let json = file.to_string_lossy().ends_with(".json");
            std::fs::read_to_string(file).ok().map(|text| (json, text))
        })
        .collect()
}

/// Whether the module in `dir` declares an output marked sensitive, whose value terraform's
/// `-json` stream leaves out. When its files cannot be read, or `sensitive` is not a plain
/// `true` or `false`, it may: the answer is yes.
pub fn declares_sensitive_output(dir: &Path) -> bool {
    let Some(texts) = module_texts(dir) else {
        return true;
    };
    texts.iter().any(|(json, text)| {
        if *json {
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                return true;
            };
            let outputs = value.get("output").and_then(Value::as_object);
            return outputs.into_iter().flatten().any(|(_, body)| {
                !matches!(body.get("sensitive"), None | Some(Value::Bool(false)))
            });
        }
        let Ok(body) = hcl::edit::parser::parse_body(text) else {
            return true;
        };
        let sensitive = body.get_blocks("output").any(|block| {
            block
                .body
                .get_attribute("sensitive")
                .is_some_and(|a| !matches!(a.value.as_bool(), Some(false)))
        });
        sensitive
    })
}

/// Whether the module in `dir` keeps its state in the default local file: its `terraform`
/// blocks name no backend and no `cloud`. When its files cannot be read, it may not: the
/// answer is no.
pub fn keeps_state_locally(dir: &Path) -> bool {
    let Some(texts) = module_texts(dir) else {
        return false;
    };
    texts.iter().all(|(json, text)| {
        if *json {
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                return false;
            };
            let blocks = match value.get("terraform") {
                None => return true,
                Some(Value::Array(blocks)) => blocks.clone(),
                Some(block) => vec![block.clone()],
            };
            return blocks
                .iter()
                .all(|b| b.get("backend").is_none() && b.get("cloud").is_none());
        }
        let Ok(body) = hcl::edit::parser::parse_body(text) else {
            return false;
        };
        let local = body.get_blocks("terraform").all(|block| {
            block.body.get_blocks("backend").next().is_none()
                && block.body.get_blocks("cloud").next().is_none()
        });
        local
    })
}

fn hcl_variables(file: &Path, text: &str) -> Result<Vec<Variable>, Problem> {
    let parsed = hcl::edit::parser::parse_body(text);
    // The parser is stricter than terraform in places (a key repeated in an object), and a
    // file that declares no variable cannot change what this check finds.
    if parsed.is_err() && !declares_variables(text) {
        return Ok(Vec::new());
    }
    let body: Body = parsed.map_err(|e| {
        Problem::new(format!(
            "cannot read the module's variables: not valid HCL: {}",
            e.message()
        ))
        .at(Location::at(file, text, e.location().offset()))
        .hint("terraform could not read it either; or set `check_variables = false` on the step")
    })?;
    use hcl::edit::Span;
    Ok(body
        .get_blocks("variable")
        .filter_map(|block| {
            let name = block.labels.first()?.as_str().to_string();
            let expr = |body: &Body, key: &str| {
                body.get_attribute(key)
                    .map(|a| hcl::Expression::from(a.value.clone()))
            };
            let validations = block
                .body
                .get_blocks("validation")
                .filter_map(|v| {
                    Some(Validation {
                        condition: expr(&v.body, "condition")?,
                        error_message: match expr(&v.body, "error_message") {
                            Some(hcl::Expression::String(s)) => Some(s),
                            _ => None,
                        },
                    })
                })
                .collect();
            Some(Variable {
                name,
                required: !block.body.has_attribute("default"),
                declared_at: Location::at(file, text, block.span().map_or(0, |s| s.start)),
                ty: expr(&block.body, "type").and_then(|t| Type::parse(&t)),
                validations,
            })
        })
        .collect())
}

/// Whether a top-level `variable` block starts on some line.
fn declares_variables(text: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix("variable")
            .is_some_and(|rest| rest.starts_with([' ', '\t', '"']))
    })
}

fn json_variables(file: &Path, text: &str) -> Result<Vec<Variable>, Problem> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Problem::new(format!("cannot read the module's variables: {e}")).at(Location::file(file))
    })?;
    let declared = value.get("variable").and_then(Value::as_object);
    Ok(declared
        .into_iter()
        .flatten()
        .map(|(name, body)| Variable {
            name: name.clone(),
            required: body.get("default").is_none(),
            declared_at: Location::file(file),
            ty: body
                .get("type")
                .and_then(Value::as_str)
                .and_then(Type::parse_str),
            // Conditions there are template strings; terraform checks them.
            validations: Vec::new(),
        })
        .collect())
}

/// Where a step's variables get values, besides its rendered tfvars.
pub struct Supplied<'a> {
    pub env: &'a [(String, String)],
    pub apply_args: &'a [String],
    /// Names set by the tfvars files terraform loads on its own from the module's directory.
    pub auto_loaded: &'a [String],
}

impl Supplied<'_> {
    fn gives(&self, name: &str) -> bool {
        let var = format!("TF_VAR_{name}");
        self.env.iter().any(|(k, _)| *k == var)
            || self.auto_loaded.iter().any(|n| n == name)
            || var_args(self.apply_args).any(|n| n == name)
    }

    /// A `-var-file` in `apply_args` may set anything: required variables cannot be checked.
    fn has_var_file(&self) -> bool {
        self.apply_args.iter().any(|a| a.starts_with("-var-file"))
    }
}

/// The names of `-var NAME=VALUE` and `-var=NAME=VALUE` arguments.
fn var_args(args: &[String]) -> impl Iterator<Item = &str> {
    args.iter().enumerate().filter_map(|(i, arg)| {
        let assignment = match arg.strip_prefix("-var=") {
            Some(rest) => rest,
            None if arg == "-var" => args.get(i + 1)?.as_str(),
            None => return None,
        };
        assignment.split_once('=').map(|(name, _)| name.trim())
    })
}

/// Every name `set` that the module does not declare, and every required variable that
/// nothing gives a value. `vars` places problems in the step's vars template.
pub fn check(
    variables: &[Variable],
    set: &[tfvars::Setting],
    vars: Option<&tfvars::Source<'_>>,
    supplied: &Supplied<'_>,
    step: &str,
    module: &Path,
) -> Problems {
    let mut problems = Problems::default();
    let declared = |name: &str| variables.iter().any(|v| v.name == name);
    for setting in set.iter().filter(|s| !declared(&s.name)) {
        let message = format!(
            "sets `{}`, which the module in {} does not declare",
            setting.name,
            module.display()
        );
        let mut names: Vec<&str> = variables.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        let hint = match closest(&setting.name, &names) {
            Some(near) => format!(
                "did you mean `{near}`? The module declares: {}",
                names.join(", ")
            ),
            None if names.is_empty() => "the module declares no variables".to_string(),
            None => format!("the module declares: {}", names.join(", ")),
        };
        let problem = match vars {
            Some(vars) => vars.problem(setting.offset, Some(&setting.name), message),
            None => Problem::new(message).in_step(step),
        };
        let hint = match &problem.hint {
            Some(shown) => format!("{shown}; {hint}"),
            None => hint,
        };
        problems.push(problem.hint(hint));
    }
    for setting in set {
        let Some(variable) = variables.iter().find(|v| v.name == setting.name) else {
            continue;
        };
        if let Some(message) = misfit(variable, setting) {
            let problem = match vars {
                Some(vars) => vars.problem(setting.offset, Some(&setting.name), message),
                None => Problem::new(message).in_step(step),
            };
            problems.push(problem);
        }
    }
    if supplied.has_var_file() {
        return problems;
    }
    let set_here = |name: &str| set.iter().any(|s| s.name == name);
    for variable in variables.iter().filter(|v| v.required) {
        if set_here(&variable.name) || supplied.gives(&variable.name) {
            continue;
        }
        let mut problem = Problem::new(format!(
            "the module's required variable `{}` (declared at {}) gets no value",
            variable.name, variable.declared_at
        ))
        .in_step(step)
        .hint(format!(
            "set it in the step's vars template, as TF_VAR_{} in the environment, or with `-var` in apply_args; or give it a default",
            variable.name
        ));
        if let Some(vars) = vars {
            problem = problem.at(Location::file(vars.template));
        }
        problems.push(problem);
    }
    problems
}

/// What is wrong with the value `setting` gives `variable`: a type it does not fit, or a
/// `validation` it fails. The value itself is never quoted: it may be a secret.
fn misfit(variable: &Variable, setting: &tfvars::Setting) -> Option<String> {
    let value = setting.value.as_ref()?;
    let value = match &variable.ty {
        Some(ty) => match ty.convert(value) {
            Ok(converted) => converted,
            Err(why) => {
                return Some(format!(
                    "sets `{}` to {why} (the variable is declared at {})",
                    setting.name, variable.declared_at
                ))
            }
        },
        None => value.clone(),
    };
    if value.is_null() {
        return None;
    }
    let failed = variable
        .validations
        .iter()
        .find(|v| v.passes(&variable.name, &value) == Some(false))?;
    Some(format!(
        "sets `{}` to a value the module's validation refuses: {} (the variable is declared at {})",
        setting.name,
        failed
            .error_message
            .as_deref()
            .unwrap_or("its condition is false"),
        variable.declared_at
    ))
}

/// The declared name nearest to a misspelt one, if one is near enough to be a typo.
pub(crate) fn closest<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (edit_distance(name, n), *n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn a_module_without_a_backend_keeps_its_state_locally() {
        let main = "resource \"terraform_data\" \"a\" {}\n";
        assert!(keeps_state_locally(module(&[("main.tf", main)]).path()));
        let versions = "terraform {\n  required_version = \">= 1.4\"\n}\n";
        assert!(keeps_state_locally(
            module(&[("main.tf", main), ("versions.tf", versions)]).path()
        ));
        for (name, text) in [
            ("backend.tf", "terraform {\n  backend \"pg\" {}\n}\n"),
            (
                "backend.tf",
                "terraform {\n  backend \"local\" {\n    path = \"x\"\n  }\n}\n",
            ),
            ("cloud.tf", "terraform {\n  cloud {}\n}\n"),
            (
                "backend.tf.json",
                r#"{"terraform": {"backend": {"s3": {}}}}"#,
            ),
            (
                "backend.tf.json",
                r#"{"terraform": [{"backend": {"pg": {}}}]}"#,
            ),
            ("broken.tf", "terraform {"),
        ] {
            let dir = module(&[("main.tf", main), (name, text)]);
            assert!(!keeps_state_locally(dir.path()), "{name}: {text}");
        }
        assert!(!keeps_state_locally(Path::new("/nonexistent/module")));
    }

    fn setting(name: &str) -> tfvars::Setting {
        tfvars::Setting {
            name: name.into(),
            offset: 0,
            value: None,
            span: None,
        }
    }

    #[test]
    fn variables_come_from_hcl_and_json_files() {
        let dir = module(&[
            ("main.tf", "variable \"a\" {}\nvariable \"b\" {\n  default = null\n}\nresource \"x\" \"y\" {}\n"),
            ("more.tf.json", r#"{"variable": {"c": {"type": "string"}, "d": {"default": 1}}}"#),
            ("notes.txt", "variable \"z\" {}"),
        ]);
        let vars = read(dir.path()).unwrap();
        let got: Vec<(&str, bool)> = vars.iter().map(|v| (v.name.as_str(), v.required)).collect();
        assert_eq!(got, [("a", true), ("b", false), ("c", true), ("d", false)]);
        assert_eq!(vars[1].declared_at.line, Some((2, 1)));
    }

    #[test]
    fn undeclared_names_and_missing_required_values_are_problems() {
        let dir = module(&[(
            "main.tf",
            "variable \"region\" {}\nvariable \"zone\" {}\nvariable \"n\" { default = 1 }\n",
        )]);
        let vars = read(dir.path()).unwrap();
        let none = Supplied {
            env: &[],
            apply_args: &[],
            auto_loaded: &[],
        };
        let problems = check(&vars, &[setting("regoin")], None, &none, "net", dir.path());
        let text = problems.to_string();
        assert_eq!(problems.0.len(), 3, "{text}");
        assert!(text.contains("sets `regoin`"), "{text}");
        assert!(text.contains("did you mean `region`?"), "{text}");
        assert!(text.contains("required variable `zone`"), "{text}");

        let env = [("TF_VAR_zone".to_string(), "a".to_string())];
        let args = ["-var".to_string(), "region=x".to_string()];
        let given = Supplied {
            env: &env,
            apply_args: &args,
            auto_loaded: &[],
        };
        assert!(check(&vars, &[], None, &given, "net", dir.path()).is_empty());
        let args = ["-var=region=x".to_string(), "-var=zone=y".to_string()];
        let given = Supplied {
            apply_args: &args,
            ..given
        };
        assert!(check(&vars, &[setting("n")], None, &given, "net", dir.path()).is_empty());
    }

    #[test]
    fn values_that_do_not_fit_the_type_or_fail_a_validation_are_problems() {
        let dir = module(&[(
            "main.tf",
            "variable \"count\" {\n  type = number\n  validation {\n    condition     = var.count >= 1 && floor(var.count) == var.count\n    error_message = \"count must be a whole number of at least 1.\"\n  }\n}\nvariable \"names\" {\n  type    = list(string)\n  default = []\n}\n",
        )]);
        let vars = read(dir.path()).unwrap();
        let none = Supplied {
            env: &[],
            apply_args: &[],
            auto_loaded: &[],
        };
        let problems = |text: &str| {
            let settings = tfvars::parse(tfvars::Syntax::Hcl, text, &[]).unwrap();
            check(&vars, &settings, None, &none, "s", dir.path()).to_string()
        };
        assert_eq!(problems("count = 3\nnames = [\"a\", 1]\n"), "");
        assert_eq!(problems("count = \"2\"\n"), "");
        for (text, expected) in [
            (
                "count = -1\n",
                "count must be a whole number of at least 1.",
            ),
            (
                "count = 1.5\n",
                "count must be a whole number of at least 1.",
            ),
            (
                "count = \"three\"\n",
                "a string that is not a number, where the type is `number`",
            ),
            ("count = true\n", "a boolean, where the type is `number`"),
            (
                "count = 2\nnames = [[\"a\"]]\n",
                "a list at `[0]`, where the type is `string` (the variable is declared at",
            ),
        ] {
            let found = problems(text);
            assert!(found.contains(expected), "{text}: {found}");
            assert!(found.contains("main.tf:"), "{text}: {found}");
        }
        // A value not known yet is not checked.
        let p = "<known after apply: steps.a.outputs.b>".to_string();
        let settings =
            tfvars::parse(tfvars::Syntax::Hcl, &format!("count = \"{p}\"\n"), &[p]).unwrap();
        assert!(check(&vars, &settings, None, &none, "s", dir.path()).is_empty());
    }

    #[test]
    fn a_module_terraform_cannot_parse_is_named_with_its_line() {
        let dir = module(&[("main.tf", "variable \"a\" {\n  default = \n")]);
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("main.tf:"), "{err}");
        assert!(err.contains("check_variables = false"), "{err}");
    }
}
