variable "kubeconfig" {
  description = "Kubeconfig for both the provider and the kubectl that runs `bootstrapper destroy`."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context in the kubeconfig; null uses its current context."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Existing namespace that holds the bootstrapper's Secrets, PVC, Deployment and the control plane it creates. Changing it after the first apply would replace the project PVC, which holds control-network's only state: the plan stops on its prevent_destroy (README, \"Moving a control plane\")."
  type        = string
}

variable "cluster_id" {
  description = "Names the Kubernetes objects and the Terraform workspaces; it overrides params.cluster_id. Changing it after the first apply would replace the project PVC, which holds control-network's only state: the plan stops on its prevent_destroy (README, \"Moving a control plane\")."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.cluster_id)) && length(var.cluster_id) <= 40
    error_message = "cluster_id must be a lowercase DNS label of at most 40 characters: it is part of Kubernetes object names."
  }
}

variable "image" {
  description = "The bootstrapper image (deploy/Dockerfile), pinned by digest."
  type        = string

  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.image))
    error_message = "Pin the image by digest (…@sha256:<64 hex digits>): a tag can move under a running control plane."
  }
}

variable "image_pull_secret" {
  description = "Name of an existing docker-registry Secret for a private registry, used by the bootstrapper and the controller alike; null for none."
  type        = string
  default     = null
}

variable "workflow" {
  description = "Workflow file inside the image."
  type        = string
  default     = "/usr/share/bootstrapper/workflows/bootstrap.toml"
}

variable "params" {
  description = "The workflow's parameters without the secret ones (workflows/README.md), written to a ConfigMap."
  type        = any

  validation {
    # The names that the engine masks (src/secrets.rs): such a value belongs in secret_params.
    condition = alltrue([
      for name in keys(var.params) :
      length(regexall("(?i)(password|passwd|pass|pwd|secret|token|key|credential|private|cert)", name)) == 0
    ])
    error_message = "A param whose name sounds secret (password, token, key, ...) belongs in secret_params, which is kept in a Secret."
  }
}

variable "secret_params" {
  description = "The secret parameters (the hosts' root passwords), written to a Secret and read with --secret-params: every value is masked."
  type        = any
  sensitive   = true
}

variable "ucloud_public_key" {
  type      = string
  sensitive = true
}

variable "ucloud_private_key" {
  type      = string
  sensitive = true
}

variable "ucloud_api_base_url" {
  type    = string
  default = "https://api.ucloud.cn"
}

variable "extra_env" {
  description = "More environment for the bootstrapper container, e.g. TF_VAR_* that the Terraform tree reads or an HTTPS proxy."
  type        = map(string)
  default     = {}
}

variable "storage_class" {
  description = "StorageClass of the bootstrapper's PVC and the controller's; null uses the cluster default. Choose it before the first apply, preferably one with reclaimPolicy Retain. Changing it after the first apply would replace the project PVC, which holds control-network's only state: the plan stops on its prevent_destroy (README, \"Moving a control plane\")."
  type        = string
  default     = null
}

variable "storage_size" {
  description = "Size of the project PVC. Growing it expands the claim in place where its StorageClass allows expansion; shrinking it would replace the claim, and the plan stops on its prevent_destroy (README, \"Moving a control plane\")."
  type        = string
  default     = "2Gi"

  validation {
    condition     = can(regex("^[0-9]+(Ki|Mi|Gi|Ti)$", var.storage_size))
    error_message = "storage_size is a Kubernetes quantity in binary units, like 2Gi."
  }
}

variable "cpu_request" {
  type    = string
  default = "250m"
}

variable "memory_request" {
  type    = string
  default = "512Mi"
}

variable "memory_limit" {
  type    = string
  default = "2Gi"
}

variable "cpu_limit" {
  type    = string
  default = "2"
}

variable "pod_security_labels" {
  description = "Label the namespace for the restricted Pod Security Standard, which every pod here meets. Turn it off when the namespace is shared with pods that do not."
  type        = bool
  default     = true
}

variable "controller_tokens" {
  description = "Bearer tokens the controller accepts, one per caller; they become the Secret the controller mounts. Empty: one is generated (`terraform output -raw controller_token`)."
  type        = list(string)
  sensitive   = true
  default     = []

  validation {
    condition     = alltrue([for t in var.controller_tokens : length(t) >= 32 && !strcontains(t, "\n")])
    error_message = "A controller token is one line of at least 32 characters."
  }
}
