"""Tell lung from gas in the stomach, bowel and oesophagus among the air regions inside the body.

Many chest CTs include the upper abdomen: the stomach under the left hemidiaphragm and the
splenic flexure of the colon often hold gas, and on a coarse grid partial volume can join that
gas to a lung base through the thin diaphragm. Three things separate them from lung:

1. **Necks.** Air regions are split where they narrow: seeds are what survives an erosion by
   NECK_MM, and every voxel joins its nearest seed within its region, except voxels farther than
   ORPHAN_MM from every seed, which form parts of their own. Gas that leaked into a lung through a
   thin bridge becomes a part of its own; a lung without necks stays whole.
2. **Pure gas.** Lung, even with severe emphysema, keeps vessels and septa that lift its median
   above -975 HU; gas in a stomach or a detached trachea has a median near -1000 HU.
3. **Below the diaphragm.** Lung is never under lung with something else in between: the columns
   above a lung part run through lung up to the apex. A part whose columns, for most of its
   footprint, meet something other than lung right above its top (the diaphragm, other gas) and
   then, within ROOF_MM, a part already taken as lung, lies under the diaphragm (stomach,
   colon); it is gas if it also holds some pure gas (at least GAS_SHARE of its voxels below
   -950 HU: mottled stool with gas does, normal lung does not). Parts are decided from the top
   down, so the lungs above are known when the parts beneath them are judged.

Whole regions below the caller's minimum lung volume are not lung, and neither are parts that,
once the gas parts are removed, are not joined to that much lung (a small part of a colon's gas
that averaging with stool lifted above -975 HU and that lies under no lung). Known limit: a
large bulla that joins its lung only through a neck narrower than 2 NECK_MM is a part of pure
gas and is left out. Arrays are (Z, Y, X) on the working grid, z increasing upwards (LPS),
``spacing`` in ITK order (x, y, z) mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from drasclr_monailabel.anatomy.morphology import FACE_3D, distance_mm

GAS_MEDIAN_HU = -975
LAA_HU = -950
GAS_SHARE = 0.1
NECK_MM = 4.5
MIN_SEED_ML = 5.0
ORPHAN_MM = 10.0
ROOF_MM = 120.0
UNDER_SHARE = 0.5


def lung_regions(candidates: np.ndarray, hu: np.ndarray, spacing: tuple[float, ...], min_lung_ml: float) -> tuple[np.ndarray, float]:
    """Boolean mask of the candidate air that is lung, and the largest rejected volume (mL).

    Args:
        candidates: bool air inside the body, airways removed.
        hu: the working grid's HU (same shape).
        min_lung_ml: whole regions smaller than this are not lung.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    regions, n = ndimage.label(candidates, structure=FACE_3D)
    if n == 0:
        return np.zeros(candidates.shape, dtype=bool), 0.0
    sizes = np.bincount(regions.ravel(), minlength=n + 1) * voxel_ml
    sizes[0] = 0.0
    parts = _split_at_necks(regions, np.flatnonzero(sizes >= min_lung_ml), spacing, voxel_ml)
    lungs = _without_small_pieces(_decide_top_down(parts, hu, spacing), parts, min_lung_ml / voxel_ml)
    rejected, _ = ndimage.label(candidates & ~lungs, structure=FACE_3D)
    largest_rejected = float(np.bincount(rejected.ravel())[1:].max(initial=0)) * voxel_ml
    return lungs, largest_rejected


def _split_at_necks(regions: np.ndarray, keep: np.ndarray, spacing: tuple[float, ...], voxel_ml: float) -> np.ndarray:
    """Part labels (int32, 0 = not a part) of the regions ``keep``.

    Seeds are the components of the regions eroded by NECK_MM that hold at least MIN_SEED_ML; a
    region without a seed stays whole. Otherwise each voxel joins its region's nearest seed,
    except voxels farther than ORPHAN_MM from every seed of their region: those (gas between the
    grains of stool in a colon, far below the lung it leaked into) form parts of their own.
    """
    parts = np.zeros(regions.shape, dtype=np.int32)
    inside = np.isin(regions, keep)
    if not inside.any():
        return parts
    # The distance transforms below cost most: run them on the box around the kept regions only.
    box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in ndimage.find_objects(inside.astype(np.uint8))[0])
    parts[box] = _split_box(regions[box], inside[box], keep, spacing, voxel_ml)
    return parts


