# shellcheck shell=bash
# Debian package helpers for kiln's hack/ scripts. Source it; do not execute it.
#
#   kiln_apt_ensure PKG...   install those of PKG... that are not installed
#   kiln_apt_update          run `apt-get update` (at most once per process tree)
#
# The warm path (everything installed) does no apt work at all: it only asks
# dpkg. `apt-get update` runs at most once, and only when something is missing;
# KILN_APT_UPDATED=1 is exported so child scripts skip it too.

# shellcheck source=hack/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# True if Debian package $1 is installed.
kiln_pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

kiln_apt_update() {
  if [[ "${KILN_APT_UPDATED:-0}" == 1 ]]; then
    return 0
  fi
  kiln_log "apt-get update"
  apt-get update >&2
  KILN_APT_UPDATED=1
  export KILN_APT_UPDATED
}

kiln_apt_ensure() {
  local pkg missing=()
  for pkg in "$@"; do
    kiln_pkg_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  kiln_is_debian ||
    kiln_die "missing packages (${missing[*]}) and this is not a Debian host with apt-get; install them by hand"
  [[ $EUID -eq 0 ]] ||
    kiln_die "missing packages (${missing[*]}); run as root or install them: apt-get install ${missing[*]}"
  kiln_apt_update
  kiln_log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
}
