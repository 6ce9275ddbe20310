pub mod command;
pub mod diagnostics;
pub mod local_state;
pub mod provision_event;
pub mod stream;
