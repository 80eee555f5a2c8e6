#!/usr/bin/env bash
# Build the kiln binary for its image: release, statically linked against glibc
# (-C target-feature=+crt-static; only the gnu target is installed here, no musl), and
# write the image's root filesystem to OUT_DIR: /kiln, CA certificates, an empty /tmp.
# The one recipe for the kiln image: the Dockerfile's compile stage runs it, and so does
# hack/cluster/images.sh (which then builds the Dockerfile's `prebuilt` target).
#
#   hack/build-static.sh OUT_DIR
set -euo pipefail
out=${1:?usage: hack/build-static.sh OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=$(uname -m)-unknown-linux-gnu
(cd "$here" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --locked --release --target "$target" --bin kiln >&2)
bin=${CARGO_TARGET_DIR:-$here/target}/$target/release/kiln
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-static.sh: $bin is dynamically linked; expected a static binary" >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
cp "$bin" "$out/kiln"
cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
