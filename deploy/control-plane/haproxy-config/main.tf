# The haproxy.cfg of the control plane, from the bootstrap's outputs. It needs no provider, so
# a plain `terraform apply` renders it anywhere (tests/haproxy.rs does, and runs the result).

locals {
  listeners = {
    for name, backend in var.backends : name => {
      port = var.ports[name]
      # HAProxy reads the last colon as the port separator, so a bare IPv6 address works;
      # brackets from a URL-style output are taken off.
      address     = trimsuffix(trimprefix(backend.address, "["), "]")
      target_port = backend.port
    }
  }
}
