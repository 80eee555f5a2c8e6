#!/usr/bin/env bash
# A Python virtualenv for the tests that need Python packages, with pinned versions:
#   starlark-go       Google's Starlark (what Tilt embeds), to evaluate contrib/tilt/Tiltfile
#   helm-python-sdk   Helm v4's engine as a library: lint and render charts/kiln
#
#   hack/python-env.sh        ensure it; print the venv's python on stdout
#   hack/python-env.sh bench  the same for `make bench`'s report: matplotlib, in its own venv
#
# Idempotent and cached under $KILN_CACHE/venv: a warm run only compares the pins.
set -euo pipefail

# shellcheck source=hack/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PINS=(starlark-go==1.0.1 helm-python-sdk==0.2.2)
VENV=$KILN_CACHE/venv
if [[ "${1:-}" == bench ]]; then
  PINS=(matplotlib==3.9.2)
  VENV=$KILN_CACHE/venv-bench
fi
STAMP=$VENV/.kiln-pins

kiln_lock "$VENV.lock"
if [[ -x "$VENV/bin/python" && "$(cat "$STAMP" 2>/dev/null)" == "${PINS[*]}" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
python=$(command -v python3 || true)
[[ -n "$python" ]] || kiln_die "python3 is needed for the Tilt extension's tests"
kiln_log "creating $VENV with ${PINS[*]}"
rm -rf "$VENV"
"$python" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
echo "${PINS[*]}" >"$STAMP"
echo "$VENV/bin/python"
