"""Run a local Orthanc PACS with DICOMweb in the foreground, for trying the hospital path.

Orthanc and its DICOMweb plugin must be installed (``sudo bash scripts/orthanc.sh install``, Debian
packages). This never touches the system Orthanc service: the configuration and database go into
--storage, Orthanc listens on 127.0.0.1 only (other machines are refused) with authentication on
and without a DICOM (C-STORE) port. Ctrl-C stops it; the storage folder keeps the studies.

Give the password with --password or DRASCLR_ORTHANC_PASSWORD; without either, a random one is
generated and printed once.

Examples:
  drasclr pacs-orthanc --storage work/orthanc --port 8042
  DRASCLR_ORTHANC_PASSWORD=... drasclr pacs-orthanc --storage /srv/orthanc --user annotator
"""

from __future__ import annotations

import argparse

NAME = "pacs-orthanc"
HELP = "run a local Orthanc PACS with DICOMweb (loopback, authentication on) until Ctrl-C"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", required=True, help="folder for Orthanc's database, configuration and log")
    parser.add_argument("--port", type=int, default=8042, help="HTTP port on 127.0.0.1 (default 8042)")
    parser.add_argument("--user", default="drasclr", help="the user name (default drasclr)")
    parser.add_argument("--password", help="the password (default: $DRASCLR_ORTHANC_PASSWORD, else a random one)")


def run(args: argparse.Namespace) -> int:
    import os
    import signal

    from drasclr_monailabel.pacs.orthanc import OrthancServer

    password = args.password or os.environ.get("DRASCLR_ORTHANC_PASSWORD")
    server = OrthancServer(args.storage, port=args.port, username=args.user, password=password)
    # Leave the main thread's wait on Orthanc and stop it in `finally`: a handler that waited on
    # Orthanc itself would block on the main thread's wait (20 s) and then time out again (20 s).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.start()
        print(f"Orthanc is running: web interface {server.url}/app/explorer.html, DICOMweb {server.dicomweb_url}")
        print(f"user '{server.username}'" + ("" if password else f", generated password '{server.password}'"))
        print(f"MONAI Label: MONAI_LABEL_DICOMWEB_USERNAME={server.username} MONAI_LABEL_DICOMWEB_PASSWORD=... "
              f"monailabel start_server --app apps/emphysema --studies {server.dicomweb_url}")
        print(f"log: {server.log_path}; Ctrl-C stops", flush=True)
        return server.wait()
    finally:
        server.stop()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
