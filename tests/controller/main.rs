//! The controller (`bootstrapper serve`) driven by a real HTTP client over real terraform and
//! PostgreSQL.

#[path = "../support/mod.rs"]
mod support;

mod fake_kube;
mod http;
mod inputs;
mod jobs;
mod jobs_code;
mod jobs_e2e;
mod jobs_faults;
mod jobs_load;
mod jobs_results;
mod paths;
mod plan;
mod promises;
mod records;
mod rollout;
mod serve;
