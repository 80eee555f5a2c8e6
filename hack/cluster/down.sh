#!/usr/bin/env bash
# Stop the local cluster (`make cluster-down`) and put the host back as up.sh found it.
# Safe to run twice, with no cluster, and after a failed or half-finished up.sh.
#
# In order:
#   1. controller-manager and scheduler (nothing recreates pods), then kubelet and kube-proxy;
#   2. the runtime's containers (docker rm -f / ctr task kill), then dockerd and containerd;
#   3. every process still in the cluster's cgroups or running with its private paths
#      (containerd shims, container processes), then etcd and the apiserver, all by PID;
#   4. network namespaces the runtime left in /run/netns, every mount below the cluster's
#      directories (the shared bind mount, container rootfs, kubelet volumes), the pod bridge
#      and any veth still on it, the node bridge;
#   5. iptables/ip6tables: our guard jumps and chains, the KUBE-* chains that the kubelet and
#      kube-proxy created (only chains that did not exist before up.sh) and every jump to them;
#   6. the sysctls the kubelet, kube-proxy and the CNI plugin changed, to the values recorded
#      by up.sh; the cgroups; new entries in the few host paths that cannot be redirected;
#   7. the cluster's state: $KILN_CLUSTER_DIR/state, kubeconfig, cluster.env and $KILN_CLUSTER_RUN.
# Logs stay in $KILN_CLUSTER_DIR/logs, images in $KILN_CLUSTER_DIR/images.
#
# Not CNI DEL: the bridge plugin (ipMasq off, no portmap) adds no iptables rules, the veths go
# with their network namespaces, and its IPAM and cache live in the cluster's own state,
# which is removed.
set -euo pipefail

# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_kube() {
  local c
  for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do
    kc_stop "$c" 15
  done
}

stop_runtime() {
  local ids
  if kc_alive dockerd; then
    ids=$(kc_docker ps -aq 2>/dev/null || true)
    if [[ -n "$ids" ]]; then
      kc_log "removing $(wc -w <<<"$ids") docker containers"
      # shellcheck disable=SC2086
      timeout 60 docker -H "unix://$KC_RUN/docker.sock" rm -f $ids >/dev/null 2>&1 || true
    fi
  fi
  if kc_alive containerd; then
    ids=$(kc_ctr tasks ls -q 2>/dev/null || true)
    for id in $ids; do
      timeout 10 ctr -a "$KC_CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
  fi
  kc_stop dockerd 20
  kc_stop docker-containerd 15
  kc_stop containerd 15
}

# Anything still in the cluster's cgroups or running with its private paths: shims,
# container processes. TERM all, then KILL the rest.
sweep_processes() {
  local pids pid
  pids=$(kc_cluster_pids | grep -v -x -F -f <(for n in etcd kube-apiserver; do kc_pid "$n" || true; done) || true)
  [[ -z "$pids" ]] && return 0
  kc_log "stopping $(wc -w <<<"$pids") remaining cluster processes (shims, containers): $(tr '\n' ' ' <<<"$pids")"
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $pids; do kc_wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true; done
  for pid in $pids; do kc_wait_gone "$pid" 5 || kc_log "WARNING: PID $pid did not exit"; done
}

stop_control_plane() {
  kc_stop kube-apiserver 15
  kc_stop etcd 15
  # A last sweep, in case something was (re)started meanwhile.
  local pids pid
  pids=$(kc_cluster_pids || true)
  for pid in $pids; do kc_kill_pid "$pid" 5; done
}

