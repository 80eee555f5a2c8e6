#!/usr/bin/env bash
# Start a real single-node Kubernetes v1.20.2 cluster on this machine (`make cluster-up`).
#
#   RUNTIME=containerd hack/cluster/up.sh   (default) private containerd (CRI) + runc + CNI bridge
#   RUNTIME=docker     hack/cluster/up.sh   private dockerd + its own containerd, the kubelet's
#                                           dockershim; Docker's embedded BuildKit builds into
#                                           the very image store the kubelet runs Pods from
#
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (iptables) and the
# kubelet, all built from Debian's kubernetes source (hack/build-kube.sh, cached), all private:
# own sockets, data dirs, bridges and addresses; nothing listens on the machine's own
# addresses except loopback. Prints the kubeconfig path at the end (also
# $KILN_CLUSTER_DIR/cluster.env, shell-sourceable). Stop it with hack/cluster/down.sh, which
# puts the host back as it was (see docs/real-cluster.md).
#
# If a cluster is already up with the same runtime, it is reused; with another runtime, up.sh
# refuses. Leftovers of a dead cluster are cleaned up first. On failure, up.sh tears down what
# it started (set KILN_CLUSTER_KEEP_FAILED=1 to keep it for debugging; logs are in
# $KILN_CLUSTER_DIR/logs either way).
#
# Guards, set before anything starts: no traffic leaves the machine.
#   - OUTPUT/FORWARD reject 169.254.0.0/16 (cloud metadata; the kubelet's AWS credential
#     provider probes it), and the kubelet runs with AWS_EC2_METADATA_DISABLED=true;
#   - every cluster process (daemons, containers, hostNetwork pods) is in the cgroup v2
#     subtree kiln-cluster, and OUTPUT rejects its packets unless they go to loopback, the
#     node IP, the pod or the service network (so no image pull, DNS query or probe leaves);
#   - FORWARD accepts pod <-> pod only and rejects every other packet from or to a pod;
#   - pods get an empty resolv.conf (there is no cluster DNS).
set -euo pipefail

# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNTIME=${RUNTIME:-containerd}
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)
KC_T0=$(date +%s.%N)

