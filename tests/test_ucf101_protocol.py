"""Animate-A-Story's UCF-101 protocol end to end on the two UCF-101 clips in the shared data, tiny models."""

from __future__ import annotations

import json
import shutil

import pytest

from evaluation.ucf101_protocol import ProtocolError, ProtocolSettings, class_words, run_protocol, ucf_videos


def test_class_names_become_words():
    assert class_words("SoccerJuggling") == "soccer juggling"
    assert class_words("YoYo") == "yo yo" and class_words("PlayingDaf") == "playing daf"


@pytest.fixture(scope="module")
def ucf_root(real_clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf") / "UCF-101"
    (root / "SoccerJuggling").mkdir(parents=True)
    for path in sorted(real_clips.glob("v_*.avi")):
        shutil.copy(path, root / "SoccerJuggling" / path.name)
    assert len(list(root.rglob("*.avi"))) == 2
    return root


@pytest.fixture(scope="module")
def ucf_index(ucf_root, tmp_path_factory):
    from index_builder.build import BuildOptions, build_index

    out = tmp_path_factory.mktemp("ucf_index") / "index"
    build_index(BuildOptions(out=out, paths=[ucf_root], models="tiny", workers=1, progress=False))
    return out


def settings(ucf_root, ucf_index, out, **extra) -> ProtocolSettings:
    values = dict(ucf_root=str(ucf_root), index=str(ucf_index), out=str(out), models="tiny", metric_models="tiny",
                  videos_per_class=2, real_per_class=2, width=64, height=64, frames=8, steps=2)
    return ProtocolSettings(**(values | extra))


def test_protocol_end_to_end_and_resumes(ucf_root, ucf_index, tmp_path):
    assert list(ucf_videos(ucf_root)) == ["SoccerJuggling"]
    out = tmp_path / "protocol"
    result = run_protocol(settings(ucf_root, ucf_index, out), echo=lambda line: None)
    assert result["rendered_videos"] == 2 and result["real_videos"] == 2
    assert result["fvd"] is not None and result["fvd"] >= 0 and result["kvd"] is not None
    assert result["video_features"] == "tiny" and result["classes"] == ["SoccerJuggling"]
    assert json.loads((out / "result.json").read_text())["fvd"] == pytest.approx(result["fvd"])
    recorded = json.loads((out / "protocol.json").read_text())
    assert recorded["videos_per_class"] == 2 and recorded["models"] == "tiny"
    report = json.loads((out / "renders" / "SoccerJuggling" / "report.json").read_text())
    assert {shot["prompt"] for shot in report["shots"]} == {"soccer juggling"}
    assert all("v_SoccerJuggling" in shot["segment"]["path"] for shot in report["shots"])
    features = sorted((out / "features").glob("*.npy"))
    assert len(features) == 4
    stamps = [p.stat().st_mtime_ns for p in features]
    again = run_protocol(settings(ucf_root, ucf_index, out), echo=lambda line: None)
    assert again["fvd"] == pytest.approx(result["fvd"])
    assert json.loads((out / "renders" / "SoccerJuggling" / "report.json").read_text())["rendered"] == []
    assert [p.stat().st_mtime_ns for p in features] == stamps  # nothing extracted again


def test_protocol_refuses_other_settings_in_the_same_folder_and_bad_input(ucf_root, ucf_index, tmp_path):
    out = tmp_path / "protocol"
    out.mkdir()
    (out / "protocol.json").write_text(json.dumps({"videos_per_class": 99}))
    with pytest.raises(ProtocolError, match="holds a run with other settings"):
        run_protocol(settings(ucf_root, ucf_index, out))
    with pytest.raises(ProtocolError, match="--classes: Archery not found"):
        run_protocol(settings(ucf_root, ucf_index, tmp_path / "b", classes=("Archery",)))
    with pytest.raises(ProtocolError, match="holds no UCF-101 videos"):
        run_protocol(settings(tmp_path, ucf_index, tmp_path / "c"))
