locals {
  name   = "bootstrapper-${var.cluster_id}"
  labels = { "app.kubernetes.io/name" = "bootstrapper", "app.kubernetes.io/instance" = var.cluster_id }
}

resource "kubernetes_secret_v1" "cloud_keys" {
  metadata {
    name      = "${local.name}-cloud-keys"
    namespace = var.namespace
    labels    = local.labels
  }

  data = {
    public-key  = var.ucloud_public_key
    private-key = var.ucloud_private_key
  }
}

# The params without the passwords (variables.tf refuses a secret-sounding name among them).
resource "kubernetes_config_map_v1" "params" {
  metadata {
    name      = "${local.name}-params"
    namespace = var.namespace
    labels    = local.labels
  }

  data = {
    # What the bootstrap's control-plane step needs to know of this module's objects.
    "params.json" = jsonencode(merge(var.params, {
      cluster_id             = var.cluster_id
      namespace              = var.namespace
      controller_image       = var.image
      cloud_access_object    = kubernetes_secret_v1.cloud_keys.metadata[0].name
      controller_auth_object = kubernetes_secret_v1.controller_tokens.metadata[0].name
      # The controller runs the same image from the same registry, and its PVC needs a
      # StorageClass as much as this one does.
      image_pull_secret = var.image_pull_secret
      storage_class     = var.storage_class
    }))
  }
}

# The passwords: a Secret, mounted as a file that the engine reads with --secret-params, so
# that each of its values is masked whatever its name.
resource "kubernetes_secret_v1" "secret_params" {
  metadata {
    name      = "${local.name}-secret-params"
    namespace = var.namespace
    labels    = local.labels
  }

  data = {
    "secret-params.json" = jsonencode(var.secret_params)
  }
}

resource "kubernetes_persistent_volume_claim_v1" "project" {
  metadata {
    name      = "${local.name}-project"
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    access_modes       = ["ReadWriteOnce"]
    storage_class_name = var.storage_class

    resources {
      requests = {
        storage = var.storage_size
      }
    }
  }

  # With a WaitForFirstConsumer StorageClass the claim binds only once the pod exists, and the
  # pod is created after the claim.
  wait_until_bound = false

  lifecycle {
    # It holds the only copy of control-network's state. A change that replaces it (namespace,
    # cluster_id, storage_class, a smaller storage_size) would delete it without running
    # `bootstrapper destroy`; the plan stops instead. README, "Moving a control plane".
    prevent_destroy = true
  }
}

