variable "backends" {
  description = "The internal load balancer behind each listener: its address (IPv4 or IPv6, bare) and port. Keys: nomad, consul_backend, consul_tenants, prometheus, namesvr."
  type = map(object({
    address = string
    port    = number
  }))

  validation {
    condition     = toset(keys(var.backends)) == toset(["nomad", "consul_backend", "consul_tenants", "prometheus", "namesvr"])
    error_message = "backends needs exactly nomad, consul_backend, consul_tenants, prometheus and namesvr."
  }
}

variable "ports" {
  description = "The port HAProxy listens on for each backend."
  type        = map(number)
  default = {
    nomad          = 4646
    consul_backend = 8500
    consul_tenants = 8501
    prometheus     = 9090
    namesvr        = 8080
  }
}

variable "bind_address" {
  description = "Where HAProxy binds; `::` with v4v6 takes IPv4 and IPv6 alike."
  type        = string
  default     = "::"
}
