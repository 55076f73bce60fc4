"""Paint the three emphysema subtypes into a lung and return what an expert would label.

Each lesion is an analytic shape (ellipsoid hole, Voronoi lobule, subpleural sphere) in mm. Its
*occupancy* of a voxel (0..1, the partial-volume fraction, approximated by a linear ramp across the
voxel's width along the shape normal, so a 4 mm hole in a 5 mm slice fills only part of it) and
its *destruction* (0..1, the share of the voxel's lung tissue that is gone) move the voxel from its
own HU towards air: ``hu - occupancy * destruction * (hu + 1000)``. Destruction is drawn per
lesion from a wide range and varies smoothly inside it, so a lesion holds partly destroyed lung
(a -870 HU voxel that loses 40 % of its tissue reads -922 HU, above -950) as well as pure air:
emphysema is lost tissue, not a fixed HU band (Gevenois et al., AJRCCM 1995; Madani et al.,
Radiology 2006). The label marks voxels a lesion fills at least half of: what a reader paints,
whatever their HU.

Subtypes (Fleischner Society: Lynch et al., Radiology 2015), as modelled:
- centrilobular (label 1): small holes, 2-10 mm across, near lobule centres, several holes merging
  in severe disease; upper-zone predominant.
- panlobular (label 2): whole lobules with diffuse tissue loss, lower-zone predominant.
- paraseptal (label 3): chains of subpleural bullae (5-20 mm) touching the pleura, with a thin
  wall; mildly upper-zone predominant.
The three share one destruction range (:data:`DESTRUCTION`), so their HU overlap and a threshold
cannot tell them apart; shape and place can. Vessels, airways and the lung next to the trachea
and main bronchi are spared: occupancy is multiplied by the parenchyma weight of :class:`LungLayout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from drasclr_monailabel.data.lung_layout import LungLayout, lung_layout

CENTRILOBULAR = 1
PANLOBULAR = 2
PARASEPTAL = 3
SUBTYPE_NAMES = {CENTRILOBULAR: "centrilobular", PANLOBULAR: "panlobular", PARASEPTAL: "paraseptal"}
# Painting order: the first subtype to claim a voxel keeps its label.
PAINT_ORDER = (PARASEPTAL, CENTRILOBULAR, PANLOBULAR)

TEXTURE_SIGMA_MM = 1.0
AIR_HU = -1000.0
# Share of a voxel's lung tissue a lesion destroys, drawn per lesion (uniform), and how much it
# varies inside a lesion (standard deviation of a smooth field, about 1 mm grain).
DESTRUCTION = (0.3, 1.0)
DESTRUCTION_TEXTURE = 0.12
# Centrilobular lucencies have no wall: destruction fades from the hole's centre to this share of
# it at the rim, which a reader still paints.
CENTRILOBULAR_RIM = 0.5
MARGIN_MM = 12.0
SUBPLEURAL_MM = 6.0
HILUM_CLOSING_MM = 8.0
WALL_MM = 0.8
WALL_HU = 150.0
# Destruction fades over a few mm at a panlobular lobule's faces instead of stopping at a plane.
LOBULE_EDGE_MM = 2.0
LOBULE_WOBBLE_MM = 1.5
MAX_BATCH = 512
# Give up on a subtype after this many lesions per targeted voxel (e.g. lungs made only of vessels).
MAX_LESIONS_PER_VOXEL = 2.0
STALLED_BATCHES = 3


@dataclass(frozen=True)
class LesionSpec:
    """What to paint into one scan.

    Attributes:
        fractions: label value (1, 2, 3) -> target fraction (0..1) of lung voxels to label.
        lobule_mm: mean distance between secondary lobule centres.
        zone_slopes: label value -> slope of the cranio-caudal weight (>0 favours the upper zone).
    """

    fractions: dict[int, float]
    lobule_mm: float = 15.0
    zone_slopes: dict[int, float] = field(default_factory=lambda: {CENTRILOBULAR: 3.0, PANLOBULAR: -3.0, PARASEPTAL: 1.5})


def insert_emphysema(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float], spec: LesionSpec,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Insert emphysema into a scan.

    Args:
        hu: (Z, Y, X) HU without lesions, array z pointing superior.
        lungs: (Z, Y, X) lung mask (non-zero = lung).
        spacing_zyx: voxel size in mm, array order.
        spec: subtype fractions and lobule size.
        rng: random source (all randomness comes from it).

    Returns:
        float32 HU with lesions (no scanner noise yet), and the uint8 label map (0 background,
        1 centrilobular, 2 panlobular, 3 paraseptal), non-zero only inside ``lungs``.
    """
    out = hu.astype(np.float32)
    label = np.zeros(hu.shape, dtype=np.uint8)
    box = _lung_box(lungs, spacing_zyx)
    if box is None or not any(f > 0 for f in spec.fractions.values()):
        return out, label
    layout = lung_layout(hu[box], lungs[box], spacing_zyx, spec.lobule_mm, rng)
    canvas = _Canvas(layout, rng)
    n_lung = int(layout.lungs.sum())
    painters = {CENTRILOBULAR: _paint_centrilobular, PANLOBULAR: _paint_panlobular, PARASEPTAL: _paint_paraseptal}
    for value in PAINT_ORDER:
        fraction = spec.fractions.get(value, 0.0)
        if fraction > 0:
            painters[value](canvas, int(round(fraction * n_lung)), spec, rng)
    out[box] = canvas.blend(out[box])
    label[box] = canvas.label
    return out, label


