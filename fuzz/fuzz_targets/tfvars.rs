//! The tfvars checks on arbitrary input: the first byte picks HCL or JSON and whether a
//! placeholder stands for a value not known yet; the rest is the rendered text, parsed as
//! `validate` parses it and every flaw placed in a template of the same text. None of it may
//! panic or hang, whatever the text says.

#![no_main]

use std::path::Path;

use bootstrapper::workflow::render::placeholder;
use bootstrapper::workflow::tfvars::{self, Syntax};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let syntax = if mode & 1 == 0 {
        Syntax::Hcl
    } else {
        Syntax::Json
    };
    let unknown = if mode & 2 == 0 {
        Vec::new()
    } else {
        vec![placeholder("network", "id")]
    };
    let _ = tfvars::parse(syntax, text, &unknown);
    // The template differs from the rendered text when asked, so both ways of placing a
    // problem (in the template, in the rendered text) are taken.
    let template = if mode & 4 == 0 {
        text.to_string()
    } else {
        text.replace('x', "{{ x }}")
    };
    let source = tfvars::Source {
        step: "network",
        template: Path::new("network.tfvars.tera"),
        template_text: &template,
        syntax,
        rendered: text,
    };
    if let Err(problems) = source.check(&unknown) {
        let _ = problems.to_string();
    }
});
