# The controller's bearer tokens, mounted by it as a file (one token a line; generated-token.tf
# makes one when none is given). The bootstrap's control-plane step names this Secret; it never
# reads it.
resource "kubernetes_secret_v1" "controller_tokens" {
  metadata {
    name      = "${local.name}-controller-tokens"
    namespace = var.namespace
    labels    = local.labels
  }

  data = {
    tokens = join("", [for t in local.controller_tokens : "${t}\n"])
  }
}
