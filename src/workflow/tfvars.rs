//! A step's rendered tfvars: which file and syntax its vars template renders to, and the names
//! it sets, parsed before terraform ever reads it. Terraform would find a syntax error only
//! when the step runs, after the steps before it were applied; here it stops the command
//! before anything runs, pointing into the template.

use std::path::Path;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Body, Structure};
use hcl::edit::visit::{visit_expr, Visit};
use hcl::edit::Span;
use serde_json::Value;

use crate::base::error::{Location, Problem, Problems};

/// How terraform reads a vars file: by its name, HCL unless it ends in `.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Hcl,
    Json,
}

impl Syntax {
    /// `*.json.tera` and `*.json` templates render JSON, and terraform reads `*.json` vars
    /// files as JSON; any other is HCL.
    pub fn of_name(path: &Path) -> Syntax {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if name.ends_with(".json.tera") || name.ends_with(".json") {
            Syntax::Json
        } else {
            Syntax::Hcl
        }
    }

    /// The file a step's rendered vars are written to, in the step's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Syntax::Hcl => "bootstrapper.tfvars",
            Syntax::Json => "bootstrapper.tfvars.json",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Syntax::Hcl => "HCL tfvars",
            Syntax::Json => "JSON tfvars",
        }
    }
}

/// A variable set by a tfvars file, the byte offset of its name there, and its value when it
/// is known: not when it holds a placeholder for an output not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub offset: usize,
    pub value: Option<Value>,
    /// Where the value is in the text, when known.
    pub span: Option<std::ops::Range<usize>>,
}

/// What is wrong at a byte offset of a tfvars text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flaw {
    pub offset: usize,
    pub message: String,
}

/// The variables a tfvars text sets, or everything that keeps terraform from reading it.
/// `unknown` are placeholder strings standing for values not known yet: they parse as `null`.
pub fn parse(syntax: Syntax, text: &str, unknown: &[String]) -> Result<Vec<Setting>, Vec<Flaw>> {
    let mut neutral = text.to_string();
    for placeholder in unknown {
        // Same length, so that offsets still point into the text as rendered.
        let null = format!("{:<width$}", "null", width = placeholder.len());
        neutral = neutral.replace(placeholder.as_str(), &null);
    }
    let mut settings = match syntax {
        Syntax::Hcl => parse_hcl(&neutral)?,
        Syntax::Json => parse_json(&neutral)?,
    };
    // Where a placeholder stood, `null` stands now: a value holding one is not known.
    let placed: Vec<std::ops::Range<usize>> = unknown
        .iter()
        .flat_map(|p| {
            text.match_indices(p.as_str())
                .map(|(at, p)| at..at + p.len())
        })
        .collect();
    if !placed.is_empty() {
        for setting in &mut settings {
            let known = match (syntax, &setting.span) {
                (Syntax::Hcl, Some(span)) => !placed
                    .iter()
                    .any(|p| p.start < span.end && span.start < p.end),
                // A JSON text's values are not placed: any placeholder may be in any of them.
                _ => false,
            };
            if !known {
                setting.value = None;
            }
        }
    }
    Ok(settings)
}

fn parse_hcl(text: &str) -> Result<Vec<Setting>, Vec<Flaw>> {
    let body: Body = hcl::edit::parser::parse_body(text).map_err(|e| {
        vec![Flaw {
            offset: e.location().offset(),
            message: format!("not valid HCL: {}", e.message()),
        }]
    })?;
    let mut settings = Vec::new();
    let mut flaws = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let offset = attr.key.span().map_or(0, |s| s.start);
                let mut refs = References::default();
                refs.visit_expr(&attr.value);
                for (offset, what) in refs.found {
                    flaws.push(Flaw {
                        offset,
                        message: format!(
                            "the value of `{}` {what}; tfvars hold only literal values",
                            attr.key.as_str()
                        ),
                    });
                }
                settings.push(Setting {
                    name: attr.key.as_str().to_string(),
                    offset,
                    value: literal(&hcl::Expression::from(attr.value.clone())),
                    span: attr.value.span(),
                });
            }
            Structure::Block(block) => flaws.push(Flaw {
                offset: block.span().map_or(0, |s| s.start),
                message: format!(
                    "a `{}` block; tfvars hold only `name = value` lines",
                    block.ident.as_str()
                ),
            }),
        }
    }
    if flaws.is_empty() {
        Ok(settings)
    } else {
        Err(flaws)
    }
}

