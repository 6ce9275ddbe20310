pub mod file;
pub mod graph;
pub mod load;
pub mod module_vars;
pub mod params;
pub mod render;
pub mod tfvars;