elapsed() { awk -v t0="$KC_T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

# --- preflight -----------------------------------------------------------------------------

# A cluster is up if its apiserver and kubelet are the processes we started.
cluster_running() { kc_alive kube-apiserver && kc_alive kubelet; }

check_existing() {
  [[ -e "$KC_RUN" || -e "$KC_STATE" ]] || return 0
  local running
  running=$(kc_running_runtime || true)
  if cluster_running; then
    if [[ "$running" == "$RUNTIME" ]]; then
      kc_log "a $running cluster is already up: reusing it"
      print_summary
      exit 0
    fi
    kc_die "a ${running:-?} cluster is already up (RUNTIME=$RUNTIME asked): run 'make cluster-down' first"
  fi
  kc_log "leftovers of a cluster that is not running: cleaning up first"
  KC_LOCK_HELD=1 "$KC_HACK_DIR/down.sh"
}

ensure_packages() {
  local pkgs=(iproute2 iptables nftables util-linux openssl curl jq etcd-server containernetworking-plugins
    gcc libc6-dev busybox-static containerd runc)
  [[ "$RUNTIME" == docker ]] && pkgs+=(docker.io socat)
  kiln_apt_ensure "${pkgs[@]}"
  command -v kubectl >/dev/null || kc_die "kubectl not found on PATH"
}

# The kernel side of what the cluster needs, checked up front for clear errors.
check_host() {
  [[ -d /sys/fs/cgroup/memory && ! -f /sys/fs/cgroup/cgroup.controllers ]] ||
    kc_die "the kubelet 1.20 here needs cgroup v1 (hybrid is fine); /sys/fs/cgroup is cgroup v2"
  [[ -f "$KC_CGROUP2/cgroup.procs" ]] ||
    kc_die "no cgroup v2 hierarchy at $KC_CGROUP2: the egress guard (iptables -m cgroup --path) needs it"
  ip addr show | grep -q " $KC_NET\." && ! ip link show "$KC_NODE_BRIDGE" >/dev/null 2>&1 &&
    kc_die "$KC_NET.0.0/16 is already used on this machine; set KILN_CLUSTER_NET to a free 10.x prefix"
  check_disk
}

# The kubelet taints its node with disk-pressure below KC_MIN_FREE_DISK, and then no Pod is
# scheduled: refuse to start with less than twice that, naming the cause.
check_disk() {
  local free_kib need_kib
  mkdir -p "$KC_DIR"
  free_kib=$(df -Pk "$KC_DIR" | awk 'NR==2 {print $4}')
  need_kib=$((2 * $(numfmt --from=iec-i "$KC_MIN_FREE_DISK") / 1024))
  ((free_kib >= need_kib)) ||
    kc_die "only $((free_kib / 1024)) MiB free under $KC_DIR; the kubelet would taint the node with disk-pressure below $KC_MIN_FREE_DISK: free at least $((need_kib / 1024)) MiB (e.g. cargo clean in old clones)"
  return 0
}

# --- host state: recorded before any change, restored by down.sh ---------------------------

record_host() {
  local key fam table p
  mkdir -p "$KC_HOST/paths"
  for key in "${KC_SYSCTLS[@]}"; do
    if sysctl -n "$key" >/dev/null 2>&1; then
      printf '%s %s\n' "$key" "$(sysctl -n "$key" | tr '\t' ' ')"
    fi
  done >"$KC_HOST/sysctls"
  for fam in iptables ip6tables; do
    for table in filter nat mangle raw; do
      "$fam" -t "$table" -S 2>/dev/null | awk '$1 == "-N" || $1 == "-P" {print $2}' | sort -u \
        >"$KC_HOST/chains.$fam.$table" || true
    done
  done
  # nf_tables tables: iptables-nft creates the nat/mangle/ip6 filter tables on first use, and
  # iptables cannot delete a table again; down.sh removes (with nft) the new, empty ones.
  nft list tables 2>/dev/null | sort >"$KC_HOST/nft-tables" || true
  for p in "${KC_HOST_PATHS_NEW_ENTRIES[@]}" "${KC_HOST_PATHS_SHARED[@]}"; do
    if [[ -e "$p" ]]; then
      find "$p" -mindepth 1 -maxdepth 4 2>/dev/null | sort >"$KC_HOST/paths/$(tr / _ <<<"$p")"
    else
      echo absent >"$KC_HOST/paths/$(tr / _ <<<"$p")"
    fi
  done
}

# --- cgroups, guards, network, mounts --------------------------------------------------------

setup_cgroups() {
  local h created=()
  for h in /sys/fs/cgroup/*; do
    [[ -f "$h/cgroup.procs" ]] || continue
    if [[ ! -d "$h/$KC_CGROUP_ROOT" ]]; then
      mkdir "$h/$KC_CGROUP_ROOT"
      created+=("$h/$KC_CGROUP_ROOT")
    fi
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" >"$h/$KC_CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$KC_CGROUP_ROOT/cpuset.mems"
    fi
  done
  mkdir -p "$KC_CGROUP2/$KC_DAEMONS_CGROUP"
  printf '%s\n' "${created[@]}" >"$KC_HOST/cgroups"
}

# ipt FAMILY ARGS...: one iptables/ip6tables call (waiting for the xtables lock).
ipt() { local fam=$1; shift; "$fam" -w 5 "$@"; }

# The guard jumps go first in OUTPUT and FORWARD; called again once kube-proxy and the kubelet
# have put their own jumps in front.
guard_jumps_first() {
  local fam chain target
  for fam in iptables ip6tables; do
    for chain in OUTPUT FORWARD; do
      target=$KC_CHAIN_OUT
      [[ "$chain" == FORWARD ]] && target=$KC_CHAIN_FWD
      while ipt "$fam" -D "$chain" -m comment --comment "$KC_GUARD_COMMENT" -j "$target" 2>/dev/null; do :; done
      ipt "$fam" -I "$chain" 1 -m comment --comment "$KC_GUARD_COMMENT" -j "$target"
    done
  done
}

setup_guards() {
  local fam
  for fam in iptables ip6tables; do
    ipt "$fam" -N "$KC_CHAIN_OUT"
    ipt "$fam" -N "$KC_CHAIN_FWD"
  done
  # OUTPUT: the metadata address, for every process of the machine.
  ipt iptables -A "$KC_CHAIN_OUT" -d 169.254.0.0/16 -j REJECT
  ipt ip6tables -A "$KC_CHAIN_OUT" -d fd00:ec2::254/128 -j REJECT
  # OUTPUT: the cluster's processes reach loopback, the node IP, pods and services only.
  ipt iptables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -o lo -j RETURN
  ipt iptables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -d "$KC_NODE_IP/32" -j RETURN
  ipt iptables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -d "$KC_POD_CIDR" -j RETURN
  ipt iptables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -d "$KC_SERVICE_CIDR" -j RETURN
  ipt iptables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -j REJECT
  ipt ip6tables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -o lo -j RETURN
  ipt ip6tables -A "$KC_CHAIN_OUT" -m cgroup --path "$KC_CGROUP_ROOT" -j REJECT
  # FORWARD: pods talk to pods; nothing else is forwarded from or to a pod.
  ipt iptables -A "$KC_CHAIN_FWD" -d 169.254.0.0/16 -j REJECT
  ipt iptables -A "$KC_CHAIN_FWD" -s "$KC_POD_CIDR" -d "$KC_POD_CIDR" -j ACCEPT
  ipt iptables -A "$KC_CHAIN_FWD" -s "$KC_POD_CIDR" -j REJECT
  ipt iptables -A "$KC_CHAIN_FWD" -d "$KC_POD_CIDR" -j REJECT
  for fam in iptables ip6tables; do
    ipt "$fam" -A "$KC_CHAIN_FWD" -i "$KC_CNI_BRIDGE" -j REJECT
    ipt "$fam" -A "$KC_CHAIN_FWD" -o "$KC_CNI_BRIDGE" -j REJECT
  done
  guard_jumps_first
}

setup_network() {
  ip link add "$KC_NODE_BRIDGE" type bridge
  ip addr add "$KC_NODE_IP/32" dev "$KC_NODE_BRIDGE"
  ip link set "$KC_NODE_BRIDGE" up
}

# hostPath volumes with Bidirectional propagation must lie below a shared mount; / is private
# here (no systemd), while on a normal host it is shared.
share_dir() {
  mkdir -p "$1"
  mount --bind "$1" "$1"
  mount --make-rshared "$1"
}

# $KC_SHARED holds builders' state; each containerd's socket directory and root are shared
# when that containerd starts (a builder mounts them Bidirectional, as on a normal host).
setup_shared_mount() { share_dir "$KC_SHARED"; }

# --- certificates and kubeconfigs ----------------------------------------------------------

gen_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# gen_cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
gen_cert() {
  local name=$1 subj=$2 eku=$3 sans=${4:-} ext
  gen_key "$KC_PKI/$name.key"
  openssl req -new -key "$KC_PKI/$name.key" -subj "$subj" -out "$KC_PKI/$name.csr" 2>/dev/null
  ext="basicConstraints=critical,CA:FALSE"$'\n'"keyUsage=critical,digitalSignature"$'\n'"extendedKeyUsage=$eku"
  [[ -n "$sans" ]] && ext+=$'\n'"subjectAltName=$sans"
  openssl x509 -req -in "$KC_PKI/$name.csr" -CA "$KC_PKI/ca.crt" -CAkey "$KC_PKI/ca.key" \
    -CAcreateserial -days 365 -out "$KC_PKI/$name.crt" -extfile <(echo "$ext") 2>/dev/null
  rm -f "$KC_PKI/$name.csr"
}

gen_pki() {
  mkdir -p "$KC_PKI"
  gen_key "$KC_PKI/ca.key"
  openssl req -x509 -new -key "$KC_PKI/ca.key" -subj /CN=kiln-cluster-ca -days 3650 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature \
    -out "$KC_PKI/ca.crt" 2>/dev/null
  gen_cert apiserver /CN=kube-apiserver serverAuth \
    "IP:$KC_NODE_IP,IP:$KC_KUBERNETES_SVC_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  gen_cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
  gen_cert admin /O=system:masters/CN=kiln-admin clientAuth
  gen_cert kubelet /O=system:nodes/CN=system:node:$KC_NODE_NAME clientAuth
  gen_cert kubelet-serving "/CN=$KC_NODE_NAME" serverAuth "IP:$KC_NODE_IP,DNS:$KC_NODE_NAME"
  gen_cert controller-manager /CN=system:kube-controller-manager clientAuth
  gen_cert scheduler /CN=system:kube-scheduler clientAuth
  gen_cert kube-proxy /CN=system:kube-proxy clientAuth
  gen_key "$KC_PKI/sa.key"
  openssl pkey -in "$KC_PKI/sa.key" -pubout -out "$KC_PKI/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE USER CERT_NAME
write_kubeconfig() {
  local file=$1 user=$2 cert=$3
  umask 077
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kiln-local
  cluster:
    server: $KC_APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$KC_PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$KC_PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$KC_PKI/$cert.key")
contexts:
- name: kiln-local
  context:
    cluster: kiln-local
    user: $user
current-context: kiln-local
EOF
  umask 022
}

# --- control plane ---------------------------------------------------------------------------

start_etcd() {
  # Loopback only: pods cannot reach it (plain HTTP, no auth).
  kc_start etcd /usr/bin/etcd --name "$KC_NODE_NAME" --data-dir "$KC_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$KC_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$KC_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$KC_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$KC_ETCD_PEER_PORT" \
    --initial-cluster "$KC_NODE_NAME=http://127.0.0.1:$KC_ETCD_PEER_PORT" \
    --unsafe-no-fsync --logger zap --log-level warn
}

etcd_healthy() { curl -sf "http://127.0.0.1:$KC_ETCD_PORT/health" | grep -q '"health":"true"'; }

start_apiserver() {
  kc_start kube-apiserver "$KC_KUBE_BIN/kube-apiserver" \
    --advertise-address="$KC_NODE_IP" --bind-address="$KC_NODE_IP" \
    --secure-port="$KC_APISERVER_PORT" --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$KC_ETCD_PORT" \
    --cert-dir="$KC_STATE/apiserver" \
    --tls-cert-file="$KC_PKI/apiserver.crt" --tls-private-key-file="$KC_PKI/apiserver.key" \
    --client-ca-file="$KC_PKI/ca.crt" \
    --kubelet-client-certificate="$KC_PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$KC_PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$KC_PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range="$KC_SERVICE_CIDR" --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$KC_PKI/sa.pub" --service-account-signing-key-file="$KC_PKI/sa.key" \
    --profiling=false --v=1
}

apiserver_ready() {
  [[ "$(curl -sf --cacert "$KC_PKI/ca.crt" --cert "$KC_PKI/admin.crt" --key "$KC_PKI/admin.key" \
    "$KC_APISERVER_URL/readyz")" == ok ]] && kc_kubectl get namespace default
}

start_controllers() {
  kc_start kube-controller-manager "$KC_KUBE_BIN/kube-controller-manager" \
    --kubeconfig="$KC_STATE/controller-manager.kubeconfig" \
    --bind-address="$KC_NODE_IP" --port=0 --cert-dir="$KC_STATE/controller-manager" \
    --controllers='*,bootstrapsigner,tokencleaner' --use-service-account-credentials \
    --service-account-private-key-file="$KC_PKI/sa.key" --root-ca-file="$KC_PKI/ca.crt" \
    --cluster-signing-cert-file="$KC_PKI/ca.crt" --cluster-signing-key-file="$KC_PKI/ca.key" \
    --allocate-node-cidrs=false --leader-elect=false --profiling=false \
    --flex-volume-plugin-dir="$KC_STATE/controller-manager/volume-plugins" --v=1
  kc_start kube-scheduler "$KC_KUBE_BIN/kube-scheduler" \
    --kubeconfig="$KC_STATE/scheduler.kubeconfig" \
    --bind-address="$KC_NODE_IP" --port=0 --cert-dir="$KC_STATE/scheduler" \
    --leader-elect=false --profiling=false --v=1
}

start_kube_proxy() {
  cat >"$KC_STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KC_STATE/kube-proxy.kubeconfig
hostnameOverride: $KC_NODE_NAME
bindAddress: $KC_NODE_IP
healthzBindAddress: $KC_NODE_IP:10256
metricsBindAddress: $KC_NODE_IP:10249
clusterCIDR: $KC_POD_CIDR
mode: iptables
# NodePorts only on the node IP, never on the machine's own interfaces.
nodePortAddresses: ["$KC_NODE_IP/32"]
# 0 = leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0
EOF
  kc_start kube-proxy "$KC_KUBE_BIN/kube-proxy" --config="$KC_STATE/kube-proxy.yaml" --v=1
}

# --- runtime -------------------------------------------------------------------------------

write_cni_config() {
  mkdir -p "$KC_STATE/cni/net.d" "$KC_STATE/cni/networks"
  cat >"$KC_STATE/cni/net.d/10-kiln-cluster.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$KC_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$KC_CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$KC_POD_CIDR", "gateway": "$KC_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$KC_STATE/cni/networks"
      }
    }
  ]
}
EOF
}

# Plugins that would only probe the host (modprobe aufs, zfs, devmapper) are off.
CONTAINERD_DISABLED='"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"'

start_containerd_cri() {
  cat >"$KC_STATE/containerd.toml" <<EOF
version = 2
root = "$KC_CONTAINERD_ROOT"
state = "$KC_CONTAINERD_DIR"
oom_score = 0
disabled_plugins = [$CONTAINERD_DISABLED]

[grpc]
  address = "$KC_CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$KC_CONTAINERD_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$KC_IMAGE_PAUSE"
  # The VM lacks CAP_SYS_RESOURCE: never ask runc for an oom_score_adj below ours.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$KC_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$KC_CNI_BIN"
    conf_dir = "$KC_STATE/cni/net.d"
    max_conf_num = 1
EOF
  share_dir "$KC_CONTAINERD_DIR"
  share_dir "$KC_CONTAINERD_ROOT"
  kc_start containerd containerd --config "$KC_STATE/containerd.toml"
  kc_wait_for "containerd" 30 containerd ctr -a "$KC_CONTAINERD_SOCK" version
}

start_docker() {
  mkdir -p "$KC_STATE/docker"
  cat >"$KC_STATE/docker-containerd.toml" <<EOF
version = 2
root = "$KC_DC_ROOT"
state = "$KC_DC_DIR"
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri", $CONTAINERD_DISABLED]

[grpc]
  address = "$KC_DC_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$KC_DC_ROOT/opt"
EOF
  # dockerd would silently use the system containerd if /run/containerd/containerd.sock
  # existed: it gets its own.
  share_dir "$KC_DC_DIR"
  share_dir "$KC_DC_ROOT"
  kc_start docker-containerd containerd --config "$KC_STATE/docker-containerd.toml"
  kc_wait_for "dockerd's containerd" 30 docker-containerd ctr -a "$KC_DC_SOCK" version
  # Everything in the config file (flags and file may not both set an option), so dockerd
  # reads neither /etc/docker/daemon.json nor /etc/docker/key.json.
  jq -n --arg state "$KC_STATE/docker" --arg run "$KC_RUN" --arg runc "$KC_HACK_DIR/kiln-runc" --arg dc "$KC_DC_SOCK" \
    --arg cg "/$KC_CGROUP_ROOT/docker" '{
      "data-root": ($state + "/data"),
      "exec-root": ($run + "/de"),
      "pidfile": ($run + "/dockerd.pid"),
      "hosts": ["unix://" + $run + "/docker.sock"],
      "containerd": $dc,
      "deprecated-key-path": ($state + "/key.json"),
      "bridge": "none", "iptables": false, "ip-forward": false, "ip-masq": false,
      "userland-proxy": false,
      "exec-opts": ["native.cgroupdriver=cgroupfs"],
      "cgroup-parent": $cg,
      "storage-driver": "overlay2",
      "log-driver": "json-file",
      "oom-score-adjust": 0,
      "runtimes": {"kiln-runc": {"path": $runc}},
      "default-runtime": "kiln-runc"
    }' >"$KC_STATE/docker/daemon.json"
  kc_start dockerd dockerd --config-file "$KC_STATE/docker/daemon.json"
  kc_wait_for "dockerd" 60 dockerd kc_docker version
}

start_kubelet() {
  mkdir -p "$KC_STATE/kubelet/pki"
  : >"$KC_STATE/resolv.conf" # no DNS for pods
  cat >"$KC_STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $KC_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: $KC_NODE_IP
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $KC_PKI/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $KC_PKI/kubelet-serving.crt
tlsPrivateKeyFile: $KC_PKI/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: /$KC_CGROUP_ROOT
cgroupsPerQOS: true
failSwapOn: false
resolvConf: $KC_STATE/resolv.conf
# Nothing can be re-pulled: never garbage-collect images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors, not percentages: this node shares a developer's (often large, often
# nearly full) disk with everything else, and 2 % of 250 GiB is 5 GiB that a CI clone's
# target/ can take, tainting the node with disk-pressure mid-run (it happened).
evictionHard:
  memory.available: 100Mi
  nodefs.available: $KC_MIN_FREE_DISK
  imagefs.available: $KC_MIN_FREE_DISK
  nodefs.inodesFree: 2%
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
EOF
  local runtime_flags=()
  case $RUNTIME in
    docker)
      runtime_flags=(
        --container-runtime=docker
        --docker-endpoint="unix://$KC_RUN/docker.sock"
        --container-runtime-endpoint="unix://$KC_RUN/dockershim.sock"
        --experimental-dockershim-root-directory="$KC_STATE/dockershim"
        --network-plugin=cni --cni-bin-dir="$KC_CNI_BIN"
        --cni-conf-dir="$KC_STATE/cni/net.d" --cni-cache-dir="$KC_STATE/cni/cache"
        --pod-infra-container-image="$KC_IMAGE_PAUSE"
        --docker="unix://$KC_RUN/docker.sock" --containerd="$KC_DC_SOCK"
      )
      ;;
    containerd)
      runtime_flags=(
        --container-runtime=remote
        --container-runtime-endpoint="unix://$KC_CONTAINERD_SOCK"
        --containerd="$KC_CONTAINERD_SOCK" --docker="unix://$KC_RUN/no-docker.sock"
      )
      ;;
  esac
  kc_start kubelet env AWS_EC2_METADATA_DISABLED=true "$KC_KUBE_BIN/kubelet" \
    --config="$KC_STATE/kubelet.yaml" --kubeconfig="$KC_STATE/kubelet.kubeconfig" \
    --hostname-override="$KC_NODE_NAME" --node-ip="$KC_NODE_IP" \
    --root-dir="$KC_STATE/kubelet" --cert-dir="$KC_STATE/kubelet/pki" \
    --seccomp-profile-root="$KC_STATE/kubelet/seccomp" \
    --volume-plugin-dir="$KC_STATE/kubelet/volume-plugins" \
    "${runtime_flags[@]}" --v=1
}

node_ready() {
  [[ "$(kc_kubectl get node "$KC_NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# --- output --------------------------------------------------------------------------------

write_env_file() {
  {
    echo "# The local kiln cluster (hack/cluster/up.sh). Removed by down.sh."
    echo "KILN_CLUSTER_RUNTIME=$RUNTIME"
    echo "KUBECONFIG=$KC_KUBECONFIG"
    echo "KILN_E2E_KUBECONFIG=$KC_KUBECONFIG"
    echo "KILN_CLUSTER_NODE=$KC_NODE_NAME"
    echo "KILN_CLUSTER_NODE_IP=$KC_NODE_IP"
    echo "KILN_CLUSTER_SHARED_DIR=$KC_SHARED"
    echo "KILN_E2E_HOSTPATH_DIR=$KC_SHARED"
    echo "KILN_E2E_BUSYBOX_IMAGE=$KC_IMAGE_BUSYBOX"
    echo "KILN_E2E_LOCAL_CLUSTER=1"
    echo "KUBECACHEDIR=$KC_KUBECTL_CACHE"
    # kiln's pools on this node (tests/cluster_kiln/main.rs): the runtime's private socket and
    # root, and BuildKit state below the shared mount (Bidirectional propagation needs one).
    echo "KILN_E2E_POOL_STATE_ROOT=$KC_SHARED/kiln-pools"
    if [[ "$RUNTIME" == docker ]]; then
      echo "KILN_CLUSTER_DOCKER_HOST=unix://$KC_RUN/docker.sock"
      echo "KILN_E2E_POOL_RUNTIME_SOCKET=$KC_RUN/docker.sock"
      # The private dockerd has no bridge network (bridge: none), so RUN steps get none.
      echo "KILN_E2E_POOL_RUN_NETWORK=None"
      echo "KILN_E2E_CONTAINERD_SOCKET=$KC_DC_SOCK"
      echo "KILN_E2E_CONTAINERD_ROOT=$KC_DC_ROOT"
    else
      echo "KILN_CLUSTER_CONTAINERD_ADDRESS=$KC_CONTAINERD_SOCK"
      echo "KILN_E2E_POOL_RUNTIME_SOCKET=$KC_CONTAINERD_SOCK"
      echo "KILN_E2E_POOL_RUNTIME_ROOT=$KC_CONTAINERD_ROOT"
      echo "KILN_E2E_CONTAINERD_SOCKET=$KC_CONTAINERD_SOCK"
      echo "KILN_E2E_CONTAINERD_ROOT=$KC_CONTAINERD_ROOT"
    fi
  } >"$KC_ENV_FILE"
}

print_summary() {
  echo
  echo "kiln local cluster ($(kc_running_runtime)) is up: node $KC_NODE_NAME ($KC_NODE_IP), API $KC_APISERVER_URL"
  echo "  export KUBECONFIG=$KC_KUBECONFIG   (or: set -a; . $KC_ENV_FILE; set +a)"
  echo "  facts: $KC_ENV_FILE   logs: $KC_LOGS/   stop: make cluster-down"
}

on_exit() {
  local rc=$?
  ((rc == 0)) && return 0
  kc_log "cluster-up failed (exit $rc); logs in $KC_LOGS/"
  if [[ "${KILN_CLUSTER_KEEP_FAILED:-0}" == 1 ]]; then
    kc_log "KILN_CLUSTER_KEEP_FAILED=1: leaving it as it is; 'make cluster-down' cleans up"
  else
    kc_log "tearing down what was started"
    KC_LOCK_HELD=1 "$KC_HACK_DIR/down.sh" || true
  fi
  exit "$rc"
}

main() {
  case $RUNTIME in
    docker | containerd) ;;
    *) kc_die "RUNTIME must be 'containerd' or 'docker', not '$RUNTIME'" ;;
  esac
  kc_require_root
  mkdir -p "$KC_DIR"
  kiln_lock "$KC_DIR/.lock"
  check_existing
  check_host
  ensure_packages
  kc_log "building (or reusing) ${COMPONENTS[*]}"
  "$KC_REPO_DIR/hack/build-kube.sh" "${COMPONENTS[@]}" >/dev/null
  "$KC_HACK_DIR/images.sh" base
  kc_log "prerequisites ready at $(elapsed) s"

  trap on_exit EXIT
  rm -rf "$KC_LOGS" "$KC_STATE"
  mkdir -p "$KC_RUN" "$KC_STATE" "$KC_LOGS"
  echo "$RUNTIME" >"$KC_RUN/runtime"
  record_host
  setup_cgroups
  setup_guards
  setup_network
  setup_shared_mount
  gen_pki
  write_kubeconfig "$KC_KUBECONFIG" kiln-admin admin
  write_kubeconfig "$KC_STATE/kubelet.kubeconfig" "system:node:$KC_NODE_NAME" kubelet
  write_kubeconfig "$KC_STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  write_kubeconfig "$KC_STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
  write_kubeconfig "$KC_STATE/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  write_cni_config
  kc_log "host prepared (guards, $KC_NODE_BRIDGE $KC_NODE_IP, shared $KC_SHARED, certificates) at $(elapsed) s"

  start_etcd
  case $RUNTIME in
    docker) start_docker ;;
    containerd) start_containerd_cri ;;
  esac
  "$KC_HACK_DIR/images.sh" load pause busybox
  kc_wait_for "etcd" 30 etcd etcd_healthy
  start_apiserver
  kc_wait_for "kube-apiserver" 60 kube-apiserver apiserver_ready
  kc_log "kube-apiserver ready at $(elapsed) s"
  start_controllers
  start_kube_proxy
  start_kubelet
  kc_wait_for "node $KC_NODE_NAME Ready" 90 kubelet node_ready
  kc_log "node $KC_NODE_NAME Ready at $(elapsed) s after cluster-up started"
  # kube-proxy and the kubelet have put their jumps in front of ours by now.
  guard_jumps_first
  write_env_file
  print_summary
}

main "$@"
