# shellcheck shell=bash
# shellcheck disable=SC2034 # settings used by the scripts that source this file
# Shared settings and helpers of hack/cluster/*.sh. Source it; do not execute it.
#
# One cluster per machine. Where things live:
#   $KILN_CLUSTER_DIR (default $KILN_CACHE/cluster)
#     kubeconfig      admin kubeconfig of the running cluster (removed by down.sh)
#     cluster.env     shell-sourceable facts about the running cluster (removed by down.sh)
#     logs/           logs of the last run (kept after down, for post-mortems)
#     images/         image archives (pause, busybox, kiln), docker-save format; a cache
#     state/          everything else of the running cluster: pki, etcd, docker/containerd
#                     roots, kubelet root, CNI config/cache/IPAM (removed by down.sh)
#   $KILN_CLUSTER_RUN (default /run/kiln-cluster; short, for unix sockets)
#     *.sock, pids/, daemons' exec/state dirs, host/ (what up.sh recorded about the host so
#     down.sh can restore it), shared/ (a bind mount made rshared: hostPath volumes with
#     Bidirectional propagation must lie below it)  (all removed by down.sh)

# shellcheck source=hack/lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"

KC_HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KC_REPO_DIR=$(cd "$KC_HACK_DIR/../.." && pwd)

KC_DIR=${KILN_CLUSTER_DIR:-$KILN_CACHE/cluster}
# The kubelet evicts and taints its node (disk-pressure) below this much free disk.
KC_MIN_FREE_DISK=${KILN_CLUSTER_MIN_FREE_DISK:-1Gi}
KC_RUN=${KILN_CLUSTER_RUN:-/run/kiln-cluster}
KC_STATE=$KC_DIR/state
KC_LOGS=$KC_DIR/logs
KC_IMAGES=$KC_DIR/images
KC_KUBECONFIG=$KC_DIR/kubeconfig
KC_ENV_FILE=$KC_DIR/cluster.env
KC_PIDS=$KC_RUN/pids
KC_HOST=$KC_RUN/host
KC_SHARED=$KC_RUN/shared
KC_PKI=$KC_STATE/pki
# The runtimes' containerds: each has its socket in its own state directory, as
# /run/containerd/containerd.sock on a normal host, so a builder can mount that directory
# (shared, for Bidirectional propagation) without taking the rest of $KC_RUN along.
KC_CONTAINERD_DIR=$KC_RUN/containerd
KC_CONTAINERD_SOCK=$KC_CONTAINERD_DIR/containerd.sock
KC_CONTAINERD_ROOT=$KC_STATE/containerd
KC_DC_DIR=$KC_RUN/dc
KC_DC_SOCK=$KC_DC_DIR/containerd.sock
KC_DC_ROOT=$KC_STATE/docker-containerd

# Network: all private, all inside this machine. The node IP lives on an empty bridge
# (the kernel here has no dummy links; the kubelet refuses a loopback node IP).
KC_NET=${KILN_CLUSTER_NET:-10.213}
KC_NODE_NAME=kiln-node
KC_NODE_BRIDGE=kiln-node0
KC_NODE_IP=$KC_NET.255.1
KC_CNI_BRIDGE=kiln-cni0
KC_CNI_NETWORK=kiln-cluster
KC_POD_CIDR=$KC_NET.0.0/24
KC_POD_GATEWAY=$KC_NET.0.1
KC_SERVICE_CIDR=$KC_NET.128.0/24
KC_KUBERNETES_SVC_IP=$KC_NET.128.1
KC_APISERVER_PORT=6443
KC_ETCD_PORT=12379
KC_ETCD_PEER_PORT=12380
KC_APISERVER_URL=https://$KC_NODE_IP:$KC_APISERVER_PORT

# Pods' cgroups (cgroupfs driver, cgroup v1) live below this cgroup in every hierarchy, so
# down.sh can find and remove them, and every process left in them is the cluster's.
KC_CGROUP_ROOT=kiln-cluster

# Every process of the cluster (daemons, and pods through the kubelet's cgroupRoot) runs in
# this cgroup v2 subtree too, which lets one iptables rule keep all of them from sending
# anything off the machine (-m cgroup --path).
KC_CGROUP2=/sys/fs/cgroup/unified
KC_DAEMONS_CGROUP=$KC_CGROUP_ROOT/daemons

