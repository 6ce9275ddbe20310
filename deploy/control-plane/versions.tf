terraform {
  required_version = ">= 1.5"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.23"
    }
  }
}

# In-cluster: run inside the bootstrapper pod, the provider takes the pod's ServiceAccount
# token and KUBERNETES_SERVICE_HOST when it is given no kubeconfig.
provider "kubernetes" {}
