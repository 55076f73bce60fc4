#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the OHIF browser test (tests/integration/test_ohif_browser.py).
#
#   sudo bash scripts/browser.sh install   install the Debian packages chromium and chromium-driver
#                                          (idempotent; nothing is downloaded outside Debian's archive)
#   bash scripts/browser.sh check          exit 0 when both are installed
# The Python side (selenium) comes with the test extras: pip install -e ".[test]".
set -euo pipefail

installed() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
}

case "${1:-}" in
  install)
    if installed; then
      echo "browser: chromium and chromedriver are installed"
      exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
      echo "browser: installing Debian packages needs root: sudo bash $0 install" >&2
      exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    installed || { echo "browser: install finished but chromium or chromedriver is missing" >&2; exit 1; }
    echo "browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
    ;;
  check)
    installed
    ;;
  *)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
