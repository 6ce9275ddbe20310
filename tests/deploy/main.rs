//! What ships beside the binary: the manifests, the jump-host and control-plane Terraform,
//! HAProxy's configuration, the provider mirror, and the workflows against the seed's tree.

#[path = "../support/mod.rs"]
mod support;

mod control_plane_rbac;
mod deploy_secrets;
mod first_apply;
mod haproxy;
mod provider_mirror;
mod seed_fidelity;
