//! Which values are secret, and masking them out of everything the engine prints or keeps.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use serde_json::Value;

pub const MASK: &str = "********";

/// Param names containing one of these hold secrets (README.md, "Secrets stay secret").
const SECRET_WORDS: [&str; 4] = ["password", "secret", "token", "key"];

/// Shorter values would mask ordinary words and digits all over the logs; `validate` warns
/// about secrets this short instead.
pub const MIN_MASKED_LEN: usize = 4;

/// Whether a param, output or variable of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// The set of secret values, shared by the logger and every reporter.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    inner: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    /// Secrets named by the params and the environment.
    pub fn from_inputs(params: &Value, env: &[(String, String)]) -> Self {
        let redactor = Redactor::default();
        redactor.add_named(params, false);
        for (name, value) in env {
            if name.starts_with("TF_VAR_") || is_secret_name(name) {
                redactor.add(value);
            }
        }
        redactor
    }

    /// Adds every string under `value` that sits below a secret-sounding key, or every string
    /// when `all` (the value itself is secret, as a sensitive output is).
    pub fn add_named(&self, value: &Value, all: bool) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    self.add_named(v, all || is_secret_name(key));
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.add_named(v, all)),
            Value::String(s) if all => self.add(s),
            Value::Number(n) if all => self.add(&n.to_string()),
            _ => {}
        }
    }

    pub fn add(&self, secret: &str) {
        if secret.len() < MIN_MASKED_LEN {
            return;
        }
        let mut secrets = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for form in escaped_forms(secret) {
            if !secrets.contains(&form) {
                secrets.push(form);
            }
        }
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let secrets = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Cow::Borrowed(text);
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        mask_url_userinfo(out)
    }
}

/// A secret as printed raw, inside a JSON string (a tfvars value written with `json_encode`,
/// a `--json` report) and with HCL's template escapes on top, as the tfvars templates write
/// values: a secret holding a quote or `${` must not slip through in its escaped form.
fn escaped_forms(secret: &str) -> Vec<String> {
    let quoted = serde_json::to_string(secret).expect("strings serialize");
    let json = quoted[1..quoted.len() - 1].to_string();
    let hcl = json.replace("${", "$${").replace("%{", "%%{");
    let mut forms = vec![secret.to_string()];
    for form in [json, hcl] {
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

/// Hides `user:password@` in any URL inside `text`.
pub fn mask_url_userinfo(text: Cow<'_, str>) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote; userinfo ends at its last '@'.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_params_and_tf_vars_are_masked() {
        let params = json!({"region": "cn-bj2", "root_password": "hunter22", "nested": {"api_token": ["tok-1234"]}});
        let env = vec![
            ("TF_VAR_private_key".to_string(), "PRIVATEKEY".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let r = Redactor::from_inputs(&params, &env);
        let masked = r.mask("cn-bj2 hunter22 tok-1234 PRIVATEKEY /root");
        assert_eq!(masked, format!("cn-bj2 {MASK} {MASK} {MASK} /root"));
    }

    #[test]
    fn escaped_forms_of_a_secret_are_masked_too() {
        let r = Redactor::default();
        r.add("pa\"ss${x}\\word");
        let json = serde_json::json!({"v": "pa\"ss${x}\\word"}).to_string();
        assert_eq!(r.mask(&json), format!("{{\"v\":\"{MASK}\"}}"));
        let hcl = r#"root_password = "pa\"ss$${x}\\word""#;
        assert_eq!(r.mask(hcl), format!("root_password = \"{MASK}\""));
    }

    #[test]
    fn url_credentials_are_masked() {
        let masked = mask_url_userinfo(Cow::Borrowed(
            "cloning https://user:s3cr3t@git.example/repo.git and postgres://pg@127.0.0.1/db",
        ));
        assert_eq!(
            masked,
            format!(
                "cloning https://{MASK}@git.example/repo.git and postgres://{MASK}@127.0.0.1/db"
            )
        );
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("ROOT_PASSWORD"));
        assert!(is_secret_name("ucloud_private_key"));
        assert!(!is_secret_name("region"));
    }
}
