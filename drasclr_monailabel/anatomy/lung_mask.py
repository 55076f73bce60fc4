"""Classical lung segmentation (no learned weights): right and left lung labels for a chest CT.

The work happens on a coarse working grid (about 2 mm, block-averaged, which also suppresses
noise of low-dose scans) and the labels are mapped back with smooth interpolation:

1. air = HU below -400 (parenchyma is about -850, soft tissue above -100);
2. body = largest 3D component of non-air, holes filled per axial slice; air inside it is
   candidate lung (outside air, the table and the gap beneath the patient are outside the body);
3. trachea and main bronchi: a trachea-sized air region near the midline in the top slices is
   tracked downwards slice by slice; tracking of a branch stops when its cross-section grows
   too much (it has opened into the lung), which guards against leaking into the parenchyma;
   near the tracked airway, thin air tubes that a 3D opening removes are bronchi too;
4. the remaining air is split at narrow necks and its parts are judged from the top down:
   pure gas (median near -1000 HU), gas below the diaphragm (under a lung, with tissue in
   between: stomach, colon) and parts left as small islands once the gas is removed are not lung
   (:mod:`~drasclr_monailabel.anatomy.gas`);
5. a component spanning both sides of the midline (lungs touching at the anterior or posterior
   junction) is split by in-plane erosion until two seeds separate, then each voxel joins its
   nearest seed; if erosion never separates them, each slice is cut at its thinnest column;
6. each lung is closed and its holes filled per slice (vessels, airway walls);
7. the lung with the lower world x is the right lung (LPS: x grows towards the patient's left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from drasclr_monailabel.anatomy.gas import lung_regions
from drasclr_monailabel.anatomy.grid import array_to_image, make_grid, resample_labels, shrink_to_working_grid
from drasclr_monailabel.anatomy.morphology import (FACE_3D, IN_PLANE, close_mm, dilate_mm, ellipsoid, fill_holes_per_slice,
                                                   largest_component, open_mm)
from drasclr_monailabel.errors import NoLungsError
from drasclr_monailabel.io.volume import CTVolume

RIGHT_LUNG = 1
LEFT_LUNG = 2

WORKING_SPACING_MM = 2.0
AIR_THRESHOLD_HU = -400
MIN_LUNG_ML = 30.0
# Trachea: 12-25 mm wide in adults, so 1-5 cm^2 in an axial slice; searched within this
# distance of the body's midline; a tracked branch stops when its cross-section exceeds
# MAX_AIRWAY_AREA_CM2 or grows by more than AIRWAY_GROWTH from one slice to the next.
TRACHEA_AREA_CM2 = (0.5, 6.0)
TRACHEA_MIDLINE_MM = 25.0
MAX_AIRWAY_AREA_CM2 = 8.0
AIRWAY_AREA_FLOOR_CM2 = 1.5  # growth is measured from at least this area (a narrow larynx may widen)
MIN_TRACHEA_LENGTH_MM = 30.0
AIRWAY_GROWTH = 2.0
# Bronchi near the hilum: air within HILUM_REACH_MM of the tracked airway that an opening with
# a ball of this radius (wider than a main bronchus, 5-8 mm) removes.
HILUM_REACH_MM = 40.0
BRONCHUS_OPENING_MM = 8.0
CLOSING_RADIUS_MM = 4.0
# A component is two lungs joined at a junction when each side of the midline holds this much.
MERGED_SIDE_FRACTION = 0.2
MAX_SPLIT_EROSIONS = 10
LABEL_SMOOTHING_MM = 1.0


def segment_lungs(volume: CTVolume, model: str | Path | None = None) -> np.ndarray:
    """Right/left lung labels of a chest CT on the volume's own grid.

    Args:
        volume: a CT in HU, any orientation (the labels follow its array layout).
        model: optional TorchScript lung model used instead of the classical steps
            (contract in :mod:`~drasclr_monailabel.anatomy.lung_model`).

    Returns:
        uint8 array (Z, Y, X) like ``volume.hu``: 0 outside, 1 right lung, 2 left lung. Vessels
        and small airways inside the lungs are included; the trachea, the main bronchi and the
        large bronchi at the hilum are not.

    Raises:
        NoLungsError: no air region inside the body is large and lung-like enough.
    """
    labels = lung_labels_working_grid(volume, model)
    reference = make_grid(volume.origin, volume.shape_xyz, volume.spacing, volume.direction)
    return resample_labels(labels, reference, n_labels=2, smoothing_mm=LABEL_SMOOTHING_MM)


def lung_labels_working_grid(volume: CTVolume, model: str | Path | None = None) -> sitk.Image:
    """The lung labels (0/1/2) on the coarse LPS working grid, as an image with its geometry.

    Map them onto any other grid with :func:`~drasclr_monailabel.anatomy.grid.resample_labels`.
    """
    canonical = volume.canonical()
    image = shrink_to_working_grid(canonical.to_sitk(), WORKING_SPACING_MM)
    hu = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()
    air = hu < AIR_THRESHOLD_HU
    body = fill_holes_per_slice(largest_component(~air))
    if model is not None:
        labels = _model_labels(model, hu, body, spacing, volume.source)
    else:
        inner_air = air & body
        airways = _thin_attachments(inner_air, _trace_airways(inner_air, body, spacing), spacing)
        airways = ndimage.binary_dilation(airways, structure=IN_PLANE)
        lungs = _lung_components(inner_air & ~airways, hu, spacing, volume.source)
        labels = _name_sides(lungs, _midline_index(body, lungs), spacing)
        labels = _close_and_fill(labels, spacing)
        labels[airways] = 0  # closing can bridge the thin wall between a lung and the trachea
    return array_to_image(labels, image)


def _model_labels(model: str | Path, hu: np.ndarray, body: np.ndarray, spacing: tuple[float, ...], source: str) -> np.ndarray:
    """Labels from a user's TorchScript model; a two-class model's lungs are split into sides here."""
    from drasclr_monailabel.anatomy.lung_model import predict_labels

    labels, has_sides = predict_labels(model, hu)
    if np.count_nonzero(labels) * float(np.prod(spacing)) / 1000.0 < MIN_LUNG_ML:
        raise NoLungsError(source or "<volume>", f"no lungs found (the lung model {model} marked less than {MIN_LUNG_ML:.0f} mL)")
    if has_sides:
        return labels
    lungs = labels > 0
    return _name_sides(lungs, _midline_index(body, lungs), spacing)


def _trace_airways(inner_air: np.ndarray, body: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Mask of the trachea and main bronchi found by slice-wise tracking from the top (Z, Y, X).

    A track that dies within MIN_TRACHEA_LENGTH_MM (pharynx or larynx above a closed glottis)
    is kept and the search goes on below it.
    """
    labels, n = ndimage.label(inner_air, structure=IN_PLANE)
    airway = np.zeros_like(inner_air)
    if n == 0:
        return airway
    sx, sy, sz = spacing
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    area = counts * sx * sy / 100.0
    xs = np.broadcast_to(np.arange(labels.shape[2]), labels.shape)
    centre_x = np.bincount(labels.ravel(), weights=xs.ravel(), minlength=n + 1) / np.maximum(counts, 1)
    body_x = _row_centres(body)
    reach = ellipsoid(max(4.0, sz), (sx, sy, 1.0))[0]
    top = labels.shape[0] - 1
    while top >= 0:
        start, current = _find_trachea(labels[: top + 1], area, centre_x, body_x, sx)
        if start is None:
            break
        end = _track_down(labels, area, start, current, reach, airway)
        if (start - end + 1) * sz >= MIN_TRACHEA_LENGTH_MM:
            break
        top = end - 1
    return airway


