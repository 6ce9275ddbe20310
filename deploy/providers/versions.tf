# The providers the image carries, in a filesystem mirror (deploy/Dockerfile runs
# `terraform providers mirror` on this directory): every provider the nomad-ucloud-sample tree
# and deploy/control-plane use. The control plane has no registry access, so `init` there finds
# only these. To add one, add it here and rebuild the image; keep a version a root was
# initialised with until that root has run `init` against the new one.
#
# The tree at commit 147feb4 declares no required_providers, and terraform >= 0.13 reads an
# undeclared `ucloud` as hashicorp/ucloud, which does not exist: its modules need
# `ucloud = { source = "ucloud/ucloud" }` in a required_providers block to find this one.
terraform {
  required_providers {
    ucloud = {
      source  = "ucloud/ucloud"
      version = "~> 1.38"
    }
    consul = {
      source  = "hashicorp/consul"
      version = "~> 2.20"
    }
    nomad = {
      source  = "hashicorp/nomad"
      version = "~> 2.3"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.23"
    }
    null = {
      source  = "hashicorp/null"
      version = "~> 3.2"
    }
    local = {
      source  = "hashicorp/local"
      version = "~> 2.5"
    }
    external = {
      source  = "hashicorp/external"
      version = "~> 2.3"
    }
    template = {
      source  = "hashicorp/template"
      version = "2.2.0"
    }
  }
}
