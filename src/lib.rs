//! bootstrapper: applies a workflow of Terraform root modules from inside a pod, resumably,
//! and safe to kill at any instant.
//!
//! Data flows one way, and the modules follow it:
//!
//! - [`cli`]: options and commands; maps every result to an exit code.
//! - [`workflow`], [`params`]: the input files, parsed with positions for errors.
//! - [`render`]: templates over params, env and earlier outputs; input digests.
//! - [`load`]: everything loaded and checked before anything runs.
//! - [`source`]: the code put on the PVC, atomically.
//! - [`run`]: applying the steps in order; [`destroy`]: destroying them in reverse.
//! - [`terraform`]: the terraform command lines of a step; [`local_state`]: a local state
//!   file kept whole across a kill in the middle of terraform's write.
//! - [`process`]: the one way a child process is run, streamed and stopped.
//! - [`journal`]: markers and attempts on the PVC; [`durable`]: crash-safe writes.
//! - [`lock`]: the one lock under the root; [`signals`]: SIGTERM and SIGINT.
//! - [`status`]: what the journal says, per step; [`plan`]: the dry run.
//! - [`secrets`]: masking; [`log`]: the log; [`clock`]: time; [`error`]: errors and exit codes.
//! - [`serve`]: the controller, an HTTP API over many instances of a tenant workflow:
//!   [`api`] its routes, [`cluster`] a cluster's intent and document, [`reconcile`] the
//!   operations that bring clusters to their intent, [`tokens`] who may call it, [`metrics`].

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod destroy;
pub mod durable;
pub mod error;
pub mod journal;
pub mod load;
pub mod local_state;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod params;
pub mod plan;
pub mod process;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod secrets;
pub mod serve;
pub mod signals;
pub mod source;
pub mod status;
pub mod terraform;
pub mod tokens;
pub mod workflow;
