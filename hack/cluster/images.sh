#!/usr/bin/env bash
# Container images without a registry, for the local cluster (and anything else that wants
# them): docker-save archives, which both `docker load` (20.10 insists on manifest.json) and
# `ctr images import` accept.
#
#   hack/cluster/images.sh base           pause + busybox archives (cached)
#   hack/cluster/images.sh kiln           the kiln image from the workspace
#   hack/cluster/images.sh kiln-ref       print the kiln image's content-addressed tag
#   hack/cluster/images.sh load [ARCHIVE|NAME...]
#                                         load into the running cluster's runtime
#                                         (default: every archive that exists)
#   hack/cluster/images.sh                (`make images`) all of the above; loads only if a
#                                         cluster is up
#
# Images (archives in $KILN_CLUSTER_DIR/images/NAME.tar):
#   kiln.dev/pause:3.2     a static C pause (hack/cluster/pause.c, gcc -static)
#   kiln.dev/busybox:1.35  Debian's busybox-static, one symlink per applet
#   kiln.dev/kiln:dev      ($KILN_IMAGE; also tagged kiln.dev/kiln:dev-<image ID prefix>, see
#                          `images.sh kiln-ref`) the repository's Dockerfile, target `prebuilt`,
#                          from hack/build-static.sh's root filesystem: the kiln binary, statically linked
#                          (RUSTFLAGS=-Ctarget-feature=+crt-static, target
#                          x86_64-unknown-linux-gnu, release), entrypoint /kiln, plus CA
#                          certificates and an empty /tmp. Whatever subcommands the binary has.
# pause and busybox archives are byte-for-byte reproducible (sorted tar, mtime 0, uid 0); the
# kiln image is rebuilt only when its binary or its recipe changes.
set -euo pipefail

# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/lib/builder-docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/builder-docker.sh"

TAR_FLAGS=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)

# tar_dir DIR OUT: DIR's contents, entries without a "./" prefix, parents first, sorted.
tar_dir() {
  (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) |
    tar -C "$1" "${TAR_FLAGS[@]}" --no-recursion -T - -cf "$2"
}

# make_archive ROOTFS REF OUT CONFIG_JSON [by-id]: a one-layer docker-save archive of ROOTFS
# tagged REF; with "by-id" also tagged REF-<first 12 hex digits of its image ID>, a tag that
# changes with the content, so manifests using it roll when the image does.
make_archive() {
  local rootfs=$1 ref=$2 out=$3 config=$4 by_id=${5:-} tmp layer_sha config_sha tags
  tmp=$(mktemp -d "$KC_IMAGES/.build.XXXXXX")
  tar_dir "$rootfs" "$tmp/layer.tar"
  layer_sha=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  mkdir -p "$tmp/archive/$layer_sha"
  mv "$tmp/layer.tar" "$tmp/archive/$layer_sha/layer.tar"
  jq -cn --arg diff "sha256:$layer_sha" --argjson cfg "$config" '{
      architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
      config: $cfg,
      rootfs: {type: "layers", diff_ids: [$diff]},
      history: [{created: "1970-01-01T00:00:00Z", created_by: "kiln hack/cluster/images.sh"}]
    }' >"$tmp/config.json"
  config_sha=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/archive/$config_sha.json"
  tags=$(jq -cn --arg ref "$ref" '[$ref]')
  if [[ "$by_id" == by-id ]]; then
    tags=$(jq -cn --arg ref "$ref" --arg id "${config_sha:0:12}" '[$ref, $ref + "-" + $id]')
  fi
  jq -cn --arg cfg "$config_sha.json" --argjson tags "$tags" --arg layer "$layer_sha/layer.tar" \
    '[{Config: $cfg, RepoTags: $tags, Layers: [$layer]}]' >"$tmp/archive/manifest.json"
  jq -cn --arg repo "${ref%:*}" --arg tag "${ref##*:}" --arg id "$layer_sha" \
    '{($repo): {($tag): $id}}' >"$tmp/archive/repositories"
  tar_dir "$tmp/archive" "$out.tmp"
  mv -f "$out.tmp" "$out"
  rm -rf "$tmp"
  kc_log "image $ref: $out (image ID sha256:$config_sha)"
}

# up_to_date OUT KEY: true if OUT exists and was made from inputs with the same KEY.
up_to_date() { [[ -f "$1" && "$(cat "$1.key" 2>/dev/null)" == "$2" ]]; }

build_pause() {
  local out=$KC_IMAGES/pause.tar key root
  key="$KC_IMAGE_PAUSE $(sha256sum "$KC_HACK_DIR/pause.c" | cut -c1-64) $(gcc -dumpfullversion 2>/dev/null) $(sha256sum "$0" | cut -c1-16)"
  up_to_date "$out" "$key" && return 0
  root=$(mktemp -d "$KC_IMAGES/.rootfs.XXXXXX")
  gcc -static -Os -s -Wall -o "$root/pause" "$KC_HACK_DIR/pause.c"
  make_archive "$root" "$KC_IMAGE_PAUSE" "$out" '{"Entrypoint":["/pause"]}'
  rm -rf "$root"
  echo "$key" >"$out.key"
}

