variable "cluster_id" {
  type = string
}

variable "region" {}

variable "zone" {
  default = "a"
}

variable "broken" {
  default = 
