"""TimeInv coverage: every table row a 25-step DDIM, Euler or DPM++ render reads is trained or derived from trained
rows; the file records how often each row was updated; the paper's one row per timestep stays an option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from characters import load_character
from characters.character_file import RENDER_SCHEDULERS, Character
from characters.cli import report_coverage
from characters.timeinv import fill_untrained_rows, rows_read_by_render
from characters.training import CharacterTrainer, TrainingSettings, train_character
from characters.training_job import TrainCharacterJob

# The defaults (1000 steps over 1000 rows, batch 1, learning rates 1e-4) scaled down in the same proportion.
SCALED_STEPS = SCALED_BUCKETS = 12


def images() -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (72, 80, 3), dtype=np.uint8) for i in range(3)]


def scaled_default_settings(**overrides) -> TrainingSettings:
    values = dict(name="hare", token="<hare>", class_word="rabbit", steps=SCALED_STEPS, buckets=SCALED_BUCKETS,
                  rank=2, resolution=64, frames=2, seed=5)
    values.update(overrides)
    return TrainingSettings(**values)


def test_every_row_a_render_reads_is_trained_or_derived(components, tiny_depth_model, tmp_path):
    settings = scaled_default_settings()
    assert (settings.table_lr, settings.lora_lr, settings.batch_size) == (1e-4, 1e-4, 1)  # the defaults
    out = tmp_path / "hare.safetensors"
    with CharacterTrainer(components, tiny_depth_model, images(), settings) as trainer:
        initial = trainer.table.detach()[0].clone()
        trainer.run(progress=False)
        live_table = trainer.table.detach().clone()
        updates = trainer.row_updates.clone()
        character = trainer.character()
    from characters.character_file import save_character

    save_character(character, out)
    loaded = load_character(out)

    read = {name: rows_read_by_render(name, SCALED_BUCKETS, 1000, 25) for name in RENDER_SCHEDULERS}
    assert all(len(rows) == SCALED_BUCKETS for rows in read.values())  # 25 steps reach every row
    # The problem the derivation solves: at these settings renders read rows no step updated ...
    untrained_read = sorted({row for rows in read.values() for row in rows if updates[row] == 0})
    assert untrained_read and all(torch.equal(live_table[row], initial) for row in untrained_read)
    # ... and in the file every row any of the three renders reads has moved from the class word's value.
    for name, rows in read.items():
        unchanged = [row for row in rows if torch.equal(loaded.table[row], initial)]
        assert not unchanged, (name, unchanged)
    # Trained rows are written as trained; derived rows lie between their trained neighbours.
    trained = torch.nonzero(updates > 0).reshape(-1)
    assert torch.equal(loaded.table[trained], live_table[trained])

    # The file records the coverage: the update count of every row.
    coverage = loaded.coverage
    assert coverage["updates"] == updates.tolist() and sum(coverage["updates"]) == SCALED_STEPS
    assert coverage["rows"] == SCALED_BUCKETS and coverage["trained_rows"] == len(trained)
    assert coverage["derived_rows"] == SCALED_BUCKETS - len(trained)
    assert loaded.untrained_rows_read(25) == {name: [r for r in rows if updates[r] == 0] for name, rows in read.items()}


def test_validation_clips_read_the_derived_rows_and_training_keeps_its_own(components, tiny_depth_model, tmp_path,
                                                                          monkeypatch):
    import characters.validation as validation

    seen = []

    def fake_clip(components, character_set, *args, **kwargs):
        seen.append(trainer.table.detach().clone())
        return np.zeros((2, 8, 8, 3), dtype=np.uint8)

    monkeypatch.setattr(validation, "render_validation_clip", fake_clip)
    with CharacterTrainer(components, tiny_depth_model, images(), scaled_default_settings(steps=4)) as trainer:
        validate = validation.make_validator(components, tmp_path, "<hare> rabbit", "", None, 2, 0, 8.0, print)
        trainer.run(progress=False, validate=validate, validate_every=4)
        live = trainer.table.detach().clone()
        updates = trainer.row_updates.clone()
    assert 0 < int((updates > 0).sum()) < SCALED_BUCKETS  # some rows untrained after 4 steps
    assert len(seen) == 1 and torch.equal(seen[0], fill_untrained_rows(live, updates))  # what the file will hold
    assert not torch.equal(seen[0], live) and torch.equal(trainer.table.detach(), live)  # put back after


def test_fill_untrained_rows_interpolates_between_trained_neighbours():
    rows = torch.tensor([[9.0], [2.0], [9.0], [9.0], [8.0], [9.0]])
    filled = fill_untrained_rows(rows, torch.tensor([0, 3, 0, 0, 1, 0]))
    assert filled.reshape(-1).tolist() == [2.0, 2.0, 4.0, 6.0, 8.0, 8.0]
    assert torch.equal(fill_untrained_rows(rows, torch.zeros(6)), rows)  # nothing trained: nothing to derive from


def test_the_paper_table_of_one_row_per_timestep_is_an_option(components, tiny_depth_model):
    job = TrainCharacterJob(images=".", name="hare", token="<hare>", class_word="rabbit", out="hare.safetensors",
                            buckets=1000, device="cpu")
    assert job.settings().buckets == 1000
    with CharacterTrainer(components, tiny_depth_model, images(), scaled_default_settings(steps=1, buckets=1000)) \
            as trainer:
        assert trainer.entry.table.buckets == 1000
        assert trainer.entry.table.row_index(torch.tensor([0, 1, 998, 999])).tolist() == [0, 1, 998, 999]
        trainer.train_step()
        assert int(trainer.row_updates.sum()) == 1 and trainer.row_updates.numel() == 1000


def coverage_character(updates: list[int]) -> Character:
    record = {"rows": len(updates), "updates": updates, "trained_rows": sum(1 for u in updates if u),
              "derived_rows": sum(1 for u in updates if not u), "derivation": "linear interpolation"}
    return Character(name="hare", token="<hare>", class_word="rabbit", table=torch.zeros(len(updates), 4),
                     lora_state_dict={}, training={"timeinv_coverage": record})


def test_train_character_prints_the_coverage_and_warns_about_untrained_rows_a_render_reads(capsys):
    report_coverage(coverage_character([2] * 50), videos=1000)
    captured = capsys.readouterr()
    assert "TimeInv coverage: 50 of 50 table rows trained" in captured.out and "warning" not in captured.err

    updates = [1] * 1000
    ddim_row = rows_read_by_render("ddim", 1000, 1000)[3]
    updates[ddim_row] = 0
    report_coverage(coverage_character(updates), videos=1000)
    captured = capsys.readouterr()
    assert "999 of 1000 table rows trained" in captured.out and "the other 1 derived" in captured.out
    assert "warning: a 25-step render reads table rows no training step updated (ddim: 1," in captured.err
    assert "--buckets 50" in captured.err


@pytest.mark.parametrize("buckets", [None, 1000])
def test_settings_default_and_paper_option_keep_one_row_per_timestep_in_the_file(components, tiny_depth_model,
                                                                                 tmp_path, buckets):
    out = tmp_path / "cat.safetensors"
    character = train_character(components, tiny_depth_model, images(),
                                scaled_default_settings(steps=2, buckets=buckets), out, progress=False)
    loaded = load_character(out)
    assert loaded.buckets == 1000 and torch.equal(loaded.table, character.table)
    assert loaded.coverage["trained_rows"] <= 2 and loaded.coverage["derived_rows"] >= 998