# iptables chains of our own, jumped to from the top of OUTPUT/FORWARD (iptables and
# ip6tables): KILN-CLUSTER-OUT (metadata address; egress of the cluster's processes),
# KILN-CLUSTER-FWD (pod traffic: only pod <-> pod).
KC_CHAIN_OUT=KILN-CLUSTER-OUT
KC_CHAIN_FWD=KILN-CLUSTER-FWD
KC_GUARD_COMMENT=kiln-cluster-guard

# Images that never come from a registry.
KC_IMAGE_PAUSE=kiln.dev/pause:3.2
KC_IMAGE_BUSYBOX=kiln.dev/busybox:1.35
KC_IMAGE_KILN=${KILN_IMAGE:-kiln.dev/kiln:dev}

# Sysctls the kubelet, kube-proxy and the CNI bridge plugin change: saved by up.sh,
# restored by down.sh.
KC_SYSCTLS=(
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.conf.all.route_localnet net.ipv4.ip_forward net.ipv4.conf.all.forwarding
  net.ipv4.conf.default.forwarding net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
)

# Host paths written by components whose paths cannot all be redirected. up.sh records what
# exists; down.sh removes only what is the cluster's:
#   - the kubelet's pod log directories and its device-plugin socket directory (constants in
#     1.20; one kubelet per machine): entries that appeared while the cluster ran;
#   - /run/netns (containerd's CRI makes cni-<uuid> netns there): entries that appeared;
#   - /var/lib/cni (containerd's CRI keeps its CNI result cache there): entries named after the
#     cluster's CNI network;
#   - /run/containerd/s (every containerd shim on the machine puts its socket there, named by a
#     hash of containerd's address, namespace and container ID): the cluster's shims' sockets,
#     computed from its containers;
#   - /run/mount (mount(8)'s utab lock): only if it was absent and is empty.
# Directories that were absent are removed once empty. The rest (/etc/cni, /opt/cni,
# /var/lib/docker, ...) is never touched, thanks to flags and configs; host-snapshot.sh lists
# them to show that.
KC_HOST_PATHS_NEW_ENTRIES=(/var/log/pods /var/log/containers /var/lib/kubelet /usr/libexec/kubernetes /run/netns)
KC_HOST_PATHS_SHARED=(/var/lib/cni /run/containerd /run/mount)
KC_HOST_PATHS=("${KC_HOST_PATHS_NEW_ENTRIES[@]}" "${KC_HOST_PATHS_SHARED[@]}" /run/dockershim.sock
  /var/lib/dockershim /etc/cni /opt/cni /var/lib/docker /etc/docker /var/lib/containerd
  /etc/containerd /opt/containerd /etc/kubernetes "${HOME:-/root}/.kube/cache/discovery/${KC_NODE_IP}_$KC_APISERVER_PORT")

# No component may talk to anything outside the machine: no proxies either.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy no_proxy NO_PROXY
export AWS_EC2_METADATA_DISABLED=true

KC_KUBE_BIN=$KILN_CACHE/kube/v1.20.2/bin
KC_CNI_BIN=/usr/lib/cni

# kubectl's discovery and HTTP caches for this cluster stay in its state, not in ~/.kube/cache.
KC_KUBECTL_CACHE=$KC_STATE/kubectl-cache
kc_kubectl() { KUBECACHEDIR=$KC_KUBECTL_CACHE kubectl --kubeconfig "$KC_KUBECONFIG" "$@"; }

# --- processes -----------------------------------------------------------------------------
# Every process up.sh starts has a pid file "$KC_PIDS/NAME" holding "PID STARTTIME", so a
# recycled PID is never mistaken for ours.

kc_starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# kc_start NAME PROGRAM ARGS...: start in its own session, in the cluster's daemons cgroup
# (v2), output to $KC_LOGS/NAME.log. File descriptor 9 (the lock of up/down.sh) is closed.
kc_start() {
  local name=$1 pid procs=/dev/null
  shift
  mkdir -p "$KC_PIDS" "$KC_LOGS"
  [[ -d "$KC_CGROUP2/$KC_DAEMONS_CGROUP" ]] && procs=$KC_CGROUP2/$KC_DAEMONS_CGROUP/cgroup.procs
  # Without job control the background child is no process group leader, so setsid(1)
  # calls setsid(2) and execs in place, and so does sh: $! is the program's own PID.
  # The process joins the cgroup before exec, so every socket it opens is the cluster's.
  # shellcheck disable=SC2016 # expanded by the inner sh
  setsid sh -c 'echo $$ >"$0" && exec "$@"' "$procs" "$@" </dev/null >>"$KC_LOGS/$name.log" 2>&1 9>&- &
  pid=$!
  echo "$pid $(kc_starttime "$pid")" >"$KC_PIDS/$name"
  kc_log "started $name (PID $pid)"
}

