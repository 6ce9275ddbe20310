//! The `kubernetes` executor's pieces: each operation a Kubernetes Job, its params a
//! per-cluster Secret. [`job`] builds the objects, as pure functions of the operation and the
//! settings.

// The executor that sends these objects is not wired into `serve` yet: only tests use them.
#[allow(dead_code)]
pub mod job;
#[allow(dead_code)]
pub mod status;
#[allow(dead_code)]
pub mod strict;
