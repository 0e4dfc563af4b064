"""Character training (TimeInv table + LoRA) on the tiny preset, with the real reference photographs."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from characters.errors import CheckpointError, ReferenceImageCountWarning, ReferenceImageError
from characters.lora_targets import is_spatial_attention, spatial_attention_targets
from characters.reference_images import load_reference_images
from characters.training import CharacterTrainer, TrainingSettings, step_generator

RESOLUTION = 64
FRAMES = 4


def settings(**overrides) -> TrainingSettings:
    values = dict(name="cat", token="<cat>", class_word="cat", steps=30, rank=4, resolution=RESOLUTION,
                  frames=FRAMES, table_lr=1e-3, lora_lr=1e-3, seed=3)
    values.update(overrides)
    return TrainingSettings(**values)


def motion_weights(unet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "motion_modules" in n}


def test_thirty_steps_lower_the_held_out_loss_and_leave_the_base_untouched(components, tiny_depth_model, photos):
    base = {n: p.detach().clone() for n, p in components.unet.state_dict().items()}
    controlnet = {n: p.detach().clone() for n, p in components.controlnet.state_dict().items()}
    text = components.text_encoder.get_input_embeddings().weight.detach().clone()
    vocabulary = len(components.tokenizer)
    with CharacterTrainer(components, tiny_depth_model, photos, settings()) as trainer:
        initial_row = trainer.table.detach()[0].clone()
        touched: set[int] = set()
        trainer.character_set.observers.append(lambda token_id, rows: touched.update(rows.tolist()))
        held_out = trainer.held_out_batches(4)
        before = trainer.evaluate(held_out)
        touched.clear()  # rows read by the evaluation are not updated
        for _ in range(30):
            trainer.train_step()
        trained_rows = set(touched)  # the rows the training steps read (not the evaluation below)
        after = trainer.evaluate(held_out)
        assert after < before, (before, after)

        # LoRA sits on the spatial attention projections only, never on the motion modules.
        lora = trainer.lora
        modules = {key.rsplit(".lora_", 1)[0] for key in lora}
        assert modules == set(spatial_attention_targets(components.unet))
        assert all(is_spatial_attention(m) and "motion_modules" not in m for m in modules)
        assert not any("lora" in n for n, _ in components.controlnet.named_parameters())
        assert {p.requires_grad for n, p in components.unet.named_parameters() if "lora_" not in n} == {False}

        # TimeInv: the rows of the sampled timesteps moved, apart from each other; no other row moved.
        table = trainer.table.detach()
        assert len(trained_rows) >= 25
        untouched = sorted(set(range(1000)) - trained_rows)
        assert torch.equal(table[untouched], initial_row.expand(len(untouched), -1))
        rows = sorted(trained_rows)
        assert not any(torch.equal(table[r], initial_row) for r in rows)
        assert torch.cdist(table[rows], table[rows]).add(torch.eye(len(rows)) * 1e9).min() > 0
        class_word = components.tokenizer("cat", add_special_tokens=False).input_ids
        assert torch.equal(initial_row, text[class_word].mean(0))
        character = trainer.character()

    after_base = components.unet.state_dict()
    assert list(after_base) == list(base)  # LoRA layers removed again
    assert all(torch.equal(after_base[n], base[n]) for n in base)  # motion modules included: bit-identical
    assert all(torch.equal(p, controlnet[n]) for n, p in components.controlnet.state_dict().items())
    assert torch.equal(components.text_encoder.get_input_embeddings().weight, text)
    assert len(components.tokenizer) == vocabulary
    assert character.training["steps_done"] == 30 and len(character.training["images"]) == 3


def test_motion_modules_are_bit_identical_while_training(components, tiny_depth_model, photos):
    before = motion_weights(components.unet)
    with CharacterTrainer(components, tiny_depth_model, photos, settings(steps=3)) as trainer:
        for _ in range(3):
            trainer.train_step()
        during = {n.replace(".base_layer", ""): p for n, p in motion_weights(components.unet).items()}
        assert any(float(p.detach().abs().sum()) > 0 for k, p in trainer.lora.items() if ".lora_B." in k)
    assert set(during) == set(before)
    assert all(torch.equal(during[n], before[n]) for n in before)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(components, tiny_depth_model, photos, tmp_path):
    run = settings(steps=6, seed=11)
    with CharacterTrainer(components, tiny_depth_model, photos, run) as trainer:
        trainer.run(progress=False)
        straight = trainer.character()
    with CharacterTrainer(components, tiny_depth_model, photos, run) as trainer:
        for _ in range(3):
            trainer.train_step()
        trainer.save_checkpoint(tmp_path)
    with CharacterTrainer(components, tiny_depth_model, photos, run) as trainer:
        assert trainer.load_checkpoint(tmp_path) and trainer.step == 3
        trainer.run(checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
        resumed = trainer.character()
    assert torch.equal(straight.table, resumed.table)
    assert straight.lora_state_dict.keys() == resumed.lora_state_dict.keys()
    assert all(torch.equal(straight.lora_state_dict[k], resumed.lora_state_dict[k]) for k in straight.lora_state_dict)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.safetensors")) == ["checkpoint-0000006.safetensors"]

    # The same seed gives the same character; another seed another one.
    with CharacterTrainer(components, tiny_depth_model, photos, settings(steps=6, seed=12)) as trainer:
        trainer.run(progress=False)
        assert not torch.equal(trainer.table.detach().cpu(), straight.table)

    # A checkpoint of other settings is refused, naming the file and the difference.
    with CharacterTrainer(components, tiny_depth_model, photos, settings(steps=6, seed=11, rank=2)) as trainer:
        with pytest.raises(CheckpointError, match=r"checkpoint\.json.*rank"):
            trainer.load_checkpoint(tmp_path)


def test_step_batches_depend_on_seed_and_step_only(components, tiny_depth_model, photos):
    with CharacterTrainer(components, tiny_depth_model, photos, settings(batch_size=2)) as trainer:
        a, b = trainer.sample_batch(5), trainer.sample_batch(5)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.noise, b.noise)
        assert torch.equal(a.timesteps, b.timesteps) and a.prompts == b.prompts
        assert a.latents.shape == (2, 4, FRAMES, RESOLUTION // 8, RESOLUTION // 8)
        assert a.condition.shape == (2 * FRAMES, 3, RESOLUTION, RESOLUTION)
        # a pseudo-video: one picture (and one depth) repeated; the VAE posterior is sampled per frame
        assert torch.equal(a.condition[0], a.condition[FRAMES - 1])
        assert not torch.equal(a.latents[0, :, 0], a.latents[0, :, 1])
        assert all("<cat> cat" in prompt for prompt in a.prompts)
        c = trainer.sample_batch(6)
        assert not torch.equal(a.noise, c.noise)
    g1, g2 = step_generator(0, 7), step_generator(0, 7)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_buckets_share_rows_over_timestep_ranges(components, tiny_depth_model, photos):
    with CharacterTrainer(components, tiny_depth_model, photos, settings(steps=2, buckets=4)) as trainer:
        table = trainer.entry.table
        assert table.weight.shape == (4, components.text_encoder.config.hidden_size)
        assert table.row_index(torch.tensor([0, 249, 250, 999])).tolist() == [0, 0, 1, 3]
        trainer.train_step()
        trainer.train_step()


def test_one_image_warns_and_still_trains(components, tiny_depth_model, reference_images, tmp_path):
    shutil.copy(reference_images / "chelsea.png", tmp_path / "chelsea.png")
    with pytest.warns(ReferenceImageCountWarning, match=r"only 1 reference image"):
        images = load_reference_images(tmp_path, RESOLUTION)
    with CharacterTrainer(components, tiny_depth_model, images, settings(steps=2)) as trainer:
        trainer.run(progress=False)
        assert trainer.step == 2 and np.isfinite(trainer.last_loss)


def test_reference_images_of_any_mode_become_rgb(tmp_path):
    size = (80, 72)
    rgba = Image.new("RGBA", size, (10, 200, 30, 0))
    rgba.putpixel((0, 0), (10, 200, 30, 255))
    rgba.save(tmp_path / "a_rgba.png")
    Image.new("L", size, 77).save(tmp_path / "b_grey.png")
    Image.new("LA", size, (77, 255)).save(tmp_path / "c_grey_alpha.png")
    Image.fromarray(np.full(size[::-1], 65535 // 2, dtype=np.uint16)).save(tmp_path / "d_16bit.png")
    Image.new("RGB", size, (255, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "e_palette.gif")
    Image.new("CMYK", size, (0, 0, 0, 0)).save(tmp_path / "f_cmyk.jpg")
    Image.new("RGB", size, (1, 2, 3)).save(tmp_path / "g_rgb.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_reference_images(tmp_path, 64)
    assert [i.path.name for i in images] == ["a_rgba.png", "b_grey.png", "c_grey_alpha.png", "d_16bit.png",
                                             "e_palette.gif", "f_cmyk.jpg", "g_rgb.webp"]
    for image in images:
        assert image.pixels.shape == (72, 80, 3) and image.pixels.dtype == np.uint8
    rgba_pixels = images[0].pixels
    assert tuple(rgba_pixels[0, 0]) == (10, 200, 30) and tuple(rgba_pixels[5, 5]) == (255, 255, 255)
    assert tuple(images[1].pixels[3, 3]) == (77, 77, 77)
    assert abs(int(images[3].pixels[0, 0, 0]) - 127) <= 1
    assert tuple(images[4].pixels[0, 0]) == (255, 0, 0)
    assert tuple(images[6].pixels[0, 0]) == (1, 2, 3)


def test_bad_reference_folders_name_the_file(tmp_path, reference_images):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no pictures here")
    with pytest.raises(ReferenceImageError, match=r"empty: holds no reference images"):
        load_reference_images(empty, 64)
    with pytest.raises(ReferenceImageError, match=r"missing: no such folder"):
        load_reference_images(tmp_path / "missing", 64)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(reference_images / "chelsea.png", corrupt / "chelsea.png")
    (corrupt / "broken.png").write_bytes((reference_images / "astronaut.png").read_bytes()[:3000])
    with pytest.raises(ReferenceImageError, match=r"broken\.png: cannot decode the image"):
        load_reference_images(corrupt, 64)

    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(reference_images / "chelsea.png", small / "chelsea.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ReferenceImageError, match=r"chelsea\.png: 451x300 is smaller than the training "
                                                      r"resolution 512x512"):
            load_reference_images(small, 512)


def test_gradient_checkpointing_gives_the_same_step(components, tiny_depth_model, photos):
    results = []
    for checkpointing in (False, True):
        with CharacterTrainer(components, tiny_depth_model, photos,
                              settings(steps=1, gradient_checkpointing=checkpointing)) as trainer:
            assert components.unet.is_gradient_checkpointing is checkpointing
            loss = trainer.train_step()
            results.append((loss, trainer.table.detach().clone(), trainer.character().lora_state_dict))
        assert not components.unet.is_gradient_checkpointing  # given back as it was
    (loss_a, table_a, lora_a), (loss_b, table_b, lora_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    torch.testing.assert_close(table_a, table_b, rtol=0, atol=1e-7)
    for key in lora_a:
        torch.testing.assert_close(lora_a[key], lora_b[key], rtol=0, atol=1e-6)


def test_regularisation_clips_from_the_index_train_the_lora_only(components, tiny_depth_model, photos, tiny_index):
    from characters.regularisation import RegularisationSet, retrieve_clips

    clips = retrieve_clips(tiny_index, "person", 3)
    assert len(clips) == 3 and all(clip.end > clip.start for clip in clips)
    regularisation = RegularisationSet(clips, "person", FRAMES, RESOLUTION, tiny_depth_model)
    with CharacterTrainer(components, tiny_depth_model, photos, settings(steps=2, reg_ratio=1.0),
                          regularisation=regularisation) as trainer:
        batch = trainer.sample_batch(0)
        assert batch.prompts == ["a person"] and batch.sources[0]["kind"] == "regularisation"
        assert not torch.equal(batch.condition[0], batch.condition[FRAMES - 1])  # a real clip moves
        table = trainer.table.detach().clone()
        lora = {k: p.detach().clone() for k, p in trainer.lora.items()}
        trainer.train_step()
        assert torch.equal(trainer.table.detach(), table)  # no token in the prompt: the table gets no gradient
        assert any(not torch.equal(p.detach(), lora[k]) for k, p in trainer.lora.items())
        record = trainer.character().training
    assert record["regularisation_clips"] == 3
