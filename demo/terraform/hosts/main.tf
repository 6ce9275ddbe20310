terraform {
  required_version = ">= 1.4"

  # workspace_dir arrives through -backend-config: the directory control-network announced.
  backend "local" {}
}

variable "cluster_id" {
  type = string
}

variable "subnet_ids" {
  type = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "Hosts need at least one subnet from the network step."
  }
}

variable "nomad_server_count" {
  type    = number
  default = 3
}

variable "nomad_client_count" {
  type    = number
  default = 2
}

variable "root_password" {
  type      = string
  sensitive = true
}

resource "terraform_data" "nomad_server" {
  count = var.nomad_server_count

  input = {
    name          = "nomad-server-${var.cluster_id}-${count.index}"
    subnet_id     = var.subnet_ids[count.index % length(var.subnet_ids)]
    root_password = var.root_password
  }
}

resource "terraform_data" "nomad_client" {
  count = var.nomad_client_count

  input = {
    name          = "nomad-client-${var.cluster_id}-${count.index}"
    subnet_id     = var.subnet_ids[count.index % length(var.subnet_ids)]
    root_password = var.root_password
  }
}

resource "terraform_data" "nomad_server_lb" {
  input = {
    name      = "nomad-server-lb-${var.cluster_id}"
    subnet_id = var.subnet_ids[0]
    members   = terraform_data.nomad_server[*].id
  }
}

output "nomad_address" {
  value = "http://${terraform_data.nomad_server_lb.output.name}:4646"
}

output "nomad_client_ids" {
  value = terraform_data.nomad_client[*].id
}

# Stands for the token Nomad's ACL bootstrap returns: a secret the next step needs. Terraform
# prints it nowhere; bootstrapper keeps it out of its logs, reports and markers.
output "nomad_token" {
  value     = sha256("${terraform_data.nomad_server_lb.id}/acl-bootstrap")
  sensitive = true
}
