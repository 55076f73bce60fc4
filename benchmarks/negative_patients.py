"""How much of DrasCLR's batch-only task is telling patients apart: for a pretraining cache whose
scans are synthetic variants of a few real patients, the share of each query's fresh negatives
that come from its own patient, and the batch-only loss and top-1 an encoder would reach if it
told the patients apart perfectly and the scans of one patient not at all.

The batches are those of ``drasclr pretrain`` (``LandmarkBatchSampler``: each landmark's valid
scans split into near-equal batches). For a query with ``n`` other scans in its batch, ``k`` of
them its own patient's, chance is loss ln(1 + n) and top-1 1 / (1 + n); the patient-only ceiling
is ln(1 + k) and 1 / (1 + k) (the other patients' keys score as if never chosen). Compare with
``loss_local_batch`` / ``acc_local_batch`` of a run (``benchmarks/pretraining_curve.py``).
Nothing is trained; it runs in seconds.

Usage:
  python benchmarks/negative_patients.py --cache CACHE --manifest MANIFEST.csv --out FILE.json
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.ssl.cache import default_atlas_dir, open_cache, read_atlas_landmarks
from drasclr_monailabel.ssl.sampler import LandmarkBatchSampler
from drasclr_monailabel.utils.atomic import write_json


def patients_of(manifest: Path, subject_ids: tuple[str, ...]) -> np.ndarray:
    """str (S,) the ``source`` column of ``manifest`` (the real CT a synthetic scan was made from) per cache scan."""
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"id", "source"} <= set(reader.fieldnames or ()):
            raise InputError(manifest, f"needs the columns id and source, has {reader.fieldnames}")
        sources = {row["id"]: row["source"] for row in reader}
    missing = [s for s in subject_ids if not sources.get(s)]
    if missing:
        raise InputError(manifest, f"has no source for {len(missing)} cache scans (first: {missing[0]})")
    return np.array([Path(sources[s]).stem for s in subject_ids])


def negative_shares(valid: np.ndarray, patients: np.ndarray, batch_size: int, epochs: int) -> dict[str, float]:
    """Means over the batches of ``epochs`` epochs (``valid``: bool (S, L)) of each batch's mean over
    its queries: the way ``drasclr pretrain`` logs a step and ``pretraining_curve.py`` averages steps."""
    sampler = LandmarkBatchSampler(valid, batch_size)
    steps: list[dict[str, float]] = []
    for epoch in range(epochs):
        for batch in sampler.epoch_batches(epoch):
            subjects = np.asarray(batch.subjects)
            n = np.array([len(subjects) - 1] * len(subjects), dtype=float)
            k = np.array([np.count_nonzero(patients[subjects] == patients[q]) - 1 for q in subjects], dtype=float)
            steps.append({"other_scans_mean": n.mean(), "same_patient_share": (k / np.maximum(n, 1)).mean(),
                          "chance_loss": np.log1p(n).mean(), "chance_top1": (1 / (1 + n)).mean(),
                          "patient_only_loss": np.log1p(k).mean(), "patient_only_top1": (1 / (1 + k)).mean()})
    return {"steps": len(steps), **{name: float(np.mean([step[name] for step in steps])) for name in steps[0]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="pretraining cache written by 'drasclr preprocess'")
    parser.add_argument("--manifest", type=Path, required=True, help="the cohort's manifest.csv (columns id, source)")
    parser.add_argument("--atlas", type=Path, default=None, help="atlas folder (default: the shipped one)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch of the run (default 8)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of batches to average over (default 5)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.epochs < 1:
        parser.error("--batch-size must be at least 2 and --epochs at least 1")
    try:
        index = open_cache(args.cache, read_atlas_landmarks(args.atlas or default_atlas_dir()))
        patients = patients_of(args.manifest, index.subject_ids)
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names, counts = np.unique(patients, return_counts=True)
    result = {"patients": {str(p): int(c) for p, c in zip(names, counts)}, "batch_size": args.batch_size,
              **negative_shares(index.valid, patients, args.batch_size, args.epochs),
              "command": " ".join(["python", "benchmarks/negative_patients.py", *(argv if argv is not None else sys.argv[1:])])}
    write_json(args.out, result)
    print(f"{result['steps']} steps, {result['other_scans_mean']:.2f} other scans a query, "
          f"{result['same_patient_share']:.0%} of them the query's own patient; chance loss {result['chance_loss']:.3f} "
          f"(top-1 {result['chance_top1']:.3f}); patient-only ceiling {result['patient_only_loss']:.3f} "
          f"(top-1 {result['patient_only_top1']:.3f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