class _Canvas:
    """Lesion occupancy, lesion HU and labels on the lung box, filled batch by batch.

    Voxels are addressed by flat index into the box (C order), so a batch of many small lesions
    is one vectorised update.
    """

    def __init__(self, layout: LungLayout, rng: np.random.Generator) -> None:
        self.layout = layout
        self.shape = layout.lungs.shape
        self.occupancy = np.zeros(self.shape, dtype=np.float32)
        self.destruction = np.zeros(self.shape, dtype=np.float32)
        self.wall = np.zeros(self.shape, dtype=np.float32)
        self.label = np.zeros(self.shape, dtype=np.uint8)
        sigma = tuple(TEXTURE_SIGMA_MM / s for s in layout.spacing)
        texture = ndimage.gaussian_filter(rng.normal(size=self.shape).astype(np.float32), sigma=sigma)
        self.texture = texture / max(float(texture.std()), 1e-6)
        self.n_lung = int(np.count_nonzero(layout.lungs))

    def paint(self, voxels: np.ndarray, occupancy: np.ndarray, destruction: np.ndarray | float, value: int) -> int:
        """Blend lesions into distinct flat ``voxels``; returns how many voxels were newly labelled.

        ``destruction`` is the lesion's tissue loss (0..1, per entry or one value); the smooth
        texture varies it from voxel to voxel. Where lesions overlap the stronger occupancy wins;
        a voxel keeps the first label it got.
        """
        occupancy = occupancy * self.layout.parenchyma.reshape(-1)[voxels]
        flat_occupancy = self.occupancy.reshape(-1)
        stronger = occupancy > flat_occupancy[voxels]
        target = voxels[stronger]
        flat_occupancy[target] = occupancy[stronger]
        loss = destruction[stronger] if isinstance(destruction, np.ndarray) else destruction
        loss = loss + DESTRUCTION_TEXTURE * self.texture.reshape(-1)[target]
        self.destruction.reshape(-1)[target] = np.clip(loss, 0.0, 1.0)
        flat_label = self.label.reshape(-1)
        new = voxels[(occupancy >= 0.5) & (flat_label[voxels] == 0)]
        flat_label[new] = value
        return int(new.size)

    def add_wall(self, voxels: np.ndarray, occupancy: np.ndarray) -> None:
        """Raise HU by up to ``WALL_HU`` in a thin shell (bulla walls), sparing vessels."""
        strength = WALL_HU * occupancy * self.layout.parenchyma.reshape(-1)[voxels]
        flat = self.wall.reshape(-1)
        flat[voxels] = np.maximum(flat[voxels], strength)

    def blend(self, hu: np.ndarray) -> np.ndarray:
        """HU with lesions: tissue removed by occupancy x destruction, plus bulla walls where not lesion."""
        tissue = np.maximum(hu - AIR_HU, 0.0)
        return hu - self.occupancy * self.destruction * tissue + self.wall * (1.0 - self.occupancy)

    def ellipsoids(self, centres: np.ndarray, radii: np.ndarray, pad_mm: float = 0.0) -> tuple[np.ndarray, ...]:
        """Voxels near a batch of axis-aligned ellipsoids.

        Args:
            centres: (B, 3) centres in mm (z, y, x).
            radii: (B, 3) semi-axes in mm.
            pad_mm: extra margin around each ellipsoid (for walls).

        Returns:
            flat voxel index, lesion index, and offsets dz, dy, dx (mm) from the lesion centre, one
            entry per (lesion, voxel) pair inside the grid.
        """
        spacing = self.layout.spacing
        half = radii.max(axis=0) + pad_mm + spacing / 2  # (3,): partial volume reaches half a voxel out
        size = np.ceil(2 * half / spacing).astype(int) + 1
        start = np.floor((centres - half) / spacing).astype(int)
        index = [start[:, axis, None] + np.arange(size[axis]) for axis in range(3)]
        offset = [index[axis] * spacing[axis] - centres[:, axis, None] for axis in range(3)]
        shapes = [(-1, size[0], 1, 1), (-1, 1, size[1], 1), (-1, 1, 1, size[2])]
        inside = [(i >= 0) & (i < n) for i, n in zip(index, self.shape)]
        valid = inside[0].reshape(shapes[0]) & inside[1].reshape(shapes[1]) & inside[2].reshape(shapes[2])
        full = valid.shape
        iz, iy, ix = (i.reshape(sh) for i, sh in zip(index, shapes))
        flat = (iz * self.shape[1] + iy) * self.shape[2] + ix
        owner = np.broadcast_to(np.arange(len(centres)).reshape(-1, 1, 1, 1), full)
        dz, dy, dx = (np.broadcast_to(o.reshape(sh), full)[valid] for o, sh in zip(offset, shapes))
        return flat[valid], owner[valid], dz.astype(np.float32), dy.astype(np.float32), dx.astype(np.float32)

    def box_voxels(self, centre_mm: np.ndarray, half_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """Flat voxel indices of the box around a point and the voxels' positions in mm (N, 3)."""
        spacing = self.layout.spacing
        low = np.clip(np.floor((centre_mm - half_mm) / spacing).astype(int), 0, self.shape)
        high = np.clip(np.ceil((centre_mm + half_mm) / spacing).astype(int) + 1, 0, self.shape)
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij"), axis=-1).reshape(-1, 3)
        return np.ravel_multi_index(tuple(grid.T), self.shape), grid * spacing


def _lung_box(lungs: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[slice, ...] | None:
    if not lungs.any():
        return None
    box = []
    for axis, s in enumerate(spacing_zyx):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(lungs.any(axis=other))
        margin = int(np.ceil(MARGIN_MM / s))
        box.append(slice(max(present[0] - margin, 0), min(present[-1] + margin + 1, lungs.shape[axis])))
    return tuple(box)


def _ellipsoid_occupancy(dz: np.ndarray, dy: np.ndarray, dx: np.ndarray, radii: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Partial-volume occupancy of axis-aligned ellipsoids at offsets (dz, dy, dx) mm from their centres.

    ``radii`` is (N, 3), one row per entry. The signed distance to the surface is measured along
    the ray from the centre (exact for a sphere); the ramp width is the voxel's extent along it.
    """
    radii = radii.astype(np.float32)
    dist = np.sqrt(dz * dz + dy * dy + dx * dx) + 1e-6
    q = _normalised_radius(dz, dy, dx, radii) + 1e-6
    signed = dist - dist / q
    width = np.sqrt((dz * spacing[0]) ** 2 + (dy * spacing[1]) ** 2 + (dx * spacing[2]) ** 2) / dist
    return _ramp(signed, np.maximum(width, spacing.min()))


def _normalised_radius(dz: np.ndarray, dy: np.ndarray, dx: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Ellipsoid radius coordinate of offsets (mm) from the centre: 0 at the centre, 1 on the surface."""
    radii = radii.astype(np.float32)
    return np.sqrt((dz / radii[:, 0]) ** 2 + (dy / radii[:, 1]) ** 2 + (dx / radii[:, 2]) ** 2)


def _ramp(signed_mm: np.ndarray, width_mm: np.ndarray) -> np.ndarray:
    """Occupancy from a signed distance to a surface (negative inside) and the voxel width across it."""
    return np.clip(0.5 - signed_mm / width_mm, 0.0, 1.0).astype(np.float32)


def _strongest_per_voxel(voxels: np.ndarray, occupancy: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop empty entries and keep, for each voxel, the entry with the highest occupancy."""
    keep = occupancy > 0
    voxels, occupancy, others = voxels[keep], occupancy[keep], [o[keep] for o in others]
    order = np.lexsort((-occupancy, voxels))
    voxels = voxels[order]
    first = np.ones(voxels.shape, dtype=bool)
    first[1:] = voxels[1:] != voxels[:-1]
    return (voxels[first], occupancy[order][first], *(o[order][first] for o in others))


def _paint_in_batches(target: int, paint_batch: Callable[[int], int], first_batch: int) -> None:
    """Call ``paint_batch(k)`` (paint k more lesions, return newly labelled voxels) until ``target``.

    The batch size follows the voxels gained per lesion so far, shrinking to single lesions near
    the target, so the result overshoots by at most about one lesion. When the places a subtype
    can take are nearly used up (e.g. the subpleural band of a small lung), new lesions land on
    painted voxels; painting stops after :data:`STALLED_BATCHES` full batches in a row that each
    gained under 1 % of the remaining target, below the target rather than looping for minutes.
    """
    painted, drawn, stalled = 0, 0, 0
    while painted < target and drawn < MAX_LESIONS_PER_VOXEL * target + first_batch and stalled < STALLED_BATCHES:
        if painted == 0:  # nothing labelled yet: double the batch until lesions stick
            size = min(max(first_batch, drawn), MAX_BATCH)
        else:
            size = int(np.clip(0.7 * (target - painted) * drawn / painted, 1, MAX_BATCH))
        gained = paint_batch(size)
        stalled = stalled + 1 if size == MAX_BATCH and gained < 0.01 * (target - painted) else 0
        painted += gained
        drawn += size


def _severity_scale(target: int, canvas: _Canvas) -> float:
    """0 for trace disease, 1 when the subtype covers a third of the lung: lesions grow with severity."""
    return float(np.clip(target / max(canvas.n_lung, 1) * 3.0, 0.0, 1.0))


def _weighted_order(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation in which index i tends to come early in proportion to weights[i]."""
    keys = np.log(np.maximum(weights, 1e-12)) + rng.gumbel(size=weights.shape)
    return np.argsort(-keys)


def _paint_centrilobular(canvas: _Canvas, target: int, spec: LesionSpec, rng: np.random.Generator) -> None:
    layout = canvas.layout
    if target <= 0 or len(layout.centres) == 0:
        return
    weights = layout.weights_at(layout.centres, spec.zone_slopes[CENTRILOBULAR])
    probability = weights / weights.sum()
    median_radius = 1.6 + 1.8 * _severity_scale(target, canvas)

    def paint_batch(size: int) -> int:
        centres = layout.centres[rng.choice(len(layout.centres), size=size, p=probability)]
        centres = centres + rng.normal(0.0, 0.125 * spec.lobule_mm, size=centres.shape)
        radius = np.clip(median_radius * rng.lognormal(0.0, 0.3, size=(size, 1)), 1.0, 5.0)
        radii = radius * rng.uniform(0.8, 1.25, size=(size, 3))
        destruction = rng.uniform(*DESTRUCTION, size=size).astype(np.float32)
        voxels, owner, dz, dy, dx = canvas.ellipsoids(centres, radii)
        occupancy = _ellipsoid_occupancy(dz, dy, dx, radii[owner], layout.spacing)
        radial = np.minimum(_normalised_radius(dz, dy, dx, radii[owner]), 1.0)
        voxels, occupancy, owner, radial = _strongest_per_voxel(voxels, occupancy, owner, radial)
        fade = 1.0 - (1.0 - CENTRILOBULAR_RIM) * radial**2
        return canvas.paint(voxels, occupancy, destruction[owner] * fade, CENTRILOBULAR)

    _paint_in_batches(target, paint_batch, first_batch=16)


def _paint_panlobular(canvas: _Canvas, target: int, spec: LesionSpec, rng: np.random.Generator) -> None:
    layout = canvas.layout
    if target <= 0 or len(layout.centres) < 2:
        return
    weights = layout.weights_at(layout.centres, spec.zone_slopes[PANLOBULAR])
    painted = 0
    for own in _weighted_order(weights, rng):
        if painted >= target:
            break
        voxels, points = canvas.box_voxels(layout.centres[own], spec.lobule_mm)
        wobble = LOBULE_WOBBLE_MM * canvas.texture.reshape(-1)[voxels]
        occupancy = _lobule_occupancy(layout.tree, layout.centres, own, points, layout.spacing, wobble)
        painted += canvas.paint(voxels, occupancy, rng.uniform(*DESTRUCTION), PANLOBULAR)


def _lobule_occupancy(tree: cKDTree, centres: np.ndarray, own: int, points: np.ndarray, spacing: np.ndarray,
                      wobble_mm: np.ndarray) -> np.ndarray:
    """Occupancy of the Voronoi cell of centre ``own`` at ``points`` (N, 3) mm, ramped at its faces.

    ``wobble_mm`` shifts the faces per point, so cells do not look like cut polyhedra.
    """
    centre = centres[own]
    _, neighbours = tree.query(points, k=2)
    first, second = neighbours[:, 0], neighbours[:, 1]
    other = np.where(first == own, second, first)
    gap = centres[other] - centre
    gap_len = np.maximum(np.linalg.norm(gap, axis=1), 1e-6)
    # Distance to the bisector plane between this centre and the nearest other one; positive outside.
    d_own = np.linalg.norm(points - centre, axis=1)
    d_other = np.linalg.norm(points - centres[other], axis=1)
    signed = (d_own**2 - d_other**2) / (2.0 * gap_len) + wobble_mm
    voxel_width2 = (((gap / gap_len[:, None]) * spacing) ** 2).sum(axis=1)
    occupancy = _ramp(signed, np.sqrt(voxel_width2 + LOBULE_EDGE_MM**2))
    occupancy[(first != own) & (second != own)] = 0.0
    return occupancy


def _paint_paraseptal(canvas: _Canvas, target: int, spec: LesionSpec, rng: np.random.Generator) -> None:
    layout = canvas.layout
    if target <= 0:
        return
    candidates, cand_depth = _subpleural_voxels(layout)
    if len(candidates) == 0:
        return
    stride = max(1, len(candidates) // 200_000)
    keep = rng.permutation(len(candidates))[::stride]
    points = candidates[keep] * layout.spacing
    cand_depth = cand_depth[keep]
    cumulative = np.cumsum(layout.weights_at(points, spec.zone_slopes[PARASEPTAL]))
    tree = cKDTree(points)
    grow = _severity_scale(target, canvas)

    def chain() -> list[tuple[np.ndarray, float]]:
        """Bullae in a row along the pleura: (centre mm, radius mm), each touching the surface."""
        current = min(int(np.searchsorted(cumulative, rng.uniform(0.0, cumulative[-1]))), len(points) - 1)
        bullae = []
        for _ in range(1 + rng.poisson(2.0)):
            radius = float(max(rng.uniform(2.5, 5.0) + 5.0 * grow * rng.uniform(), cand_depth[current] + 1.0))
            bullae.append((points[current], radius))
            nearby = np.asarray(tree.query_ball_point(points[current], 2.2 * radius), dtype=np.int64)
            nearby = nearby[np.linalg.norm(points[nearby] - points[current], axis=1) > 1.3 * radius]
            if nearby.size == 0:
                break
            current = int(rng.choice(nearby))
        return bullae

    def paint_batch(size: int) -> int:
        bullae = [b for _ in range(size) for b in chain()]
        centres = np.array([b[0] for b in bullae])
        radii = np.repeat(np.array([[b[1]] for b in bullae]), 3, axis=1)
        destruction = rng.uniform(*DESTRUCTION, size=len(bullae)).astype(np.float32)
        voxels, owner, dz, dy, dx = canvas.ellipsoids(centres, radii, pad_mm=WALL_MM)
        lumen = _ellipsoid_occupancy(dz, dy, dx, radii[owner], layout.spacing)
        wall = _ellipsoid_occupancy(dz, dy, dx, radii[owner] + WALL_MM, layout.spacing) - lumen
        wall_voxels, wall = _strongest_per_voxel(voxels, wall)
        canvas.add_wall(wall_voxels, wall)
        voxels, lumen, owner = _strongest_per_voxel(voxels, lumen, owner)
        return canvas.paint(voxels, lumen, destruction[owner], PARASEPTAL)

    _paint_in_batches(target, paint_batch, first_batch=4)


def _subpleural_voxels(layout: LungLayout) -> tuple[np.ndarray, np.ndarray]:
    """Parenchyma voxels (N, 3) within ``SUBPLEURAL_MM`` of the lung surface, and their depth in mm.

    The distance transform runs on a grid thinned to about 1 mm in-plane (4 to 9 times fewer
    voxels on a 0.6 mm scan); depth is only needed to that precision. Cut planes of a partial scan
    are not pleura: the transform measures distance to non-lung voxels inside the array only. Holes
    of the mask inside a slice (bronchi cut out of the lung mask) and narrow notches (the hilum,
    where vessels and bronchi enter) are closed first, so bullae line the costal, diaphragmatic and
    mediastinal pleura rather than the hilar vessels.
    """
    step = [1] + [max(1, int(round(1.0 / s))) for s in layout.spacing[1:]]
    thin = tuple(slice(None, None, k) for k in step)
    radius = np.maximum(np.round(HILUM_CLOSING_MM / (layout.spacing[1:] * step[1:])).astype(int), 1)
    disk = _disk(radius)
    pad = int(radius.max())
    closed = []
    for plane in layout.lungs[thin]:
        padded = np.pad(plane, pad)
        closed.append(ndimage.binary_fill_holes(ndimage.binary_closing(padded, structure=disk))[pad:-pad, pad:-pad])
    filled = np.stack(closed)
    depth = ndimage.distance_transform_edt(filled, sampling=layout.spacing * step)
    near = (depth > 0) & (depth <= SUBPLEURAL_MM) & (layout.parenchyma[thin] > 0.5)
    found = np.argwhere(near)
    return found * np.array(step), depth[near]


def _disk(radius_yx: np.ndarray) -> np.ndarray:
    """Elliptic 2D structuring element with the given radii in voxels (y, x)."""
    ry, rx = (int(r) for r in radius_yx)
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y / max(ry, 1)) ** 2 + (x / max(rx, 1)) ** 2 <= 1.0
