#!/usr/bin/env bash
# Install what kiln's BuildKit tests need: Debian's docker.io (dockerd +
# containerd + runc, BuildKit v0.8 embedded), busybox-static (for the local
# busybox base image) and git (git daemon for git-context tests).
#
# Idempotent: when everything is installed it does no apt work at all.
# It does NOT start any daemon: tests/support/docker.rs starts a private
# containerd + dockerd per test binary under a temp dir and stops them by PID.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

packages=(docker.io containerd runc busybox-static git openssl docker-registry apache2-utils)

if [[ -f "$here/lib/apt.sh" ]]; then
  # shellcheck source=hack/lib/apt.sh
  source "$here/lib/apt.sh"
  kiln_apt_ensure "${packages[@]}"
else
  missing=()
  for p in "${packages[@]}"; do
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" == installed ]] || missing+=("$p")
  done
  if ((${#missing[@]} > 0)); then
    echo "==> apt-get install ${missing[*]}" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
fi

# Debian's docker.io postinst enables system services. The tests never use
# them (they start private daemons), and on a host without systemd nothing
# runs. Report what the tests will use.
for bin in dockerd containerd runc busybox git docker-registry htpasswd openssl; do
  command -v "$bin" >/dev/null 2>&1 || { echo "==> ERROR: $bin not found after install" >&2; exit 1; }
done
echo "==> docker-env ready: $(dockerd --version 2>/dev/null | head -1)" >&2
