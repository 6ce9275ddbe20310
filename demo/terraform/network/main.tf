terraform {
  required_version = ">= 1.4"

  # workspace_dir arrives through -backend-config: the directory control-network announced.
  backend "local" {}
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

variable "mgr_vpc_cidr" {
  type = string
}

variable "client_vpc_cidr" {
  type = string
}

resource "terraform_data" "mgr_vpc" {
  input = {
    name   = "mgr-vpc-${var.cluster_id}"
    region = var.region
    cidr   = var.mgr_vpc_cidr
  }
}

resource "terraform_data" "client_vpc" {
  input = {
    name   = "client-vpc-${var.cluster_id}"
    region = var.region
    cidr   = var.client_vpc_cidr
  }
}

resource "terraform_data" "client_subnet" {
  count = length(distinct(var.az))

  input = {
    name   = "client-subnet-${var.cluster_id}-${count.index}"
    vpc_id = terraform_data.client_vpc.id
    az     = distinct(var.az)[count.index]
    cidr   = cidrsubnet(var.client_vpc_cidr, 8, count.index)
  }
}

output "mgr_vpc_id" {
  value = terraform_data.mgr_vpc.id
}

output "client_vpc_id" {
  value = terraform_data.client_vpc.id
}

output "subnet_ids" {
  value = terraform_data.client_subnet[*].id
}
