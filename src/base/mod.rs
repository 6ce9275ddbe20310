pub mod clock;
pub mod durable;
pub mod error;
pub mod json;
pub mod log;
pub mod secrets;
pub mod signals;
pub mod size;
