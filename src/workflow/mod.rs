pub mod file;
pub(crate) mod graph;
pub mod load;
pub(crate) mod module_vars;
pub(crate) mod params;
pub mod render;
pub mod tfvars;
