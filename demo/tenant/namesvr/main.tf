# Stands for rocketmq-job-namesvr: the cluster's NameServers behind one load balancer, whose
# address is what the tenant is given.
terraform {
  required_version = ">= 1.4"
}

variable "cluster_id" {
  type = string
}

variable "namesvr_count" {
  type    = number
  default = 2

  validation {
    condition     = var.namesvr_count >= 1 && floor(var.namesvr_count) == var.namesvr_count
    error_message = "namesvr_count is a whole number of NameServers, at least 1."
  }
}

resource "terraform_data" "namesvr" {
  count = var.namesvr_count
  input = {
    name = "namesvr-${var.cluster_id}-${count.index}"
    ip   = cidrhost("10.40.0.0/16", 10 + count.index)
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

resource "terraform_data" "lb" {
  input = {
    name    = "namesvr-lb-${var.cluster_id}"
    members = terraform_data.namesvr[*].output.ip
  }
}

output "address" {
  value = "10.40.0.5:9876"
}
