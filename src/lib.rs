//! bootstrapper: applies a workflow of Terraform root modules from inside a pod, resumably,
//! and safe to kill at any instant; and the controller that runs many instances of one.
//!
//! # Layout
//!
//! Two programs share one crate: the **engine** (`run`, `destroy`, `status`, `plan`, …), and
//! the **controller** (`serve`), which runs the engine once per operation. The folders are
//! layers, listed from the bottom; a module imports only from its own layer or those below
//! it (`tests/layers.rs` fails on an import that points up, or on any cycle).
//!
//! - [`base`]: errors and exit codes, clock, secrets and masking, the log, signals, durable
//!   writes, strict reading of typed objects. Knows nothing of terraform or workflows.
//! - [`workflow`]: the input files (workflow, params), rendering templates over params, env
//!   and earlier outputs, tfvars in either syntax, a module's variables, the graph of steps,
//!   and `load`, which checks all of it before anything runs.
//! - [`process`]: the one way a child process is run, its output streamed and masked, and
//!   stopped (one SIGINT, grace, then SIGKILL). Knows nothing of terraform.
//! - [`terraform`]: terraform's command lines, its `-json` stream and diagnostics, the
//!   provisioner event read without a general parse, and a local state kept whole.
//! - [`root`]: what lives on the PVC: the journal (markers, attempts), the lock, free
//!   space, and the code put there atomically (copied or cloned).
//! - [`engine`]: deciding per step (apply, skip, destroy, and why), scheduling along the
//!   graph, `run`, `destroy`, the entrypoint's hold, `status`, `diff` (terraform's plans,
//!   which `run --reviewed` applies).
//! - [`commands`]: the commands that only read or forget: `plan` (the dry run),
//!   `validate`, `reset`.
//! - [`controller`]: `serve`: the HTTP API, each cluster's durable intent and document, the
//!   reconciler that decides, the executor that runs engine commands, tokens, metrics.
//! - [`cli`]: the top: every clap type, turned into plain options for the layers below; maps
//!   every result to an exit code.

// Public for the fuzz targets and the tests, which drive the parsers directly; the layers above
// them are the crate's own.
pub mod base;
pub mod cli;
pub(crate) mod commands;
pub(crate) mod controller;
pub(crate) mod engine;
pub(crate) mod process;
pub(crate) mod root;
pub mod terraform;
pub mod workflow;
