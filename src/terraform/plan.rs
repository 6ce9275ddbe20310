//! What a saved plan would change, read from `terraform show -json <planfile>`: per resource
//! its address, action and the names of the attributes that change, never their values
//! (the JSON holds sensitive values in the clear; they are read here and dropped).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What terraform would do to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
    /// A data source read during apply (its value is not known at plan time).
    Read,
    /// Removed from the state, the object left alone (`removed` blocks).
    Forget,
}

impl Action {
    /// Terraform's `actions` list, or `None` for a no-op.
    fn of(actions: &[String]) -> Option<Action> {
        let names: Vec<&str> = actions.iter().map(String::as_str).collect();
        match names.as_slice() {
            ["create"] => Some(Action::Create),
            ["update"] => Some(Action::Update),
            ["delete"] => Some(Action::Delete),
            ["read"] => Some(Action::Read),
            ["forget"] => Some(Action::Forget),
            ["delete", "create"] | ["create", "delete"] => Some(Action::Replace),
            [] | ["no-op"] => None,
            // A combination newer than this reader: still a change, named as terraform does.
            _ if names.contains(&"delete") => Some(Action::Replace),
            _ => Some(Action::Update),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::Read => "read",
            Action::Forget => "forget",
        }
    }

    /// The sign terraform's own plan shows.
    pub fn sign(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
            Action::Read => "<=",
            Action::Forget => ".",
        }
    }
}

/// An attribute whose value changes: its path (`input.tag`), and whether either value is
/// sensitive. Values are never kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    pub name: String,
    pub sensitive: bool,
}

/// One resource that would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceChange {
    pub address: String,
    pub action: Action,
    /// For an update or a replace: what changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
}

/// An output whose value would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChange {
    pub name: String,
    pub action: Action,
}

/// Terraform's counts, as its plan summary gives them: a replace adds one and destroys one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub add: u64,
    pub change: u64,
    pub destroy: u64,
}

/// Everything a saved plan would change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub counts: Counts,
    pub resources: Vec<ResourceChange>,
    /// What changed outside terraform since the last apply, as the refresh found it.
    pub drift: Vec<ResourceChange>,
    pub outputs: Vec<OutputChange>,
}

#[derive(Deserialize)]
struct Shown {
    #[serde(default)]
    resource_changes: Vec<Shown1>,
    #[serde(default)]
    resource_drift: Vec<Shown1>,
    #[serde(default)]
    output_changes: Map<String, Value>,
}

#[derive(Deserialize)]
struct Shown1 {
    address: String,
    change: ShownChange,
}

#[derive(Deserialize)]
struct ShownChange {
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    before: Value,
    #[serde(default)]
    after: Value,
    #[serde(default)]
    after_unknown: Value,
    #[serde(default)]
    before_sensitive: Value,
    #[serde(default)]
    after_sensitive: Value,
}

/// Reads `terraform show -json <planfile>`.
pub fn parse(stdout: &[u8]) -> Result<Changes, String> {
    let shown: Shown = serde_json::from_slice(stdout)
        .map_err(|e| format!("`terraform show -json` printed something that is not a plan: {e}"))?;
    let mut changes = Changes::default();
    for resource in shown.resource_changes {
        let Some(change) = resource_change(resource) else {
            continue;
        };
        match change.action {
            Action::Create => changes.counts.add += 1,
            Action::Update => changes.counts.change += 1,
            Action::Delete => changes.counts.destroy += 1,
            Action::Replace => {
                changes.counts.add += 1;
                changes.counts.destroy += 1;
            }
            Action::Read | Action::Forget => {}
        }
        changes.resources.push(change);
    }
    changes.drift = shown
        .resource_drift
        .into_iter()
        .filter_map(resource_change)
        .collect();
    for (name, change) in shown.output_changes {
        let actions: Vec<String> = change
            .get("actions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(action) = Action::of(&actions) {
            changes.outputs.push(OutputChange { name, action });
        }
    }
    Ok(changes)
}

fn resource_change(shown: Shown1) -> Option<ResourceChange> {
    let action = Action::of(&shown.change.actions)?;
    let mut attributes = Vec::new();
    if matches!(action, Action::Update | Action::Replace) {
        let c = &shown.change;
        changed_paths(
            &mut attributes,
            String::new(),
            [&c.before, &c.after],
            &c.after_unknown,
            [&c.before_sensitive, &c.after_sensitive],
        );
    }
    Some(ResourceChange {
        address: shown.address,
        action,
        attributes,
    })
}

