//! The one way the engine runs a child process: logged, in its own process group, its output
//! streamed line by line in bounded memory, and stopped gently when the engine must stop.
//!
//! Stopping sends exactly one signal to the child itself (a second one may make it abandon
//! what it is saving), then waits; only when the grace period is nearly spent does the
//! whole group get SIGKILL. What its lines mean (which report an error) is its caller's to
//! say, through [`ErrorLines`].

mod command;
mod handler;
mod lines;
mod pipes;
mod program;
mod supervisor;

pub use command::{Command, Finished};
pub use handler::ErrorLines;
pub use program::find_program;
pub use supervisor::{Options, Stop, Supervisor};
