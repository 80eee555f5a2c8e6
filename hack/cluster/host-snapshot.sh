#!/usr/bin/env bash
# Print the host state that `make cluster-up` changes and `make cluster-down` must restore,
# in a stable, diffable form:
#
#   hack/cluster/host-snapshot.sh > /tmp/before
#   make cluster-up && make cluster-down
#   hack/cluster/host-snapshot.sh > /tmp/after && diff -u /tmp/before /tmp/after
#
# Sections: network interfaces and addresses, routes, iptables/ip6tables rules and chains
# (no counters), mounts, sysctls (volatile counters left out), network namespaces, cgroups
# the cluster uses, host paths the kubelet/CNI/containerd write to, and processes that belong
# to the cluster (by their private paths/binaries; other people's processes are not listed,
# they come and go on a shared machine).
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/cluster/lib.sh
source "$HACK_DIR/cluster/lib.sh"

section() { printf '\n### %s\n' "$*"; }

section "links (name type master state)"
ip -d -o link show | awk '{
  name = $2; sub(/:$/, "", name); sub(/@.*/, "", name)
  type = "-"; master = "-"
  for (i = 1; i <= NF; i++) {
    if ($i == "master") master = $(i + 1)
    if ($i ~ /^(bridge|veth|vxlan|dummy|ifb|tun|bond|macvlan|ipvlan)$/ && type == "-") type = $i
  }
  print name, type, master
}' | sort

section "addresses"
ip -o addr show | awk '{print $2, $3, $4}' | sort

section "routes"
ip route show table all | grep -v '^local\|^broadcast\|^multicast\|^ff00::/8' | sort || true

for fam in iptables ip6tables; do
  section "$fam-save (no counters)"
  "$fam-save" 2>/dev/null | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]$//' || true
done

section "mounts (mount point, fs type, source, propagation)"
awk '{
  prop = "private"
  for (i = 7; $i != "-"; i++) if ($i ~ /^(shared|master):/) prop = $i
  for (j = 1; $j != "-"; j++) ;
  print $5, $(j + 1), $(j + 2), (prop ~ /^shared/ ? "shared" : prop ~ /^master/ ? "slave" : "private")
}' /proc/self/mountinfo | sort

section "sysctls (volatile entries left out)"
sysctl -a 2>/dev/null | grep -Ev \
  -e '^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota)|kernel\.(random|ns_last_pid|pty\.nr|tainted|sched_domain))' \
  -e '^net\.netfilter\.nf_conntrack_count' -e '^(fs\.aio-nr|kernel\.perf_event)' \
  -e '^net\.ipv[46]\.(conf|neigh)\.(veth|cni|kiln)' -e 'stable_secret' | sort || true

section "network namespaces"
ls -1 /run/netns 2>/dev/null || echo "(no /run/netns)"

section "cgroups (top level, and the cluster's)"
for h in /sys/fs/cgroup/*/; do
  find "$h" -mindepth 1 -maxdepth 1 -type d -printf '%p\n' 2>/dev/null
  find "$h" -mindepth 2 -type d \( -path "*/$KC_CGROUP_ROOT*" -o -name 'kubepods*' \) -printf '%p\n' 2>/dev/null
done | sort

section "host paths the cluster's components write to"
for p in "${KC_HOST_PATHS[@]}"; do
  if [[ -e "$p" ]]; then
    find "$p" -maxdepth 3 -printf '%p\n' 2>/dev/null | sort
  else
    echo "$p (absent)"
  fi
done

section "cluster processes"
kc_cluster_pids | while read -r pid; do
  printf '%s %s\n' "$(cat "/proc/$pid/comm" 2>/dev/null)" "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-160)"
done | sort
