# The load balancers HAProxy relays to, found by the names the tree gives them once the earlier
# steps have created them, as the original bootstrap found them. Neither their addresses nor
# their IPv6 ones are known before then, so none of them is a param.
locals {
  load_balancer_names = {
    consul_backend = "consulBackendLb-${var.cluster_id}"
    consul_tenants = "consulServer-${var.cluster_id}"
    nomad          = "nomadServerLb-${var.cluster_id}"
    namesvr        = "nameServerInternalLb-${var.cluster_id}"
  }
  # Fixed order: the ipv6 module answers a list, one address per id.
  relayed = sort(keys(local.load_balancer_names))
}

data "ucloud_lbs" "relayed" {
  for_each = local.load_balancer_names
  # Anchored: a cluster whose id extends this one's would otherwise match as well.
  name_regex = "^${each.value}$"

  lifecycle {
    postcondition {
      condition     = length(self.lbs) == 1
      error_message = "Exactly one load balancer must carry this name; the earlier steps create it."
    }
  }
}

# The tree's own module (the code's ipv6/, beside this overlay): the cloud API that maps a
# resource to its IPv6 address.
module "lb_ipv6" {
  source         = "../ipv6"
  api_server_url = var.ipv6_api_url
  region_id      = var.region_id
  resourceIds    = [for role in local.relayed : data.ucloud_lbs.relayed[role].lbs[0].id]
}

module "targets" {
  source   = "./targets"
  env_name = var.env_name
  load_balancers = {
    for i, role in local.relayed : role => {
      ipv6       = module.lb_ipv6.ipv6s[i]
      private_ip = data.ucloud_lbs.relayed[role].lbs[0].private_ip
    }
  }
  namesvr_port    = var.namesvr_http_endpoint_port
  prometheus_port = var.prometheus_port
}