# unmount_under DIR...: every mount at or below DIR, deepest first.
unmount_under() {
  local pass mps m
  for pass in 1 2 3 4 5; do
    mps=$(awk -v dirs="$*" 'BEGIN { n = split(dirs, d, " ") }
      { for (i = 1; i <= n; i++) if ($5 == d[i] || index($5, d[i] "/") == 1) { print length($5), $5; break } }' \
      /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
    [[ -z "$mps" ]] && return 0
    if ((pass == 1)); then kc_log "unmounting $(wc -l <<<"$mps") mounts below $*"; fi
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<<"$mps"
  done
  kc_log "WARNING: mounts left below $*: $mps"
}

# Network namespaces that appeared in /run/netns while the cluster ran (containerd's CRI
# puts them there, as cni-<uuid>).
cleanup_netns() {
  local rec=$KC_HOST/paths/_run_netns ns
  [[ -d /run/netns && -f "$rec" ]] || return 0
  for ns in /run/netns/*; do
    [[ -e "$ns" ]] || continue
    grep -qx -F "$ns" "$rec" && continue
    umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
    kc_log "removed network namespace $ns"
  done
}

cleanup_links() {
  local l
  if ip link show "$KC_CNI_BRIDGE" >/dev/null 2>&1; then
    for l in $(ip -o link show master "$KC_CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$l" 2>/dev/null || true
    done
    ip link del "$KC_CNI_BRIDGE" && kc_log "removed $KC_CNI_BRIDGE"
  fi
  if ip link show "$KC_NODE_BRIDGE" >/dev/null 2>&1; then
    ip link del "$KC_NODE_BRIDGE" && kc_log "removed $KC_NODE_BRIDGE"
  fi
}

# cleanup_iptables FAMILY: remove the chains the cluster created and every rule jumping to them.
cleanup_iptables() {
  local fam=$1 table before ours rule chain target c n=0
  for table in filter nat mangle raw; do
    before=$KC_HOST/chains.$fam.$table
    # Ours: our guard chains always; KUBE-* only if they did not exist before up.sh (and,
    # if up.sh never got to record anything, not at all).
    ours=$("$fam" -w 5 -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | while read -r c; do
      case $c in
        "$KC_CHAIN_OUT" | "$KC_CHAIN_FWD") echo "$c" ;;
        KUBE-*) [[ -f "$before" ]] && ! grep -qx -F "$c" "$before" && echo "$c" ;;
      esac
    done || true)
    [[ -z "$ours" ]] && continue
    # Jumps to our chains from chains that are not ours.
    while read -r rule; do
      chain=$(awk '{print $2}' <<<"$rule")
      target=$(grep -oE -- '-[jg] [^ ]+' <<<"$rule" | awk '{print $2}') || continue
      grep -qx -F "$chain" <<<"$ours" && continue
      grep -qx -F "$target" <<<"$ours" || continue
      eval "\"\$fam\" -w 5 -t \"\$table\" -D ${rule#-A }" && n=$((n + 1))
    done < <("$fam" -w 5 -t "$table" -S 2>/dev/null | grep '^-A ' || true)
    for c in $ours; do "$fam" -w 5 -t "$table" -F "$c" 2>/dev/null || true; done
    for c in $ours; do
      if "$fam" -w 5 -t "$table" -X "$c" 2>/dev/null; then
        n=$((n + 1))
      else
        kc_log "WARNING: could not delete $fam -t $table chain $c"
      fi
    done
  done
  ((n == 0)) || kc_log "$fam: removed $n cluster chains and jumps"
}

# nf_tables tables that appeared while the cluster ran (iptables-nft made them for the chains of
# the kubelet, kube-proxy and our guards) and are empty now: only base chains, no rules.
cleanup_nft_tables() {
  local rec=$KC_HOST/nft-tables fam name
  [[ -f "$rec" ]] && command -v nft >/dev/null || return 0
  while read -r _ fam name; do
    grep -qx -F "table $fam $name" "$rec" && continue
    if nft -a list table "$fam" "$name" 2>/dev/null | grep '# handle' | grep -qvE '^\s*(table|chain) '; then
      kc_log "WARNING: nf_tables table $fam $name appeared while the cluster ran but has rules: kept"
      continue
    fi
    nft delete table "$fam" "$name" && kc_log "removed the empty nf_tables table $fam $name"
  done < <(nft list tables 2>/dev/null)
}

restore_sysctls() {
  local key value now
  [[ -f "$KC_HOST/sysctls" ]] || return 0
  while read -r key value; do
    now=$(sysctl -n "$key" 2>/dev/null | tr '\t' ' ') || continue
    if [[ "$now" != "$value" ]]; then
      sysctl -q -w "$key=$value" && kc_log "restored $key = $value (was $now)"
    fi
  done <"$KC_HOST/sysctls"
}

cleanup_cgroups() {
  local h d pass
  for pass in 1 2 3 4 5 6 7 8 9 10; do
    local left=0
    for h in /sys/fs/cgroup/*; do
      [[ -d "$h/$KC_CGROUP_ROOT" ]] || continue
      while read -r d; do
        rmdir "$d" 2>/dev/null || left=1
      done < <(find "$h/$KC_CGROUP_ROOT" -depth -type d 2>/dev/null)
    done
    ((left == 0)) && return 0
    sleep 0.5
  done
  kc_log "WARNING: cgroups left: $(find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name "$KC_CGROUP_ROOT" | tr '\n' ' ')"
}

# Sockets that the cluster's containerd shims leave in /run/containerd/s when they are killed
# rather than deleted: the name is sha256(<containerd address>/<namespace>/<container ID>), as
# containerd's runtime/v2/shim.SocketAddress computes it. Recorded before the runtime stops.
# The container IDs are kept too: containerd's CRI names its CNI cache entries after them.
record_containers() {
  local addr ns id
  : >"$KC_RUN/shim-sockets"
  : >"$KC_RUN/container-ids"
  for addr in "$KC_CONTAINERD_SOCK" "$KC_DC_SOCK"; do
    [[ -S "$addr" ]] || continue
    for ns in $(timeout 10 ctr -a "$addr" namespaces ls -q 2>/dev/null); do
      for id in $(timeout 10 ctr -a "$addr" -n "$ns" containers ls -q 2>/dev/null); do
        printf '/run/containerd/s/%s\n' "$(printf '%s' "$addr/$ns/$id" | sha256sum | cut -d' ' -f1)" >>"$KC_RUN/shim-sockets"
        echo "$id" >>"$KC_RUN/container-ids"
      done
    done
  done
}

# was_absent PATH: up.sh recorded that PATH (a tracked host path) did not exist.
was_absent() { [[ "$(cat "$KC_HOST/paths/$(tr / _ <<<"$1")" 2>/dev/null)" == absent ]]; }

# is_new PATH: PATH, at or below a tracked host path, did not exist when up.sh ran.
is_new() {
  local path=$1 p rec
  for p in "${KC_HOST_PATHS_NEW_ENTRIES[@]}" "${KC_HOST_PATHS_SHARED[@]}"; do
    [[ "$path" == "$p" || "$path" == "$p"/* ]] || continue
    rec=$KC_HOST/paths/$(tr / _ <<<"$p")
    [[ -f "$rec" ]] || return 1
    was_absent "$p" && return 0
    [[ "$path" != "$p" ]] && ! grep -qx -F "$path" "$rec"
    return
  done
  return 1
}

# rmdir_if_new_and_empty DIR...: remove each DIR (give the deepest first) that is new and empty.
rmdir_if_new_and_empty() {
  local d
  for d in "$@"; do
    if [[ -d "$d" ]] && is_new "$d" && rmdir "$d" 2>/dev/null; then
      kc_log "removed $d (created while the cluster ran)"
    fi
  done
}

cleanup_host_paths() {
  local p rec e
  # Paths only the cluster writes to: whatever appeared while it ran.
  for p in "${KC_HOST_PATHS_NEW_ENTRIES[@]}"; do
    rec=$KC_HOST/paths/$(tr / _ <<<"$p")
    [[ -f "$rec" && -e "$p" ]] || continue
    if was_absent "$p"; then
      rm -rf "$p" && kc_log "removed $p (created while the cluster ran)"
      continue
    fi
    while read -r e; do
      grep -qx -F "$e" "$rec" && continue
      [[ -e "$e" || -L "$e" ]] || continue # under a directory removed already
      rm -rf "$e" && kc_log "removed $e"
    done < <(find "$p" -mindepth 1 -maxdepth 4 2>/dev/null | sort)
  done
  # Shared paths: only what is the cluster's.
  if [[ -d /var/lib/cni ]]; then
    # <network>-<container ID>-<interface>: our network, or (the CRI's loopback) our containers.
    find /var/lib/cni -depth -name "*$KC_CNI_NETWORK*" -exec rm -rf {} + 2>/dev/null || true
    if [[ -s "$KC_RUN/container-ids" ]]; then
      while read -r e; do
        grep -qF -f "$KC_RUN/container-ids" <<<"$(basename "$e")" && rm -rf "$e"
      done < <(find /var/lib/cni -mindepth 1 -type f)
    fi
    while read -r e; do rmdir_if_new_and_empty "$e"; done < <(find /var/lib/cni -depth -mindepth 1 -type d)
    rmdir_if_new_and_empty /var/lib/cni
  fi
  if [[ -f "$KC_RUN/shim-sockets" ]]; then
    while read -r e; do [[ -e "$e" ]] && rm -f "$e" && kc_log "removed $e (a killed shim's socket)"; done <"$KC_RUN/shim-sockets"
  fi
  # /run/containerd/fifo: containerd's client FIFO directory, which builder pods mount (the
  # kubelet creates it).
  rmdir_if_new_and_empty /run/containerd/fifo /run/containerd/s /run/containerd /run/mount
}

main() {
  kc_require_root
  mkdir -p "$KC_DIR"
  # up.sh holds the lock when it calls us (after a failure, or for leftovers).
  [[ "${KC_LOCK_HELD:-0}" == 1 ]] || kiln_lock "$KC_DIR/.lock"
  if [[ ! -e "$KC_RUN" && ! -e "$KC_STATE" && ! -e "$KC_KUBECONFIG" ]] &&
    ! ip link show "$KC_NODE_BRIDGE" >/dev/null 2>&1 && ! iptables -w 5 -S "$KC_CHAIN_OUT" >/dev/null 2>&1; then
    kc_log "no local cluster: nothing to do"
    return 0
  fi
  local t0=$SECONDS
  kc_log "stopping the local cluster ($(kc_running_runtime || echo unknown) runtime)"
  stop_kube
  record_containers
  stop_runtime
  sweep_processes
  stop_control_plane
  cleanup_netns
  unmount_under "$KC_RUN" "$KC_STATE"
  cleanup_links
  cleanup_iptables iptables
  cleanup_iptables ip6tables
  cleanup_nft_tables
  restore_sysctls
  cleanup_cgroups
  cleanup_host_paths
  # Never rm -rf through a mount that is still there (a bind of a host directory would lose
  # its contents).
  if awk '{print $5}' /proc/self/mountinfo | grep -q -e "^$KC_RUN\(/\|$\)" -e "^$KC_STATE\(/\|$\)"; then
    kc_die "mounts are still present below $KC_RUN or $KC_STATE; not removing them. Unmount them and run down.sh again"
  fi
  rm -rf "$KC_STATE" "$KC_KUBECONFIG" "$KC_ENV_FILE"
  # kubectl run by hand with this KUBECONFIG caches discovery under ~/.kube (by server address).
  rm -rf "${HOME:-/root}/.kube/cache/discovery/${KC_NODE_IP}_$KC_APISERVER_PORT"
  rm -rf "$KC_RUN"
  kc_log "local cluster stopped and host restored in $((SECONDS - t0)) s (logs kept in $KC_LOGS/)"
}

main "$@"
