pub(crate) mod clock;
pub(crate) mod durable;
pub mod error;
pub(crate) mod json;
pub(crate) mod log;
pub mod secrets;
pub(crate) mod signals;
pub(crate) mod size;
