pub(crate) mod command;
pub(crate) mod diagnostics;
pub(crate) mod local_state;
pub(crate) mod plan;
pub mod provision_event;
pub(crate) mod stream;
