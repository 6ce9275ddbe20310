# Who may talk to the control plane's pods, and the namespace's Pod Security level: created
# here, with the operator's rights, so that the bootstrapper's Role stays exactly what its last
# step creates. Egress stays open: terraform reaches the cloud API, the Consul backend, Nomad
# and git; HAProxy reaches the internal load balancers. The ports are the pods' named ports,
# so a port changed through the control-plane step's variables stays allowed.

resource "kubernetes_labels" "pod_security" {
  count       = var.pod_security_labels ? 1 : 0
  api_version = "v1"
  kind        = "Namespace"
  metadata {
    name = var.namespace
  }
  labels = {
    "pod-security.kubernetes.io/enforce"         = "restricted"
    "pod-security.kubernetes.io/enforce-version" = "latest"
  }
}

locals {
  # What each pod may be reached on; none for the bootstrapper, which serves nothing.
  ingress_ports = {
    bootstrapper              = []
    "bootstrapper-controller" = ["http"]
    haproxy                   = ["nomad", "consul-backend", "consul-tenants", "prometheus", "namesvr"]
  }
}

resource "kubernetes_network_policy_v1" "ingress" {
  for_each = local.ingress_ports

  metadata {
    name      = "${each.key}-${var.cluster_id}"
    namespace = var.namespace
    labels    = { "app.kubernetes.io/name" = each.key, "app.kubernetes.io/instance" = var.cluster_id }
  }

  spec {
    pod_selector {
      match_labels = { "app.kubernetes.io/name" = each.key, "app.kubernetes.io/instance" = var.cluster_id }
    }
    policy_types = ["Ingress"]

    dynamic "ingress" {
      for_each = length(each.value) == 0 ? [] : [each.value]
      content {
        dynamic "ports" {
          for_each = ingress.value
          content {
            port     = ports.value
            protocol = "TCP"
          }
        }
      }
    }
  }
}
