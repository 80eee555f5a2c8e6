#!/usr/bin/env bash
# `make e2e-cluster`: kiln's end-to-end tests against a real cluster.
#
#   - If $KUBECONFIG points at a reachable cluster (a user's k3d/kind/Rancher Desktop, or the
#     local one), the tests run against it. Images: whatever the cluster can run; set
#     KILN_E2E_BUSYBOX_IMAGE / KILN_E2E_KILN_IMAGE if the defaults do not fit (see
#     tests/support/cluster.rs). Nothing is started or stopped.
#   - Else, if the local cluster (hack/cluster/up.sh) is up, against it; it stays up.
#   - Else a local cluster is started (RUNTIME, default docker: the mode kiln's in-cluster tests
#     need), used, and always stopped again, whatever happens.
# On the local cluster the kiln image is built from the workspace and loaded first
# (hack/cluster/images.sh kiln; KILN_E2E_SKIP_KILN_IMAGE=1 skips that).
#
# KILN_E2E_BUILDKIT_IMAGE: the BuildKit image containerd-flavour builders run (no registry is
# reachable here, so none can be pulled): a docker-save archive, which is loaded into the local
# cluster's runtime first, or the name of an image the nodes already have. Without one, builds
# on containerd builders are skipped with that reason.
#
# Extra arguments go to the test binary, e.g. `hack/cluster/e2e.sh node_is_ready`.
# Tests: every test binary (tests/NAME.rs or tests/NAME/main.rs) listed in E2E_TESTS
# (default: cluster_smoke cluster_kiln), with --include-ignored.
set -euo pipefail

# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

E2E_TESTS=${E2E_TESTS:-cluster_smoke cluster_kiln}
RUNTIME=${RUNTIME:-docker}
started=0

cleanup() {
  local rc=$?
  if ((started)); then
    kc_log "stopping the local cluster started for the tests"
    "$KC_HACK_DIR/down.sh" || rc=1
  fi
  exit "$rc"
}

reachable() {
  kubectl --kubeconfig "$1" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

run_tests() {
  local t args=()
  for t in $E2E_TESTS; do args+=(--test "$t"); done
  kc_log "cargo test ${args[*]} -- --include-ignored --nocapture $* (cluster: $KILN_E2E_KUBECONFIG)"
  # --nocapture: the tests' figures and honest skips ("SKIPPED: …") belong in the log.
  (cd "$KC_REPO_DIR" && cargo test --locked "${args[@]}" -- --include-ignored --nocapture "$@")
}

# Loads a BuildKit archive named by KILN_E2E_BUILDKIT_IMAGE into the local cluster and points
# the variable at the image's name.
load_buildkit_image() {
  local image=${KILN_E2E_BUILDKIT_IMAGE:-}
  [[ -f "$image" ]] || return 0
  "$KC_HACK_DIR/images.sh" load "$image"
  KILN_E2E_BUILDKIT_IMAGE=$(tar -xOf "$image" manifest.json | jq -r '.[0].RepoTags[0]')
  export KILN_E2E_BUILDKIT_IMAGE
  kc_log "BuildKit image for containerd builders: $KILN_E2E_BUILDKIT_IMAGE"
}

load_local_env() {
  set -a
  # shellcheck disable=SC1090
  source "$KC_ENV_FILE"
  set +a
}

main() {
  local t0=$SECONDS kubeconfig=${KUBECONFIG:-}
  if [[ -n "$kubeconfig" && "$kubeconfig" != *:* && -f "$kubeconfig" ]] && reachable "$kubeconfig" &&
    [[ "$(realpath "$kubeconfig")" != "$(realpath -m "$KC_KUBECONFIG")" ]]; then
    kc_log "using the cluster of KUBECONFIG=$kubeconfig"
    export KILN_E2E_KUBECONFIG=$kubeconfig
    if [[ -f "${KILN_E2E_BUILDKIT_IMAGE:-}" ]]; then
      kc_die "KILN_E2E_BUILDKIT_IMAGE is a file; load it into $kubeconfig's nodes yourself and give its name"
    fi
    run_tests "$@"
    return
  fi

  trap cleanup EXIT
  if [[ -f "$KC_ENV_FILE" ]] && reachable "$KC_KUBECONFIG"; then
    kc_log "using the local cluster that is already up (left up afterwards)"
  else
    kc_require_root
    RUNTIME=$RUNTIME "$KC_HACK_DIR/up.sh"
    started=1
  fi
  load_local_env
  if [[ "${KILN_E2E_SKIP_KILN_IMAGE:-0}" != 1 ]]; then
    "$KC_HACK_DIR/images.sh" kiln
    "$KC_HACK_DIR/images.sh" load kiln
    # The content-addressed tag, so an install left from an earlier run rolls to this build.
    KILN_E2E_KILN_IMAGE=$("$KC_HACK_DIR/images.sh" kiln-ref)
    export KILN_E2E_KILN_IMAGE
  fi
  load_buildkit_image
  run_tests "$@"
  kc_log "e2e-cluster passed in $((SECONDS - t0)) s"
}

main "$@"
