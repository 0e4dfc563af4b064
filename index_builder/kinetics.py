"""Kinetics annotation CSVs (``label,youtube_id,time_start,time_end,split[,is_cc]``) joined to downloaded files.

Accepted forms: Kinetics-600 (plain labels), Kinetics-400 train/val (quoted labels, an extra ``is_cc``
column) and the Kinetics-400 test form without a ``label`` column. A row maps to the first file found
named ``{youtube_id}_{start:06d}_{end:06d}.<ext>`` or ``{youtube_id}.<ext>``, preferring the row's
``split/label/`` folder, then ``label/``, then ``split/``, then anywhere under the root.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from index_builder.sources import SourceError, SourceReport, VideoJob, is_video_file

REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")


@dataclass(frozen=True)
class KineticsRow:
    line: int
    youtube_id: str
    time_start: float
    time_end: float
    label: str | None
    split: str | None

    @property
    def stems(self) -> tuple[str, str]:
        return f"{self.youtube_id}_{int(self.time_start):06d}_{int(self.time_end):06d}", self.youtube_id


def read_kinetics_csv(csv_path: str | Path) -> list[KineticsRow]:
    """Parse an annotation CSV; a missing column or a bad number names the file, line and field."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SourceError(f"{csv_path}: no such Kinetics CSV file")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise SourceError(
                f"{csv_path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'no header'}); "
                "expected label,youtube_id,time_start,time_end,split"
            )
        reader.fieldnames = columns
        rows = []
        for row in reader:
            line = reader.line_num
            youtube_id = (row.get("youtube_id") or "").strip()
            if not youtube_id:
                raise SourceError(f"{csv_path}:{line}: field 'youtube_id' is empty")
            times = {}
            for key in ("time_start", "time_end"):
                try:
                    times[key] = float(row[key])
                except (TypeError, ValueError):
                    raise SourceError(f"{csv_path}:{line}: field '{key}' is not a number: {row.get(key)!r}") from None
            label = (row.get("label") or "").strip() or None
            split = (row.get("split") or "").strip() or None
            rows.append(KineticsRow(line, youtube_id, times["time_start"], times["time_end"], label, split))
    return rows


def _index_files(root: Path) -> dict[str, list[Path]]:
    by_stem: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if is_video_file(path):
                by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def _pick(candidates: list[Path], root: Path, row: KineticsRow) -> Path:
    preferred = []
    if row.split and row.label:
        preferred.append(root / row.split / row.label)
    if row.label:
        preferred.append(root / row.label)
    if row.split:
        preferred.append(root / row.split)
    for folder in preferred:
        for path in candidates:
            if path.parent == folder:
                return path
    return candidates[0]


def kinetics_jobs(csv_path: str | Path, root: str | Path, report: SourceReport) -> list[VideoJob]:
    """One job per CSV row whose video is under ``root``; rows without a file are reported, not fatal."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder (the root of the downloaded Kinetics videos)")
    rows = read_kinetics_csv(csv_path)
    files = _index_files(root)
    jobs, seen = [], set()
    for row in rows:
        candidates = next((files[stem] for stem in row.stems if stem in files), None)
        if candidates is None:
            report.add(str(csv_path), "no downloaded file for this row", line=row.line, youtube_id=row.youtube_id)
            continue
        path = os.path.abspath(_pick(candidates, root, row))
        if path in seen:
            continue
        seen.add(path)
        jobs.append(VideoJob(path=path, label=row.label))
    return jobs
