pub mod core;
pub mod decide;
pub mod destroy;
pub mod hold;
pub mod run;
pub mod schedule;
pub mod status;
