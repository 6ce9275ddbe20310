//! The engine end to end: the built binary against real terraform, PostgreSQL and git, one
//! module per promise. One binary, so the support code compiles once and PostgreSQL starts
//! once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod bad_inputs;
mod compat;
mod decisions;
mod diff;
mod hardening;
mod harness;
mod job_options;
mod layers;
mod lifecycle;
mod overlay;
mod parallel;
mod plan;
mod pod;
mod races;
mod run;
mod secrets;
mod source;
mod stream;
mod tfvars;
mod torture;
mod torture_diamond;
