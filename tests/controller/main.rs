//! The controller (`bootstrapper serve`) driven by a real HTTP client over real terraform and
//! PostgreSQL.

#[path = "../support/mod.rs"]
mod support;

mod promises;
mod serve;
