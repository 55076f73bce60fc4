"""A synthetic emphysema cohort: varied scans with true subtype labels, lung masks and outcomes.

Each output scan is made in five steps, all driven by one per-scan seed (so a scan can be remade
on its own and the same cohort seed gives identical files):

1. a source scan and its lung mask: a real CT (a sample CT or a user's scan, lungs from the
   segmenter the caller hands in, e.g. the anatomy layer's ``segment_lungs``) or a freshly drawn
   phantom;
2. a random crop, rotation, scale and elastic warp (:mod:`~drasclr_monailabel.data.deform`), so
   one real scan yields many subjects;
3. emphysema lesions of one or two subtypes at a random severity (:mod:`~drasclr_monailabel.data.lesions`);
4. an inspiration level, i.e. the density of normal lung (:mod:`~drasclr_monailabel.data.inspiration`);
5. a reconstruction kernel, noise and a calibration offset (:mod:`~drasclr_monailabel.data.scanner`).

The cohort layout and ``manifest.csv`` columns are the contract in docs/formats.md; the manifest
is written last, so a folder with a manifest is complete.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.data.deform import DeformRange, random_deformation
from drasclr_monailabel.data.inspiration import set_inspiration
from drasclr_monailabel.data.lesions import SUBTYPE_NAMES, LesionSpec, insert_emphysema
from drasclr_monailabel.data.scanner import KERNELS, simulate_scanner
from drasclr_monailabel.data.survival import synthetic_survival
from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.metrics import dice
from drasclr_monailabel.utils.atomic import atomic_open, write_with
from drasclr_monailabel.utils.process_pool import worker_pool

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("id", "image", "label", "lungs", "source", "subtype", "laa950", "severity", "noise_hu",
                    "kernel", "survival_time", "event", "seed", "lung_hu", "hu_offset")
LAA_THRESHOLD_HU = -950
REAL_SAMPLES = ("lung1_image", "lung2_image")
MAX_SEVERITY_PERCENT = 60.0
# Median HU of normal parenchyma a scan may be given (--lung-hu): from beyond a deep breath to near expiration.
LUNG_HU_LIMITS = (-950.0, -700.0)
MAX_HU_OFFSET = 100.0
# Smallest share of a scan's lesions a second (or, with every_subtype, any) subtype gets.
MIN_SUBTYPE_SHARE = 0.15
# Dirichlet concentration per subtype for every_subtype: shares spread about +-0.14 around equal weights.
EVERY_SUBTYPE_CONCENTRATION = 4.0

Segmenter = Callable[[CTVolume], np.ndarray]


@dataclass(frozen=True)
class SynthSettings:
    """Ranges from which each scan's parameters are drawn (uniformly).

    Attributes:
        severity_percent: true emphysema share of the lung, in percent (low, high).
        subtype_weights: relative frequency of each subtype as the scan's main subtype.
        mixed_probability: chance that a scan also holds a second subtype (15-40 % of its lesions).
        every_subtype: every scan holds every subtype of positive weight, each in its own zone
            (each at least 15 % of the scan's lesions, the rest split around the weights), as in
            the mixed-subtype lungs radiologists see; ``mixed_probability`` is then unused. Used by
            benchmarks so that every labelled subset and every test scan holds all subtypes.
        noise_hu: added noise standard deviation in HU (low, high).
        kernels: reconstruction kernels to choose from.
        lung_hu: median HU of normal lung parenchyma (low, high): the inspiration level.
        hu_offset: calibration offset added to every HU (low, high).
        lobule_mm: mean secondary-lobule spacing in mm (low, high).
        deform: ranges of the random crop / rotation / scale / elastic warp.
        phantom_spacing: voxel size (x, y, z) in mm of phantom sources.
    """

    severity_percent: tuple[float, float] = (0.0, 25.0)
    subtype_weights: dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in SUBTYPE_NAMES.values()})
    mixed_probability: float = 0.5
    every_subtype: bool = False
    noise_hu: tuple[float, float] = (10.0, 60.0)
    kernels: tuple[str, ...] = KERNELS
    lung_hu: tuple[float, float] = (-900.0, -820.0)
    hu_offset: tuple[float, float] = (-10.0, 10.0)
    lobule_mm: tuple[float, float] = (12.0, 20.0)
    deform: DeformRange = DeformRange()
    phantom_spacing: tuple[float, float, float] = (1.5, 1.5, 2.5)

    def check(self) -> None:
        """Raise :class:`ConfigError` for a range or choice that cannot be used."""
        low, high = self.severity_percent
        if not 0.0 <= low <= high <= MAX_SEVERITY_PERCENT:
            raise ConfigError("--severity", f"needs 0 <= LOW <= HIGH <= {MAX_SEVERITY_PERCENT:g} percent, got {low:g} {high:g}")
        low, high = self.noise_hu
        if not 0.0 <= low <= high <= 500.0:
            raise ConfigError("--noise", f"needs 0 <= LOW <= HIGH <= 500 HU, got {low:g} {high:g}")
        unknown = set(self.subtype_weights) - set(SUBTYPE_NAMES.values())
        if unknown or any(w < 0 for w in self.subtype_weights.values()) or sum(self.subtype_weights.values()) <= 0:
            raise ConfigError("--mix", f"needs non-negative weights for {', '.join(SUBTYPE_NAMES.values())} with a positive sum")
        if not self.kernels or set(self.kernels) - set(KERNELS):
            raise ConfigError("--kernels", f"choose from {', '.join(KERNELS)}")
        low, high = self.lung_hu
        if not LUNG_HU_LIMITS[0] <= low <= high <= LUNG_HU_LIMITS[1]:
            raise ConfigError("--lung-hu", f"needs {LUNG_HU_LIMITS[0]:g} <= LOW <= HIGH <= {LUNG_HU_LIMITS[1]:g} HU "
                                           f"(median of normal lung), got {low:g} {high:g}")
        low, high = self.hu_offset
        if not -MAX_HU_OFFSET <= low <= high <= MAX_HU_OFFSET:
            raise ConfigError("--hu-offset", f"needs {-MAX_HU_OFFSET:g} <= LOW <= HIGH <= {MAX_HU_OFFSET:g} HU, "
                                             f"got {low:g} {high:g}")
        if any(s <= 0 for s in self.phantom_spacing):
            raise ConfigError("--phantom-spacing", "needs three positive sizes in mm")


@dataclass(frozen=True)
class SourceScan:
    """A scan to build synthetic subjects from: the CT in LPS and its lung labels (0/1 right/2 left)."""

    name: str
    volume: CTVolume
    lungs: np.ndarray


class RealSource:
    """A real CT file or DICOM folder; read, reoriented to LPS and lung-segmented once, on first use.

    ``segment`` maps the LPS volume to its lung labels (0/1 right/2 left), e.g.
    ``drasclr_monailabel.anatomy.lung_mask.segment_lungs``: the data layer takes lung masks from
    its caller rather than importing the anatomy layer.
    """

    def __init__(self, path: str | Path, segment: Segmenter, name: str | None = None) -> None:
        self.path = Path(path)
        self.segment = segment
        self.name = name or str(path)
        self._scan: SourceScan | None = None

    def load(self) -> SourceScan:
        """Read and segment the scan (raises InputError / NoLungsError for an unusable file)."""
        if self._scan is None:
            from drasclr_monailabel.io import read_ct

            volume = read_ct(self.path).canonical()
            self._scan = SourceScan(self.name, volume, np.asarray(self.segment(volume), dtype=np.uint8))
        return self._scan

    def scan(self, seed: int) -> SourceScan:
        return self.load()


class PhantomSource:
    """A new thorax phantom per scan (its anatomy drawn from the scan's seed), without noise."""

    name = "phantom"

    def __init__(self, spacing: tuple[float, float, float]) -> None:
        self.spacing = spacing

    def load(self) -> None:
        """Nothing to read: phantoms are drawn per scan."""

    def scan(self, seed: int) -> SourceScan:
        from drasclr_monailabel.data.phantom import make_thorax_phantom

        case = make_thorax_phantom(spacing=self.spacing, seed=seed, noise_hu=0.0)
        return SourceScan(f"phantom:{seed}", case.volume, case.lungs)


Source = RealSource | PhantomSource


def resolve_sources(specs: Sequence[str], settings: SynthSettings, segment: Segmenter) -> list[Source]:
    """Turn ``--source`` values ("real", "phantom", sample-data names or paths) into loaded sources.

    "real" stands for :data:`REAL_SAMPLES`; a sample-data name (e.g. ``lidc0001_image``) is fetched
    like ``drasclr sample-data``. Every real file is read and segmented with ``segment`` here,
    before anything is written, so a bad input fails fast with ``<path>: <problem>``.
    """
    from drasclr_monailabel.data.sample_data import sample_names, sample_path

    sources: list[Source] = []
    for spec in specs:
        if spec == "real":
            sources += [RealSource(sample_path(name), segment, name=name) for name in REAL_SAMPLES]
        elif spec == "phantom":
            sources.append(PhantomSource(settings.phantom_spacing))
        elif spec in sample_names() and not Path(spec).exists():
            sources.append(RealSource(sample_path(spec), segment, name=spec))
        else:
            sources.append(RealSource(spec, segment))
    for source in sources:
        source.load()
    return sources


@dataclass(frozen=True)
class SynthCase:
    """One synthetic scan and what is true about it."""

    volume: CTVolume
    label: np.ndarray
    lungs: np.ndarray
    source: str
    subtype: str
    severity_percent: float
    laa950_percent: float
    noise_hu: float
    kernel: str
    seed: int
    lung_hu: float
    hu_offset: float


def synthesize_case(scan: SourceScan, settings: SynthSettings, seed: int) -> SynthCase:
    """Make one synthetic scan from ``scan`` (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    moved, lungs = random_deformation(scan.volume, scan.lungs, rng, settings.deform)
    spacing_zyx = moved.spacing[::-1]
    fractions, subtype = _subtype_fractions(rng.uniform(*settings.severity_percent) / 100.0, settings, rng)
    spec = LesionSpec(fractions=fractions, lobule_mm=float(rng.uniform(*settings.lobule_mm)))
    hu, label = insert_emphysema(moved.hu, lungs, spacing_zyx, spec, rng)
    lung_hu = float(rng.uniform(*settings.lung_hu))
    hu, _ = set_inspiration(hu, lungs, label, spacing_zyx, lung_hu)
    noise_hu = float(rng.uniform(*settings.noise_hu))
    kernel = str(rng.choice(settings.kernels))
    hu_offset = float(rng.uniform(*settings.hu_offset))
    image = simulate_scanner(hu, spacing_zyx, noise_hu, kernel, rng, offset_hu=hu_offset)
    inside = lungs > 0
    severity = 100.0 * float(np.count_nonzero(label[inside])) / max(int(inside.sum()), 1)
    return SynthCase(
        volume=moved.with_hu(image),
        label=label,
        lungs=lungs,
        source=scan.name,
        subtype=subtype if severity > 0 else "none",
        severity_percent=severity,
        laa950_percent=laa_percent(image, lungs),
        noise_hu=noise_hu,
        kernel=kernel,
        seed=seed,
        lung_hu=lung_hu,
        hu_offset=hu_offset,
    )


def laa_percent(hu: np.ndarray, lungs: np.ndarray, threshold_hu: float = LAA_THRESHOLD_HU) -> float:
    """Percentage of lung voxels with HU strictly below ``threshold_hu`` (%LAA-950 by default)."""
    inside = lungs > 0
    return 100.0 * float(np.count_nonzero(hu[inside] < threshold_hu)) / max(int(inside.sum()), 1)


def threshold_dice(hu: np.ndarray, lungs: np.ndarray, label: np.ndarray, threshold_hu: float = LAA_THRESHOLD_HU) -> float:
    """Dice of the plain ``HU < threshold`` mask inside the lungs against the true emphysema label."""
    inside = lungs > 0
    return dice((hu < threshold_hu) & inside, (label > 0) & inside)


def _subtype_fractions(total: float, settings: SynthSettings, rng: np.random.Generator) -> tuple[dict[int, float], str]:
    """Split the total emphysema fraction between subtypes: a main one and, sometimes, a second one,
    or every subtype (``settings.every_subtype``). The name lists the subtypes, largest share first."""
    values = [v for v, name in SUBTYPE_NAMES.items() if settings.subtype_weights.get(name, 0.0) > 0]
    weights = np.array([settings.subtype_weights[SUBTYPE_NAMES[v]] for v in values], dtype=np.float64)
    weights /= weights.sum()
    if settings.every_subtype:
        floor = MIN_SUBTYPE_SHARE if len(values) * MIN_SUBTYPE_SHARE < 1 else 0.0
        shares = floor + (1 - floor * len(values)) * rng.dirichlet(EVERY_SUBTYPE_CONCENTRATION * len(values) * weights)
        order = np.argsort(-shares, kind="stable")
        fractions = {values[i]: total * float(shares[i]) for i in order}
        return fractions, "+".join(SUBTYPE_NAMES[values[i]] for i in order)
    main = int(rng.choice(values, p=weights))
    others = [v for v in values if v != main]
    if others and rng.uniform() < settings.mixed_probability:
        second = int(rng.choice(others))
        share = float(rng.uniform(MIN_SUBTYPE_SHARE, 0.4))
        return {main: total * (1 - share), second: total * share}, f"{SUBTYPE_NAMES[main]}+{SUBTYPE_NAMES[second]}"
    return {main: total}, SUBTYPE_NAMES[main]


def case_seeds(seed: int, n: int) -> list[int]:
    """Per-scan seeds; the first k are the same whatever ``n`` is."""
    return [int(s) for s in np.random.default_rng(seed).integers(0, 2**31 - 1, size=n)]


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is a file or already holds a cohort (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise InputError(out, f"already holds a synthetic cohort ({MANIFEST_NAME}); choose another --out or pass --overwrite")


def write_cohort(out: str | Path, n: int, sources: Sequence[Source], settings: SynthSettings, seed: int,
                 overwrite: bool = False, on_case: Callable[[SynthCase], None] | None = None,
                 workers: int = 1) -> list[dict[str, object]]:
    """Generate ``n`` scans from ``sources`` (used in turn) and write them with their manifest.

    Args:
        out: output folder (created); layout as in docs/formats.md.
        n: number of scans.
        sources: loaded sources from :func:`resolve_sources`.
        settings: parameter ranges (checked first).
        seed: cohort seed; scan i uses ``case_seeds(seed, n)[i]``.
        overwrite: replace an existing cohort in ``out``.
        on_case: called after each scan is written, in scan order (progress reporting, statistics).
        workers: local processes making scans at once; each scan depends only on its own seed, so
            the files are the same for any number.

    Returns:
        The manifest rows.
    """
    settings.check()
    if n < 1:
        raise ConfigError("--n", f"needs at least 1 scan, got {n}")
    out = Path(out)
    check_output_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # an overwritten cohort is incomplete until the new manifest lands
    width = max(4, len(str(n - 1)))
    jobs = [(f"synth_{index:0{width}d}", index % len(sources), case_seed) for index, case_seed in enumerate(case_seeds(seed, n))]
    rows = []
    for row, case in _make_cases(out, jobs, sources, settings, workers):
        rows.append(row)
        if on_case is not None:
            on_case(case)
    with atomic_open(out / MANIFEST_NAME, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


CaseJob = tuple[str, int, int]  # (scan id, index into the sources, scan seed)


def _make_cases(out: Path, jobs: list[CaseJob], sources: Sequence[Source], settings: SynthSettings,
                workers: int) -> Iterator[tuple[dict[str, object], SynthCase]]:
    """Make and write every job's scan, yielding ``(manifest row, case)`` in job order."""
    if workers <= 1 or len(jobs) <= 1:
        yield from (_make_case(out, job, sources, settings) for job in jobs)
        return
    with worker_pool(min(workers, len(jobs)), _keep_for_worker, (out, sources, settings)) as pool:
        yield from pool.imap(_worker_case, jobs)


def _make_case(out: Path, job: CaseJob, sources: Sequence[Source], settings: SynthSettings) -> tuple[dict[str, object], SynthCase]:
    case_id, source_index, case_seed = job
    case = synthesize_case(sources[source_index].scan(case_seed), settings, case_seed)
    return _write_case(out, case_id, case), case


# What every task of a worker process needs (the loaded sources are large): sent once per worker.
_worker_state: tuple[Path, Sequence[Source], SynthSettings] | None = None


def _keep_for_worker(out: Path, sources: Sequence[Source], settings: SynthSettings) -> None:
    global _worker_state
    _worker_state = (out, sources, settings)


def _worker_case(job: CaseJob) -> tuple[dict[str, object], SynthCase]:
    assert _worker_state is not None, "worker started without _keep_for_worker"
    out, sources, settings = _worker_state
    return _make_case(out, job, sources, settings)


def _write_case(out: Path, case_id: str, case: SynthCase) -> dict[str, object]:
    image = case.volume.to_sitk()
    paths = {kind: f"{kind}/{case_id}.nii.gz" for kind in ("images", "labels", "lungs")}
    _write_nifti(out / paths["images"], image)
    _write_nifti(out / paths["labels"], _like(case.label, image))
    _write_nifti(out / paths["lungs"], _like(case.lungs, image))
    survival_time, event = synthetic_survival(case.severity_percent, np.random.default_rng([case.seed, 1]))
    return {
        "id": case_id,
        "image": paths["images"],
        "label": paths["labels"],
        "lungs": paths["lungs"],
        "source": case.source,
        "subtype": case.subtype,
        "laa950": round(case.laa950_percent, 3),
        "severity": round(case.severity_percent, 3),
        "noise_hu": round(case.noise_hu, 1),
        "kernel": case.kernel,
        "survival_time": survival_time,
        "event": event,
        "seed": case.seed,
        "lung_hu": round(case.lung_hu, 1),
        "hu_offset": round(case.hu_offset, 1),
    }


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


def _write_nifti(path: Path, image: sitk.Image) -> None:
    write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
