//! The diamond workflow (a → b and c → d) over real terraform and a PostgreSQL backend: every
//! step the module of `tests/fixtures/diamond`, its state in its own schema of a fresh
//! database. b uses an output of a (a reference), c names a in `needs`, d names b and c. The
//! provisioners append `<unix time> <event> <step>/<resource>` to the ledger.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{fresh_database, pg_state_resources, Bootstrapper};

pub const STEPS: [&str; 4] = ["a", "b", "c", "d"];
pub const WORKSPACE: &str = "w";

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub at: f64,
    pub event: String,
    /// `<step>/<resource>`.
    pub what: String,
}

impl Entry {
    pub fn step(&self) -> &str {
        self.what.split('/').next().unwrap_or("")
    }
}

pub struct Diamond {
    pub b: Bootstrapper,
    pub conn_str: String,
    params: Value,
}

impl Diamond {
    /// A fresh root and database, `settings` added to the workflow (e.g. `retries = 0`).
    pub fn new(settings: &str) -> Self {
        let b = Bootstrapper::new();
        let conn_str = fresh_database();
        let code = b.dir().join("image");
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diamond/main.tf");
        for step in STEPS {
            fs::create_dir_all(code.join(step)).expect("create step dir");
            fs::copy(&module, code.join(step).join("main.tf")).expect("copy module");
        }
        let mut toml =
            format!("[source]\ndir = \"code\"\nimage_dir = \"image\"\n\n[settings]\n{settings}\n");
        for step in STEPS {
            let (needs, upstream) = match step {
                "a" => ("", ""),
                "b" => ("", "upstream = \"{{ steps.a.outputs.id }}\"\n"),
                "c" => ("needs = [\"a\"]\n", ""),
                _ => ("needs = [\"b\", \"c\"]\n", ""),
            };
            toml.push_str(&format!(
                "\n[[step]]\nname = \"{step}\"\ndir = \"{step}\"\n{needs}\
                 workspace = \"{WORKSPACE}\"\n\
                 backend_config = {{ conn_str = \"{{{{ params.conn_str }}}}\", schema_name = \"{step}\" }}\n\
                 vars = \"{step}.tfvars.tera\"\n"
            ));
            fs::write(
                b.dir().join(format!("{step}.tfvars.tera")),
                format!(
                    "ledger        = \"{{{{ params.ledger }}}}\"\n\
                     name          = \"{step}\"\n\
                     sleep_seconds = {{{{ params.sleep_{step} | default(value=0) }}}}\n\
                     fail_file     = \"{{{{ params.fail_{step} | default(value=\"\") }}}}\"\n\
                     {upstream}"
                ),
            )
            .expect("write template");
        }
        b.write_workflow(&toml);
        let params = json!({ "ledger": b.ledger_path(), "conn_str": conn_str });
        b.write_params(&params);
        Diamond {
            b,
            conn_str,
            params,
        }
    }

    /// Sets a param (`sleep_b`, `fail_c`, …) and writes the params file again.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.params[key] = value;
        self.b.write_params(&self.params);
        self
    }

    /// A path under the test's directory, for a `fail_<step>` file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.b.dir().join(name)
    }

    pub fn ledger(&self) -> Vec<Entry> {
        self.b
            .ledger()
            .iter()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                let (at, event, what) = (parts.next(), parts.next(), parts.next());
                Entry {
                    at: at
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(|| panic!("ledger line without a time: {line:?}")),
                    event: event.unwrap_or_default().to_string(),
                    what: what.unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    /// When `event` (`start`, `create`, `destroy`) first happened to `what`.
    pub fn when(&self, event: &str, what: &str) -> Option<f64> {
        self.ledger()
            .into_iter()
            .find(|e| e.event == event && e.what == what)
            .map(|e| e.at)
    }

    pub fn state(&self, step: &str) -> Vec<String> {
        pg_state_resources(&self.conn_str, step, WORKSPACE)
    }

    pub fn marked(&self, step: &str, marker: &str) -> bool {
        self.b
            .root()
            .join(".bootstrapper/steps")
            .join(step)
            .join(marker)
            .is_file()
    }
}
