# shellcheck shell=bash
# A private, short-lived containerd + dockerd for building images (hack/cluster/images.sh,
# hack/image-test.sh): its own sockets under $BUILDER_RUN, its state under $BUILDER_STATE
# (a cache of layers), stopped by PID — never by name — by builder_stop (registered on EXIT).
# Needs kc_log/kc_wait_for/kc_wait_gone (hack/cluster/lib.sh) and kiln_apt_ensure.

BUILDER_RUN=${BUILDER_RUN:-/run/kiln-image-builder}
BUILDER_STATE=${BUILDER_STATE:-$KILN_CACHE/image-builder}

builder_docker() { docker -H "unix://$BUILDER_RUN/docker.sock" "$@"; }

builder_start() {
  local state=$BUILDER_STATE
  kiln_apt_ensure docker.io containerd
  mkdir -p "$BUILDER_RUN" "$state"
  trap builder_stop EXIT
  cat >"$state/containerd.toml" <<TOML
version = 2
root = "$state/containerd"
state = "$BUILDER_RUN/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$BUILDER_RUN/containerd.sock"
TOML
  echo '{}' >"$state/daemon.json"
  setsid containerd --config "$state/containerd.toml" >"$state/containerd.log" 2>&1 </dev/null &
  echo $! >"$BUILDER_RUN/containerd.pid"
  kc_wait_for "the image builder's containerd" 30 "" test -S "$BUILDER_RUN/containerd.sock"
  setsid dockerd --containerd="$BUILDER_RUN/containerd.sock" --data-root="$state/docker" \
    --exec-root="$BUILDER_RUN/exec" --pidfile="$BUILDER_RUN/dockerd.pid" --host="unix://$BUILDER_RUN/docker.sock" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --config-file="$state/daemon.json" >"$state/dockerd.log" 2>&1 </dev/null &
  echo $! >"$BUILDER_RUN/dockerd.run.pid"
  kc_wait_for "the image builder's dockerd" 60 "" builder_docker version
}

builder_stop() {
  local f pid
  for f in "$BUILDER_RUN/dockerd.run.pid" "$BUILDER_RUN/containerd.pid"; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null && kc_wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  if [[ -d "$BUILDER_RUN" ]]; then
    umount -R "$BUILDER_RUN" 2>/dev/null || true
    rm -rf "$BUILDER_RUN"
  fi
  return 0
}
