pub mod code;
pub mod plan;
pub mod reset;
pub mod validate;