def _split_box(regions: np.ndarray, inside: np.ndarray, keep: np.ndarray, spacing: tuple[float, ...], voxel_ml: float) -> np.ndarray:
    """:func:`_split_at_necks` on a box holding every kept region."""
    parts = np.zeros(regions.shape, dtype=np.int32)
    seeds, n = ndimage.label(distance_mm(inside, spacing) > NECK_MM, structure=FACE_3D)
    seed_sizes = np.bincount(seeds.ravel(), minlength=n + 1) * voxel_ml
    seeds[seed_sizes[seeds] < MIN_SEED_ML] = 0
    seed_region = np.zeros(n + 1, dtype=np.int64)
    seed_region[seeds.ravel()] = regions.ravel()
    seed_region[0] = 0
    counts = np.bincount(seed_region[seed_region > 0], minlength=int(regions.max()) + 1)
    split = np.flatnonzero(counts >= 1)
    whole_mask = inside & ~np.isin(regions, split)
    offset = n + 1
    parts[whole_mask] = offset + regions[whole_mask]
    if split.size:
        in_split = np.isin(regions, split)
        seeds[~np.isin(seed_region[seeds], split)] = 0
        distance, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing[::-1], return_indices=True)
        owner = seeds[tuple(nearest)]
        # Regions never exchange voxels; far from every seed of its region, a voxel starts a part of its own.
        alone = in_split & ((seed_region[owner] != regions) | (distance > ORPHAN_MM))
        orphans, _ = ndimage.label(alone, structure=FACE_3D)
        parts[in_split] = owner[in_split]
        parts[alone] = offset + int(regions.max()) + orphans[alone]
    return parts


def _decide_top_down(parts: np.ndarray, hu: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Mask of the parts that are lung, deciding from the highest part downwards.

    Not lung: a part of pure gas; a part under the lungs with something else in between that
    holds GAS_SHARE of voxels below -950 HU.
    """
    lungs = np.zeros(parts.shape, dtype=bool)
    objects = ndimage.find_objects(parts)
    labels = [k + 1 for k, box in enumerate(objects) if box is not None]
    roof = max(1, int(round(ROOF_MM / spacing[2])))
    for label in sorted(labels, key=lambda k: -objects[k - 1][0].stop):
        box = objects[label - 1]
        part = parts[box] == label
        values = hu[box][part]
        if np.median(values) <= GAS_MEDIAN_HU:
            continue
        if np.mean(values < LAA_HU) >= GAS_SHARE and _separated_under_lungs(part, box, lungs, roof) >= UNDER_SHARE:
            continue
        lungs[box] |= part
    return lungs


def _without_small_pieces(lungs: np.ndarray, parts: np.ndarray, min_voxels: float) -> np.ndarray:
    """``lungs`` less the parts that are not joined to a piece of at least ``min_voxels`` of lung.

    The minimum lung volume is checked on whole regions before the split and again here, on what
    is left once the gas parts are removed: a region of bowel gas whose other parts are dropped
    can leave a small part that neither gas rule catches (its median lifted above -975 HU by
    averaging with stool on the working grid, no lung above it), and lung is never such an
    island. Pieces are face-connected (Z, Y, X); a few voxels of a lung part that a dropped gas
    part cuts off from the rest of that part stay.
    """
    pieces, n = ndimage.label(lungs, structure=FACE_3D)
    large = (np.bincount(pieces.ravel(), minlength=n + 1) >= min_voxels)[pieces] & lungs
    joined = np.bincount(parts[large], minlength=int(parts.max()) + 1) > 0
    return lungs & joined[parts]


def _separated_under_lungs(part: np.ndarray, box: tuple[slice, ...], lungs: np.ndarray, roof: int) -> float:
    """Share of the part's footprint with lung within ``roof`` slices above its top and something
    other than lung right above the top (tissue, the diaphragm, or other gas)."""
    top = part.shape[0] - 1 - np.argmax(part[::-1], axis=0)  # (Y, X) highest slice of the part per column
    ys, xs = np.nonzero(part.any(axis=0))
    zs = box[0].start + top[ys, xs]
    ys, xs = ys + box[1].start, xs + box[2].start
    column = lungs[:, ys, xs]  # (Z, columns)
    z = np.arange(lungs.shape[0])[:, None]
    over = np.any(column & (z > zs[None, :]) & (z <= zs[None, :] + roof), axis=0)
    directly = column[np.minimum(zs + 1, lungs.shape[0] - 1), np.arange(zs.size)] & (zs + 1 < lungs.shape[0])
    return float(np.mean(over & ~directly))