# kc_pid NAME: prints the PID if that process is still the one we started.
kc_pid() {
  local name=$1 pid start
  [[ -f "$KC_PIDS/$name" ]] || return 1
  read -r pid start <"$KC_PIDS/$name" || return 1
  [[ -n "$pid" && -d "/proc/$pid" && "$(kc_starttime "$pid")" == "$start" ]] || return 1
  echo "$pid"
}

kc_alive() { kc_pid "$1" >/dev/null; }

# kc_wait_gone PID SECONDS: true once PID has exited.
kc_wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while [[ -d "/proc/$pid" ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# kc_kill_pid PID [GRACE]: TERM, then KILL after GRACE seconds (default 10).
kc_kill_pid() {
  local pid=$1 grace=${2:-10}
  kill -TERM "$pid" 2>/dev/null || return 0
  if ! kc_wait_gone "$pid" "$grace"; then
    kc_log "PID $pid ignored SIGTERM for ${grace}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    kc_wait_gone "$pid" 5 || kc_log "WARNING: PID $pid still there after SIGKILL"
  fi
}

# kc_stop NAME [GRACE]: stop a process we started, by its recorded PID.
kc_stop() {
  local name=$1 pid
  if pid=$(kc_pid "$name"); then
    kc_log "stopping $name (PID $pid)"
    kc_kill_pid "$pid" "${2:-10}"
  fi
  rm -f "$KC_PIDS/$name"
}

# PIDs of every process belonging to the cluster: in its cgroups (pods, containers), or
# running with one of its private paths on the command line (daemons, containerd shims,
# whose -address is our private socket). Never this script or its ancestors.
kc_cluster_pids() {
  local self=$$ f pid cmd
  local -A skip=()
  pid=$self
  while [[ "$pid" -gt 1 ]]; do
    skip[$pid]=1
    pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || echo 1)
  done
  {
    for f in /sys/fs/cgroup/*/"$KC_CGROUP_ROOT"; do
      [[ -d "$f" ]] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
    for f in /proc/[0-9]*/cmdline; do
      pid=${f#/proc/}
      pid=${pid%/cmdline}
      cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
      case $cmd in
        *"$KC_RUN/"* | *"$KC_STATE/"*) echo "$pid" ;;
      esac
    done
  } | sort -un | while read -r pid; do
    [[ -n "$pid" && -z "${skip[$pid]:-}" && -d /proc/$pid ]] && echo "$pid"
  done
}

# --- waiting -------------------------------------------------------------------------------

# kc_wait_for DESC TIMEOUT PROCESS CMD...: poll CMD every 0.2 s until it succeeds; fail early,
# with the log's tail, when PROCESS (a kc_start NAME) has died.
kc_wait_for() {
  local desc=$1 timeout=$2 proc=$3 deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$proc" ]] && ! kc_alive "$proc"; then
      kc_log "$proc exited while waiting for $desc; last lines of $KC_LOGS/$proc.log:"
      tail -n 25 "$KC_LOGS/$proc.log" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      kc_log "timed out after ${timeout}s waiting for $desc"
      [[ -n "$proc" ]] && { tail -n 25 "$KC_LOGS/$proc.log" >&2 || true; }
      return 1
    fi
    sleep 0.2
  done
}

# --- misc ----------------------------------------------------------------------------------

kc_require_root() {
  [[ $EUID -eq 0 ]] || kc_die "the local cluster needs root (network, mounts, iptables, cgroups)"
}

kc_log() { kiln_log "$@"; }
kc_die() { kiln_die "$@"; }

# The runtime of the cluster that is (or was, if down.sh is cleaning up after it) running.
kc_running_runtime() { cat "$KC_RUN/runtime" 2>/dev/null; }

kc_docker() { docker -H "unix://$KC_RUN/docker.sock" "$@"; }
kc_ctr() { ctr -a "$KC_CONTAINERD_SOCK" -n k8s.io "$@"; }
