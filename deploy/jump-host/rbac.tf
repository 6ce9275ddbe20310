# The bootstrapper's identity: its last step creates HAProxy and the controller in this
# namespace through the Kubernetes API (their ConfigMap, Deployments, Services and PVC) and
# nothing else. It reads no Secret: the Deployments name theirs.
resource "kubernetes_service_account_v1" "bootstrapper" {
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }
  automount_service_account_token = false
}

resource "kubernetes_role_v1" "bootstrapper" {
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }
  rule {
    api_groups = [""]
    resources  = ["configmaps", "services", "persistentvolumeclaims"]
    verbs      = ["get", "list", "watch", "create", "update", "patch", "delete"]
  }
  rule {
    api_groups = ["apps"]
    resources  = ["deployments"]
    verbs      = ["get", "list", "watch", "create", "update", "patch", "delete"]
  }
}

resource "kubernetes_role_binding_v1" "bootstrapper" {
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.bootstrapper.metadata[0].name
    namespace = var.namespace
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.bootstrapper.metadata[0].name
  }
}
