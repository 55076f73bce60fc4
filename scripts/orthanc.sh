#!/usr/bin/env bash
# Orthanc PACS with DICOMweb for the hospital path (tests, trials, small sites).
#
#   sudo bash scripts/orthanc.sh install
#       Install the Debian packages orthanc and orthanc-dicomweb (idempotent; does nothing when
#       both are there). The system service the package installs is left alone (and not started
#       here): tests and users run their own Orthanc with the command below.
#   bash scripts/orthanc.sh start [--storage DIR] [--port 8042] [--user NAME]
#       Run a local Orthanc in the foreground (loopback only, authentication on, DICOMweb at
#       http://127.0.0.1:PORT/dicom-web) until Ctrl-C. Password: $DRASCLR_ORTHANC_PASSWORD, or a
#       random one that is printed. Same as `drasclr pacs-orthanc`.
#   bash scripts/orthanc.sh check
#       Exit 0 when Orthanc and its DICOMweb plugin are installed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

installed() {
  command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || return 1
  ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1
}

case "${1:-}" in
  install)
    if installed; then
      echo "orthanc: Orthanc and its DICOMweb plugin are installed"
      exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
      echo "orthanc: installing Debian packages needs root: sudo bash $0 install" >&2
      exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The package's post-install step would start the system service: keep it stopped (a
    # policy-rc.d that refuses service starts, removed again afterwards if we created it).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
    fi
    trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null
    installed || { echo "orthanc: install finished but Orthanc or the DICOMweb plugin is missing" >&2; exit 1; }
    echo "orthanc: installed $(Orthanc --version 2>/dev/null | head -1)"
    ;;
  start)
    shift
    installed || { echo "orthanc: not installed; run: sudo bash $0 install" >&2; exit 2; }
    storage=work/orthanc
    args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --storage) storage="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
      esac
    done
    drasclr=.venv/bin/drasclr
    [ -x "$drasclr" ] || drasclr=drasclr
    exec "$drasclr" pacs-orthanc --storage "$storage" "${args[@]}"
    ;;
  check)
    installed
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
