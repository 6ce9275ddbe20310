//! A module variable's `type` and its simple `validation` blocks, checked against the value a
//! step's rendered tfvars give it, before anything runs: terraform would find a count of
//! `"three"` or `-1` only when it reaches the step, after the steps before it were applied.
//!
//! Only what can be told for sure is refused: a type that is not understood, or a condition
//! that uses anything but the variable itself and a few pure functions, is left to terraform.

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::expr::{Expression, ObjectKey};
use serde_json::Value;

/// A type constraint, as terraform writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Any,
    String,
    Number,
    Bool,
    /// `list(T)` and `set(T)`.
    List(Box<Type>),
    Map(Box<Type>),
    /// Attributes, each with its type and whether it is `optional(...)`.
    Object(Vec<(String, Type, bool)>),
    Tuple(Vec<Type>),
}

impl Type {
    /// The type an expression such as `list(object({ a = number }))` writes; `None` when it is
    /// not one this check knows.
    pub fn parse(expr: &Expression) -> Option<Type> {
        match expr {
            Expression::Variable(v) => match v.as_str() {
                "any" => Some(Type::Any),
                "string" => Some(Type::String),
                "number" => Some(Type::Number),
                "bool" => Some(Type::Bool),
                _ => None,
            },
            Expression::Parenthesis(inner) => Type::parse(inner),
            Expression::FuncCall(call) if call.name.namespace.is_empty() => {
                let arg = call.args.first();
                match (call.name.name.as_str(), call.args.len()) {
                    ("list" | "set", 1) => Some(Type::List(Box::new(Type::parse(arg?)?))),
                    ("map", 1) => Some(Type::Map(Box::new(Type::parse(arg?)?))),
                    ("tuple", 1) => match arg? {
                        Expression::Array(items) => Some(Type::Tuple(
                            items.iter().map(Type::parse).collect::<Option<_>>()?,
                        )),
                        _ => None,
                    },
                    ("object", 1) => match arg? {
                        Expression::Object(attrs) => {
                            let mut fields = Vec::new();
                            for (key, value) in attrs {
                                let name = match key {
                                    ObjectKey::Identifier(id) => id.to_string(),
                                    ObjectKey::Expression(Expression::String(s)) => s.clone(),
                                    _ => return None,
                                };
                                let (ty, optional) = match value {
                                    Expression::FuncCall(f)
                                        if f.name.name.as_str() == "optional"
                                            && !f.args.is_empty() =>
                                    {
                                        (Type::parse(&f.args[0])?, true)
                                    }
                                    other => (Type::parse(other)?, false),
                                };
                                fields.push((name, ty, optional));
                            }
                            Some(Type::Object(fields))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The type a `*.tf.json` file writes as a string: `"number"`, `"list(string)"`.
    pub fn parse_str(text: &str) -> Option<Type> {
        let expr = hcl::edit::parser::parse_expr(text).ok()?;
        Type::parse(&Expression::from(expr))
    }

    fn describe(&self) -> String {
        match self {
            Type::Any => "any".into(),
            Type::String => "string".into(),
            Type::Number => "number".into(),
            Type::Bool => "bool".into(),
            Type::List(t) => format!("list({})", t.describe()),
            Type::Map(t) => format!("map({})", t.describe()),
            Type::Object(_) => "object".into(),
            Type::Tuple(_) => "tuple".into(),
        }
    }

    /// `value` converted to this type as terraform converts it (`"3"` to a number, `true` to a
    /// string), or what keeps it from fitting, with where in the value when it is nested.
    pub fn convert(&self, value: &Value) -> Result<Value, String> {
        self.convert_at(value, "")
    }

    fn convert_at(&self, value: &Value, at: &str) -> Result<Value, String> {
        let misfit = || {
            let place = if at.is_empty() {
                String::new()
            } else {
                format!(" at `{at}`")
            };
            Err(format!(
                "{}{place}, where the type is `{}`",
                kind(value),
                self.describe()
            ))
        };
        match (self, value) {
            (_, Value::Null) | (Type::Any, _) => Ok(value.clone()),
            (Type::String, Value::String(_)) => Ok(value.clone()),
            (Type::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
            (Type::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
            (Type::Number, Value::Number(_)) => Ok(value.clone()),
            (Type::Number, Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && s.trim() == s => serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .map_or_else(misfit, Ok),
                _ => misfit(),
            },
            (Type::Bool, Value::Bool(_)) => Ok(value.clone()),
            (Type::Bool, Value::String(s)) if s == "true" || s == "false" => {
                Ok(Value::Bool(s == "true"))
            }
            (Type::List(item), Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item.convert_at(v, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            (Type::Tuple(types), Value::Array(items)) => {
                if types.len() != items.len() {
                    return misfit();
                }
                types
                    .iter()
                    .zip(items)
                    .enumerate()
                    .map(|(i, (t, v))| t.convert_at(v, &format!("{at}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            (Type::Map(item), Value::Object(map)) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), item.convert_at(v, &join(at, k))?)))
                .collect::<Result<serde_json::Map<_, _>, String>>()
                .map(Value::Object),
            (Type::Object(fields), Value::Object(map)) => {
                let mut out = serde_json::Map::new();
                for (name, ty, optional) in fields {
                    match map.get(name) {
                        Some(v) => {
                            out.insert(name.clone(), ty.convert_at(v, &join(at, name))?);
                        }
                        None if *optional => {
                            out.insert(name.clone(), Value::Null);
                        }
                        None => {
                            return Err(format!(
                                "an object without the attribute `{}`, which the type requires",
                                join(at, name)
                            ))
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            _ => misfit(),
        }
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// What a value is, without the value: a message must not quote a secret.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(s) if s.trim().parse::<f64>().is_ok() => "a string",
        Value::String(_) => "a string that is not a number",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A variable's `validation` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub condition: Expression,
    /// Its `error_message` when it is a plain string.
    pub error_message: Option<String>,
}

impl Validation {
    /// Whether `value` (already converted to the variable's type) passes the condition;
    /// `None` when the condition cannot be evaluated here (it uses something other than
    /// `var.<name>` and the functions below), which leaves it to terraform.
    pub fn passes(&self, name: &str, value: &Value) -> Option<bool> {
        let value: hcl::Value = serde_json::from_value(value.clone()).ok()?;
        let mut var = hcl::Map::new();
        var.insert(name.to_string(), value);
        let mut ctx = Context::new();
        ctx.declare_var("var", hcl::Value::Object(var));
        declare_functions(&mut ctx);
        match self.condition.evaluate(&ctx).ok()? {
            hcl::Value::Bool(passed) => Some(passed),
            _ => None,
        }
    }
}

/// The pure functions a simple condition uses, as terraform defines them.
fn declare_functions(ctx: &mut Context) {
    fn number(args: &FuncArgs, i: usize) -> f64 {
        args[i].as_f64().unwrap_or(f64::NAN)
    }
    fn num(n: f64) -> Result<hcl::Value, String> {
        hcl::Number::from_f64(n)
            .map(hcl::Value::Number)
            .ok_or_else(|| "not a finite number".to_string())
    }
    let one_number = |f: fn(FuncArgs) -> Result<hcl::Value, String>| {
        FuncDef::builder().param(ParamType::Number).build(f)
    };
    ctx.declare_func("floor", one_number(|a| num(number(&a, 0).floor())));
    ctx.declare_func("ceil", one_number(|a| num(number(&a, 0).ceil())));
    ctx.declare_func("abs", one_number(|a| num(number(&a, 0).abs())));
    ctx.declare_func(
        "min",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(|a| {
                num(a
                    .iter()
                    .filter_map(hcl::Value::as_f64)
                    .fold(f64::INFINITY, f64::min))
            }),
    );
    ctx.declare_func(
        "max",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(|a| {
                num(a
                    .iter()
                    .filter_map(hcl::Value::as_f64)
                    .fold(f64::NEG_INFINITY, f64::max))
            }),
    );
    ctx.declare_func(
        "length",
        FuncDef::builder().param(ParamType::Any).build(|a| {
            let n = match &a[0] {
                hcl::Value::String(s) => s.chars().count(),
                hcl::Value::Array(items) => items.len(),
                hcl::Value::Object(map) => map.len(),
                _ => return Err("length of a scalar".to_string()),
            };
            num(n as f64)
        }),
    );
    ctx.declare_func(
        "contains",
        FuncDef::builder()
            .param(ParamType::array_of(ParamType::Any))
            .param(ParamType::Any)
            .build(|a| {
                let found = a[0].as_array().is_some_and(|items| items.contains(&a[1]));
                Ok(hcl::Value::Bool(found))
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(text: &str) -> Type {
        Type::parse_str(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn types_are_read_as_terraform_writes_them() {
        assert_eq!(ty("number"), Type::Number);
        assert_eq!(ty("list(string)"), Type::List(Box::new(Type::String)));
        assert_eq!(
            ty("object({ a = number, b = optional(list(bool)) })"),
            Type::Object(vec![
                ("a".into(), Type::Number, false),
                ("b".into(), Type::List(Box::new(Type::Bool)), true)
            ])
        );
        assert_eq!(Type::parse_str("list(banana)"), None);
        assert_eq!(Type::parse_str("string("), None);
    }

    #[test]
    fn values_are_converted_as_terraform_converts_them_or_refused() {
        let fits = |t: &str, v: Value| ty(t).convert(&v);
        assert_eq!(fits("number", json!("3")), Ok(json!(3.0)));
        assert_eq!(fits("string", json!(3)), Ok(json!("3")));
        assert_eq!(fits("bool", json!("true")), Ok(json!(true)));
        assert_eq!(fits("number", json!(null)), Ok(json!(null)));
        assert!(fits("any", json!({"x": [1]})).is_ok());
        let err = fits("number", json!("three")).unwrap_err();
        assert!(
            err.contains("not a number") && err.contains("`number`"),
            "{err}"
        );
        assert!(!err.contains("three"), "a value is never quoted: {err}");
        assert!(fits("number", json!(true)).is_err());
        assert!(fits("number", json!([1])).is_err());
        assert!(fits("string", json!({"a": 1})).is_err());
        let err = fits("list(number)", json!([1, "x"])).unwrap_err();
        assert!(err.contains("`[1]`"), "{err}");
        let err = fits("map(number)", json!({"a": "x"})).unwrap_err();
        assert!(err.contains("`a`"), "{err}");
        let object = "object({ a = number, b = optional(string) })";
        assert_eq!(
            fits(object, json!({"a": "1", "c": true})),
            Ok(json!({"a": 1.0, "b": null}))
        );
        let err = fits(object, json!({"b": "x"})).unwrap_err();
        assert!(err.contains("without the attribute `a`"), "{err}");
        assert!(fits("tuple([number, string])", json!([1, "a"])).is_ok());
        assert!(fits("tuple([number, string])", json!([1])).is_err());
    }

    fn validation(condition: &str) -> Validation {
        let expr = hcl::edit::parser::parse_expr(condition).unwrap();
        Validation {
            condition: Expression::from(expr),
            error_message: None,
        }
    }

    #[test]
    fn simple_conditions_are_evaluated_and_others_left_to_terraform() {
        let whole = validation("var.n >= 1 && floor(var.n) == var.n");
        assert_eq!(whole.passes("n", &json!(3)), Some(true));
        assert_eq!(whole.passes("n", &json!(-1)), Some(false));
        assert_eq!(whole.passes("n", &json!(1.5)), Some(false));
        let listed = validation("contains([\"a\", \"b\"], var.s) && length(var.s) < 3");
        assert_eq!(listed.passes("s", &json!("a")), Some(true));
        assert_eq!(listed.passes("s", &json!("c")), Some(false));
        assert_eq!(
            validation("max(var.n, 2) == 2 && min(var.n, 0) == 0 && abs(var.n) == 1")
                .passes("n", &json!(1)),
            Some(true)
        );
        assert_eq!(
            validation("can(regex(\"^a\", var.s))").passes("s", &json!("a")),
            None
        );
        assert_eq!(validation("var.other > 1").passes("s", &json!(1)), None);
        assert_eq!(validation("var.s").passes("s", &json!("x")), None);
    }
}
