//! What becomes of a child's lines: read first by the caller's reader (stdout only), then
//! logged, told apart as errors by the caller's [`ErrorLines`], handed on, and the last
//! ones kept to explain a failure.

use std::borrow::Cow;
use std::collections::VecDeque;

use super::lines::Batch;
use crate::base::log::{Child, ChildLines, Logger};
use crate::base::secrets::Redactor;

/// How many of the last lines are kept to explain a failure.
const TAIL_LINES: usize = 40;

/// Reads a child's stdout lines (unmasked) before the log does: returns true for a line it
/// took care of, false for one to be logged as it is. What it logs itself goes through the
/// [`ChildLines`] it is given (flushed first, for anything else), to keep the order.
pub type StdoutReader<'a> = &'a mut dyn FnMut(&str, bool, &mut ChildLines) -> bool;

/// What a child's lines mean to the one who runs it: which of them open an error report
/// (logged as errors), and what the first such report says (the reason its failure gives).
/// Lines come masked as far as the log would mask them when asked [`ErrorLines::opens`],
/// fully masked when fed.
pub trait ErrorLines {
    /// Whether `line` opens an error report.
    fn opens(&self, line: &str) -> bool;

    /// Whether the next line is wanted, given whether it opens a report: a line nobody
    /// wants is not masked for it.
    fn wants(&self, opens: bool) -> bool;

    /// Takes a line, and whether it opens a report.
    fn feed(&mut self, line: &str, opens: bool);

    /// The first error report, once the child is done.
    fn first(&mut self) -> Option<String>;
}

/// Handles a child's lines a batch at a time, as they are read.
pub(super) struct Handler<'s, 'a> {
    logger: &'s Logger,
    label: &'s str,
    child: Child,
    redactor: Redactor,
    sink: ChildLines,
    /// The last lines, as read: masked only at the end.
    tail: VecDeque<String>,
    /// Where in the batch being handled the last lines not taken by the reader are.
    last: VecDeque<usize>,
    errors: Option<Box<dyn ErrorLines + 'a>>,
    on_line: Option<&'a mut dyn FnMut(&str)>,
    stdout_reader: Option<StdoutReader<'a>>,
}

impl<'s, 'a> Handler<'s, 'a> {
    pub(super) fn new(
        logger: &'s Logger,
        label: &'s str,
        child: Child,
        errors: Option<Box<dyn ErrorLines + 'a>>,
        on_line: Option<&'a mut dyn FnMut(&str)>,
        stdout_reader: Option<StdoutReader<'a>>,
    ) -> Self {
        Handler {
            logger,
            label,
            child,
            redactor: logger.redactor().clone(),
            sink: ChildLines::of(child, label),
            tail: VecDeque::with_capacity(TAIL_LINES),
            last: VecDeque::with_capacity(TAIL_LINES),
            errors,
            on_line,
            stdout_reader,
        }
    }

    pub(super) fn batch(&mut self, batch: &Batch) {
        let valid = batch.valid();
        // The log masks what it writes; a line is masked on its own only where
        // `mask_each_line` says so and the batch holds something to mask, and where it is
        // kept. Asked once per batch, at its first line the reader leaves to the log.
        let mut as_read = None;
        for (at, span) in batch.lines.iter().enumerate() {
            let text = batch.text(valid, span);
            if let (true, Some(reader)) = (batch.stdout, self.stdout_reader.as_mut()) {
                if reader(&text, span.whole, &mut self.sink) {
                    continue;
                }
            }
            let as_read = *as_read.get_or_insert_with(|| {
                !crate::base::log::mask_each_line(&self.redactor)
                    || batch.clean(valid, &self.redactor)
            });
            let line = if as_read {
                text
            } else {
                Cow::Owned(self.redactor.mask(&text).into_owned())
            };
            self.line(&line);
            if self.last.len() == TAIL_LINES {
                self.last.pop_front();
            }
            self.last.push_back(at);
        }
        self.keep_last(batch, valid);
        // A batch ends when the pipe has nothing more ready: show it now.
        self.sink.flush();
        crate::base::log::flush();
    }

    /// Logs a line the reader left, and hands it on.
    fn line(&mut self, line: &str) {
        let error = self.errors.as_ref().is_some_and(|e| e.opens(line));
        if error {
            self.sink.flush();
            self.logger.child_error(self.child, self.label, line);
        } else {
            self.sink.line(line);
        }
        if let Some(errors) = self.errors.as_mut().filter(|e| e.wants(error)) {
            errors.feed(&self.redactor.mask(line), error);
        }
        if let Some(on_line) = self.on_line.as_mut() {
            on_line(&self.redactor.mask(line));
        }
    }

    /// Only the batch's last lines can be in the tail, which is masked at the end.
    fn keep_last(&mut self, batch: &Batch, valid: Option<&str>) {
        for at in self.last.drain(..) {
            let text = batch.text(valid, &batch.lines[at]);
            // The line leaving the tail makes room for the new one, without allocating.
            let mut kept = if self.tail.len() == TAIL_LINES {
                self.tail.pop_front().unwrap_or_default()
            } else {
                String::new()
            };
            kept.clear();
            kept.push_str(&text);
            self.tail.push_back(kept);
        }
    }

    /// The last lines, masked, and the first error report.
    pub(super) fn finish(mut self) -> (Vec<String>, Option<String>) {
        let tail = self
            .tail
            .into_iter()
            .map(|line| self.redactor.mask(&line).into_owned())
            .collect();
        (tail, self.errors.as_mut().and_then(|e| e.first()))
    }
}
