#!/usr/bin/env bash
# Build Kubernetes v1.20.2 components from Debian's `kubernetes` source package.
#
#   hack/build-kube.sh COMPONENT...     e.g. kube-apiserver kubelet kube-proxy
#
# COMPONENT is a directory under cmd/ of the Kubernetes tree. Prints the path of
# each binary on stdout, one a line; progress goes to stderr.
#
# No registry ships kube-apiserver, but Debian's source package `kubernetes`
# (1.20.5+really1.20.2, the source of kubernetes-client) is the complete v1.20.2
# tree with vendor/, and Debian's golang-1.19-go builds it given three fixes:
#   1. GOPATH mode, as upstream 1.20 builds (module mode with -mod=vendor fails
#      on Go >= 1.17 with "updates to go.mod needed");
#   2. pkg/generated/openapi/zz_generated.openapi.go is not in the tarball; it is
#      generated with the vendored openapi-gen as build/root/Makefile.generated_files does;
#   3. the vendored github.com/modern-go/reflect2 v1.0.1 crashes under Go >= 1.18
#      (SIGSEGV in UnsafeMapType.UnsafeIterate); it is replaced by v1.0.2 from
#      Debian's golang-github-modern-go-reflect2-dev.
#
# Everything lives under $KILN_CACHE (default ~/.cache/kiln):
#   kube/v1.20.2/kubernetes/   the source tree (patched as above)
#   kube/v1.20.2/gopath/       GOPATH; src/k8s.io/kubernetes links to the tree
#   kube/v1.20.2/bin/          the binaries
#   go-build/                  GOCACHE (~1.7 GiB after kube-apiserver)
# A binary that already exists is not rebuilt; delete it to force a rebuild.
# Cold kube-apiserver build: ~4 min and ~1.3 GiB RSS on 2 cores.
set -euo pipefail

KUBE_VERSION=v1.20.2
GO_PACKAGE=golang-1.19-go
GO_BIN_DIR=/usr/lib/go-1.19/bin
DEBIAN_SUITE=bookworm
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/lib/apt.sh
source "$HACK_DIR/lib/apt.sh"

KUBE_DIR=$KILN_CACHE/kube/$KUBE_VERSION
KUBE_TREE=$KUBE_DIR/kubernetes
KUBE_GOPATH=$KUBE_DIR/gopath
KUBE_PKG_DIR=$KUBE_GOPATH/src/k8s.io/kubernetes
KUBE_BIN=$KUBE_DIR/bin

usage() {
  echo "usage: $0 COMPONENT...   (e.g. kube-apiserver kube-controller-manager)" >&2
  exit 2
}

# Prints the binaries and returns 0 when all of them exist already.
all_built() {
  local c
  for c in "$@"; do
    [[ -x "$KUBE_BIN/$c" ]] || return 1
  done
  for c in "$@"; do
    printf '%s\n' "$KUBE_BIN/$c"
  done
}

