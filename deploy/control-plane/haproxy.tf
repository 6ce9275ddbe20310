locals {
  haproxy_labels = { "app.kubernetes.io/name" = "haproxy", "app.kubernetes.io/instance" = var.cluster_id }
  # The same port numbers as the original: 4646 Nomad, 8500 the backend Consul, 8501 the
  # tenants' Consul, 9090 Prometheus, 8080 the NameServers' HTTP endpoint.
  haproxy_ports = module.haproxy_config.ports
}

module "haproxy_config" {
  source = "./haproxy-config"
  # Every target from the load balancers the earlier steps created (lookup.tf).
  backends = module.targets.backends
}

resource "kubernetes_config_map_v1" "haproxy" {
  metadata {
    name      = "haproxy-${var.cluster_id}"
    namespace = var.namespace
    labels    = local.haproxy_labels
  }
  data = {
    "haproxy.cfg" = module.haproxy_config.haproxy_cfg
  }
}

resource "kubernetes_deployment_v1" "haproxy" {
  metadata {
    name      = "haproxy-${var.cluster_id}"
    namespace = var.namespace
    labels    = local.haproxy_labels
  }
  spec {
    replicas = var.haproxy_replicas
    selector {
      match_labels = local.haproxy_labels
    }
    template {
      metadata {
        labels = local.haproxy_labels
        # A new configuration rolls the pods: HAProxy reads it only at start.
        annotations = { "checksum/haproxy.cfg" = sha256(module.haproxy_config.haproxy_cfg) }
      }
      spec {
        automount_service_account_token = false
        enable_service_links            = false
        security_context {
          # Any uid reads the config; none needs the image's haproxy user, and a high one
          # clashes with no host user.
          run_as_user     = 10099
          run_as_group    = 10099
          run_as_non_root = true
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name  = "haproxy"
          image = var.haproxy_image
          args  = ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
          dynamic "port" {
            for_each = local.haproxy_ports
            content {
              name           = replace(port.key, "_", "-")
              container_port = port.value
            }
          }
          readiness_probe {
            tcp_socket {
              port = local.haproxy_ports["nomad"]
            }
          }
          resources {
            requests = { cpu = "100m", memory = "64Mi" }
            limits   = { cpu = "1", memory = "256Mi" }
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
            name       = "config"
            mount_path = "/usr/local/etc/haproxy"
            read_only  = true
          }
          volume_mount {
            name       = "run"
            mount_path = "/var/run"
          }
        }
        volume {
          name = "config"
          config_map {
            name = kubernetes_config_map_v1.haproxy.metadata[0].name
          }
        }
        volume {
          name = "run"
          empty_dir {
            size_limit = "16Mi"
          }
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "haproxy" {
  metadata {
    # The original's name: the management network addresses the control plane by it.
    name      = var.cluster_id
    namespace = var.namespace
    labels    = local.haproxy_labels
  }
  spec {
    selector = local.haproxy_labels
    dynamic "port" {
      for_each = local.haproxy_ports
      content {
        name        = replace(port.key, "_", "-")
        port        = port.value
        target_port = replace(port.key, "_", "-")
      }
    }
  }
}
