//! bootstrapper: applies a workflow of Terraform root modules from inside a pod, resumably,
//! and safe to kill at any instant.
//!
//! Data flows one way, and the modules follow it:
//!
//! - [`cli`]: options and commands; maps every result to an exit code.
//! - [`workflow`], [`params`]: the input files, parsed with positions for errors.
//! - [`render`]: templates over params, env and earlier outputs; input digests.
//! - [`load`]: everything loaded and checked before anything runs; [`tfvars`]: a step's
//!   rendered vars, parsed in either syntax; [`module_vars`]: the variables a step's module
//!   declares, checked against what the step sets (and whether it has sensitive outputs).
//! - [`source`]: the code put on the PVC, atomically.
//! - [`decide`]: the one place that decides, for every step, apply, skip or destroy, why,
//!   and the exact commands; [`plan`] prints it, [`run`] and [`destroy`] carry it out.
//! - [`graph`]: which steps wait for which (`needs`, output references, file order);
//!   [`schedule`]: running them as the graph allows, several at once.
//! - [`engine`]: what `run` and `destroy` share (checks and lock, code, retries, running one
//!   step's commands); [`run`]: applying the steps along the graph; [`destroy`]: destroying
//!   them along the reversed graph.
//! - [`terraform`]: the terraform command lines of a step; [`local_state`]: a local state
//!   file kept whole across a kill in the middle of terraform's write.
//! - [`process`]: the one way a child process is run, streamed and stopped; [`stream`]:
//!   terraform's `-json` events read as they come (progress, diagnostics, outputs, what
//!   kind of failure it was); [`provision_event`]: the one event that comes by the
//!   million, a provisioner's output, read without a general parse.
//! - [`journal`]: markers and attempts on the PVC; [`durable`]: crash-safe writes;
//!   [`disk`]: room on the PVC for terraform to save its state.
//! - [`lock`]: the one lock under the root; [`signals`]: SIGTERM and SIGINT; [`hold`]: the
//!   entrypoint's idle, and a pod stop passed on to the command holding the lock.
//! - [`status`]: what the journal says, per step; [`plan`]: the dry run.
//! - [`secrets`]: masking; [`log`]: every log line a `tracing` event, masked, as text or JSON;
//!   [`clock`]: time; [`error`]: errors and exit codes.
//! - [`serve`]: the controller, an HTTP API over many instances of a tenant workflow:
//!   [`api`] its routes, [`cluster`] a cluster's intent and document, [`reconcile`] the
//!   operations that bring clusters to their intent, [`tokens`] who may call it, [`metrics`].

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod decide;
pub mod destroy;
pub mod disk;
pub mod durable;
pub mod engine;
pub mod error;
pub mod graph;
pub mod hold;
pub mod journal;
pub mod load;
pub mod local_state;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod module_vars;
pub mod params;
pub mod plan;
pub mod process;
pub mod provision_event;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod schedule;
pub mod secrets;
pub mod serve;
pub mod signals;
pub mod source;
pub mod status;
pub mod stream;
pub mod terraform;
pub mod tfvars;
pub mod tokens;
pub mod workflow;
