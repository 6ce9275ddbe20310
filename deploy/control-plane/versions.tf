terraform {
  required_version = ">= 1.5"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.23"
    }
    ucloud = {
      source  = "ucloud/ucloud"
      version = "~> 1.38"
    }
  }
}

# In-cluster: run inside the bootstrapper pod, the provider takes the pod's ServiceAccount
# token and KUBERNETES_SERVICE_HOST when it is given no kubeconfig.
provider "kubernetes" {}

# Only reads (lookup.tf), with the keys the pod gives every step.
provider "ucloud" {
  public_key  = var.ucloud_pub_key
  private_key = var.ucloud_secret
  project_id  = var.project_id
  region      = var.region
  base_url    = var.ucloud_api_base_url
}
