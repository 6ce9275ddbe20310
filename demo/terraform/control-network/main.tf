# Stands for the three-node Consul cluster whose KV holds every later step's state. Its own
# state stays local, on the PVC, because no backend exists before it.
terraform {
  required_version = ">= 1.4"
}

variable "cluster_id" {
  type = string
}

variable "region" {
  type = string
}

variable "az" {
  type = list(string)
}

variable "controller_cidr" {
  type = string
}

variable "consul_server_count" {
  type    = number
  default = 3
}

resource "terraform_data" "consul_server" {
  count = var.consul_server_count

  input = {
    name   = "consul-server-${var.cluster_id}-${count.index}"
    region = var.region
    az     = var.az[count.index % length(var.az)]
    ip     = cidrhost(var.controller_cidr, 10 + count.index)
  }
}

resource "terraform_data" "consul_lb" {
  input = {
    name    = "consul-backend-lb-${var.cluster_id}"
    ip      = cidrhost(var.controller_cidr, 5)
    members = terraform_data.consul_server[*].output.ip
  }
}

locals {
  # The "KV" is a directory beside the code tree (<root>/state, this module being
  # <root>/demo/control-network), so the states survive a fresh copy of the code.
  state_dir = abspath("${path.root}/../../state")
}

output "state_dir" {
  value = local.state_dir
}

output "consul_address" {
  value = "${terraform_data.consul_lb.output.ip}:8500"
}