/// The value a literal expression writes; `None` for anything else (a template with
/// interpolations, a heredoc, a reference), which is not checked.
fn literal(expr: &hcl::Expression) -> Option<Value> {
    use hcl::expr::{Operation, UnaryOperator};
    use hcl::Expression as E;
    Some(match expr {
        E::Null => Value::Null,
        E::Bool(b) => Value::Bool(*b),
        E::Number(n) => serde_json::to_value(n).ok()?,
        E::String(s) => Value::String(s.clone()),
        E::Array(items) => Value::Array(items.iter().map(literal).collect::<Option<_>>()?),
        E::Object(object) => {
            let mut map = serde_json::Map::new();
            for (key, value) in object {
                let key = match key {
                    hcl::ObjectKey::Identifier(id) => id.to_string(),
                    hcl::ObjectKey::Expression(E::String(s)) => s.clone(),
                    _ => return None,
                };
                map.insert(key, literal(value)?);
            }
            Value::Object(map)
        }
        E::Parenthesis(inner) => literal(inner)?,
        E::Operation(op) => match op.as_ref() {
            Operation::Unary(unary) if unary.operator == UnaryOperator::Neg => {
                let n = literal(&unary.expr)?.as_f64()?;
                serde_json::Number::from_f64(-n).map(Value::Number)?
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// Names and calls in a value: terraform refuses them in tfvars ("Variables not allowed"),
/// and an unquoted string from a template (`region = cn-bj2`) parses as exactly that.
#[derive(Default)]
struct References {
    found: Vec<(usize, String)>,
}

impl Visit for References {
    fn visit_expr(&mut self, expr: &Expression) {
        match expr {
            Expression::Variable(var) => self.found.push((
                var.span().map_or(0, |s| s.start),
                format!(
                    "refers to `{}`: a string that lost its quotes?",
                    var.as_str()
                ),
            )),
            Expression::FuncCall(call) => self.found.push((
                call.span().map_or(0, |s| s.start),
                "calls a function".to_string(),
            )),
            _ => visit_expr(self, expr),
        }
    }
}

fn parse_json(text: &str) -> Result<Vec<Setting>, Vec<Flaw>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        vec![Flaw {
            offset: offset_of(text, e.line(), e.column()),
            message: format!("not valid JSON: {}", strip_position(&e.to_string())),
        }]
    })?;
    let Value::Object(map) = value else {
        return Err(vec![Flaw {
            offset: text.len() - text.trim_start().len(),
            message: "a JSON tfvars file must be one JSON object of variable names".to_string(),
        }]);
    };
    Ok(map
        .iter()
        .map(|(name, value)| Setting {
            name: name.clone(),
            offset: text
                .find(&serde_json::to_string(name).unwrap_or_default())
                .unwrap_or(0),
            value: Some(value.clone()),
            span: None,
        })
        .collect())
}

/// serde_json's messages end with " at line L column C", which the location says already.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

/// The byte offset of a 1-based line and column.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line_text = text[start.min(text.len())..]
        .split('\n')
        .next()
        .unwrap_or("");
    let within: usize = line_text
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    (start + within).min(text.len())
}

/// A rendered vars file and the template it came from, to point problems into the template.
pub struct Source<'a> {
    pub step: &'a str,
    pub template: &'a Path,
    pub template_text: &'a str,
    pub syntax: Syntax,
    pub rendered: &'a str,
}

