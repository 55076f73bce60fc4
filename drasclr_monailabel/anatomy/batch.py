"""Preprocess many scans: local worker processes, resumable, shardable across machines.

- Resume: a scan whose ``_qa.json`` names the same format, source (path, and size and
  modification time where recorded) and atlas is skipped; any other
  scan folder (no ``_qa.json``, stale or half-written) is cleared and redone. A scan registered to
  another atlas (e.g. the default atlas changed with a new version) is redone with a warning that
  names both atlases, so a cache never mixes atlases.
- Shards: ``shard=(i, n)`` takes every n-th scan of the id-sorted list starting at i, so n jobs
  (a SLURM array, several machines) split a cohort without talking to each other.
- Failures: a scan that raises is logged with its one-line reason and the run goes on.
- Summary: ``summary.json`` (unsharded) or ``summary.shard-<i>-of-<n>.json``, and in both cases
  a ``summary.json`` that merges every shard summary present.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from drasclr_monailabel.anatomy.atlas import Atlas, load_atlas
from drasclr_monailabel.anatomy.cache import clear_scan, is_complete, recorded_atlas, recorded_format, write_scan
from drasclr_monailabel.anatomy.cache_format import CACHE_FORMAT
from drasclr_monailabel.anatomy.inputs import ScanEntry
from drasclr_monailabel.anatomy.pipeline import PipelineSettings, preprocess_volume
from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.utils.atomic import write_json
from drasclr_monailabel.utils.fingerprint import file_fingerprint
from drasclr_monailabel.utils.process_pool import worker_pool

logger = logging.getLogger(__name__)

SUMMARY_FORMAT = "drasclr-cache-summary/1"
SHARD_SUMMARY_GLOB = "summary.shard-*-of-*.json"


@dataclass(frozen=True)
class ScanResult:
    """What happened to one scan: status "done", "skipped" or "failed", with the reason if failed."""

    scan_id: str
    source: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()


def shard_entries(entries: Sequence[ScanEntry], shard: tuple[int, int] | None) -> list[ScanEntry]:
    """Scans of shard ``(i, n)``: positions i, i + n, i + 2n, ... of the id-sorted list."""
    ordered = sorted(entries)
    if shard is None:
        return ordered
    index, count = shard
    return ordered[index::count]


def run_preprocess(entries: Sequence[ScanEntry], out: str | Path, atlas_dir: str | Path | None = None,
                   settings: PipelineSettings = PipelineSettings(), workers: int = 1, shard: tuple[int, int] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Preprocess ``entries`` (or their shard) into the cache ``out``; returns the summary.

    Args:
        atlas_dir: atlas folder (default: the atlas shipped with the package).
        workers: local processes; 1 runs in this process.
    """
    atlas = _atlas(str(atlas_dir) if atlas_dir else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = shard_entries(entries, shard)
    started = time.perf_counter()
    results: list[ScanResult] = []
    todo = []
    for entry in chosen:
        if is_complete(out, entry.scan_id, entry.path, atlas.atlas_id, file_fingerprint(entry.path)):
            results.append(ScanResult(entry.scan_id, str(entry.path), "skipped"))
            continue
        previous = recorded_atlas(out, entry.scan_id)
        if previous is not None and previous != atlas.atlas_id:
            logger.warning("%s was registered to atlas %s; redoing it with atlas %s", entry.scan_id, previous, atlas.atlas_id)
        written_as = recorded_format(out, entry.scan_id)
        if written_as is not None and written_as != CACHE_FORMAT:
            logger.warning("%s was written in cache format %s; redoing it in %s (docs/formats.md)", entry.scan_id, written_as, CACHE_FORMAT)
        todo.append(entry)
    bar = tqdm(total=len(chosen), initial=len(results), unit="scan", desc="preprocess", disable=not progress)
    try:
        for result in _process_all(todo, out, atlas_dir, settings, workers):
            results.append(result)
            if result.status == "failed":
                bar.write(f"failed {result.scan_id}: {result.reason}")
            bar.update(1)
    finally:
        bar.close()
    summary = _summary(results, atlas, shard, time.perf_counter() - started)
    write_summary(out, summary, shard)
    return summary


def process_one(entry: ScanEntry, out: Path, atlas: Atlas, settings: PipelineSettings) -> ScanResult:
    """Read, preprocess and write one scan; errors become a failed result (never raised)."""
    from drasclr_monailabel.io.readers import read_ct

    started = time.perf_counter()
    try:
        clear_scan(out, entry.scan_id)
        clock = time.perf_counter()
        volume = read_ct(entry.path)
        read_seconds = time.perf_counter() - clock
        scan = preprocess_volume(volume, atlas, settings)
        qa = write_scan(out, entry.scan_id, entry.path, scan, atlas, settings, {"read": read_seconds, **scan.timings})
        return ScanResult(entry.scan_id, str(entry.path), "done", seconds=time.perf_counter() - started, warnings=tuple(qa["warnings"]))
    except DrasclrError as exc:
        return ScanResult(entry.scan_id, str(entry.path), "failed", str(exc), time.perf_counter() - started)
    except Exception as exc:  # a bug or an unreadable oddity must not stop the other scans
        logger.debug("%s failed:\n%s", entry.scan_id, traceback.format_exc())
        reason = f"{entry.path}: unexpected {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return ScanResult(entry.scan_id, str(entry.path), "failed", reason, time.perf_counter() - started)


def write_summary(out: Path, summary: dict[str, Any], shard: tuple[int, int] | None) -> None:
    """Write this run's summary and (re)merge all shard summaries into ``summary.json``.

    Several shards may finish at once: each writes its own file, then merges what it sees, and
    merges again if the set of shard files changed meanwhile, so the last writer's merge holds
    every shard that had finished.
    """
    if shard is None:
        write_json(out / "summary.json", summary)
        return
    write_json(out / f"summary.shard-{shard[0]}-of-{shard[1]}.json", summary)
    merged_from: list[str] = []
    while True:
        names = sorted(p.name for p in out.glob(SHARD_SUMMARY_GLOB))
        if names == merged_from:
            return
        write_json(out / "summary.json", merge_summaries([_read(out / n) for n in names]))
        merged_from = names


def merge_summaries(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary from shard summaries (counts added, failures concatenated)."""
    merged: dict[str, Any] = {"format": SUMMARY_FORMAT, "shards": [p.get("shard") for p in parts]}
    for key in ("n_scans", "done", "skipped", "failed"):
        merged[key] = sum(int(p.get(key, 0)) for p in parts)
    merged["atlas"] = sorted({p.get("atlas", "") for p in parts})
    merged["failures"] = [f for p in parts for f in p.get("failures", [])]
    merged["warnings"] = [w for p in parts for w in p.get("warnings", [])]
    return merged


def _summary(results: list[ScanResult], atlas: Atlas, shard: tuple[int, int] | None, seconds: float) -> dict[str, Any]:
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    done = [r.seconds for r in results if r.status == "done"]
    return {
        "format": SUMMARY_FORMAT,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "n_scans": len(results),
        **counts,
        "atlas": atlas.atlas_id,
        "seconds": round(seconds, 1),
        "seconds_per_done_scan": round(sum(done) / len(done), 2) if done else None,
        "failures": [{"id": r.scan_id, "source": r.source, "reason": r.reason} for r in results if r.status == "failed"],
        "warnings": [{"id": r.scan_id, "warning": w} for r in results for w in r.warnings],
    }


def _process_all(todo: list[ScanEntry], out: Path, atlas_dir: str | Path | None, settings: PipelineSettings,
                 workers: int) -> Iterator[ScanResult]:
    if workers <= 1 or len(todo) <= 1:
        atlas = _atlas(str(atlas_dir) if atlas_dir else None)
        for entry in todo:
            yield process_one(entry, out, atlas, settings)
        return
    with worker_pool(workers) as pool:
        tasks = [(entry, out, str(atlas_dir) if atlas_dir else None, settings) for entry in todo]
        yield from pool.imap_unordered(_worker_task, tasks)


def _worker_task(task: tuple[ScanEntry, Path, str | None, PipelineSettings]) -> ScanResult:
    entry, out, atlas_dir, settings = task
    return process_one(entry, out, _atlas(atlas_dir), settings)


@lru_cache(maxsize=2)
def _atlas(folder: str | None) -> Atlas:
    return load_atlas(folder)


def _read(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
