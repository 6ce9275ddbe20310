//! The one event of terraform's stream that can come by the million: a provisioner's line of
//! output (`provision_progress`). A general JSON parse of it costs many times what the rest
//! of passing the line on does, so it is read here instead, in two ways:
//!
//! - a scanner that knows the event's exact shape checks the whole line as JSON (strings,
//!   escapes, numbers, nesting) and takes the strings it needs;
//! - the lines that follow, of the same resource and provisioner, differ from the one
//!   scanned only in three strings (the message, the time and the output): a line that is
//!   the same text around three valid strings in their places is the same JSON, and only
//!   those strings are read.
//!
//! Anything else, or anything unusual (another key, a repeated key, an escape in a key, a
//! control character), is left to the general parse, which then decides; so this path never
//! reads an event differently from it.

use std::borrow::Cow;
use std::ops::Range;

/// A provisioner's line of output, and whose it is.
#[derive(Debug, PartialEq)]
pub struct ProvisionLine<'a> {
    pub address: Cow<'a, str>,
    pub provisioner: Cow<'a, str>,
    pub output: Cow<'a, str>,
}

/// Reads the provisioner lines of one stream, remembering the shape of the last one.
#[derive(Debug, Default)]
pub struct Reader {
    shape: Option<Shape>,
}

impl Reader {
    /// The line, if it is a `provision_progress` event of the usual shape.
    pub fn read<'a>(&'a mut self, raw: &'a str) -> Option<ProvisionLine<'a>> {
        let Some(output) = self.shape.as_ref().and_then(|shape| shape.output(raw)) else {
            let (line, strings) = scan(raw)?;
            self.shape = strings.map(|strings| Shape::new(raw, strings, &line));
            return Some(line);
        };
        let shape = self.shape.as_ref()?;
        Some(ProvisionLine {
            address: Cow::Borrowed(&shape.address),
            provisioner: Cow::Borrowed(&shape.provisioner),
            output,
        })
    }
}

/// An event read whole, as the text around the strings that change from line to line.
#[derive(Debug)]
struct Shape {
    /// The text before, between and after the three strings (their quotes included there).
    around: [String; 4],
    /// Which of the three is the output.
    output_at: usize,
    address: String,
    provisioner: String,
}

impl Shape {
    fn new(raw: &str, mut strings: [(Range<usize>, bool); 3], line: &ProvisionLine<'_>) -> Self {
        strings.sort_by_key(|(range, _)| range.start);
        let mut around: [String; 4] = Default::default();
        let mut from = 0;
        for (n, (range, _)) in strings.iter().enumerate() {
            around[n] = raw[from..range.start].to_string();
            from = range.end;
        }
        around[3] = raw[from..].to_string();
        Shape {
            around,
            output_at: strings.iter().position(|(_, output)| *output).unwrap_or(0),
            address: line.address.to_string(),
            provisioner: line.provisioner.to_string(),
        }
    }

    /// The output of `raw`, if it has this shape.
    fn output<'r>(&self, raw: &'r str) -> Option<Cow<'r, str>> {
        let mut at = 0;
        let mut output = None;
        for (n, text) in self.around[..3].iter().enumerate() {
            at += text.len();
            if !raw.as_bytes().get(..at)?.ends_with(text.as_bytes()) || !raw.is_char_boundary(at) {
                return None;
            }
            let (value, end) = string_token(raw, at)?;
            if raw.as_bytes()[at..end]
                .iter()
                .fold(false, |c, &b| c | (b < 0x20))
            {
                return None;
            }
            if n == self.output_at {
                output = Some(value);
            }
            at = end;
        }
        (raw.get(at..)? == self.around[3]).then_some(output?)
    }
}

/// Reads a whole event: the line, and where its message, time and output strings are (with
/// which is the output), when it has all three.
type Scanned<'a> = (ProvisionLine<'a>, Option<[(Range<usize>, bool); 3]>);

fn scan(raw: &str) -> Option<Scanned<'_>> {
    // Bytes below 0x20 are whitespace between tokens or errors inside strings; terraform
    // writes neither. One pass over the line without stopping early.
    if raw.bytes().fold(false, |seen, b| seen | (b < 0x20)) {
        return None;
    }
    let mut scan = Scanner { text: raw, at: 0 };
    let mut kind = None;
    let mut address = None;
    let mut provisioner = None;
    let mut output = None;
    let mut strings = [None, None, None];
    let mut seen = 0u8;
    scan.object(|scan, key| {
        let bit = match key {
            "@level" => 1,
            "@message" => 2,
            "@module" => 4,
            "@timestamp" => 8,
            "hook" => 16,
            "type" => 32,
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        let start = scan.at;
        match key {
            "hook" => {
                let mut hook_seen = 0u8;
                scan.object(|scan, key| {
                    let bit = match key {
                        "resource" => 1,
                        "provisioner" => 2,
                        "output" => 4,
                        _ => return None,
                    };
                    if hook_seen & bit != 0 {
                        return None;
                    }
                    hook_seen |= bit;
                    let start = scan.at;
                    match key {
                        "resource" => address = Some(resource_address(scan)?),
                        "provisioner" => provisioner = Some(scan.string()?),
                        _ => {
                            output = Some(scan.string()?);
                            strings[2] = Some((start..scan.at, true));
                        }
                    }
                    Some(())
                })
            }
            "type" => {
                kind = Some(scan.string()?);
                Some(())
            }
            "@message" | "@timestamp" => {
                scan.string()?;
                strings[usize::from(key == "@timestamp")] = Some((start..scan.at, false));
                Some(())
            }
            _ => scan.string().map(drop),
        }
    })?;
    if scan.at != raw.len() || kind.as_deref() != Some("provision_progress") {
        return None;
    }
    let line = ProvisionLine {
        address: address?,
        provisioner: provisioner.unwrap_or_default(),
        output: output.unwrap_or_default(),
    };
    let strings = match strings {
        [Some(message), Some(time), Some(output)] => Some([message, time, output]),
        _ => None,
    };
    Some((line, strings))
}