impl Source<'_> {
    /// Parses the rendered text; every flaw becomes a problem pointing into the template.
    pub fn check(&self, unknown: &[String]) -> Result<Vec<Setting>, Problems> {
        parse(self.syntax, self.rendered, unknown).map_err(|flaws| {
            let mut problems = Problems::default();
            for flaw in flaws {
                problems.push(self.problem(
                    flaw.offset,
                    None,
                    format!(
                        "the rendered {} is not what terraform can read: {}",
                        self.syntax.describe(),
                        flaw.message
                    ),
                ));
            }
            problems
        })
    }

    /// A problem at `offset` of the rendered text, placed in the template when its lines
    /// match the rendered ones, otherwise in the rendered text, which is then shown.
    pub fn problem(&self, offset: usize, name: Option<&str>, message: String) -> Problem {
        let mut offset = offset.min(self.rendered.len());
        while !self.rendered.is_char_boundary(offset) {
            offset -= 1;
        }
        let at = Location::at(Path::new(""), self.rendered, offset);
        let (line, column) = at.line.unwrap_or((1, 1));
        let rendered_line = self.rendered.lines().nth(line - 1).unwrap_or("");
        let template_lines: Vec<&str> = self.template_text.lines().collect();
        let same_shape = template_lines.len() == self.rendered.lines().count();
        let problem = Problem::new(message).in_step(self.step);
        match template_lines.get(line - 1).filter(|_| same_shape) {
            Some(template_line) if *template_line == rendered_line => problem.at(Location {
                file: self.template.to_path_buf(),
                line: Some((line, column)),
            }),
            Some(template_line) => {
                let column = name
                    .and_then(|n| template_line.find(n))
                    .map(|byte| template_line[..byte].chars().count() + 1)
                    .unwrap_or_else(|| template_line.len() - template_line.trim_start().len() + 1);
                problem
                    .at(Location {
                        file: self.template.to_path_buf(),
                        line: Some((line, column)),
                    })
                    .hint(format!("it renders as: {}", rendered_line.trim()))
            }
            None => problem.at(Location::file(self.template)).hint(format!(
                "at line {line}, column {column} of the rendered text: {}",
                rendered_line.trim()
            )),
        }
    }
}

/// The regular files in a module's directory `dir` whose names `keep` accepts, in name order.
pub fn files_named(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| keep(&n.to_string_lossy())))
        .collect();
    files.sort();
    Ok(files)
}