build_busybox() {
  local out=$KC_IMAGES/busybox.tar key root app
  key="$KC_IMAGE_BUSYBOX $(dpkg-query -W -f='${Version}' busybox-static) $(sha256sum "$0" | cut -c1-16)"
  up_to_date "$out" "$key" && return 0
  root=$(mktemp -d "$KC_IMAGES/.rootfs.XXXXXX")
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,var/run,proc,sys,dev}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  while read -r app; do
    [[ "$app" == bin/busybox || -e "$root/$app" ]] || ln -s /bin/busybox "$root/$app"
  done < <(/bin/busybox --list-full)
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  make_archive "$root" "$KC_IMAGE_BUSYBOX" "$out" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}'
  rm -rf "$root"
  echo "$key" >"$out.key"
}

# The kiln image, from the repository's Dockerfile: hack/build-static.sh makes the root
# filesystem (the same script the Dockerfile's compile stage runs), and a private, short-lived
# dockerd builds the Dockerfile's `prebuilt` target from it (the classic builder: this Docker
# has no buildx) and saves it. No Rust image is needed, and nothing is pulled.
build_kiln() {
  local out=$KC_IMAGES/kiln.tar key rootfs=$KC_REPO_DIR/.kiln-image/rootfs start=$SECONDS id revision
  kc_log "building the kiln binary (hack/build-static.sh) for $KC_IMAGE_KILN"
  "$KC_REPO_DIR/hack/build-static.sh" "$rootfs"
  kc_log "kiln binary: $(du -h "$rootfs/kiln" | cut -f1), static, in $((SECONDS - start)) s"
  key="$KC_IMAGE_KILN $(sha256sum "$rootfs/kiln" | cut -c1-64) $(sha256sum "$0" "$KC_REPO_DIR/Dockerfile" | sha256sum | cut -c1-16)"
  up_to_date "$out" "$key" && { kc_log "image $KC_IMAGE_KILN: $out (unchanged)"; return 0; }
  revision=$(git -C "$KC_REPO_DIR" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  builder_start
  DOCKER_BUILDKIT=0 builder_docker build -q --target prebuilt --build-arg PREBUILT=.kiln-image/rootfs \
    --build-arg REVISION="$revision" -t "$KC_IMAGE_KILN" "$KC_REPO_DIR" >/dev/null
  id=$(builder_docker image inspect --format '{{.Id}}' "$KC_IMAGE_KILN")
  id=${id#sha256:}
  builder_docker tag "$KC_IMAGE_KILN" "$KC_IMAGE_KILN-${id:0:12}"
  builder_docker save -o "$out.tmp" "$KC_IMAGE_KILN" "$KC_IMAGE_KILN-${id:0:12}"
  mv -f "$out.tmp" "$out"
  builder_stop
  echo "$key" >"$out.key"
  kc_log "image $KC_IMAGE_KILN: $out (image ID sha256:${id:0:12}…)"
}

# load ARCHIVE...: into the running cluster's runtime.
load() {
  local runtime a
  runtime=$(kc_running_runtime) || kc_die "no local cluster is up (make cluster-up)"
  for a in "$@"; do
    [[ -f "$a" ]] || a=$KC_IMAGES/${a%.tar}.tar
    [[ -f "$a" ]] || kc_die "no image archive $a (hack/cluster/images.sh base|kiln)"
    case $runtime in
      docker) kc_docker load -q -i "$a" >&2 ;;
      containerd) kc_ctr images import "$a" >&2 ;;
      *) kc_die "unknown runtime '$runtime' in $KC_RUN/runtime" ;;
    esac
    kc_log "loaded $(basename "$a") into $runtime"
  done
}

main() {
  mkdir -p "$KC_IMAGES"
  case ${1:-all} in
    base)
      kiln_apt_ensure gcc libc6-dev busybox-static jq
      build_pause
      build_busybox
      ;;
    kiln)
      kiln_apt_ensure jq binutils docker.io
      build_kiln
      ;;
    kiln-ref)
      [[ -f "$KC_IMAGES/kiln.tar" ]] || kc_die "no kiln image yet (hack/cluster/images.sh kiln)"
      tar -xOf "$KC_IMAGES/kiln.tar" manifest.json | jq -r '.[0].RepoTags[-1]'
      ;;
    load)
      shift
      if (($# == 0)); then
        set -- "$KC_IMAGES"/*.tar
      fi
      load "$@"
      ;;
    all)
      "$0" base
      "$0" kiln
      if [[ -n "$(kc_running_runtime)" ]]; then
        load "$KC_IMAGES"/*.tar
      else
        kc_log "no local cluster is up: images built, not loaded"
      fi
      ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
