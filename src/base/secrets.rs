//! Which values are secret, and masking them out of everything the engine prints or keeps.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use aho_corasick::AhoCorasick;
use serde_json::Value;

pub const MASK: &str = "********";
/// What every URL holds, and with it any credentials in it.
const URL: &str = "://";

/// Param names containing one of these hold secrets (README.md, "Secrets stay secret").
const SECRET_WORDS: [&str; 10] = [
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "private",
    "cert",
];

/// Terraform word-wraps its diagnostics, so a secret holding whitespace can reach the log in
/// parts, one at the end of a line and the next at the start of the following one. Parts at
/// least this long are masked on their own; shorter ones say too little to matter.
pub const MIN_PART_LEN: usize = 6;

/// Shorter values would mask ordinary words and digits all over the logs; `validate` warns
/// about secrets this short instead. Documents ([`Redactor::mask_json`]) have no such bound.
pub const MIN_MASKED_LEN: usize = 4;

/// The environment variable that names, comma-separated, further variables whose values are
/// secret whatever their names say (a `TF_VAR_pg_conn_str` holding a password, say).
pub const SECRET_ENV: &str = "BOOTSTRAPPER_SECRET_ENV";

/// Whether a param, output or variable of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// The set of secret values, shared by the logger and every reporter.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    inner: Arc<RwLock<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    /// Every form of every secret, longest first.
    secrets: Vec<String>,
    /// Every secret value as it is, however short, and the text of a secret number: a value
    /// of a document equal to one of them is masked whole.
    exact: HashSet<String>,
    /// Whether a text holds any of `secrets`, in one pass: most text holds none.
    any: Option<AhoCorasick>,
    /// The parts of secrets with whitespace in them that a wrapped line can hold.
    parts: Parts,
}

/// Where a secret can be cut by a line break: at its whitespace. Each list longest first.
#[derive(Debug, Default)]
struct Parts {
    /// What ends a line when the rest of the secret follows on the next.
    heads: Vec<String>,
    /// What starts a line when the secret began on the one before.
    tails: Vec<String>,
    /// A whole line between the two.
    middles: Vec<String>,
}

