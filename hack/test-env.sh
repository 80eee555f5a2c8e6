#!/usr/bin/env bash
# Ensure the envtest assets for kiln's tests: a real kube-apiserver and etcd.
#
#   export KUBEBUILDER_ASSETS=$(hack/test-env.sh)
#
# The last (only) line on stdout is the assets directory, holding kube-apiserver
# and etcd (and kubectl when one is on PATH); progress goes to stderr.
#   - $KUBEBUILDER_ASSETS, if set and complete, is used as is (any OS);
#   - otherwise, on Debian: kube-apiserver v1.20.2 is built from Debian's source
#     (hack/build-kube.sh, ~4 min cold, cached) and etcd comes from Debian's
#     etcd-server (3.4); both are linked into $KILN_CACHE/envtest/bin.
# Also ensures openssl (the tests make their certificates with it) and lua5.1
# (tests/gitops_health.rs runs contrib/argocd/health.lua with it, as Argo CD would).
# Warm runs do no apt or build work.
#
# ---------------------------------------------------------------------------
# How to start them (verified by hand with these exact binaries; the Rust test
# harness does the same). $ASSETS is the directory this script prints; one
# temp dir $D per run; free loopback ports:
# etcd client port $EP, etcd peer port $PP, apiserver port $AP.
#
# Certificates (openssl):
#   openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kiln-test-ca \
#     -keyout $D/ca.key -out $D/ca.crt
#   # serving cert, SANs 127.0.0.1 and localhost, signed by the CA:
#   openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
#     -keyout $D/apiserver.key -out $D/apiserver.csr
#   openssl x509 -req -in $D/apiserver.csr -CA $D/ca.crt -CAkey $D/ca.key \
#     -CAcreateserial -days 1 -out $D/apiserver.crt \
#     -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
#   # admin client cert (cluster-admin through group system:masters):
#   openssl req -newkey rsa:2048 -nodes -subj /O=system:masters/CN=kiln-admin \
#     -keyout $D/admin.key -out $D/admin.csr
#   openssl x509 -req -in $D/admin.csr -CA $D/ca.crt -CAkey $D/ca.key \
#     -CAcreateserial -days 1 -out $D/admin.crt \
#     -extfile <(printf 'extendedKeyUsage=clientAuth\n')
#   # service-account signing key pair:
#   openssl genrsa -out $D/sa.key 2048
#   openssl rsa -in $D/sa.key -pubout -out $D/sa.pub
#
# etcd (healthy when GET http://127.0.0.1:$EP/health says "health":"true"):
#   $ASSETS/etcd --name=kiln-test --data-dir=$D/etcd \
#     --listen-client-urls=http://127.0.0.1:$EP --advertise-client-urls=http://127.0.0.1:$EP \
#     --listen-peer-urls=http://127.0.0.1:$PP --initial-advertise-peer-urls=http://127.0.0.1:$PP \
#     --initial-cluster=kiln-test=http://127.0.0.1:$PP
#   (~0.1 s to healthy, ~45 MiB RSS; --unsafe-no-fsync=true is accepted too.)
#
# kube-apiserver (ready when GET https://127.0.0.1:$AP/readyz says "ok"; then
# also wait until namespace "default" exists, it can lag /readyz slightly):
#   $ASSETS/kube-apiserver --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
#     --secure-port=$AP --insecure-port=0 --etcd-servers=http://127.0.0.1:$EP \
#     --cert-dir=$D/certs --tls-cert-file=$D/apiserver.crt --tls-private-key-file=$D/apiserver.key \
#     --client-ca-file=$D/ca.crt --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
#     --authorization-mode=RBAC --service-account-issuer=https://127.0.0.1:$AP \
#     --service-account-key-file=$D/sa.pub --service-account-signing-key-file=$D/sa.key \
#     --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none
#
# Client: server https://127.0.0.1:$AP, CA $D/ca.crt, client cert/key
# $D/admin.crt / $D/admin.key. Stop both by PID, then remove $D.
# Measured here (2 cores): certs ~1.1 s, etcd healthy ~0.1 s, /readyz ok ~4.6 s
# after start, namespace default ~0.4 s later; apiserver ~345 MiB RSS idle.
# Checked: kubectl get ns (kubectl 1.32 warns about version skew, works),
# a ServiceAccount token from the TokenRequest API is denied (403) by RBAC,
# a CRD with a status subresource plus a server-side-applied custom resource.
# ---------------------------------------------------------------------------
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/lib/apt.sh
source "$HACK_DIR/lib/apt.sh"

