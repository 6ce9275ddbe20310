pub mod disk;
pub mod journal;
pub mod lock;
pub mod source;
