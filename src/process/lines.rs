//! A child's output cut into lines where it is read, in bounded memory: no line costs an
//! allocation of its own, and a line too long is passed on in pieces.

use std::borrow::Cow;

use crate::base::secrets::Redactor;

/// A line longer than this is passed on in pieces: a child can print megabytes on one line.
const MAX_LINE: usize = 64 * 1024;

/// Lines as read, in the buffer they were read into: no line costs an allocation of its own.
pub(super) struct Batch {
    pub(super) bytes: Vec<u8>,
    pub(super) lines: Vec<Span>,
    pub(super) stdout: bool,
}

/// A line in a batch (without its line end), or a piece of a long one (`whole` false but for
/// its last piece).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Span {
    start: usize,
    end: usize,
    pub(super) whole: bool,
}

impl Batch {
    /// The whole batch as text, when it is valid UTF-8: lines and pieces end between
    /// characters, so each of them then is too, and one check serves them all.
    pub(super) fn valid(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    pub(super) fn text<'a>(&'a self, valid: Option<&'a str>, span: &Span) -> Cow<'a, str> {
        match valid {
            Some(all) => Cow::Borrowed(&all[span.start..span.end]),
            None => String::from_utf8_lossy(&self.bytes[span.start..span.end]),
        }
    }

    /// Whether no line of it needs masking: one search over the batch, since most hold no
    /// secret. Pieces of long lines are masked one by one, as their ends count.
    pub(super) fn clean(&self, valid: Option<&str>, redactor: &Redactor) -> bool {
        self.lines.iter().all(|span| span.whole)
            && valid.is_some_and(|all| matches!(redactor.mask(all), Cow::Borrowed(_)))
    }
}

/// A batch's buffers, to be filled again.
pub(super) type Spare = (Vec<u8>, Vec<Span>);

/// A stream cut into lines in the buffer it is read into, and a line longer than
/// [`MAX_LINE`] into pieces, each cut where it splits neither a UTF-8 character nor a secret
/// (each piece is masked on its own).
#[derive(Default)]
pub(super) struct Splitter {
    pub(super) bytes: Vec<u8>,
    lines: Vec<Span>,
    /// The buffers of the last batch, handed back to be filled again.
    pub(super) spare: Option<Spare>,
    /// Where the line not ended yet starts: everything before it is in `lines`.
    start: usize,
    /// How far from there the bytes hold no line end: a line that comes slowly is not
    /// searched again from its start at each read.
    scanned: usize,
}

impl Splitter {
    /// Cuts what was read into lines; at the end of the stream, what is left is the last.
    pub(super) fn cut(&mut self, redactor: &Redactor, eof: bool) {
        let mut from = self.scanned.max(self.start);
        while let Some(at) = memchr::memchr(b'\n', &self.bytes[from..]) {
            let end = from + at;
            // The line's length is its text's: a `\r` before its end does not count.
            let text_end = self.bytes[self.start..end]
                .iter()
                .rposition(|&b| b != b'\r')
                .map_or(self.start, |last| self.start + last + 1);
            self.pieces(redactor, text_end);
            self.push_span(self.start, text_end, true);
            self.start = end + 1;
            from = self.start;
        }
        self.scanned = self.bytes.len();
        // A line with no end in sight yet goes out in pieces as it comes; its last byte is
        // held back, as it may be the `\r` of a line end still to come.
        self.pieces(redactor, self.bytes.len().saturating_sub(1));
        if eof && self.start < self.bytes.len() {
            self.push_span(self.start, self.bytes.len(), false);
            self.start = self.bytes.len();
        }
    }

    /// Cuts pieces off the line up to `end` while more than [`MAX_LINE`] of it is left.
    fn pieces(&mut self, redactor: &Redactor, end: usize) {
        while end.saturating_sub(self.start) > MAX_LINE {
            let window = &self.bytes[self.start..self.start + MAX_LINE];
            let cut = redactor.safe_cut(&window[..char_boundary(window)]);
            self.push_span(self.start, self.start + cut, false);
            self.start += cut;
        }
    }

    fn push_span(&mut self, start: usize, mut end: usize, whole: bool) {
        while end > start && self.bytes[end - 1] == b'\r' {
            end -= 1;
        }
        self.lines.push(Span { start, end, whole });
    }

