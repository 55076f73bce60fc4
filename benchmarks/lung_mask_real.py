"""Lung mask on real CT: LIDC-IDRI-0001, slabs cut from it, and upper-abdomen sections with bowel gas.

Reference: the lobes of the structure map shipped with the scan (an automatic tool's, not drawn
by hand). Cases, all from the one full chest CT (sample data):
- the whole scan, and the whole scan with gas added to the stomach (a gas cap over an air-fluid
  level) and the colon (gas between grains of stool), about 0.28 L of gas;
- upper-abdomen sections: from the bottom of the scan (kidneys) up to 30-90 mm above the lung
  bases, with that gas; ``--stool`` sets the colon's stool share (0.6 lifts the gas's median HU
  above the -975 HU pure-gas line, so only the below-the-diaphragm rule can catch it);
- base-only and apex-only slabs without added gas.
Per case: Dice of our mask and the reference (both lungs, right, left), litres, %LAA-950 on both
masks, the share of the added gas counted as lung, and seconds.

    python benchmarks/lung_mask_real.py --out benchmarks/results/lung_mask_real.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return round(2.0 * float(np.count_nonzero(a & b)) / total, 3) if total else None


def laa(hu: np.ndarray, mask: np.ndarray) -> float | None:
    return round(100.0 * float(np.mean(hu[mask] < -950)), 2) if mask.any() else None


def reference_case() -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """LIDC-IDRI-0001 (canonical) with reference lungs, stomach and colon masks on its grid."""
    import SimpleITK as sitk

    from drasclr_monailabel.anatomy.lobes import lungs_from_lobes, read_structure_lobes
    from drasclr_monailabel.data.sample_data import cached_sample_path
    from drasclr_monailabel.io.readers import read_ct

    volume = read_ct(cached_sample_path("lidc0001_image")).canonical()
    grid = volume.to_sitk()
    labels_path, names_path = cached_sample_path("lidc0001_structures"), cached_sample_path("lidc0001_structures_csv")

    def on_grid(image: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))

    structures = on_grid(sitk.ReadImage(str(labels_path)))
    names = {row.split(",")[2]: int(row.split(",")[3]) for row in names_path.read_text().splitlines()[1:]}
    lungs = lungs_from_lobes(on_grid(read_structure_lobes(labels_path, names_path)))
    return volume, lungs, structures == names["stomach"], structures == names["colon"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--stool", type=float, nargs="+", default=[0.35, 0.6], help="stool shares of the colon to test")
    args = parser.parse_args()

    from drasclr_monailabel.anatomy.lung_mask import segment_lungs
    from drasclr_monailabel.data.sections import add_bowel_gas, cut_slab
    from drasclr_monailabel.utils.atomic import write_json

    volume, reference, stomach, colon = reference_case()
    z = volume.origin[2] + volume.spacing[2] * np.arange(volume.hu.shape[0])
    base, apex = (float(v) for v in z[reference.any(axis=(1, 2))][[0, -1]])
    litre = float(np.prod(volume.spacing)) / 1e6
    rows = []
    plain = [("whole scan", volume, z[0], z[-1], None)]
    plain += [(f"base slab, {h:.0f} mm of lung", volume, base - 30.0, base + h, None) for h in (45.0, 90.0)]
    plain += [(f"apex slab, {h:.0f} mm of lung", volume, apex - h, z[-1], None) for h in (40.0, 80.0)]
    gassy_cases = []
    for stool in args.stool:
        gassy = add_bowel_gas(volume, stomach, colon, stool_fraction=stool)
        gassy_cases.append((f"whole scan + bowel gas (stool {stool})", gassy, z[0], z[-1], stool))
        gassy_cases += [(f"upper abdomen + {h:.0f} mm of lung bases, bowel gas (stool {stool})", gassy, z[0], base + h, stool)
                        for h in (30.0, 45.0, 60.0, 90.0)]
    for name, source, low, high, stool in plain + gassy_cases:
        keep = (z >= low) & (z <= high)
        section = cut_slab(source, float(low), float(high), source=name)
        truth = reference[keep]
        started = time.perf_counter()
        labels = segment_lungs(section)
        seconds = time.perf_counter() - started
        gas = (section.hu < -950) & (stomach | colon)[keep] if stool is not None else np.zeros(truth.shape, bool)
        row = {"case": name, "slices": int(keep.sum()), "dice": dice(labels > 0, truth > 0), "dice_right": dice(labels == 1, truth == 1),
               "dice_left": dice(labels == 2, truth == 2), "litres": round(float(np.count_nonzero(labels)) * litre, 3),
               "reference_litres": round(float(np.count_nonzero(truth)) * litre, 3), "laa950": laa(section.hu, labels > 0),
               "reference_laa950": laa(section.hu, truth > 0),
               "gas_counted_as_lung_ml": round(float(np.count_nonzero(gas & (labels > 0))) * litre * 1000, 1),
               "gas_added_ml": round(float(np.count_nonzero(gas)) * litre * 1000, 1), "seconds": round(seconds, 2)}
        rows.append(row)
        print(f"{name}: Dice {row['dice']}, {row['litres']} L (ref {row['reference_litres']}), %LAA-950 {row['laa950']} "
              f"(ref {row['reference_laa950']}), gas as lung {row['gas_counted_as_lung_ml']} mL", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"benchmark": "lung_mask_real", "command": "python benchmarks/lung_mask_real.py --out " + args.out,
                          "reference": "lobes of the LIDC-IDRI-0001 structure map (automatic tool)", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
