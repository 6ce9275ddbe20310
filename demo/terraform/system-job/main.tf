terraform {
  required_version = ">= 1.4"

  # workspace_dir arrives through -backend-config: the directory control-network announced.
  backend "local" {}
}

variable "cluster_id" {
  type = string
}

variable "nomad_address" {
  type = string
}

variable "nomad_token" {
  type      = string
  sensitive = true
}

variable "name_server_count" {
  type    = number
  default = 2
}

variable "broker_count" {
  type    = number
  default = 2
}

resource "terraform_data" "name_server" {
  count = var.name_server_count

  input = {
    name  = "rocketmq-nameserver-${var.cluster_id}-${count.index}"
    nomad = var.nomad_address
  }

  # What a real job submission would authenticate with; kept out of the provisioner's
  # environment, where terraform would suppress its output for holding a secret.
  triggers_replace = sha256(var.nomad_token)

  # Values reach the shell through the environment, never spliced into the command.
  provisioner "local-exec" {
    command = "echo \"registered system job $JOB with $NOMAD_ADDR\""
    environment = {
      JOB        = self.input.name
      NOMAD_ADDR = self.input.nomad
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "echo \"deregistered system job $JOB\""
    environment = {
      JOB = self.input.name
    }
  }
}

resource "terraform_data" "broker" {
  count      = var.broker_count
  depends_on = [terraform_data.name_server]

  input = {
    name  = "rocketmq-broker-${var.cluster_id}-${count.index}"
    nomad = var.nomad_address
  }

  provisioner "local-exec" {
    command = "echo \"registered system job $JOB with $NOMAD_ADDR\""
    environment = {
      JOB        = self.input.name
      NOMAD_ADDR = self.input.nomad
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "echo \"deregistered system job $JOB\""
    environment = {
      JOB = self.input.name
    }
  }
}

output "name_servers" {
  value = [for n in terraform_data.name_server : "${n.output.name}:9876"]
}
