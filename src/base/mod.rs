pub(crate) mod clock;
pub(crate) mod durable;
pub mod error;
pub(crate) mod json;
pub(crate) mod log;
pub mod secrets;
pub(crate) mod signals;
pub(crate) mod size;
// Public for the tests' stand-in Kubernetes API server, which reads what it is sent as the
// real one does under strict field validation.
pub mod strict;