/// Whether a sensitivity (or unknown) marker says `true` at this point or anywhere below.
fn marked(marker: &Value) -> bool {
    match marker {
        Value::Bool(b) => *b,
        Value::Object(map) => map.values().any(marked),
        Value::Array(items) => items.iter().any(marked),
        _ => false,
    }
}

fn child<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or(&Value::Null)
}

/// The paths under which `values` (before, after) differ: into objects, unless a side is
/// sensitive as a whole there (a sensitive map's keys may be secret too), whole otherwise.
fn changed_paths(
    out: &mut Vec<Attribute>,
    path: String,
    values: [&Value; 2],
    unknown: &Value,
    sensitive: [&Value; 2],
) {
    let wholly_secret = sensitive.iter().any(|s| s.as_bool() == Some(true));
    if let ([Value::Object(before), Value::Object(after)], false) = (values, wholly_secret) {
        let unknown_keys = unknown.as_object().into_iter().flat_map(|u| u.keys());
        let mut keys: Vec<&String> = before
            .keys()
            .chain(after.keys())
            .chain(unknown_keys)
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let name = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            changed_paths(
                out,
                name,
                [child(values[0], key), child(values[1], key)],
                child(unknown, key),
                [child(sensitive[0], key), child(sensitive[1], key)],
            );
        }
        return;
    }
    if path.is_empty() {
        return;
    }
    if values[0] != values[1] || marked(unknown) {
        out.push(Attribute {
            name: path,
            sensitive: sensitive.iter().any(|s| marked(s)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_name_the_changed_paths_and_never_keep_values() {
        let json = br#"{"resource_changes":[
          {"address":"terraform_data.a","change":{"actions":["update"],
            "before":{"id":"x","input":{"secret":"s1","tag":"t1","same":1},"output":{"secret":"s1"}},
            "after":{"id":"x","input":{"secret":"s2","tag":"t2","same":1}},
            "after_unknown":{"input":{},"output":true},
            "before_sensitive":{"input":{"secret":true},"output":{}},
            "after_sensitive":{"input":{"secret":true},"output":{}}}},
          {"address":"terraform_data.b","change":{"actions":["delete","create"],
            "before":{"triggers_replace":"t1"},"after":{"triggers_replace":"t2"},
            "after_unknown":{"id":true}}},
          {"address":"terraform_data.c","change":{"actions":["no-op"]}},
          {"address":"terraform_data.d","change":{"actions":["create"],"after":{"input":"s2"}}}],
          "resource_drift":[{"address":"terraform_data.a","change":{"actions":["update"],
            "before":{"tags":{"a":"1"}},"after":{"tags":{"a":"2"}}}}],
          "output_changes":{"o":{"actions":["update"]},"p":{"actions":["no-op"]}}}"#;
        let changes = parse(json).unwrap();
        assert_eq!(
            changes.counts,
            Counts {
                add: 2,
                change: 1,
                destroy: 1
            }
        );
        let a = &changes.resources[0];
        assert_eq!(a.action, Action::Update);
        let names: Vec<(&str, bool)> = a
            .attributes
            .iter()
            .map(|x| (x.name.as_str(), x.sensitive))
            .collect();
        assert_eq!(
            names,
            [
                ("input.secret", true),
                ("input.tag", false),
                ("output", false)
            ]
        );
        assert_eq!(changes.resources[1].action, Action::Replace);
        assert_eq!(changes.resources[1].attributes[0].name, "id");
        assert_eq!(changes.resources[2].address, "terraform_data.d");
        assert!(changes.resources[2].attributes.is_empty());
        assert_eq!(changes.outputs.len(), 1);
        assert_eq!(changes.drift[0].action, Action::Update);
        assert_eq!(changes.drift[0].attributes[0].name, "tags.a");
        let text = serde_json::to_string(&changes).unwrap();
        assert!(!text.contains("s1") && !text.contains("s2"), "{text}");
    }

    #[test]
    fn a_sensitive_map_is_named_whole() {
        let json = br#"{"resource_changes":[{"address":"x.y","change":{"actions":["update"],
            "before":{"tags":{"k-secret":"a"}},"after":{"tags":{"k-secret":"b"}},
            "before_sensitive":{"tags":true},"after_sensitive":{"tags":true}}}]}"#;
        let changes = parse(json).unwrap();
        assert_eq!(
            changes.resources[0].attributes,
            [Attribute {
                name: "tags".into(),
                sensitive: true
            }]
        );
    }

    #[test]
    fn what_is_not_a_plan_is_an_error() {
        assert!(parse(b"[1]").is_err());
        assert_eq!(parse(b"{}").unwrap(), Changes::default());
    }
}
