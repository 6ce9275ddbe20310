#!/usr/bin/env bash
# scripts/mirror-bench.sh [ROOTS]
#
# What `terraform init` of many roots at once does with a provider from a filesystem mirror,
# as the controller's one root per tenant cluster does in the image: link or copy, and the
# disk each root then uses. No registry is reachable here, so the provider is packaged
# locally: a copy of the terraform binary (a real executable of provider size) under
# example.com/local/dummy 1.0.0, zipped into the packed layout that `terraform providers
# mirror` writes, then unpacked with deploy/providers/unpack-mirror.sh as the image build does.
# Every root's init runs at the same time.
set -euo pipefail
roots=${1:-20}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
unset TF_PLUGIN_CACHE_DIR TF_CLI_CONFIG_FILE

platform=linux_amd64
pkg=$work/pkg
mkdir -p "$pkg" "$work/packed/example.com/local/dummy"
cp "$(command -v terraform)" "$pkg/terraform-provider-dummy_v1.0.0"
(cd "$pkg" && zip -q "$work/packed/example.com/local/dummy/terraform-provider-dummy_1.0.0_${platform}.zip" terraform-provider-dummy_v1.0.0)
"$repo/deploy/providers/unpack-mirror.sh" "$work/packed" "$work/unpacked"
provider_kib=$(du -sk "$pkg" | cut -f1)

measure() { # layout
  local layout=$1 dir=$work/$1-roots
  cat >"$work/$layout.rc" <<RC
provider_installation {
  filesystem_mirror {
    path = "$work/$layout"
  }
}
RC
  for i in $(seq 1 "$roots"); do
    mkdir -p "$dir/$i"
    cat >"$dir/$i/main.tf" <<TF
terraform {
  required_providers {
    dummy = {
      source  = "example.com/local/dummy"
      version = "1.0.0"
    }
  }
}
TF
  done
  local start end
  start=$(date +%s.%N)
  seq 1 "$roots" | TF_CLI_CONFIG_FILE=$work/$layout.rc xargs -P "$roots" -I{} \
    sh -c 'terraform -chdir="$0/{}" init -input=false -no-color >"$0/{}.log" 2>&1 || { cat "$0/{}.log"; exit 1; }' "$dir"
  end=$(date +%s.%N)
  local installed=$dir/1/.terraform/providers/example.com/local/dummy/1.0.0/$platform
  local how=copied
  [ -L "$installed" ] && how="symlinked to $(readlink "$installed")"
  local links=0
  for i in $(seq 1 "$roots"); do
    [ -L "$dir/$i/.terraform/providers/example.com/local/dummy/1.0.0/$platform" ] && links=$((links + 1))
  done
  printf '%-8s mirror: %d roots, %d inits at once, %.1f s; %d of %d roots link, root 1 %s\n' \
    "$layout" "$roots" "$roots" "$(echo "$end - $start" | bc)" "$links" "$roots" "$how"
  printf '%-8s mirror: disk per root %s KiB (du, links not followed), all roots %s KiB; the provider is %s KiB\n' \
    "$layout" "$(du -sk "$dir/1" | cut -f1)" "$(du -sk "$dir" | cut -f1)" "$provider_kib"
}

terraform version | sed -n 1p
measure unpacked
measure packed
