#!/usr/bin/env bash
# make demo: kiln end to end on a machine with no cluster.
#
# Starts a private kube-apiserver + etcd, a private Docker (its embedded BuildKit is the
# builder; its image store is the "node's"), `kiln controller` and one `kiln agent` for a Node
# named kiln-demo; applies the runnable examples; waits for each ImageBuild to be Ready; prints
# their status, digests and the images in the node's store; then stops everything it started
# (by PID) and removes its temp dir. Nothing leaves the machine: contexts are served on
# loopback and builds have no network.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=hack/lib/common.sh
source "$here/lib/common.sh"

CONTEXT_PORT=8765
pids=()
dir=$(mktemp -d /tmp/kiln-demo.XXXXXX)

cleanup() {
  local status=$?
  kiln_log "stopping everything the demo started"
  local pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[$i]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT INT TERM

# start NAME CMD...: run CMD in the background, log to $dir/NAME.log, remember its PID.
start() {
  local name=$1
  shift
  "$@" >"$dir/$name.log" 2>&1 &
  pids+=($!)
}

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  kiln_die "$what did not come up in ${secs}s; logs in $dir (kept: the demo stops now)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

kiln_log "checking prerequisites (make test-env)"
assets=$("$here/test-env.sh")
"$here/docker-env.sh"
if (echo >"/dev/tcp/127.0.0.1/$CONTEXT_PORT") 2>/dev/null; then
  kiln_die "port $CONTEXT_PORT is in use; the examples fetch their contexts from it"
fi
kiln_log "building kiln"
(cd "$root" && cargo build --locked --quiet)
kiln=$root/target/debug/kiln

kiln_log "starting etcd and kube-apiserver in $dir"
openssl_ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
openssl_ec -x509 -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj /CN=kiln-demo-ca -days 1
sign() { # sign NAME SUBJECT EXT
  openssl_ec -keyout "$dir/$1.key" -out "$dir/$1.csr" -subj "$2"
  openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
    -out "$dir/$1.crt" -extfile <(printf '%b' "$3") 2>/dev/null
}
sign server /CN=kube-apiserver 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
sign admin /O=system:masters/CN=kiln-demo 'extendedKeyUsage=clientAuth\n'
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key"
openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
etcd_port=$(free_port) peer_port=$(free_port) api_port=$(free_port)
start etcd "$assets/etcd" --name=demo --data-dir="$dir/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="demo=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true
start kube-apiserver "$assets/kube-apiserver" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --secure-port="$api_port" --insecure-port=0 --etcd-servers="http://127.0.0.1:$etcd_port" --cert-dir="$dir/certs" \
  --tls-cert-file="$dir/server.crt" --tls-private-key-file="$dir/server.key" --client-ca-file="$dir/ca.crt" \
  --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC --service-account-issuer="https://127.0.0.1:$api_port" \
  --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
  --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none
export KUBECONFIG=$dir/kubeconfig
kubectl config set-cluster demo --server="https://127.0.0.1:$api_port" --certificate-authority="$dir/ca.crt" --embed-certs >/dev/null
kubectl config set-credentials admin --client-certificate="$dir/admin.crt" --client-key="$dir/admin.key" --embed-certs >/dev/null
kubectl config set-context demo --cluster=demo --user=admin >/dev/null
kubectl config use-context demo >/dev/null
wait_for kube-apiserver 60 kubectl get namespace default

kiln_log "starting a private containerd + dockerd (Docker's BuildKit is the node's builder)"
cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = "$dir/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
TOML
echo '{}' >"$dir/daemon.json"
start containerd containerd --config "$dir/containerd.toml"
wait_for containerd 30 test -S "$dir/containerd.sock"
start dockerd dockerd --containerd="$dir/containerd.sock" --data-root="$dir/docker" --exec-root="$dir/exec" \
  --pidfile="$dir/dockerd.pid" --host="unix://$dir/docker.sock" --bridge=none --iptables=false --ip6tables=false \
  --ip-forward=false --ip-masq=false --config-file="$dir/daemon.json"
docker() { command docker -H "unix://$dir/docker.sock" "$@"; }
wait_for dockerd 60 docker version
kiln_log "importing busybox:1.36 (from Debian's busybox-static) into the node's store"
mkdir -p "$dir/rootfs/bin"
cp /bin/busybox "$dir/rootfs/bin/busybox"
for applet in $("$dir/rootfs/bin/busybox" --list); do [[ $applet == busybox ]] || ln -sf busybox "$dir/rootfs/bin/$applet"; done
tar -C "$dir/rootfs" -cf - . | docker import - busybox:1.36 >/dev/null

kiln_log "serving the example contexts on 127.0.0.1:$CONTEXT_PORT"
mkdir -p "$dir/contexts/hello" "$dir/contexts/greeter" "$dir/www"
echo "hello from an image built by kiln" >"$dir/contexts/hello/hello.txt"
cat >"$dir/contexts/greeter/Dockerfile" <<'DOCKERFILE'
FROM busybox:1.36 AS build
ARG GREETING=hello
RUN mkdir -p /out && printf '#!/bin/sh\necho "%s"\n' "$GREETING" > /out/greet && chmod +x /out/greet
FROM busybox:1.36 AS runtime
COPY --from=build /out/greet /usr/local/bin/greet
CMD ["greet"]
DOCKERFILE
tar -C "$dir/contexts/hello" -cf "$dir/www/hello.tar" .
tar -C "$dir/contexts/greeter" -cf "$dir/www/greeter.tar" .
start contexts python3 -m http.server "$CONTEXT_PORT" --bind 127.0.0.1 --directory "$dir/www"

kiln_log "installing kiln: CRDs, namespace and RBAC (kiln crds, kiln manifests)"
"$kiln" crds --kube-version 1.20 | kubectl apply --server-side -f - >/dev/null
"$kiln" manifests | kubectl apply -f - >/dev/null
for crd in imagebuilds nodebuilds builderpools; do kubectl wait --for=condition=Established "crd/$crd.kiln.dev" >/dev/null; done
kiln_log "registering Node kiln-demo (its runtime: this Docker)"
kubectl create -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kiln-demo
  labels: {kubernetes.io/os: linux}
NODE
kubectl patch node kiln-demo --subresource=status --type=merge -p \
  '{"status":{"nodeInfo":{"containerRuntimeVersion":"docker://20.10","architecture":"amd64","operatingSystem":"linux","bootID":"","kernelVersion":"","kubeProxyVersion":"","kubeletVersion":"v1.20.2","machineID":"","osImage":"","systemUUID":""}}}' >/dev/null 2>&1

kiln_log "starting kiln controller and kiln agent (node kiln-demo)"
start controller "$kiln" controller --namespace kiln-system --listen "127.0.0.1:$(free_port)" --identity demo-controller
start agent env NODE_NAME=kiln-demo "$kiln" agent --pool default --namespace kiln-system \
  --buildkit-addr "docker-unix://$dir/docker.sock" --runtime docker --network none \
  --listen "127.0.0.1:$(free_port)" --log-dir "$dir/logs" --identity demo-agent

kiln_log "applying the examples that build offline"
examples=(builderpool-default.yaml imagebuild-inline.yaml imagebuild-multistage.yaml)
for f in "${examples[@]}"; do kubectl apply -f "$root/examples/$f"; done
builds=(hello greeter)
for b in "${builds[@]}"; do
  if ! kubectl wait --for=condition=Ready "imagebuild/$b" --timeout=180s; then
    kubectl get imagebuild "$b" -o yaml
    echo "--- controller log"; tail -20 "$dir/controller.log"
    echo "--- agent log"; tail -20 "$dir/agent.log"
    kiln_die "imagebuild/$b did not become Ready"
  fi
done

echo
kubectl get imagebuilds -o wide
echo
for b in "${builds[@]}"; do
  image=$(kubectl get imagebuild "$b" -o jsonpath='{.spec.image}')
  digest=$(kubectl get imagebuild "$b" -o jsonpath='{.status.digest}')
  kind=$(kubectl get imagebuild "$b" -o jsonpath='{.status.digestKind}')
  stored=$(docker image inspect --format '{{.Id}}' "$image")
  echo "imagebuild/$b: $image"
  echo "  status.digest ($kind): $digest"
  echo "  in the node's store:   $stored"
  [[ "$digest" == "$stored" ]] || kiln_die "status digest and the node's store differ for $b"
done
echo
echo "The greeter image runs from the node's store (no registry, no pull):"
docker run --rm --network none kiln.local/default/greeter:v1
echo
kiln_log "demo complete: both images were built on the node and their digests match its store"
