output "pod" {
  value = kubernetes_pod_v1.bootstrapper.metadata[0].name
}

output "status_command" {
  value = "kubectl --namespace ${var.namespace} exec ${local.name} --container bootstrapper -- bootstrapper status"
}

output "logs_command" {
  value = "kubectl --namespace ${var.namespace} logs --follow ${local.name} --container bootstrapper"
}
