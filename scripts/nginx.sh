#!/usr/bin/env bash
# nginx, the reverse proxy of docs/hospital-deployment.md (TLS in front of the MONAI Label server),
# for the test that runs a Slicer round through it (tests/integration/test_server_hardening.py).
#
#   sudo bash scripts/nginx.sh install   install Debian's nginx-light or nginx (idempotent; Debian's archive only)
#   bash scripts/nginx.sh check          exit 0 when nginx is installed
# The test starts its own nginx on a free loopback port with its own configuration; the Debian
# service is not started or changed.
set -euo pipefail

installed() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
}

case "${1:-}" in
  install)
    if installed; then
      echo "nginx: installed"
      exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
      echo "nginx: installing the Debian package needs root: sudo bash $0 install" >&2
      exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # nginx-light where the release still has it (Debian 12), else the plain package (Debian 13 merged them)
    apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 \
      || apt-get install -y -qq --no-install-recommends nginx >/dev/null
    installed || { echo "nginx: install finished but nginx is missing" >&2; exit 1; }
    echo "nginx: installed $(/usr/sbin/nginx -v 2>&1)"
    ;;
  check)
    installed
    ;;
  *)
    echo "usage: bash $0 install|check" >&2
    exit 2
    ;;
esac
