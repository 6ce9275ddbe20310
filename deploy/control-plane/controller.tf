locals {
  controller_labels = { "app.kubernetes.io/name" = "bootstrapper-controller", "app.kubernetes.io/instance" = var.cluster_id }
  # An IPv6 address goes in brackets in a URL, an IPv4 one does not.
  hosts = {
    for name, ip in {
      backend = var.backend_ip, nomad = var.nomad_server_ip, consul = var.consul_access_ip
    } : name => strcontains(ip, ":") ? "[${trimsuffix(trimprefix(ip, "["), "]")}]" : ip
  }
  backend_url = "http://${local.hosts.backend}:8500"
  # What the original controller got, and what the tenant modules read: see
  # workflows/README.md. Undeclared ones are ignored by terraform but kept for templates.
  controller_env = merge({
    TF_VAR_remote_state_backend_url   = local.backend_url
    TF_VAR_nomad_cluster_id           = var.cluster_id
    TF_VAR_allow_multiple_tasks_in_az = tostring(length(var.az) != length(distinct(var.az)))
    TF_VAR_provision_from_kun         = "true"
    TF_VAR_ucloud_api_base_url        = var.ucloud_api_base_url
    TF_VAR_nomad_server_access_url    = "http://${local.hosts.nomad}:4646"
    TF_VAR_consul_access_url          = "http://${local.hosts.consul}:8500"
    TF_VAR_region                     = var.region
    TF_VAR_az                         = jsonencode(var.az)
    TF_VAR_project_id                 = var.project_id
    TF_VAR_vpc_id                     = var.vpc_id
    TF_VAR_subnet_id                  = var.subnet_id
    TF_VAR_rocketmq_docker_image      = var.rocketmq_docker_image
    "TF_VAR_terraform-image"          = var.terraform_image
    "TF_VAR_golang-image"             = var.golang_image
    NAMESVR_INDEX_IP                  = module.targets.namesvr_index_ip
    # rocketmq.toml clones the tree from here when the image carries none.
    BOOTSTRAPPER_CODE_GIT_URL = var.code_git_url
    BOOTSTRAPPER_CODE_GIT_REF = var.code_git_ref
  }, var.tenant_env)
}

resource "kubernetes_persistent_volume_claim_v1" "controller" {
  metadata {
    name      = "bootstrapper-controller-${var.cluster_id}"
    namespace = var.namespace
    labels    = local.controller_labels
  }
  spec {
    access_modes       = ["ReadWriteOnce"]
    storage_class_name = var.controller_storage_class
    resources {
      requests = { storage = var.controller_storage }
    }
  }
  wait_until_bound = false
}

resource "kubernetes_deployment_v1" "controller" {
  metadata {
    name      = "bootstrapper-controller-${var.cluster_id}"
    namespace = var.namespace
    labels    = local.controller_labels
  }
  spec {
    # One writer per root: two controllers would run two operations on one cluster.
    replicas = var.controller_replicas
    strategy {
      type = "Recreate"
    }
    selector {
      match_labels = local.controller_labels
    }
    template {
      metadata {
        labels = local.controller_labels
      }
      spec {
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = var.controller_grace_seconds + 30
        # The same image as the bootstrapper pod, from the same registry.
        dynamic "image_pull_secrets" {
          for_each = var.image_pull_secret == null ? [] : [var.image_pull_secret]
          content {
            name = image_pull_secrets.value
          }
        }
        security_context {
          run_as_user     = 10001
          run_as_group    = 10001
          run_as_non_root = true
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name  = "controller"
          image = var.controller_image
          args = [
            "serve",
            "--listen", "0.0.0.0:${var.controller_pod_port}",
            "--workflow", "/usr/share/bootstrapper/workflows/rocketmq.toml",
            "--root", "/var/lib/bootstrapper",
            "--tokens", "/etc/bootstrapper/tokens/tokens",
            "--grace", "${var.controller_grace_seconds}s",
          ]
          port {
            name           = "http"
            container_port = var.controller_pod_port
          }
          env {
            name  = "HOME"
            value = "/home/bootstrapper"
          }
          dynamic "env" {
            for_each = local.controller_env
            content {
              name  = env.key
              value = env.value
            }
          }
          env {
            name = "TF_VAR_ucloud_pubkey"
            value_from {
              secret_key_ref {
                name = var.cloud_keys_secret
                key  = "public-key"
              }
            }
          }
          env {
            name = "TF_VAR_ucloud_secret"
            value_from {
              secret_key_ref {
                name = var.cloud_keys_secret
                key  = "private-key"
              }
            }
          }
          # No liveness probe: a restart in the middle of an apply fixes nothing.
          readiness_probe {
            http_get {
              path = "/readyz"
              port = "http"
            }
            period_seconds = 10
          }
          resources {
            requests = { cpu = var.controller_cpu_request, memory = var.controller_memory_request }
            limits   = { cpu = var.controller_cpu_limit, memory = var.controller_memory_limit }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            run_as_non_root            = true
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "clusters"
            mount_path = "/var/lib/bootstrapper"
          }
          volume_mount {
            name       = "tokens"
            mount_path = "/etc/bootstrapper/tokens"
            read_only  = true
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
          volume_mount {
            name       = "home"
            mount_path = "/home/bootstrapper"
          }
        }
        volume {
          name = "clusters"
          persistent_volume_claim {
            claim_name = kubernetes_persistent_volume_claim_v1.controller.metadata[0].name
          }
        }
        volume {
          name = "tokens"
          secret {
            secret_name  = var.tokens_secret
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
      }
    }
  }
}

resource "kubernetes_service_v1" "controller" {
  metadata {
    # The original's name: callers address the controller by it.
    name      = "nomad-ctrl-service-${var.cluster_id}"
    namespace = var.namespace
    labels    = local.controller_labels
  }
  spec {
    selector = local.controller_labels
    port {
      name        = "http"
      port        = var.controller_svc_port
      target_port = "http"
    }
  }
}
