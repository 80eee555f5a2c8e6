# shellcheck shell=bash
# Shared helpers for kiln's hack/ scripts. Source it; do not execute it.
#
# Conventions: progress goes to stderr with a "==> " prefix, so a script's
# stdout can carry a result (e.g. a path) for `$(hack/script.sh)`.

# Root of all of kiln's local caches (source trees, Go caches, binaries).
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
export KILN_CACHE

kiln_log() {
  printf '==> %s\n' "$*" >&2
}

kiln_die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}

# True on a Debian-family host where apt-get can be used.
kiln_is_debian() {
  [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1
}

# kiln_lock FILE: take an exclusive lock on FILE for the rest of the
# process's life (file descriptor 9). Waits for other holders.
kiln_lock() {
  local file=$1
  mkdir -p "$(dirname "$file")"
  exec 9>"$file"
  if ! flock -n 9; then
    kiln_log "waiting for lock $file (another invocation is running)"
    flock 9
  fi
}
