output "haproxy_cfg" {
  value = templatefile("${path.module}/haproxy.cfg.tftpl", {
    listeners    = local.listeners
    bind_address = var.bind_address
    bind_options = var.bind_address == "::" ? " v4v6" : ""
  })
}

output "ports" {
  description = "The listener ports, for the Deployment's container ports and the Service."
  value       = { for name, l in local.listeners : name => l.port }
}
