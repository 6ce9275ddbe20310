//! The provisioner-line reader against the general JSON parse: for arbitrary text, read
//! whole and after a well-formed event (so by that event's shape), it may leave a line to
//! the general parse but never reads one differently from it.

#![no_main]

use bootstrapper::terraform::provision_event::Reader;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const BEFORE: &str = r#"{"@level":"info","@message":"terraform_data.a: (local-exec): x","@module":"terraform.ui","@timestamp":"2026-12-01T15:00:00.000000Z","hook":{"resource":{"addr":"terraform_data.a","module":"","resource":"terraform_data.a","implied_provider":"terraform","resource_type":"terraform_data","resource_name":"a","resource_key":null},"provisioner":"local-exec","output":"x"},"type":"provision_progress"}"#;

fn general(raw: &str) -> Option<(String, String, String)> {
    let event: Value = serde_json::from_str(raw).ok()?;
    if event["type"] != "provision_progress" {
        return None;
    }
    let hook = &event["hook"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Some((text(&hook["resource"]["addr"]), text(&hook["provisioner"]), text(&hook["output"])))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The input is mostly read as a change to the usual event, where the shape matters.
    let raw = match text.split_once('\u{0}') {
        Some((at, with)) => {
            let at = at.len() % BEFORE.len();
            match BEFORE.get(..at) {
                Some(head) => format!("{head}{with}{}", &BEFORE[at..]),
                None => return,
            }
        }
        None => text.to_string(),
    };
    let read = |reader: &mut Reader| {
        reader.read(&raw).map(|l| {
            (l.address.into_owned(), l.provisioner.into_owned(), l.output.into_owned())
        })
    };
    let whole = read(&mut Reader::default());
    let mut warm = Reader::default();
    assert!(warm.read(BEFORE).is_some());
    assert_eq!(read(&mut warm), whole);
    if whole.is_some() {
        assert_eq!(whole, general(&raw));
    }
});
