output "haproxy_service" {
  description = "The Service the management network reaches the control plane through."
  value       = kubernetes_service_v1.haproxy.metadata[0].name
}

output "controller_url" {
  value = "http://${kubernetes_service_v1.controller.metadata[0].name}.${var.namespace}.svc:${var.controller_svc_port}"
}

output "haproxy_cfg" {
  value = module.haproxy_config.haproxy_cfg
}