def _track_down(labels: np.ndarray, area: np.ndarray, start: int, current: set[int], reach: np.ndarray,
                airway: np.ndarray) -> int:
    """Follow airway regions from slice ``start`` downwards, marking them in ``airway``.

    A region in the next slice continues a branch when it touches the branch (within ``reach``),
    is at most MAX_AIRWAY_AREA_CM2 and at most AIRWAY_GROWTH times the regions it continues: a
    bigger region is lung that the airway opens into. Returns the last slice tracked.
    """
    airway[start] |= np.isin(labels[start], list(current))
    for z in range(start - 1, -1, -1):
        previous = np.isin(labels[z + 1], list(current))
        touched = np.unique(labels[z][ndimage.binary_dilation(previous, structure=reach) & (labels[z] > 0)])
        following = set()
        for label in touched:
            near_label = ndimage.binary_dilation(labels[z] == label, structure=reach)
            parents = set(np.unique(labels[z + 1][near_label]).tolist()) & current
            parent_area = max(sum(area[p] for p in parents), AIRWAY_AREA_FLOOR_CM2)
            if area[label] <= MAX_AIRWAY_AREA_CM2 and area[label] <= AIRWAY_GROWTH * parent_area:
                following.add(int(label))
        if not following:
            return z + 1
        airway[z] |= np.isin(labels[z], list(following))
        current = following
    return 0


