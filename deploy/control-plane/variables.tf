variable "namespace" {
  description = "The namespace of the bootstrapper pod; its Role allows exactly what this module creates there."
  type        = string
}

variable "cluster_id" {
  description = "The bootstrap's cluster id: names the objects (HAProxy's Service is named after it alone), and is the Nomad cluster the tenants' clusters run on."
  type        = string

  validation {
    # The jump host's rule: nomad-ctrl-service-<id>, a Service name, must stay a 63-character
    # DNS label.
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.cluster_id)) && length(var.cluster_id) <= 40
    error_message = "cluster_id must be a lowercase DNS label of at most 40 characters: it is part of Kubernetes object names."
  }
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

variable "env_name" {
  description = "The hosts step's env_name; it decides only NAMESVR_INDEX_IP (targets/)."
  type        = string
}

variable "ipv6_api_url" {
  description = "The API the tree's ipv6 module asks for a load balancer's IPv6 address."
  type        = string
}

variable "region_id" {
  type = string
}

variable "namesvr_http_endpoint_port" {
  description = "The hosts' namesvr_http_endpoint_port: the NameServers' load balancer listens on it."
  type        = number
  default     = 8080
}

variable "prometheus_port" {
  description = "The hosts' prometheus_port: the NameServers' load balancer listens on it."
  type        = number
  default     = 9090
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

# From the pod's environment (TF_VAR_*), as every step of the bootstrap gets them.
variable "ucloud_pub_key" {
  type      = string
  sensitive = true
}

variable "ucloud_secret" {
  type      = string
  sensitive = true
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
  description = "More environment for the controller and the tenant workflow it runs (the original's controller_env_map); it wins over the module's own."
  type        = map(string)
  default     = {}
}

variable "controller_storage" {
  type    = string
  default = "10Gi"
}

variable "controller_storage_class" {
  description = "StorageClass of the controller's PVC; null uses the cluster default, and without one the claim stays Pending."
  type        = string
  default     = null
}

variable "image_pull_secret" {
  description = "Name of an existing docker-registry Secret for the controller's image; null for none. The jump host passes its own."
  type        = string
  default     = null
}

variable "code_git_url" {
  description = "Where the controller clones the tree from when its image carries none (BOOTSTRAPPER_CODE_GIT_URL); \"\" for none."
  type        = string
  default     = ""
}

variable "code_git_ref" {
  type    = string
  default = ""
}

variable "controller_replicas" {
  description = "1, or 0 to stop the controller: two would run operations on one root side by side."
  type        = number
  default     = 1

  validation {
    condition     = contains([0, 1], var.controller_replicas)
    error_message = "controller_replicas is 0 or 1: the controller's root is one ReadWriteOnce volume with one writer."
  }
}

variable "controller_svc_port" {
  description = "The port of the controller's Service, nomad-ctrl-service-<cluster_id>."
  type        = number
  default     = 8080
}

variable "controller_pod_port" {
  description = "The port the controller listens on in its pod."
  type        = number
  default     = 8080
}

variable "controller_cpu_request" {
  type    = string
  default = "500m"
}

variable "controller_memory_request" {
  type    = string
  default = "1Gi"
}

variable "controller_cpu_limit" {
  type    = string
  default = "2"
}

variable "controller_memory_limit" {
  type    = string
  default = "4Gi"
}

variable "haproxy_replicas" {
  type    = number
  default = 2
}

variable "controller_grace_seconds" {
  description = "The controller's --grace; the pod's termination grace period is 30 s longer."
  type        = number
  default     = 90
}