impl Parts {
    fn add(&mut self, secret: &str) {
        let cuts: Vec<usize> = secret
            .char_indices()
            .filter(|(_, c)| c.is_whitespace())
            .map(|(i, _)| i)
            .collect();
        let long = |s: &str| s.chars().count() >= MIN_PART_LEN;
        let push = |list: &mut Vec<String>, part: &str| {
            if long(part) && !list.iter().any(|p| p == part) {
                list.push(part.to_string());
            }
        };
        for &cut in &cuts {
            push(&mut self.heads, secret[..cut].trim());
            push(&mut self.tails, secret[cut..].trim());
        }
        for (n, &from) in cuts.iter().enumerate() {
            for &to in &cuts[n + 1..] {
                push(&mut self.middles, secret[from..to].trim());
            }
        }
        for list in [&mut self.heads, &mut self.tails, &mut self.middles] {
            list.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.tails.is_empty() && self.middles.is_empty()
    }

    /// `line` with the parts at its ends masked.
    fn mask_line(&self, line: &str) -> Option<String> {
        let start = line.len()
            - line
                .trim_start_matches(|c: char| c.is_whitespace() || "│╷╵".contains(c))
                .len();
        let end = line.trim_end().len();
        if start >= end {
            return None;
        }
        let body = &line[start..end];
        let mut masked: Option<(usize, usize)> = None;
        if self.middles.iter().any(|m| m == body) {
            masked = Some((start, end));
        }
        if let Some(tail) = self.tails.iter().find(|t| body.starts_with(t.as_str())) {
            masked = Some((start, start + tail.len()));
        }
        if let Some(head) = self.heads.iter().find(|h| body.ends_with(h.as_str())) {
            masked = Some(match masked {
                Some((from, to)) if to >= end - head.len() => (from, end),
                Some((from, to)) => {
                    let mut out = line.to_string();
                    out.replace_range(end - head.len()..end, MASK);
                    out.replace_range(from..to, MASK);
                    return Some(out);
                }
                None => (end - head.len(), end),
            });
        }
        let (from, to) = masked?;
        let mut out = line.to_string();
        out.replace_range(from..to, MASK);
        Some(out)
    }
}

impl Redactor {
    /// Secrets named by the params and the environment. An environment variable is secret
    /// by the same rule as a param, by its name (`TF_VAR_ucloud_private_key`), or when
    /// [`SECRET_ENV`] lists it: a `TF_VAR_*` value such as `true` or a region is not.
    pub fn from_inputs(params: &Value, env: &[(String, String)]) -> Self {
        let redactor = Redactor::default();
        redactor.add_named(params, false);
        let listed = secret_env_names(env);
        for (name, value) in env {
            // The shell's working directories are paths, and the list names variables,
            // whatever their names say.
            let plain = matches!(name.as_str(), "PWD" | "OLDPWD" | SECRET_ENV);
            if listed.contains(&name.as_str()) || (is_secret_name(name) && !plain) {
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
        let mut known = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if !secret.is_empty() {
            known.exact.insert(secret.to_string());
        }
        if secret.len() < MIN_MASKED_LEN {
            return;
        }
        for form in escaped_forms(secret) {
            if !known.secrets.contains(&form) {
                if form.contains(char::is_whitespace) {
                    known.parts.add(&form);
                }
                known.secrets.push(form);
            }
        }
        // Longest first, so a secret containing another is masked whole.
        known.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        // Without the automaton every secret is searched for on its own, as before.
        known.any = AhoCorasick::new(&known.secrets).ok();
    }

    /// Masks a JSON document by its structure, as the API shows params and outputs: every
    /// value (but null) under a key whose name says it is secret, at any depth, whatever its
    /// type and length; every value equal to a secret (a number or boolean by its JSON
    /// text); and the secrets inside every other string, as in text.
    pub fn mask_json(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if is_secret_name(key) && !v.is_null() {
                        *v = Value::String(MASK.to_string());
                    } else {
                        self.mask_json(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::String(s) if self.is_exact(s) => *s = MASK.to_string(),
            Value::String(s) => *s = self.mask(s).into_owned(),
            Value::Number(_) | Value::Bool(_) if self.is_exact(&value.to_string()) => {
                *value = Value::String(MASK.to_string());
            }
            _ => {}
        }
    }

    fn is_exact(&self, text: &str) -> bool {
        let known = self.inner.read().unwrap_or_else(|e| e.into_inner());
        known.exact.contains(text)
    }

    /// Whether some secret holds whitespace, so that its parts may end or start a line: text
    /// is then masked line by line.
    pub fn has_parts(&self) -> bool {
        let known = self.inner.read().unwrap_or_else(|e| e.into_inner());
        !known.parts.is_empty()
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let known = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Cow::Borrowed(text);
        if known.any.as_ref().is_none_or(|any| any.is_match(text)) {
            for secret in known.secrets.iter() {
                if out.contains(secret.as_str()) {
                    out = Cow::Owned(out.replace(secret.as_str(), MASK));
                }
            }
        }
        if !known.parts.is_empty() {
            let lines: Vec<(&str, Option<String>)> = out
                .split('\n')
                .map(|line| (line, known.parts.mask_line(line)))
                .collect();
            if lines.iter().any(|(_, masked)| masked.is_some()) {
                let joined = lines
                    .iter()
                    .map(|(line, masked)| masked.as_deref().unwrap_or(line))
                    .collect::<Vec<_>>()
                    .join("\n");
                out = Cow::Owned(joined);
            }
        }
        mask_url_userinfo(out)
    }

    /// Where a piece of at most `bytes.len()` bytes may end so that no secret is cut in two
    /// (each piece is masked on its own): before the start of a secret that may go on past
    /// the end. Never 0, so that a reader always makes progress.
    pub fn safe_cut(&self, bytes: &[u8]) -> usize {
        let known = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let longest = known.secrets.first().map_or(0, String::len);
        let from = bytes.len().saturating_sub(longest.saturating_sub(1)).max(1);
        (from..bytes.len())
            .find(|&at| {
                let rest = &bytes[at..];
                known
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.as_bytes().starts_with(rest))
            })
            .unwrap_or(bytes.len())
    }
}

/// The names [`SECRET_ENV`] lists in `env`.
fn secret_env_names(env: &[(String, String)]) -> Vec<&str> {
    env.iter()
        .filter(|(name, _)| name == SECRET_ENV)
        .flat_map(|(_, list)| list.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect()
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
    // The single byte first: a line rarely holds one, and a substring search costs more.
    if memchr::memchr(b'@', text.as_bytes()).is_none() || !text.contains(URL) {
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

        // In text, a secret is masked from MIN_MASKED_LEN characters; shorter is a word.
        let r = Redactor::default();
        r.add("w7x9");
        r.add("q3z");
        assert_eq!(r.mask("pin w7x9 q3z"), format!("pin {MASK} q3z"));
    }

    #[test]
    fn tf_vars_are_secret_by_their_names_or_when_listed() {
        let env: Vec<(String, String)> = [
            ("TF_VAR_ucloud_private_key", "ucloud-pk-value"),
            ("TF_VAR_ucloud_public_key", "ucloud-pub-value"),
            ("TF_VAR_access_key", "AKIDEXAMPLE"),
            ("TF_VAR_secret_key", "secret-key-value"),
            ("TF_VAR_enable_feature", "false"),
            ("TF_VAR_region", "cn-bj2"),
            ("TF_VAR_pg_conn_str", "host=db password=pgpass"),
            ("TF_VAR_ledger", "/var/ledger"),
            (SECRET_ENV, "TF_VAR_pg_conn_str, TF_VAR_nothing"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = Redactor::from_inputs(&json!({}), &env);
        let text = "ucloud-pk-value ucloud-pub-value AKIDEXAMPLE secret-key-value -input=false cn-bj2 host=db password=pgpass /var/ledger TF_VAR_pg_conn_str";
        assert_eq!(
            r.mask(text),
            format!("{MASK} {MASK} {MASK} {MASK} -input=false cn-bj2 {MASK} /var/ledger TF_VAR_pg_conn_str")
        );
    }

    #[test]
    fn documents_are_masked_by_structure_and_by_equal_values() {
        let params = json!({
            "db": {"pin_password": 91827364, "pwd": "abc", "host": "db.internal"},
            "api_token": {"id": 7, "value": "tok-value-1"},
            "tls_cert": ["a", "b"],
            "count": 3,
            "flag": true,
            "note": "uses tok-value-1 inside",
        });
        let env = vec![("TF_VAR_secret_key".to_string(), "sk-4242".to_string())];
        let r = Redactor::from_inputs(&params, &env);
        let mut document = params.clone();
        r.mask_json(&mut document);
        assert_eq!(
            document,
            json!({
                "db": {"pin_password": MASK, "pwd": MASK, "host": "db.internal"},
                "api_token": MASK,
                "tls_cert": MASK,
                "count": 3,
                "flag": true,
                "note": format!("uses {MASK} inside"),
            })
        );
        // Outputs equal to a secret, whatever their type; others as they are.
        let mut outputs = json!({
            "pin": 91827364, "pin_text": "91827364", "short": "abc", "key_value": "sk-4242",
            "env": "sk-4242", "list": [1, "abc", 3], "id": 7, "enabled": true, "none": null,
            "db_password": null,
        });
        r.mask_json(&mut outputs);
        assert_eq!(
            outputs,
            json!({
                "pin": MASK, "pin_text": MASK, "short": MASK, "key_value": MASK,
                "env": MASK, "list": [1, MASK, 3], "id": MASK, "enabled": true, "none": null,
                "db_password": null,
            })
        );
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
    fn a_secret_wrapped_over_lines_is_masked_in_its_parts() {
        let r = Redactor::default();
        r.add("qzcorrect1 qzhorsebat qzstaple99 qzzebrafish");
        let wrapped = "Error running command 'echo qzcorrect1 qzhorsebat\nqzstaple99 qzzebrafish': exit\nstatus 1";
        assert_eq!(
            r.mask(wrapped),
            format!("Error running command 'echo {MASK}\n{MASK}': exit\nstatus 1")
        );
        assert_eq!(
            r.mask("│   qzhorsebat qzstaple99  "),
            format!("│   {MASK}  ")
        );
        assert_eq!(
            r.mask("qzzebrafish' and 'qzcorrect1"),
            format!("{MASK}' and '{MASK}")
        );
        assert_eq!(r.mask("qzstaple99 alone"), "qzstaple99 alone");

        // A first word too short to mask on its own still leaves a long rest to mask.
        let r = Redactor::default();
        r.add("abc qzdefghijklmnop");
        assert!(r.has_parts());
        assert_eq!(r.mask("qzdefghijklmnop' failed"), format!("{MASK}' failed"));
        // That short word alone is an ordinary word, left as it is.
        assert_eq!(r.mask("echo abc\nabc"), "echo abc\nabc");

        // A line that is the tail of one secret and the head of another is masked once, whole.
        let r = Redactor::default();
        r.add("aaaa qzbbbbbb-cccccc");
        r.add("qzbbbbbb-cccccc dddd");
        assert_eq!(r.mask("x\n  qzbbbbbb-cccccc\ny"), format!("x\n  {MASK}\ny"));

        // Without whitespace in any secret, text need not be masked line by line.
        let r = Redactor::default();
        r.add("qz-no-whitespace-here");
        assert!(!r.has_parts());
    }

    #[test]
    fn a_cut_never_falls_inside_a_secret() {
        let r = Redactor::default();
        r.add("s3cr3t-value");
        assert_eq!(r.safe_cut(b"xxxxxxs3cr3t-va"), 6);
        assert_eq!(r.safe_cut(b"xxxxxxs3cr3t-value"), 18);
        assert_eq!(r.safe_cut(b"xxxxxxxxxxxxxxxxxs"), 17);
        assert_eq!(r.safe_cut(b"s3cr"), 4);
        // A shorter secret whole at the end needs no cut before it.
        r.add("qzabcdef");
        assert_eq!(r.safe_cut(b"xxxxxxxxqzabcdef"), 16);
        assert_eq!(r.safe_cut(b"xxxxxxxxxxqzabcd"), 10);
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
        // A URL ends at whitespace or a quote: an address after it is no userinfo.
        for text in [
            r#"{"url":"https://git.example","owner":"me@example.com"}"#,
            "{'url':'https://git.example','owner':'me@example.com'}",
            "https://git.example\tme@example.com",
        ] {
            assert_eq!(mask_url_userinfo(Cow::Borrowed(text)), text);
        }
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("ROOT_PASSWORD"));
        assert!(is_secret_name("ucloud_private_key"));
        for name in [
            "db_passwd",
            "admin_pwd",
            "pass_phrase",
            "cloud_credential",
            "private_ip_range",
            "tls_cert",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        assert!(!is_secret_name("region"));
    }
}
