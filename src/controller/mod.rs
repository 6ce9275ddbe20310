pub mod api;
pub mod cluster;
pub mod executor;
pub mod layout;
pub mod metrics;
pub mod reconcile;
pub mod serve;
pub mod tokens;
