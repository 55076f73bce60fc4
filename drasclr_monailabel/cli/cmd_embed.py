"""Embed scans with an exported encoder: per-scan patch (or slice) embeddings and a patient vector.

DrasCLR encoders give, per scan, one 128-d embedding per atlas landmark (its 32^3 patch encoded at
its anatomical location; landmarks outside the scanned lung are marked invalid) and a patient
vector pooled over the landmarks (--pooling mean, or attention: a parameter-free weighting towards
landmarks that look atypical for their place; docs/embeddings.md). joint2d3d encoders give slice
embeddings and the volume embedding.

Input: a preprocessing cache (--cache, fastest), or CT files / DICOM folders / folders of scans
(SCAN ...), or a CSV manifest with an 'image' column (--manifest; the synthetic cohort's
manifest.csv works as is).

Output in --out (docs/embeddings.md): scans/<id>.npz per scan, embeddings.npz (ids, patient
embeddings), index.csv, and embeddings.json (written last). A re-run skips scans already embedded
by the same encoder (same weights) with the same settings, so an interrupted run resumes.

Exit status: 0 all scans embedded, 1 some scans failed (listed; the others are written), 2 a usage
error (bad encoder, input or option; or no scan could be embedded).

Examples:
  drasclr embed --encoder runs/demo --cache cache/ --out emb/
  drasclr embed --encoder runs/demo --cache cache/ --out emb_att/ --pooling attention --device cuda
  drasclr embed --encoder runs/demo scan1.nii.gz dicom_folder/ --out emb/
  drasclr embed --encoder runs/joint --manifest cohort/manifest.csv --out emb_joint/
  drasclr embed --encoder runs/demo --cache cache/ --out emb_random/ --random-init 0
  python -c "import numpy as np; d = np.load('emb/embeddings.npz'); print(d['ids'], d['embeddings'].shape)"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drasclr_monailabel.cli.arguments import whole_number

NAME = "embed"
HELP = "per-scan patch embeddings and patient-level vectors from an exported encoder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scans", nargs="*", metavar="SCAN", help="CT files, DICOM folders or folders of scans")
    parser.add_argument("--encoder", type=Path, required=True, help="exported encoder folder (encoder.pt + encoder.json)")
    parser.add_argument("--cache", type=Path, help="preprocessing cache folder ('drasclr preprocess --out')")
    parser.add_argument("--manifest", type=Path, help="CSV with an 'image' column (and optionally 'id')")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; scans already embedded there are skipped)")
    parser.add_argument("--method", choices=["drasclr", "joint2d3d"], help="expected method (default: the encoder's, from encoder.json)")
    parser.add_argument("--pooling", choices=["mean", "attention"], default="mean",
                        help="patient vector from landmark embeddings: mean (default) or attention (DrasCLR only)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: a GPU when there is one)")
    parser.add_argument("--max-landmarks", type=whole_number(0), default=0,
                        help="DrasCLR: encode at most N valid landmarks per scan, evenly spread, the same for every scan "
                             "(default 0 = all; a CPU speed-up)")
    parser.add_argument("--batch-size", type=whole_number(1), default=32, help="patches or slices per forward pass (default 32)")
    parser.add_argument("--atlas", type=Path, help="atlas folder the cache / encoder uses (default: the package atlas)")
    parser.add_argument("--random-init", type=whole_number(0), metavar="SEED",
                        help="baseline: embed with the --encoder's architecture but random weights of this seed "
                             "(saved in OUT/random_init_encoder/)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.embed.cohort import (
        EmbedSettings,
        cache_inputs,
        embed_cohort,
        scan_inputs,
    )
    from drasclr_monailabel.errors import ConfigError, InputError

    given = [name for name, present in (("--cache", args.cache), ("SCAN", args.scans), ("--manifest", args.manifest)) if present]
    if len(given) != 1:
        raise ConfigError("drasclr embed", "give exactly one input: --cache CACHE, SCAN ... or --manifest CSV"
                          + (f" (got {', '.join(given)})" if given else ""))
    if args.manifest and args.manifest.suffix.lower() != ".csv":
        raise InputError(args.manifest, "is not a CSV manifest (expected a .csv file with an 'image' column)")
    inputs = cache_inputs(args.cache) if args.cache else scan_inputs(args.scans or [args.manifest])
    settings = EmbedSettings(method=args.method, pooling=args.pooling, device=args.device, max_landmarks=args.max_landmarks,
                             batch_size=args.batch_size, atlas_dir=args.atlas, random_init=args.random_init, progress=not args.no_progress)
    report = embed_cohort(args.encoder, inputs, args.out, settings)
    print(f"embed: {report.done} embedded, {report.skipped} already done, {len(report.failures)} failed of {len(inputs)} scans; "
          f"{args.out / 'embeddings.npz'}")
    for failure in report.failures:
        print(f"  failed {failure['id']}: {failure['reason']}")
    return 1 if report.failures else 0
