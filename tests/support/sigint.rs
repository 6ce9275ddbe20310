//! A terraform that counts the SIGINTs it gets. Real terraform on `terraform_data` exits
//! within one of the engine's polls of the first SIGINT (its stop kills the running
//! provisioner at once), so a second SIGINT sent a poll or a second later would never reach
//! it. This wrapper stays alive for [`HOLD`] after the first SIGINT (and until terraform
//! exited), passes every SIGINT on to terraform, and records each one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How long the wrapper stays after the first SIGINT: longer than a second, so that a
/// signal sent again a second later lands too.
pub const HOLD: &str = "2";

/// Writes the wrapper as `<dir>/bin/terraform`; each SIGINT appends
/// `INT <wrapper pid> <directory> <subcommand>` to `record`.
pub fn counting_terraform(dir: &Path, record: &Path) -> PathBuf {
    let wrapper = dir.join("bin/terraform");
    let script = format!(
        r#"#!/bin/sh
[ "$1" = version ] && exec terraform "$@"
terraform "$@" &
tf=$!
hold=
trap 'echo "INT $$ $PWD $1" >> "{record}"; kill -INT $tf 2>/dev/null; [ -n "$hold" ] || {{ sleep {HOLD} & hold=$!; }}' INT
while :; do
  wait $tf; rc=$?
  kill -0 $tf 2>/dev/null || break
done
if [ -n "$hold" ]; then
  while kill -0 $hold 2>/dev/null; do wait $hold; done
fi
exit $rc
"#,
        record = record.display()
    );
    super::write_script(&wrapper, script);
    wrapper
}

/// The SIGINTs each interrupted terraform got, by `(directory, subcommand)`, one entry per
/// wrapper process: `[1, 1]` is two terraforms in that place, each stopped once.
pub fn sigints(record: &Path) -> BTreeMap<(String, String), Vec<usize>> {
    let mut by_pid: BTreeMap<String, ((String, String), usize)> = BTreeMap::new();
    for line in super::read_lines(record) {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(fields.len(), 4, "record line {line:?}");
        let entry = by_pid
            .entry(fields[1].to_string())
            .or_insert(((fields[2].to_string(), fields[3].to_string()), 0));
        entry.1 += 1;
    }
    let mut out: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (place, n) in by_pid.into_values() {
        out.entry(place).or_default().push(n);
    }
    out
}

/// Asserts that exactly `expected` terraforms were interrupted, each with one SIGINT.
#[track_caller]
pub fn assert_each_got_one(record: &Path, expected: usize, context: &str) {
    let got = sigints(record);
    let counts: Vec<usize> = got.values().flatten().copied().collect();
    assert_eq!(
        counts.len(),
        expected,
        "terraforms interrupted: {got:?}\n{context}"
    );
    assert!(
        counts.iter().all(|n| *n == 1),
        "a terraform got more than one SIGINT: {got:?}\n{context}"
    );
}
