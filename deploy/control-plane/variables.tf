variable "namespace" {
  description = "The namespace of the bootstrapper pod; its Role allows exactly what this module creates there."
  type        = string
}

variable "cluster_id" {
  description = "The bootstrap's cluster id: names the objects, and is the Nomad cluster the tenants' clusters run on."
  type        = string
}

variable "haproxy_image" {
  description = "HAProxy image, pinned by digest."
  type        = string

  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.haproxy_image))
    error_message = "Pin the image by digest (…@sha256:<64 hex digits>): a tag can move under a running control plane."
  }
}

variable "controller_image" {
  description = "The bootstrapper image (it also carries the tenant workflow), pinned by digest."
  type        = string

  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.controller_image))
    error_message = "Pin the image by digest (…@sha256:<64 hex digits>): a tag can move under a running control plane."
  }
}

variable "backend_ip" {
  description = "control-network's backend_ip: the Consul load balancer that holds every state."
  type        = string
}

variable "nomad_server_ip" {
  description = "The hosts step's nomad_server_ip: the Nomad servers' load balancer."
  type        = string
}

variable "consul_access_ip" {
  description = "The hosts step's consul_access_ip: the Consul the tenants' jobs use."
  type        = string
}

variable "namesvr_lb_ip" {
  description = "The NameServers' internal load balancer (nameServerInternalLb-<cluster_id>), which fronts the NameServer HTTP endpoint and Prometheus alike."
  type        = string
}

variable "region" {
  type = string
}

variable "az" {
  type = list(string)
}

variable "project_id" {
  type = string
}

variable "vpc_id" {
  description = "The hosts step's clientVpcId."
  type        = string
}

variable "subnet_id" {
  description = "The hosts step's clientSubnetId."
  type        = string
}

variable "ucloud_api_base_url" {
  type    = string
  default = "https://api.ucloud.cn"
}

variable "cloud_keys_secret" {
  description = "The existing Secret with the cloud keys (public-key, private-key), made by the jump host."
  type        = string
}

variable "tokens_secret" {
  description = "The existing Secret whose `tokens` key lists the controller's bearer tokens, one a line."
  type        = string
}

variable "rocketmq_docker_image" {
  description = "The RocketMQ image repository the tenants' clusters run (the version is a tenant's param)."
  type        = string
  default     = "uhub.service.ucloud.cn/lonegunmanb/rocketmq"
}

variable "terraform_image" {
  description = "The image the NameServer and broker jobs run terraform in (binding EIPs)."
  type        = string
  default     = "uhub.service.ucloud.cn/lonegunmanb/terraform:0.12.10"
}

variable "golang_image" {
  description = "The image the NameServer's HTTP endpoint runs in."
  type        = string
  default     = "uhub.service.ucloud.cn/lonegunmanb/golang:alpine"
}

variable "tenant_env" {
  description = "More environment for the controller and the tenant workflow it runs."
  type        = map(string)
  default     = {}
}

variable "controller_storage" {
  type    = string
  default = "10Gi"
}

variable "controller_grace_seconds" {
  description = "The controller's --grace; the pod's termination grace period is 30 s longer."
  type        = number
  default     = 90
}
