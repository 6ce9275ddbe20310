//! Which params a workflow reads: a param that no template reads is almost always a typo
//! (`brokr_count`), and the cluster it was meant for would be built with the default.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::base::error::{Problem, Problems};
use crate::workflow::render::{is_ident, segment, Renderer};

/// The params that templates read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A template uses `params` as a whole (`params | json_encode`, `for k, v in params`,
    /// `params[name]`): any param may be read.
    Every,
    /// The top-level names read (`params.db.host` reads `db`).
    Names(BTreeSet<String>),
}

/// What the templates `texts` read of `params`, from the tags of each (`{{ }}`, `{% %}`;
/// not comments): Tera's paths are `params.NAME` and `params["NAME"]`, the whole syntax.
pub fn read(texts: &[String]) -> Read {
    let mut names = BTreeSet::new();
    for text in texts {
        for tag in tags(text) {
            let bytes = tag.as_bytes();
            let mut from = 0;
            while let Some(found) = tag[from..].find("params") {
                let start = from + found;
                from = start + "params".len();
                let before = start.checked_sub(1).map(|i| bytes[i]);
                if before.is_some_and(|b| is_ident(b) || b == b'.') {
                    continue;
                }
                if bytes.get(from).is_some_and(|b| is_ident(*b)) {
                    continue;
                }
                match segment(tag, from) {
                    Some((name, _)) => {
                        names.insert(name);
                    }
                    None => return Read::Every,
                }
            }
        }
    }
    Read::Names(names)
}

/// The text inside each `{{ … }}` and `{% … %}` of a template.
fn tags(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = match after.as_bytes().first() {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            Some(b'#') => "#}",
            _ => {
                rest = after;
                continue;
            }
        };
        let inner = &after[1..];
        let end = inner.find(close).unwrap_or(inner.len());
        if close != "#}" {
            found.push(&inner[..end]);
        }
        rest = &inner[(end + close.len()).min(inner.len())..];
    }
    found
}

/// A problem for every top-level param of `params` that no template reads, but those of
/// `exempt`, each with the nearest name read when one is near enough to be a typo.
pub fn unread(renderer: &Renderer<'_>, params: &Value, exempt: &[&str]) -> Problems {
    let mut problems = Problems::default();
    let Read::Names(names) = read(&renderer.template_texts()) else {
        return problems;
    };
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    for key in params.as_object().into_iter().flat_map(|p| p.keys()) {
        if names.contains(key) || exempt.contains(&key.as_str()) {
            continue;
        }
        let hint = match crate::workflow::module_vars::closest(key, &known) {
            Some(near) => format!(
                "did you mean `{near}`? The workflow reads: {}",
                known.join(", ")
            ),
            None if known.is_empty() => "the workflow reads no params".to_string(),
            None => format!("the workflow reads: {}", known.join(", ")),
        };
        problems.push(
            Problem::new(format!(
                "param `{key}` is read by no template of the workflow"
            ))
            .hint(hint),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(texts: &[&str]) -> Read {
        read(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    }

    fn set(names: &[&str]) -> Read {
        Read::Names(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn params_are_read_by_path_in_tags_only() {
        assert_eq!(
            names(&[
                "a = {{ params.region | default(value=params['zone']) }}\n{% if params.db.host %}x{% endif %}",
                "{# params.commented #} params.outside {{ my_params.x }} {{ params_x }}",
                "{{params[\"quoted\"]}}",
            ]),
            set(&["db", "quoted", "region", "zone"])
        );
        assert_eq!(names(&["{{ params | json_encode() }}"]), Read::Every);
        assert_eq!(
            names(&["{% for k, v in params %}{% endfor %}"]),
            Read::Every
        );
        assert_eq!(names(&["{{ params[name] }}"]), Read::Every);
        assert_eq!(names(&["{{ unclosed params.x"]), set(&["x"]));
        assert_eq!(names(&["{"]), set(&[]));
    }
}
