# Where HAProxy relays to and what the NameServer jobs advertise, from the load balancers the
# earlier steps created (lookup.tf finds them by name). No provider: a plain `terraform apply`
# computes it anywhere, so tests/first_apply.rs renders HAProxy's configuration from it for
# every env_name.

terraform {
  required_version = ">= 1.4"
}

variable "env_name" {
  description = "The hosts step's env_name."
  type        = string

  validation {
    condition     = contains(["test", "private", "public"], var.env_name)
    error_message = "env_name is test, private or public, as the tree's hosts read it."
  }
}

variable "load_balancers" {
  description = "Each load balancer HAProxy relays to, as looked up: its IPv6 address and its private IPv4 one. Keys: nomad, consul_backend, consul_tenants, namesvr."
  type = map(object({
    ipv6       = string
    private_ip = string
  }))

  validation {
    condition     = toset(keys(var.load_balancers)) == toset(["nomad", "consul_backend", "consul_tenants", "namesvr"])
    error_message = "load_balancers needs exactly nomad, consul_backend, consul_tenants and namesvr."
  }

  validation {
    # The ipv6 module answers null or "" when the lookup found nothing; HAProxy would then
    # start with a server it can never reach.
    condition     = alltrue([for lb in values(var.load_balancers) : can(regex(":", lb.ipv6))])
    error_message = "Every load balancer needs its IPv6 address: the management network reaches them only over IPv6."
  }
}

variable "namesvr_port" {
  description = "The NameServers' HTTP endpoint port on their load balancer (the hosts' namesvr_http_endpoint_port)."
  type        = number
  default     = 8080
}

variable "prometheus_port" {
  description = "Prometheus's port on the NameServers' load balancer (the hosts' prometheus_port)."
  type        = number
  default     = 9090
}

locals {
  lbs = var.load_balancers
}

output "backends" {
  description = "haproxy-config's backends."
  # IPv6 for every env_name: HAProxy's pods sit on the management network, which reaches the
  # internal load balancers only through their IPv6 addresses (the original relayed the same
  # way in every environment). A server's public IP, which the hosts step outputs for `test`,
  # is no load balancer and changes when the server does.
  value = {
    nomad          = { address = local.lbs.nomad.ipv6, port = 4646 }
    consul_backend = { address = local.lbs.consul_backend.ipv6, port = 8500 }
    consul_tenants = { address = local.lbs.consul_tenants.ipv6, port = 8500 }
    prometheus     = { address = local.lbs.namesvr.ipv6, port = var.prometheus_port }
    namesvr        = { address = local.lbs.namesvr.ipv6, port = var.namesvr_port }
  }
}

output "namesvr_index_ip" {
  description = "The NameServers' load balancer as the tenant jobs are told it (NAMESVR_INDEX_IP)."
  # As the original told the controller: reachable from the tenants' hosts over IPv6 only in
  # the public environment, over the client VPC elsewhere.
  value = var.env_name == "public" ? local.lbs.namesvr.ipv6 : local.lbs.namesvr.private_ip
}