/// Names set by tfvars files terraform reads on its own from a module's directory
/// (`terraform.tfvars`, `*.auto.tfvars`, and their `.json` forms).
pub fn auto_loaded(dir: &Path) -> Result<Vec<String>, Problems> {
    let Ok(files) = files_named(dir, |name| {
        name == "terraform.tfvars"
            || name == "terraform.tfvars.json"
            || name.ends_with(".auto.tfvars")
            || name.ends_with(".auto.tfvars.json")
    }) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
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
        match parse(Syntax::of_name(&file), &text, &[]) {
            Ok(settings) => names.extend(settings.into_iter().map(|s| s.name)),
            Err(flaws) => {
                for flaw in flaws {
                    problems.push(
                        Problem::new(format!(
                            "terraform reads this file on its own and cannot: {}",
                            flaw.message
                        ))
                        .at(Location::at(&file, &text, flaw.offset)),
                    );
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(names)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(syntax: Syntax, text: &str) -> Vec<String> {
        parse(syntax, text, &[])
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn the_template_name_chooses_the_syntax_and_the_file() {
        assert_eq!(
            Syntax::of_name(Path::new("a/net.tfvars.json.tera")),
            Syntax::Json
        );
        assert_eq!(
            Syntax::of_name(Path::new("a/net.tfvars.json")),
            Syntax::Json
        );
        assert_eq!(Syntax::of_name(Path::new("a/net.tfvars.tera")), Syntax::Hcl);
        assert_eq!(Syntax::Json.file_name(), "bootstrapper.tfvars.json");
        assert_eq!(Syntax::Hcl.file_name(), "bootstrapper.tfvars");
    }

    #[test]
    fn hcl_and_json_give_the_names_they_set() {
        assert_eq!(
            names(
                Syntax::Hcl,
                "a = 1\nb = { x = [1, \"y\"] }\nc = <<EOT\nz\nEOT\n"
            ),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(Syntax::Json, r#"{"a": 1, "b": {"x": null}}"#),
            ["a", "b"]
        );
    }

    #[test]
    fn a_syntax_error_has_the_offset_where_it_is() {
        let text = "a = 1\nb = \"unclosed\n";
        let flaws = parse(Syntax::Hcl, text, &[]).unwrap_err();
        let at = Location::at(Path::new("f"), text, flaws[0].offset);
        assert_eq!(at.line.unwrap().0, 2, "{flaws:?}");

        let text = "{\n  \"a\": 1,\n  \"b\": oops\n}";
        let flaws = parse(Syntax::Json, text, &[]).unwrap_err();
        assert_eq!(
            Location::at(Path::new("f"), text, flaws[0].offset).line,
            Some((3, 8))
        );
    }

    #[test]
    fn literal_values_are_read_and_others_left_unknown() {
        let values: Vec<Option<Value>> = parse(
            Syntax::Hcl,
            "a = -1.5\nb = { x = [1, \"y\"], \"z\" = null }\nc = <<EOT\nz\nEOT\nd = \"${1}\"\ne = -(2)\n",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|s| s.value)
        .collect();
        assert_eq!(
            values,
            [
                Some(serde_json::json!(-1.5)),
                Some(serde_json::json!({"x": [1, "y"], "z": null})),
                None,
                None,
                Some(serde_json::json!(-2.0)),
            ]
        );
    }

    #[test]
    fn json_must_be_one_object() {
        let flaws = parse(Syntax::Json, "[1, 2]", &[]).unwrap_err();
        assert!(flaws[0].message.contains("one JSON object"), "{flaws:?}");
    }

    #[test]
    fn an_unquoted_string_or_a_block_is_refused() {
        let flaws = parse(Syntax::Hcl, "region = cn-bj2\n", &[]).unwrap_err();
        assert!(flaws[0].message.contains("`cn-bj2`"), "{flaws:?}");
        let flaws = parse(Syntax::Hcl, "variable \"x\" {}\n", &[]).unwrap_err();
        assert!(flaws[0].message.contains("`variable` block"), "{flaws:?}");
    }

    #[test]
    fn placeholders_parse_as_null_wherever_they_stand() {
        let p = "<known after apply: steps.a.outputs.b>".to_string();
        let text = format!("x = {p}\ny = \"{p}/z\"\n");
        assert_eq!(
            parse(Syntax::Hcl, &text, std::slice::from_ref(&p))
                .unwrap()
                .len(),
            2
        );
        let text = format!("{{\"x\": {p}}}");
        assert!(parse(Syntax::Json, &text, std::slice::from_ref(&p)).is_ok());
        assert!(parse(Syntax::Json, &text, &[]).is_err());
    }

    #[test]
    fn every_cut_of_a_vars_text_is_an_answer_not_a_panic() {
        let texts = [
            (
                Syntax::Hcl,
                "région = \"é\"\nzone = { a = [1, \"ü\"] }\nx = <<EOT\nß\nEOT\n",
            ),
            (
                Syntax::Json,
                "{\"région\": \"é\", \"o\": {\"a\": [null, \"ü\"]}}",
            ),
        ];
        for (syntax, text) in texts {
            for (cut, _) in text.char_indices() {
                let rendered = &text[..cut];
                let template = rendered.replace('a', "{{ a }}");
                let source = Source {
                    step: "s",
                    template: Path::new("t"),
                    template_text: &template,
                    syntax,
                    rendered,
                };
                if let Err(problems) = source.check(&[]) {
                    assert!(problems.to_string().contains("step `s`"));
                }
            }
        }
    }

    #[test]
    fn a_problem_points_into_the_template_when_the_lines_match() {
        let source = Source {
            step: "net",
            template: Path::new("t/net.tfvars.tera"),
            template_text: "a = 1\nregion = {{ params.region }}\n",
            syntax: Syntax::Hcl,
            rendered: "a = 1\nregion = cn-bj2\n",
        };
        let err = source.check(&[]).unwrap_err().to_string();
        assert!(err.contains("t/net.tfvars.tera:2:1"), "{err}");
        assert!(err.contains("step `net`"), "{err}");
        assert!(err.contains("renders as: region = cn-bj2"), "{err}");

        let source = Source {
            template_text: "{%- if true -%}\na = 1\n{%- endif %}\nb = \"\n",
            rendered: "a = 1\nb = \"\n",
            ..source
        };
        let err = source.check(&[]).unwrap_err().to_string();
        assert!(err.contains("of the rendered text: b = \""), "{err}");
    }
}
