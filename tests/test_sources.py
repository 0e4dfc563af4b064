"""Sources: folder trees, Kinetics CSVs (all three real forms) and JSONL manifests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from index_builder.kinetics import kinetics_jobs, read_kinetics_csv
from index_builder.sources import SourceError, SourceReport, read_jsonl_manifest, scan_folder

KINETICS_CLIPS = {"R6llTwEh07w", "SOX5yA1l24A", "WUzgd7C1pWA"}


def test_k600_excerpt_plain_labels(kinetics_dir):
    rows = read_kinetics_csv(kinetics_dir / "k600_val_head.csv")
    assert len(rows) == 199
    assert {r.label for r in rows} == {"abseiling", "acting in play", "adjusting glasses", "air drumming"}
    assert all(r.time_end - r.time_start == 10 and r.split == "val" for r in rows)
    assert any(r.youtube_id.startswith(("-", "_")) for r in rows)


def test_k400_val_quoted_labels_and_extra_column(kinetics_dir):
    rows = read_kinetics_csv(kinetics_dir / "kinetics-400_val.csv")
    assert len(rows) == 19906
    classes = (kinetics_dir / "k400_classes.txt").read_text().splitlines()
    assert sorted({r.label for r in rows}) == sorted(classes)
    segway = {r.youtube_id: (r.time_start, r.time_end) for r in rows if r.label == "using segway"}
    assert segway["SOX5yA1l24A"] == (299, 309)
    assert rows[0].stems[0] == f"{rows[0].youtube_id}_{int(rows[0].time_start):06d}_{int(rows[0].time_end):06d}"


def test_k400_test_form_without_label_column(tmp_path, kinetics_dir):
    source = list(csv.DictReader((kinetics_dir / "kinetics-400_val.csv").open()))
    test_csv = tmp_path / "kinetics-400_test.csv"
    with test_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["youtube_id", "time_start", "time_end", "split"])
        for row in source[:50]:
            writer.writerow([row["youtube_id"], row["time_start"], row["time_end"], "test"])
    rows = read_kinetics_csv(test_csv)
    assert len(rows) == 50 and all(r.label is None and r.split == "test" for r in rows)


def test_join_against_real_clips(kinetics_dir, real_clips):
    report = SourceReport()
    jobs = kinetics_jobs(kinetics_dir / "kinetics-400_val.csv", real_clips, report)
    assert {Path(j.path).stem for j in jobs} == KINETICS_CLIPS
    assert {j.label for j in jobs} == {"using segway"}
    assert len(report.problems) == 19906 - 3  # every other row has no downloaded file: reported, not fatal
    assert all(p["reason"] == "no downloaded file for this row" and "line" in p for p in report.problems)


def test_join_prefers_the_split_label_folder_and_the_trimmed_name(tmp_path, kinetics_dir):
    root = tmp_path / "k400"
    (root / "val" / "using segway").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    good = root / "val" / "using segway" / "SOX5yA1l24A_000299_000309.mp4"
    good.write_bytes(b"x")
    (root / "elsewhere" / "SOX5yA1l24A.mp4").write_bytes(b"x")
    jobs = kinetics_jobs(kinetics_dir / "kinetics-400_val.csv", root, SourceReport())
    assert [Path(j.path) for j in jobs] == [good.resolve()]


@pytest.mark.parametrize("content,message", [
    ("label,youtube_id,split\nabseiling,abc,val\n", "missing column(s) time_start, time_end"),
    ("", "missing column(s) youtube_id"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,abc,ten,20,val\n",
     ":2: field 'time_start' is not a number"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,,10,20,val\n", ":2: field 'youtube_id' is empty"),
])
def test_malformed_csv_names_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SourceError) as err:
        read_kinetics_csv(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_folder_scan_labels_and_extensions(tmp_path):
    for rel in ["running/a.mp4", "running/b.MKV", "waving/c.avi", "top.webm", "running/notes.txt", ".hidden/d.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    jobs = scan_folder(tmp_path, SourceReport())
    assert [(Path(j.path).name, j.label) for j in jobs] == [
        ("top.webm", None), ("a.mp4", "running"), ("b.MKV", "running"), ("c.avi", "waving")]


def test_folder_without_videos_is_reported_by_name(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    report = SourceReport()
    assert scan_folder(tmp_path, report) == []
    assert report.problems[0]["source"] == str(tmp_path) and "no videos found" in report.problems[0]["reason"]
    with pytest.raises(SourceError, match="no such folder"):
        scan_folder(tmp_path / "missing", report)


def test_jsonl_manifest(tmp_path, real_clips):
    manifest = tmp_path / "clips.jsonl"
    rows = [
        {"path": str(real_clips / "R6llTwEh07w.mp4"), "caption": "a man rides a segway", "start": 1.0, "end": 5.0},
        {"path": "missing.mp4", "caption": "gone"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = SourceReport()
    jobs = read_jsonl_manifest(manifest, report)
    assert len(jobs) == 1 and jobs[0].caption == "a man rides a segway" and (jobs[0].start, jobs[0].end) == (1.0, 5.0)
    assert jobs[0].key.endswith("#1.0-5.0")
    assert report.problems[0]["line"] == 2 and report.problems[0]["path"].endswith("missing.mp4")


@pytest.mark.parametrize("line,message", [
    ('{"caption": "x"}', ":1: field 'path' is required"),
    ('{"path": "a.mp4", "start": "soon"}', ":1: field 'start' must be a non-negative number"),
    ('{"path": "a.mp4", "start": 5, "end": 2}', ":1: field 'end' must be greater than 'start'"),
    ("[1, 2]", ":1: each line must be a JSON object"),
    ("{nope", ":1: not valid JSON"),
])
def test_malformed_manifest_names_line_and_field(tmp_path, line, message):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(line + "\n")
    with pytest.raises(SourceError) as err:
        read_jsonl_manifest(manifest, SourceReport())
    assert f"{manifest}{message}" in str(err.value)
