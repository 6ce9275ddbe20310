pub mod disk;
pub mod journal;
pub mod lock;
pub mod recorded;
pub mod source;