ASSETS_DIR=$KILN_CACHE/envtest/bin
ETCD=/usr/bin/etcd

# True if directory $1 holds runnable kube-apiserver and etcd.
complete_assets() {
  [[ -x "$1/kube-apiserver" && -x "$1/etcd" ]]
}

ensure_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  kiln_is_debian || kiln_die "openssl is needed by the tests: install it"
  kiln_apt_ensure openssl
}

# Argo CD runs health checks with gopher-lua (Lua 5.1); the tests use Debian's
# reference Lua 5.1 interpreter.
ensure_lua() {
  command -v lua5.1 >/dev/null 2>&1 && return 0
  kiln_is_debian || kiln_die "lua5.1 is needed by tests/gitops_health.rs: install Lua 5.1 as lua5.1"
  kiln_apt_ensure lua5.1
}

# PIDs of etcd processes run by the `etcd` system user, i.e. the Debian
# service (the tests' own etcd runs as the invoking user).
etcd_service_pids() {
  pgrep -x -u etcd etcd 2>/dev/null || true
}

# Installs Debian's etcd-server when /usr/bin/etcd is missing. Its postinst
# may start an `etcd` service (as user etcd, on 2379) where services can
# start; the tests never use it, so one that the install started is stopped.
ensure_etcd() {
  [[ -x "$ETCD" ]] && return 0
  local before pid
  before=" $(etcd_service_pids | tr '\n' ' ') "
  kiln_apt_ensure etcd-server
  [[ -x "$ETCD" ]] || kiln_die "etcd-server is installed but $ETCD is missing"
  for pid in $(etcd_service_pids); do
    if [[ "$before" != *" $pid "* ]]; then
      kiln_log "stopping the etcd service (PID $pid) started by the package install"
      kill "$pid" 2>/dev/null || true
      timeout 10 tail --pid="$pid" -f /dev/null || true
    fi
  done
}

# Links $2 as $ASSETS_DIR/$1 unless already so.
link_asset() {
  local name=$1 target=$2
  if [[ "$(readlink "$ASSETS_DIR/$name" 2>/dev/null)" != "$target" ]]; then
    ln -sfn "$target" "$ASSETS_DIR/$name"
  fi
}

main() {
  ensure_lua
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if complete_assets "$KUBEBUILDER_ASSETS"; then
      ensure_openssl
      kiln_log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
      printf '%s\n' "$KUBEBUILDER_ASSETS"
      return 0
    fi
    kiln_log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd; ignoring it"
  fi

  # Warm path: everything in place already.
  if complete_assets "$ASSETS_DIR" && command -v openssl >/dev/null 2>&1; then
    kiln_log "envtest assets in $ASSETS_DIR"
    printf '%s\n' "$ASSETS_DIR"
    return 0
  fi

  if ! kiln_is_debian; then
    kiln_die "no envtest assets: this is not a Debian host, so kiln cannot build them.
    Install setup-envtest (go install sigs.k8s.io/controller-runtime/tools/setup-envtest@latest)
    and set KUBEBUILDER_ASSETS, e.g.:
      export KUBEBUILDER_ASSETS=\$(setup-envtest use -p path 1.30.x)"
  fi

  ensure_openssl
  ensure_etcd
  local apiserver
  apiserver=$("$HACK_DIR/build-kube.sh" kube-apiserver)

  mkdir -p "$ASSETS_DIR"
  link_asset kube-apiserver "$apiserver"
  link_asset etcd "$ETCD"
  if command -v kubectl >/dev/null 2>&1; then
    link_asset kubectl "$(command -v kubectl)"
  fi
  complete_assets "$ASSETS_DIR" || kiln_die "assets in $ASSETS_DIR are incomplete"
  kiln_log "envtest assets in $ASSETS_DIR: $("$ASSETS_DIR/kube-apiserver" --version), etcd $("$ASSETS_DIR/etcd" --version | awk '/^etcd Version/ {print $3}')"
  printf '%s\n' "$ASSETS_DIR"
}

main "$@"
