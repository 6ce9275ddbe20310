variable "cluster_id" {}
variable "region" {}
