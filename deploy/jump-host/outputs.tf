output "deployment" {
  value = kubernetes_deployment_v1.bootstrapper.metadata[0].name
}

output "status_command" {
  value = "kubectl --namespace ${var.namespace} exec deployment/${local.name} --container bootstrapper -- bootstrapper status"
}

output "logs_command" {
  value = "kubectl --namespace ${var.namespace} logs --follow deployment/${local.name} --container bootstrapper"
}

output "controller_tokens_secret" {
  value = kubernetes_secret_v1.controller_tokens.metadata[0].name
}

output "cloud_keys_secret" {
  value = kubernetes_secret_v1.cloud_keys.metadata[0].name
}
