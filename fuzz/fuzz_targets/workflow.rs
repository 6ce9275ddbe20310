//! The workflow loader on arbitrary input: parsing, then everything `validate` does with what
//! parses (rendering the source and every step, placeholders standing for outputs), then
//! printing every problem. None of it may panic or hang, whatever the file says.

#![no_main]

use std::path::Path;

use bootstrapper::workflow::load::{self, Loaded};
use bootstrapper::base::secrets::Redactor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: `vars` paths relative to it never reach real files.
    let path = Path::new("/nonexistent/bootstrapper-fuzz/workflow.toml");
    let workflow = match bootstrapper::workflow::file::parse(path, text) {
        Ok(workflow) => workflow,
        Err(problems) => {
            let _ = problems.to_string();
            return;
        }
    };
    let params = serde_json::json!({
        "cluster_id": "c1",
        "region": "cn-bj2",
        "az": ["a", "b"],
        "count": 3,
        "root_password": "hunter22",
        "nested": {"api_token": "tok-1234"}
    });
    let env = vec![("TF_VAR_secret".to_string(), "env-secret".to_string())];
    let redactor = Redactor::from_inputs(&params, &env);
    let loaded = Loaded {
        workflow,
        params,
        env,
        redactor,
    };
    if let Err(problems) = load::check(&loaded, &Default::default(), load::Modules::Later) {
        let _ = loaded.redactor.mask(&problems.to_string());
    }
});