    /// The lines cut so far as a batch, with what follows them kept to go on with.
    pub(super) fn take(&mut self, stdout: bool) -> Option<Batch> {
        if self.lines.is_empty() {
            return None;
        }
        let (mut bytes, mut lines) = self.spare.take().unwrap_or_default();
        bytes.clear();
        lines.clear();
        bytes.extend_from_slice(&self.bytes[self.start..]);
        self.bytes.truncate(self.start);
        self.scanned -= self.start;
        self.start = 0;
        Some(Batch {
            bytes: std::mem::replace(&mut self.bytes, bytes),
            lines: std::mem::replace(&mut self.lines, lines),
            stdout,
        })
    }
}

/// The end of the last whole UTF-8 character of `bytes` (a character cut short at the end
/// is left out); never 0, so that invalid bytes still make progress.
fn char_boundary(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let width = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if width > back && back < len {
            len - back
        } else {
            len
        };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a splitter makes of `data` read `chunk` bytes at a time: each line or piece,
    /// and whether it is whole.
    fn split(data: &[u8], chunk: usize, redactor: &Redactor) -> Vec<(String, bool)> {
        let mut splitter = Splitter::default();
        let mut out = Vec::new();
        let mut take = |splitter: &mut Splitter| {
            if let Some(batch) = splitter.take(true) {
                let valid = batch.valid();
                for span in &batch.lines {
                    out.push((batch.text(valid, span).into_owned(), span.whole));
                }
                splitter.spare = Some((batch.bytes, batch.lines));
            }
        };
        for (n, piece) in data.chunks(chunk).enumerate() {
            splitter.bytes.extend_from_slice(piece);
            splitter.cut(redactor, false);
            if n % 3 == 0 {
                take(&mut splitter);
            }
        }
        splitter.cut(redactor, true);
        take(&mut splitter);
        out
    }

    #[test]
    fn lines_are_cut_the_same_however_they_are_read() {
        let data = b"one\r\ntwo\n\nthree\r\r\nlast without end";
        let want = vec![
            ("one".to_string(), true),
            ("two".to_string(), true),
            (String::new(), true),
            ("three".to_string(), true),
            ("last without end".to_string(), false),
        ];
        for chunk in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                split(data, chunk, &Redactor::default()),
                want,
                "read {chunk} at a time"
            );
        }
    }

    #[test]
    fn long_lines_come_in_bounded_pieces() {
        let data = vec![b'x'; MAX_LINE * 2 + 10];
        for chunk in [1000, MAX_LINE, 3 * MAX_LINE] {
            let sizes: Vec<(usize, bool)> = split(&data, chunk, &Redactor::default())
                .iter()
                .map(|(text, whole)| (text.len(), *whole))
                .collect();
            assert_eq!(sizes, [(MAX_LINE, false), (MAX_LINE, false), (10, false)]);
        }
        // As long as the limit, a line is whole, whatever ends it.
        for end in [&b"\n"[..], b"\r\n"] {
            let mut data = vec![b'y'; MAX_LINE];
            data.extend_from_slice(end);
            // Read with the line end cut in two as well.
            for chunk in [1000, MAX_LINE + 1] {
                let got = split(&data, chunk, &Redactor::default());
                assert_eq!(got.len(), 1, "{end:?} read {chunk} at a time");
                assert!(got[0].1);
            }
        }
    }

    #[test]
    fn long_lines_are_cut_between_characters_and_outside_secrets() {
        let mut data = "x".repeat(MAX_LINE - 1).into_bytes();
        data.extend("€€ end\nnext\n".as_bytes());
        for chunk in [100, 5000, MAX_LINE + 100] {
            let got = split(&data, chunk, &Redactor::default());
            assert_eq!(got.len(), 3, "{chunk}");
            assert_eq!(got[0], ("x".repeat(MAX_LINE - 1), false));
            assert_eq!(got[1], ("€€ end".to_string(), true));
            assert_eq!(got[2], ("next".to_string(), true));
        }

        let redactor = Redactor::default();
        redactor.add("s3cr3t-value");
        let mut data = "y".repeat(MAX_LINE - 5).into_bytes();
        data.extend(b"s3cr3t-value tail\n");
        let got = split(&data, 4096, &redactor);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), MAX_LINE - 5);
        assert_eq!(got[1], ("s3cr3t-value tail".to_string(), true));
        assert_eq!(redactor.mask(&got[1].0), "******** tail");
    }
}