# A Deployment of one pod rather than a bare pod: after a node drain or a node's loss the pod
# is created again elsewhere with the same PVC, and the destroy hook below finds it by the
# Deployment's name.
resource "kubernetes_deployment_v1" "bootstrapper" {
  # Its last step needs the Role; on destroy, the binding outlives the destroy it runs.
  depends_on = [kubernetes_role_binding_v1.bootstrapper]

  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }

  # The pod may wait minutes for its image; the hook below must exist from the first apply on,
  # whatever the rollout does (`terraform output status_command` shows its progress).
  wait_for_rollout = false

  spec {
    # Exactly one engine on the PVC: the old pod stops before the new one starts.
    replicas = 1
    strategy {
      type = "Recreate"
    }
    selector {
      match_labels = local.labels
    }

    template {
      metadata {
        labels = local.labels
      }

      spec {
        restart_policy = "Always"
        # The engine gives terraform 25 s to save its state after SIGINT; the kubelet must not
        # SIGKILL before that.
        termination_grace_period_seconds = 60
        # The last step creates HAProxy and the controller through the API (rbac.tf).
        service_account_name            = kubernetes_service_account_v1.bootstrapper.metadata[0].name
        automount_service_account_token = true
        enable_service_links            = false

        security_context {
          run_as_user     = 10001
          run_as_group    = 10001
          run_as_non_root = true
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        dynamic "image_pull_secrets" {
          for_each = var.image_pull_secret == null ? [] : [var.image_pull_secret]
          content {
            name = image_pull_secrets.value
          }
        }

        container {
          name  = "bootstrapper"
          image = var.image
          args  = ["run", "--hold"]

          env {
            name  = "BOOTSTRAPPER_WORKFLOW"
            value = var.workflow
          }
          env {
            name  = "BOOTSTRAPPER_PARAMS"
            value = "/etc/bootstrapper/params/params.json"
          }
          env {
            name  = "BOOTSTRAPPER_SECRET_PARAMS"
            value = "/etc/bootstrapper/secret-params/secret-params.json"
          }
          env {
            name  = "BOOTSTRAPPER_ROOT"
            value = "/project"
          }
          env {
            name  = "HOME"
            value = "/home/bootstrapper"
          }
          env {
            name  = "TF_VAR_ucloud_api_base_url"
            value = var.ucloud_api_base_url
          }
          env {
            name = "TF_VAR_ucloud_pub_key"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.cloud_keys.metadata[0].name
                key  = "public-key"
              }
            }
          }
          env {
            name = "TF_VAR_ucloud_secret"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.cloud_keys.metadata[0].name
                key  = "private-key"
              }
            }
          }
          dynamic "env" {
            for_each = var.extra_env
            content {
              name  = env.key
              value = env.value
            }
          }

          volume_mount {
            name       = "params"
            mount_path = "/etc/bootstrapper/params"
            read_only  = true
          }
          volume_mount {
            name       = "secret-params"
            mount_path = "/etc/bootstrapper/secret-params"
            read_only  = true
          }
          volume_mount {
            name       = "project"
            mount_path = "/project"
          }
          # Terraform writes plugins' temporaries under /tmp and its CLI state under $HOME.
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
          volume_mount {
            name       = "home"
            mount_path = "/home/bootstrapper"
          }

          resources {
            requests = {
              cpu    = var.cpu_request
              memory = var.memory_request
            }
            limits = {
              cpu    = var.cpu_limit
              memory = var.memory_limit
            }
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            run_as_non_root            = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }

        volume {
          name = "params"
          config_map {
            name = kubernetes_config_map_v1.params.metadata[0].name
          }
        }
        volume {
          name = "secret-params"
          secret {
            secret_name  = kubernetes_secret_v1.secret_params.metadata[0].name
            default_mode = "0400"
          }
        }
        volume {
          name = "tmp"
          empty_dir {
            size_limit = "1Gi"
          }
        }
        volume {
          name = "home"
          empty_dir {
            size_limit = "1Gi"
          }
        }
        volume {
          name = "project"
          persistent_volume_claim {
            claim_name = kubernetes_persistent_volume_claim_v1.project.metadata[0].name
          }
        }
      }

    }
  }

  lifecycle {
    # The engine reads params and keys when it starts, and re-applies the steps whose inputs
    # changed; a new pod is how a change takes effect.
    replace_triggered_by = [
      kubernetes_config_map_v1.params,
      kubernetes_secret_v1.secret_params,
      kubernetes_secret_v1.cloud_keys,
    ]
  }
}

# Destroys what the pod built before the pod goes. It is not a provisioner on the pod itself:
# a destroy-time provisioner also runs whenever its resource is replaced, so a new image or
# new params would tear the whole cluster down. A failure stops `terraform destroy` with the
# pod and PVC still in place, so running it again resumes the destroy.
resource "terraform_data" "destroy_workflow" {
  depends_on = [kubernetes_deployment_v1.bootstrapper]

  input = {
    namespace  = var.namespace
    deployment = local.name
    kubeconfig = pathexpand(var.kubeconfig)
    context    = var.kube_context == null ? "" : var.kube_context
  }

  provisioner "local-exec" {
    when    = destroy
    command = "kubectl $${KUBE_CONTEXT:+--context \"$KUBE_CONTEXT\"} --namespace \"$NAMESPACE\" exec \"deployment/$DEPLOYMENT\" --container bootstrapper -- bootstrapper destroy"
    environment = {
      KUBECONFIG   = self.input.kubeconfig
      KUBE_CONTEXT = self.input.context
      NAMESPACE    = self.input.namespace
      DEPLOYMENT   = self.input.deployment
    }
  }
}