/// The `resource` object of the hook: its `addr`, with the other keys terraform writes.
fn resource_address<'a>(scan: &mut Scanner<'a>) -> Option<Cow<'a, str>> {
    const KEYS: [&str; 7] = [
        "addr",
        "module",
        "resource",
        "implied_provider",
        "resource_type",
        "resource_name",
        "resource_key",
    ];
    let mut address = None;
    let mut seen = 0u8;
    scan.object(|scan, key| {
        let bit = 1 << KEYS.iter().position(|k| *k == key)?;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match key {
            "addr" => address = Some(scan.string()?),
            // A key of `count` is a number, of `for_each` a string, and none is null.
            "resource_key" if scan.rest().first() == Some(&b'"') => drop(scan.string()?),
            "resource_key" => scan.scalar()?,
            _ => drop(scan.string()?),
        }
        Some(())
    })?;
    address
}

/// The JSON string token at `at` (its opening quote), unescaped (borrowed when it holds no
/// escape), and where it ends. Its escapes are checked; control characters are not.
fn string_token(text: &str, at: usize) -> Option<(Cow<'_, str>, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let mut from = start;
    let mut escaped = false;
    loop {
        let next = from + memchr::memchr2(b'"', b'\\', &bytes[from..])?;
        if bytes[next] == b'"' {
            if !escaped {
                return Some((Cow::Borrowed(&text[start..next]), next + 1));
            }
            // The escapes are checked below; serde_json turns them into text.
            let value = serde_json::from_str::<String>(&text[at..next + 1]).ok()?;
            return Some((Cow::Owned(value), next + 1));
        }
        escaped = true;
        from = next
            + match bytes.get(next + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                b'u' if bytes
                    .get(next + 2..next + 6)?
                    .iter()
                    .all(u8::is_ascii_hexdigit) =>
                {
                    6
                }
                _ => return None,
            };
    }
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.rest().first() == Some(&byte)).then(|| self.at += 1)
    }

    /// An object, each of its keys handed to `member`, which must read the value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            // An escaped key may spell a known one: the general parse reads those.
            if let Cow::Owned(_) = key {
                return None;
            }
            self.eat(b':')?;
            member(self, &key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// A string, unescaped; borrowed when it holds no escape.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let (value, end) = string_token(self.text, self.at)?;
        self.at = end;
        Some(value)
    }

    /// `null`, or a JSON number.
    fn scalar(&mut self) -> Option<()> {
        if self.rest().starts_with(b"null") {
            self.at += 4;
            return Some(());
        }
        self.eat(b'-');
        let digits = |scan: &mut Self| {
            let count = scan
                .rest()
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            scan.at += count;
            count
        };
        match self.rest().first()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && digits(self) == 0 {
            return None;
        }
        if matches!(self.rest().first(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.rest().first(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// What the general parse makes of a line: the provisioner's line, if it is one.
    fn general(raw: &str) -> Option<(String, String, String)> {
        let event: Value = serde_json::from_str(raw).ok()?;
        if event["type"] != "provision_progress" {
            return None;
        }
        let hook = &event["hook"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Some((
            text(&hook["resource"]["addr"]),
            text(&hook["provisioner"]),
            text(&hook["output"]),
        ))
    }

    fn event(output: &str, key: Value) -> String {
        json!({
            "@level": "info",
            "@message": format!("terraform_data.loud: (local-exec): {output}"),
            "@module": "terraform.ui",
            "@timestamp": "2026-12-01T15:00:00.000000Z",
            "hook": {
                "resource": {
                    "addr": "terraform_data.loud[\"a\"]",
                    "module": "",
                    "resource": "terraform_data.loud[\"a\"]",
                    "implied_provider": "terraform",
                    "resource_type": "terraform_data",
                    "resource_name": "loud",
                    "resource_key": key,
                },
                "provisioner": "local-exec",
                "output": output,
            },
            "type": "provision_progress",
        })
        .to_string()
    }

    fn owned(line: ProvisionLine<'_>) -> (String, String, String) {
        (
            line.address.into_owned(),
            line.provisioner.into_owned(),
            line.output.into_owned(),
        )
    }

    /// Reads `raw` whole, and after `before` (so by its shape when it has the same); either
    /// way it may leave a line to the general parse, but never reads one otherwise.
    fn agrees(before: &str, raw: &str) -> Option<(String, String, String)> {
        let whole = Reader::default().read(raw).map(owned);
        let mut reader = Reader::default();
        assert!(reader.read(before).is_some(), "{before}");
        let after = reader.read(raw).map(owned);
        assert_eq!(whole, after, "{raw}");
        if whole.is_some() {
            assert_eq!(whole, general(raw), "{raw}");
        }
        whole
    }

    #[test]
    fn reads_what_terraform_writes() {
        let outputs = [
            "plain words",
            "",
            "quote \" and backslash \\ and slash /",
            "tab\tand\u{1} control",
            "ünïcödé ✓ and \u{1F600}",
            "looks like \"type\":\"diagnostic\"}",
        ];
        let first = event("first", json!(null));
        for output in outputs {
            for key in [json!(null), json!(0), json!(12), json!("a"), json!(-1.5e3)] {
                let raw = event(output, key);
                let (address, provisioner, read) = agrees(&first, &raw).expect(&raw);
                assert_eq!(address, "terraform_data.loud[\"a\"]");
                assert_eq!(provisioner, "local-exec");
                assert_eq!(read, output);
            }
        }
        // Escapes written out in full read the same.
        let raw =
            event("x", json!(null)).replace("local-exec\",\"output", "loc\\u0061l-exec\",\"output");
        assert_eq!(agrees(&first, &raw).unwrap().1, "local-exec");
    }

    #[test]
    fn the_lines_after_the_first_are_read_by_its_shape() {
        let mut reader = Reader::default();
        reader.read(&event("one", json!(null))).unwrap();
        let shape = reader.shape.as_ref().expect("remembered");
        assert_eq!(shape.address, "terraform_data.loud[\"a\"]");
        assert_eq!(shape.around[0], "{\"@level\":\"info\",\"@message\":");
        let two = event("two \" quoted", json!(null));
        assert_eq!(shape.output(&two).unwrap(), "two \" quoted");
        // Another resource: read whole, and its shape kept instead.
        let other = event("three", json!(null)).replace("loud", "quiet");
        assert!(shape.output(&other).is_none());
        assert_eq!(
            reader.read(&other).unwrap().address,
            "terraform_data.quiet[\"a\"]"
        );
        assert_eq!(
            reader.shape.as_ref().unwrap().address,
            "terraform_data.quiet[\"a\"]"
        );
    }

    #[test]
    fn leaves_the_rest_to_the_general_parse() {
        let good = event("out", json!(null));
        let cases = [
            good.replace("provision_progress", "provision_start"),
            good.replace("\"type\"", "\"typ\\u0065\""),
            good.replace("\"hook\":{", "\"hook\":{\"action\":\"create\","),
            good.replace(
                "\"@level\":\"info\"",
                "\"@level\":\"info\",\"@level\":\"info\"",
            ),
            good.replace(
                "\"output\":\"out\"",
                "\"output\":\"out\",\"output\":\"again\"",
            ),
            good.replace("\"resource_key\":null", "\"resource_key\":01"),
            good.replace("\"resource_key\":null", "\"resource_key\":1."),
            good.replace("\"resource_key\":null", "\"resource_key\":nul"),
            good.replace("\"output\":\"out\"", "\"output\":\"o\\x\""),
            good.replace("\"output\":\"out\"", "\"output\":\"o\\u12g4\""),
            good.replace("\"output\":\"out\"", "\"output\":5"),
            good.replace("\"output\":\"out\"", "\"output\":\"o\tut\""),
            good.replace("15:00:00", "15:\n00:00"),
            format!("{good} "),
            format!("{good}x"),
            good[..good.len() - 1].to_string(),
            good.replace("{\"@level\"", "{ \"@level\""),
            good.replace("\"addr\":\"terraform_data.loud[\\\"a\\\"]\",", ""),
            "{}".to_string(),
            "{\"type\":\"provision_progress\"}".to_string(),
            "not json".to_string(),
            String::new(),
        ];
        for raw in &cases {
            assert!(agrees(&good, raw).is_none(), "{raw}");
        }
    }

    #[test]
    fn agrees_with_the_general_parse_on_every_cut_and_change() {
        let before = event("before", json!(3));
        let good = event("a \"quoted\" word \\ ü", json!(3));
        for end in 0..good.len() {
            if good.is_char_boundary(end) {
                agrees(&before, &good[..end]);
            }
        }
        let bytes = good.as_bytes();
        for at in 0..bytes.len() {
            for with in [b'"', b'\\', b'{', b'}', b',', b':', b'0', b'x', b' ', b'\n'] {
                let mut changed = bytes.to_vec();
                changed[at] = with;
                if let Ok(text) = String::from_utf8(changed) {
                    agrees(&before, &text);
                }
            }
        }
    }
}
