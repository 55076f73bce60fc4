"""Store CT scans in a PACS over DICOMweb (STOW-RS), each as a new classic DICOM CT series.

Each scan (NIfTI, NRRD, MHA or a DICOM series folder) is read and checked as CT, written as a
DICOM series with fresh UIDs, its geometry and HU (rescale intercept -1024), and stored in batches.
The printed Series Instance UID is the image id MONAI Label and OHIF use.

Credentials: --user/--password, or the environment variables MONAI_LABEL_DICOMWEB_USERNAME and
MONAI_LABEL_DICOMWEB_PASSWORD (preferred: a password on the command line is visible to other users
of the machine). A wrong password, an unreachable server or a wrong URL stops with one line.

Examples:
  drasclr pacs-upload scan.nii.gz --url http://127.0.0.1:8042/dicom-web --user drasclr
  MONAI_LABEL_DICOMWEB_PASSWORD=... drasclr pacs-upload a.nrrd b.nrrd --url https://pacs.example/dicom-web --jpeg2000
"""

from __future__ import annotations

import argparse

NAME = "pacs-upload"
HELP = "store CT scans in a PACS (DICOMweb STOW-RS) as DICOM series; print their UIDs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scans", nargs="+", metavar="SCAN", help="CT file (NIfTI/NRRD/MHA) or DICOM series folder")
    parser.add_argument("--url", required=True, help="DICOMweb root of the PACS, e.g. http://127.0.0.1:8042/dicom-web (Orthanc)")
    parser.add_argument("--user", help="user name (default: $MONAI_LABEL_DICOMWEB_USERNAME)")
    parser.add_argument("--password", help="password (default: $MONAI_LABEL_DICOMWEB_PASSWORD)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    parser.add_argument("--patient-id", help="PatientID of every series (default: the scan's name)")
    parser.add_argument("--description", default="drasclr upload", help="SeriesDescription (default 'drasclr upload')")
    parser.add_argument("--jpeg2000", action="store_true", help="store lossless JPEG 2000 pixel data (smaller)")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.io.dicom_writer import SeriesIdentity
    from drasclr_monailabel.io.readers import read_ct, scan_id_from_path
    from drasclr_monailabel.pacs.connection import PacsConnection, open_client
    from drasclr_monailabel.pacs.upload import upload_volume

    connection = PacsConnection.from_env(args.url, args.user, args.password, args.timeout)
    volumes = [(scan, read_ct(scan)) for scan in args.scans]
    client = open_client(connection)
    for scan, volume in volumes:
        scan_id = scan_id_from_path(scan)
        identity = SeriesIdentity(patient_id=args.patient_id or scan_id[:64], patient_name=f"Anonymous^{scan_id[:50]}",
                                  series_description=args.description[:64])
        stored = upload_volume(volume, client, connection, identity, "jpeg2000" if args.jpeg2000 else "none",
                               progress=len(volumes) == 1)
        print(f"{scan}: study {stored.study_instance_uid} series {stored.series_instance_uid} ({stored.instances} slices)")
    return 0
