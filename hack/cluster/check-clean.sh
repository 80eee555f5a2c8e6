#!/usr/bin/env bash
# Check that up -> workload -> down leaves the host as it was, N times per runtime.
#
#   hack/cluster/check-clean.sh [CYCLES] [RUNTIME...]     (default: 2 cycles, docker containerd)
#
# Each cycle: host-snapshot.sh; up.sh; a workload that leaves as much behind as it can (a
# privileged DaemonSet whose container mounts a tmpfs in its Bidirectional hostPath and never
# unmounts it, a pod with an emptyDir and a secret, pods still running, a NodePort Service);
# down.sh while all of it runs; host-snapshot.sh; diff. Fails on any difference, except mounts
# of other people's processes under /tmp (a shared machine: their test daemons come and go).
# Needs no cluster running when it starts. Prints per-cycle timings.
set -euo pipefail

# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CYCLES=${1:-2}
shift || true
RUNTIMES=("$@")
((${#RUNTIMES[@]})) || RUNTIMES=(docker containerd)
WORK=$(mktemp -d /tmp/kiln-check-clean.XXXXXX)

workload() {
  kc_kubectl create namespace leftovers >/dev/null
  kc_wait_for "ServiceAccount leftovers/default" 30 "" kc_kubectl -n leftovers get serviceaccount default
  kc_kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: sloppy-agent, namespace: leftovers}
spec:
  selector: {matchLabels: {app: sloppy-agent}}
  template:
    metadata: {labels: {app: sloppy-agent}}
    spec:
      containers:
      - name: agent
        image: $KC_IMAGE_BUSYBOX
        imagePullPolicy: Never
        securityContext: {privileged: true}
        command: ["sh", "-c", "mkdir -p /s/mnt && mount -t tmpfs t /s/mnt && touch /s/mnt/x && exec sleep 100000"]
        volumeMounts: [{name: s, mountPath: /s, mountPropagation: Bidirectional}]
      volumes: [{name: s, hostPath: {path: $KC_SHARED/sloppy, type: DirectoryOrCreate}}]
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: leftovers}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: busy, namespace: leftovers, labels: {app: busy}}
spec:
  containers:
  - name: c
    image: $KC_IMAGE_BUSYBOX
    imagePullPolicy: Never
    command: ["sh", "-c", "httpd -p 8080 -h /tmp; exec sleep 100000"]
    volumeMounts: [{name: e, mountPath: /e}, {name: s, mountPath: /sec}]
  volumes: [{name: e, emptyDir: {medium: Memory}}, {name: s, secret: {secretName: s}}]
---
apiVersion: v1
kind: Service
metadata: {name: busy, namespace: leftovers}
spec:
  type: NodePort
  selector: {app: busy}
  ports: [{port: 80, targetPort: 8080}]
EOF
  kc_wait_for "a leftovers pod" 30 "" kc_kubectl -n leftovers get pods -l app=sloppy-agent -o name
  kc_kubectl -n leftovers wait --for=condition=Ready pod --all --timeout=120s >/dev/null
}

# Differences that are not ours: other processes' mounts under /tmp.
filter() { grep -E '^[<>]' | grep -vE '^[<>] /tmp/' || true; }

# Whatever happens, no cluster is left running.
trap '"$KC_HACK_DIR/down.sh" >/dev/null 2>&1 || true' EXIT

fail=0
for runtime in "${RUNTIMES[@]}"; do
  for ((i = 1; i <= CYCLES; i++)); do
    tag=$runtime-$i
    "$KC_HACK_DIR/host-snapshot.sh" >"$WORK/before-$tag"
    t0=$(date +%s.%N)
    RUNTIME=$runtime "$KC_HACK_DIR/up.sh" >"$WORK/up-$tag.log" 2>&1 || { cat "$WORK/up-$tag.log"; exit 1; }
    t1=$(date +%s.%N)
    workload
    t2=$(date +%s.%N)
    "$KC_HACK_DIR/down.sh" >"$WORK/down-$tag.log" 2>&1 || { cat "$WORK/down-$tag.log"; exit 1; }
    t3=$(date +%s.%N)
    "$KC_HACK_DIR/host-snapshot.sh" >"$WORK/after-$tag"
    diffs=$({ diff "$WORK/before-$tag" "$WORK/after-$tag" || true; } | filter)
    awk -v tag="$tag" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" 'BEGIN {
      printf "%-14s up %5.1f s   workload Ready %5.1f s   down %4.1f s   ", tag, t1 - t0, t2 - t1, t3 - t2 }' 
    if [[ -z "$diffs" ]]; then
      echo "host clean"
    else
      echo "HOST DIFFERS:"
      echo "$diffs"
      fail=1
    fi
  done
done
echo "snapshots and logs: $WORK"
exit "$fail"
