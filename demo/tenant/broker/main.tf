# Stands for rocketmq-job-broker: the brokers, registered with the cluster's NameServers.
terraform {
  required_version = ">= 1.4"
}

variable "cluster_id" {
  type = string
}

variable "broker_count" {
  type    = number
  default = 2

  validation {
    condition     = var.broker_count >= 1 && floor(var.broker_count) == var.broker_count
    error_message = "broker_count is a whole number of brokers, at least 1."
  }
}

variable "namesvr_address" {
  type = string
}

resource "terraform_data" "broker" {
  count = var.broker_count
  input = {
    name    = "broker-${var.cluster_id}-${count.index}"
    namesrv = var.namesvr_address
  }

  provisioner "local-exec" {
    command     = "echo \"create $NAME\" >> ledger"
    environment = { NAME = self.input.name }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "echo \"destroy $NAME\" >> ledger"
    environment = { NAME = self.input.name }
  }
}

output "brokers" {
  value = terraform_data.broker[*].input.name
}
