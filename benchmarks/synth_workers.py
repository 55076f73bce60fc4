"""Wall time of `drasclr synth` with worker processes, against one process in the same run.

Makes the same cohort (same seed, so the same files) with ``--workers 1`` (the baseline) and with
each requested number of workers, from real CT (the sample CTs lung1 and lung2, the benchmarks'
source) and from the built-in phantom; checks the files are identical and reports seconds and the
speed-up. The real sources are read and lung-segmented once per configuration, as the command does.

    python benchmarks/synth_workers.py --out benchmarks/results/synth_workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.lung_mask import segment_lungs
from drasclr_monailabel.data.synth_cohort import SynthSettings, resolve_sources, write_cohort
from drasclr_monailabel.utils.atomic import write_json


def make(source: str, n: int, workers: int, out: Path) -> tuple[float, list[dict[str, object]]]:
    """Seconds to load the sources and write ``n`` scans with ``workers`` processes, and the manifest rows."""
    settings = SynthSettings()
    start = time.perf_counter()
    rows = write_cohort(out, n, resolve_sources([source], settings, segment_lungs), settings, seed=0, workers=workers)
    return time.perf_counter() - start, rows


def same_files(first: Path, second: Path, rows: list[dict[str, object]]) -> bool:
    return all(np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(first / str(row[kind])))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(second / str(row[kind])))))
               for row in rows for kind in ("image", "label", "lungs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--n", type=int, default=8, help="scans per cohort (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="worker counts to compare with 1 (default: the CPU count)")
    parser.add_argument("--sources", nargs="+", default=["real", "phantom"], help="synth sources (default real phantom)")
    args = parser.parse_args()

    result: dict[str, object] = {"command": " ".join(["python", "benchmarks/synth_workers.py", *sys.argv[1:]]), "n": args.n, "cpu_count": os.cpu_count(), "sources": {}}
    with tempfile.TemporaryDirectory() as folder:
        for source in args.sources:
            baseline_s, rows = make(source, args.n, 1, Path(folder) / f"{source}_1")
            entry: dict[str, object] = {"workers_1_s": round(baseline_s, 2)}
            for workers in args.workers:
                seconds, rows_n = make(source, args.n, workers, Path(folder) / f"{source}_{workers}")
                entry[f"workers_{workers}_s"] = round(seconds, 2)
                entry[f"speedup_{workers}"] = round(baseline_s / seconds, 2)
                entry[f"identical_{workers}"] = rows_n == rows and same_files(Path(folder) / f"{source}_1",
                                                                                Path(folder) / f"{source}_{workers}", rows)
            result["sources"][source] = entry
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
