#!/usr/bin/env bash
# `make image-test`: `docker build .` as a user runs it — the Dockerfile's default target, from
# source — with Debian's docker.io (its classic builder), offline: the Rust builder image is
# made here (debootstrap from Debian's archive plus this machine's Rust toolchain, cached), the
# crates are vendored into a copy of the workspace, and the build has no network. Then
# `kiln --version` runs in the image. Not part of `make test` (it compiles kiln inside a
# container, ~10 minutes on 2 cores); CI's image comes from the same recipe through
# hack/cluster/images.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/cluster/lib.sh
source "$here/cluster/lib.sh"
# shellcheck source=hack/lib/builder-docker.sh
source "$here/lib/builder-docker.sh"

kc_require_root
rustc_version=$(rustc --version | cut -d' ' -f2)
RUST_IMAGE=kiln.local/rust-builder:$rustc_version
cache=$KILN_CACHE/rust-builder

# A Debian bookworm root with gcc and libc's headers, and the Rust toolchain kiln builds with.
make_rust_rootfs() {
  local rootfs=$cache/rootfs mirror sysroot
  [[ -f "$cache/rootfs-$rustc_version.tar" ]] && return 0
  kiln_apt_ensure debootstrap
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  kc_log "debootstrap bookworm (minbase, gcc, libc6-dev) from ${mirror:-the default mirror}"
  debootstrap --variant=minbase --include=gcc,libc6-dev,binutils,ca-certificates bookworm "$rootfs" ${mirror:+"$mirror"} >&2
  sysroot=$(rustc --print sysroot)
  kc_log "adding the Rust toolchain from $sysroot"
  cp -a "$sysroot/bin/." "$rootfs/usr/local/bin/"
  mkdir -p "$rootfs/usr/local/lib"
  cp -a "$sysroot/lib/." "$rootfs/usr/local/lib/"
  tar -C "$rootfs" -cf "$cache/rootfs-$rustc_version.tar" .
  rm -rf "$rootfs"
}

main() {
  local t0=$SECONDS ctx out
  mkdir -p "$cache"
  make_rust_rootfs
  builder_start
  if ! builder_docker image inspect "$RUST_IMAGE" >/dev/null 2>&1; then
    builder_docker import -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$cache/rootfs-$rustc_version.tar" "$RUST_IMAGE" >/dev/null
  fi
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"; builder_stop' EXIT
  # The workspace as committed, with its crates vendored (the build has no network).
  git -C "$KC_REPO_DIR" archive HEAD | tar -x -C "$ctx"
  mkdir -p "$ctx/.cargo"
  (cd "$ctx" && cargo vendor --locked --offline vendor >.cargo/config.toml 2>/dev/null)
  printf '[net]\noffline = true\n' >>"$ctx/.cargo/config.toml"
  kc_log "docker build . (classic builder, no network, RUST_IMAGE=$RUST_IMAGE)"
  DOCKER_BUILDKIT=0 builder_docker build --network none --build-arg RUST_IMAGE="$RUST_IMAGE" \
    --build-arg REVISION="$(git -C "$KC_REPO_DIR" rev-parse --short=12 HEAD)" -t kiln.local/kiln:image-test "$ctx" >&2
  out=$(builder_docker run --rm --network none kiln.local/kiln:image-test --version)
  kc_log "the image runs: $out"
  [[ "$out" == "kiln $(awk -F'"' '/^version/ {print $2; exit}' "$KC_REPO_DIR/Cargo.toml") ("* ]] || kc_die "unexpected: $out"
  kc_log "image-test passed in $((SECONDS - t0)) s"
}

main "$@"