# The deb-src entry for $DEBIAN_SUITE main, with the same mirror and keyring as
# the existing deb entry. Written to its own file, only when missing.
ensure_deb_src() {
  local list=/etc/apt/sources.list.d/kiln-deb-src.sources
  local main=/etc/apt/sources.list.d/debian.sources
  local uri keyring
  [[ -e "$list" ]] && return 0
  [[ -r "$main" ]] || kiln_die "$main not found: add a deb-src entry for '$DEBIAN_SUITE main' by hand"
  # First URI and Signed-By of the deb822 stanza whose Suites has $DEBIAN_SUITE.
  read -r uri keyring < <(awk -v suite="$DEBIAN_SUITE" '
    BEGIN { RS = "" }
    {
      uri = ""; keyring = ""; found = 0
      n = split($0, lines, "\n")
      for (i = 1; i <= n; i++) {
        line = lines[i]
        if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uri = u[1] }
        else if (line ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", line); keyring = line }
        else if (line ~ /^Suites:/ && (" " line " ") ~ (" " suite " ")) found = 1
      }
      if (found && uri != "") { print uri, keyring; exit }
    }' "$main") || true
  [[ -n "${uri:-}" ]] || kiln_die "no '$DEBIAN_SUITE' entry in $main: add a deb-src entry by hand"
  kiln_log "adding deb-src entry for $DEBIAN_SUITE main ($uri) in $list"
  {
    echo "# Added by kiln's hack/build-kube.sh for 'apt-get source kubernetes'."
    echo "Types: deb-src"
    echo "URIs: $uri"
    echo "Suites: $DEBIAN_SUITE"
    echo "Components: main"
    [[ -n "$keyring" ]] && echo "Signed-By: $keyring"
  } >"$list"
  # The package lists must be refreshed to see the new entry.
  KILN_APT_UPDATED=0
}

# Fetches and unpacks the source package into $KUBE_TREE (once).
ensure_source() {
  [[ -f "$KUBE_TREE/.kiln-source-ok" ]] && return 0
  kiln_is_debian || kiln_die "building Kubernetes needs a Debian host (apt-get source kubernetes)"
  ensure_deb_src
  if ! apt-cache showsrc --only-source kubernetes 2>/dev/null | grep -q "^Version: .*${KUBE_VERSION#v}"; then
    kiln_apt_update
  fi

  local work=$KUBE_DIR/source.tmp dir
  rm -rf "$work" "$KUBE_TREE"
  mkdir -p "$work"
  kiln_log "apt-get source kubernetes (into $work)"
  (cd "$work" && apt-get source --only-source kubernetes >&2)
  dir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*')
  [[ -n "$dir" && -d "$dir/cmd" && -d "$dir/vendor" ]] ||
    kiln_die "apt-get source kubernetes did not unpack a Kubernetes tree in $work"
  [[ "$dir" == *"${KUBE_VERSION#v}" ]] ||
    kiln_die "Debian's kubernetes source is $(basename "$dir"), expected ${KUBE_VERSION#v}"
  mv "$dir" "$KUBE_TREE"
  rm -rf "$work"
  touch "$KUBE_TREE/.kiln-source-ok"
}

# Go in GOPATH mode, as upstream 1.20's hack/lib/golang.sh sets it up.
setup_go_env() {
  mkdir -p "$(dirname "$KUBE_PKG_DIR")" "$KUBE_GOPATH/bin" "$KILN_CACHE/go-build"
  ln -sfn "$KUBE_TREE" "$KUBE_PKG_DIR"
  export PATH="$GO_BIN_DIR:$PATH"
  export GOPATH=$KUBE_GOPATH
  export GOBIN=$KUBE_GOPATH/bin
  export GOCACHE=$KILN_CACHE/go-build
  export GO111MODULE=off CGO_ENABLED=0 GOPROXY=off GOENV=off
  unset GOFLAGS GOROOT
  # Work through the link, so the go tool sees the GOPATH import path.
  cd "$KUBE_PKG_DIR"
  export PWD=$KUBE_PKG_DIR
}

# Replaces the vendored reflect2 v1.0.1 (crashes under Go >= 1.18) by v1.0.2.
patch_reflect2() {
  local vendored=$KUBE_TREE/vendor/github.com/modern-go/reflect2
  local marker=$vendored/.kiln-reflect2-1.0.2 f
  [[ -f "$marker" ]] && return 0
  [[ -d "$REFLECT2_SRC" ]] || kiln_die "$REFLECT2_SRC missing (golang-github-modern-go-reflect2-dev)"
  kiln_log "replacing vendored github.com/modern-go/reflect2 with v1.0.2 from Debian"
  find "$vendored" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  for f in "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s; do
    [[ -f "$f" && "$f" != *_test.go ]] && cp "$f" "$vendored/"
  done
  touch "$marker"
}

# Lists, comma-separated, the packages that request OpenAPI generation for the
# kube target, as build/root/Makefile.generated_files computes them: every Go
# file outside _*, .* and vendor/ (staging/src/ named as vendor/) whose
# "+k8s:" tags include "+k8s:openapi-gen=", minus code-generator and
# sample-apiserver.
openapi_input_pkgs() {
  find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \
    -o -type f -name '*.go' -print0 |
    xargs -0 grep -l --null '^// *+k8s:' |
    xargs -0 grep -l '+k8s:openapi-gen=' |
    sed -e 's|/[^/]*$||' -e 's|^\./staging/src/|vendor/|' -e 's|^\./||' |
    grep -Ev '^vendor/k8s\.io/(code-generator|sample-apiserver)/' |
    LC_ALL=C sort -u |
    sed 's|^|k8s.io/kubernetes/|' |
    paste -sd, -
}

# Generates pkg/generated/openapi/zz_generated.openapi.go (once).
generate_openapi() {
  local out=pkg/generated/openapi/zz_generated.openapi.go tmp inputs
  [[ -f "$out" ]] && return 0
  kiln_log "go install vendor/k8s.io/kube-openapi/cmd/openapi-gen"
  go install -p 2 k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
  inputs=$(openapi_input_pkgs)
  [[ -n "$inputs" ]] || kiln_die "found no packages tagged +k8s:openapi-gen"
  kiln_log "openapi-gen over $(tr ',' '\n' <<<"$inputs" | wc -l) packages -> $out"
  tmp=$(mktemp -d "$KUBE_DIR/openapi.XXXXXX")
  "$GOBIN/openapi-gen" --logtostderr \
    -i "$inputs" \
    -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$KUBE_DIR/openapi-violations.report" \
    -o "$tmp"
  mv "$tmp/k8s.io/kubernetes/$out" "$out"
  rm -rf "$tmp"
}

build_component() {
  local c=$1 ldflags pkg pkg_version start
  pkg=k8s.io/kubernetes/cmd/$c
  ldflags="-s -w"
  for pkg_version in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
    k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg_version.gitVersion=$KUBE_VERSION"
    ldflags+=" -X $pkg_version.gitMajor=1 -X $pkg_version.gitMinor=20"
  done
  kiln_log "go build $pkg ($KUBE_VERSION)"
  start=$SECONDS
  go build -p 2 -ldflags "$ldflags" -o "$KUBE_BIN/.$c.tmp" "$pkg"
  mv -f "$KUBE_BIN/.$c.tmp" "$KUBE_BIN/$c"
  kiln_log "built $KUBE_BIN/$c in $((SECONDS - start)) s"
}

main() {
  (($# > 0)) || usage
  local c
  for c in "$@"; do
    [[ "$c" =~ ^[a-z0-9][a-z0-9-]*$ ]] || kiln_die "bad component name '$c'"
  done
  # Fast path: nothing to do, no apt, no lock.
  all_built "$@" && return 0

  kiln_lock "$KUBE_DIR/.lock"
  all_built "$@" && return 0 # built by another invocation meanwhile

  kiln_apt_ensure "$GO_PACKAGE" golang-github-modern-go-reflect2-dev dpkg-dev
  ensure_source
  for c in "$@"; do
    [[ -d "$KUBE_TREE/cmd/$c" ]] || kiln_die "no such component: cmd/$c in the Kubernetes tree"
  done
  setup_go_env
  patch_reflect2
  generate_openapi
  mkdir -p "$KUBE_BIN"
  for c in "$@"; do
    [[ -x "$KUBE_BIN/$c" ]] || build_component "$c"
  done
  all_built "$@"
}

main "$@"
