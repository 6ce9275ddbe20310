#!/bin/sh
# unpack-mirror.sh PACKED UNPACKED
#
# Turns the packed layout that `terraform providers mirror` writes
# (HOST/NS/TYPE/terraform-provider-TYPE_VERSION_OS_ARCH.zip) into the unpacked layout
# (HOST/NS/TYPE/VERSION/OS_ARCH/…). From a packed mirror every `init` extracts its own copy of
# each provider; from an unpacked one it links to the mirror's copy.
set -eu
packed=$1
unpacked=$2
cd "$packed"
find . -name 'terraform-provider-*.zip' | while IFS= read -r zip; do
  dir=$(dirname "$zip")
  name=$(basename "$zip" .zip)
  type=$(basename "$dir")
  rest=${name#terraform-provider-"$type"_}
  version=${rest%%_*}
  platform=${rest#*_}
  target="$unpacked/$dir/$version/$platform"
  mkdir -p "$target"
  unzip -q -o "$zip" -d "$target"
done