def _thin_attachments(inner_air: np.ndarray, airway: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """``airway`` plus the thin air tubes joined to it near the hilum (Z, Y, X).

    A main bronchus running almost horizontally merges with the lung within one axial slice, so
    slice-wise tracking stops at it. Near the tracked airway, air that a 3D opening with a ball
    wider than a bronchus removes, and that touches the tracked airway, is bronchus too.
    """
    if not airway.any():
        return airway
    near = dilate_mm(airway, HILUM_REACH_MM, spacing)
    box = ndimage.find_objects(near.astype(np.uint8))[0]
    air = inner_air[box]
    opened = open_mm(air, BRONCHUS_OPENING_MM, spacing)
    thin = (air & ~opened & near[box]) | airway[box]
    labels, _ = ndimage.label(thin, structure=FACE_3D)
    touching = np.unique(labels[airway[box]])
    out = airway.copy()
    out[box] |= np.isin(labels, touching[touching > 0])
    return out


def _find_trachea(labels: np.ndarray, area: np.ndarray, centre_x: np.ndarray, body_x: np.ndarray,
                  sx: float) -> tuple[int | None, set[int]]:
    """Topmost slice holding a trachea-sized air region near the midline, and those regions."""
    low, high = TRACHEA_AREA_CM2
    for z in range(labels.shape[0] - 1, -1, -1):
        if np.isnan(body_x[z]):
            continue
        present = np.unique(labels[z])
        present = present[present > 0]
        found = {int(p) for p in present if low <= area[p] <= high and abs(centre_x[p] - body_x[z]) * sx <= TRACHEA_MIDLINE_MM}
        if found:
            return z, found
    return None, set()


def _row_centres(mask: np.ndarray) -> np.ndarray:
    """Mean x index of ``mask`` per slice (NaN for empty slices), shape (Z,)."""
    counts = mask.sum(axis=(1, 2)).astype(np.float64)
    sums = (mask.sum(axis=1) * np.arange(mask.shape[2])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _lung_components(candidates: np.ndarray, hu: np.ndarray, spacing: tuple[float, ...], source: str) -> np.ndarray:
    """Boolean mask of the candidate air that is lung (not pure gas, not gas below the diaphragm)."""
    if not candidates.any():
        raise NoLungsError(source or "<volume>", "no lungs found (no air inside the body)")
    lungs, largest = lung_regions(candidates, hu, spacing, MIN_LUNG_ML)
    if not lungs.any():
        raise NoLungsError(
            source or "<volume>",
            f"no lungs found (the largest air region inside the body holds {largest:.0f} mL of "
            f"{'pure gas or bowel gas' if largest >= MIN_LUNG_ML else 'air'}; a chest CT shows at least {MIN_LUNG_ML:.0f} mL of lung)",
        )
    return lungs


def _midline_index(body: np.ndarray, lungs: np.ndarray) -> float:
    """x index of the body's left-right centre over the slices that contain lung."""
    slices = lungs.any(axis=(1, 2))
    centres = _row_centres(body[slices])
    return float(np.nanmean(centres))


def _name_sides(lungs: np.ndarray, midline: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Label each lung component right (1, lower x) or left (2), splitting joined lungs first."""
    components, n = ndimage.label(lungs, structure=FACE_3D)
    out = np.zeros(lungs.shape, dtype=np.uint8)
    xs = np.arange(lungs.shape[2])
    for label in range(1, n + 1):
        component = components == label
        column_counts = component.sum(axis=(0, 1))
        right_fraction = column_counts[xs < midline].sum() / column_counts.sum()
        if min(right_fraction, 1.0 - right_fraction) >= MERGED_SIDE_FRACTION:
            box = ndimage.find_objects(component.astype(np.uint8))[0]  # the split's transforms run on the component's box
            right, left = _split_joined(component[box], midline - box[2].start, spacing)
            out[box][right] = RIGHT_LUNG
            out[box][left] = LEFT_LUNG
        else:
            out[component] = RIGHT_LUNG if right_fraction >= 0.5 else LEFT_LUNG
    return out


def _split_joined(component: np.ndarray, midline: float, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Split two lungs joined at a junction into (right, left) masks."""
    eroded = component
    for _ in range(MAX_SPLIT_EROSIONS):
        eroded = ndimage.binary_erosion(eroded, structure=IN_PLANE)
        seeds = _two_sided_seeds(eroded, midline)
        if seeds is not None:
            right_seed, left_seed = seeds
            seed_labels = np.zeros(component.shape, dtype=np.uint8)
            seed_labels[right_seed] = RIGHT_LUNG
            seed_labels[left_seed] = LEFT_LUNG
            nearest = ndimage.distance_transform_edt(seed_labels == 0, sampling=spacing[::-1], return_distances=False, return_indices=True)
            owner = seed_labels[tuple(nearest)]
            return component & (owner == RIGHT_LUNG), component & (owner == LEFT_LUNG)
    return _cut_per_slice(component, midline, spacing[0])


def _two_sided_seeds(eroded: np.ndarray, midline: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The largest eroded component on each side of the midline, once both sides have one."""
    labels, n = ndimage.label(eroded, structure=FACE_3D)
    if n < 2:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    xs = np.broadcast_to(np.arange(eroded.shape[2]), eroded.shape)
    centre = np.bincount(labels.ravel(), weights=xs.ravel()) / np.maximum(sizes, 1)
    order = np.argsort(sizes)[::-1]
    right = next((int(k) for k in order if sizes[k] > 0 and centre[k] < midline), None)
    left = next((int(k) for k in order if sizes[k] > 0 and centre[k] >= midline), None)
    if right is None or left is None or min(sizes[right], sizes[left]) < 0.1 * sizes.sum():
        return None
    return labels == right, labels == left


def _cut_per_slice(component: np.ndarray, midline: float, sx: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut every slice at its column with the least lung within 30 mm of the midline."""
    half = int(round(30.0 / sx))
    low = max(0, int(midline) - half)
    high = min(component.shape[2], int(midline) + half + 1)
    counts = component[:, :, low:high].sum(axis=1)  # (Z, columns)
    cut = low + np.argmin(counts, axis=1)
    right_side = np.arange(component.shape[2])[None, None, :] < cut[:, None, None]
    return component & right_side, component & ~right_side


def _close_and_fill(labels: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Close each lung and fill its holes per slice, without letting one lung take the other's voxels."""
    out = np.zeros_like(labels)
    for label, other in ((RIGHT_LUNG, LEFT_LUNG), (LEFT_LUNG, RIGHT_LUNG)):
        mask = fill_holes_per_slice(close_mm(labels == label, CLOSING_RADIUS_MM, spacing))
        out[mask & (labels != other) & (out == 0)] = label
    return out
