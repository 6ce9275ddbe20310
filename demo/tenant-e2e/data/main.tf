# The step of workflows/tenant-e2e.toml: one terraform_data per cluster (its workspace), its
# state in a Secret of the Jobs' namespace. The pod finds the API through its service account
# (KUBE_IN_CLUSTER_CONFIG=true) and the namespace in KUBE_NAMESPACE; the service account may
# get, list, create, update and delete Secrets and Leases (the lock) there.

terraform {
  backend "kubernetes" {
    secret_suffix = "bootstrapper-e2e"
  }
}

resource "terraform_data" "cluster" {
  input = terraform.workspace
}

output "cluster" {
  value = terraform_data.cluster.output
}
