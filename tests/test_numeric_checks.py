"""Numbers checked against an independent computation (issue 12): the context-window fusion of the sampler,
compel's padding of a long positive / short negative prompt pair, and the character trainer's loss
(epsilon and v-prediction) on one fixed batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from render.sampler import StructureGuidedSampler


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One torch thread for the module (tests/conftest.py): the tiny models gain nothing from more."""


# -- 1. context-window fusion --------------------------------------------------------------------------------
class WindowUNet(torch.nn.Module):
    """A fake motion UNet whose prediction depends on the whole window it is given: each frame's prediction is
    the window's mean latent plus a tenth of the frame's own latent (so two windows over one frame disagree)."""

    config = SimpleNamespace(in_channels=4)

    def forward(self, sample, t, encoder_hidden_states=None, **residuals):
        assert not residuals, "the ControlNet must not run at tau=0"
        out = sample.mean(dim=2, keepdim=True) + 0.1 * sample
        return SimpleNamespace(sample=out)


def fake_components(unet) -> SimpleNamespace:
    float32 = SimpleNamespace(dtype=torch.float32)
    return SimpleNamespace(device=torch.device("cpu"), vae_scale_factor=8, unet=unet, controlnet=float32,
                           text_encoder=float32, use=lambda *names: None)


def expected_windows(num_frames: int, window: int, stride: int) -> list[list[int]]:
    """Written out by hand for the cases below (not through render.context_windows)."""
    starts = {(40, 16, 8): [0, 8, 16, 24], (30, 16, 8): [0, 8, 14], (20, 8, 4): [0, 4, 8, 12]}[
        (num_frames, window, stride)]
    return [list(range(s, s + window)) for s in starts]


@pytest.mark.parametrize("num_frames, window, stride", [(40, 16, 8), (30, 16, 8), (20, 8, 4)])
@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
def test_fused_prediction_is_the_weighted_mean_of_the_windows(num_frames, window, stride, weighting):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()  # init_noise_sigma 1 and scale_model_input the identity: the UNet sees the latents
    seen = []
    original_step = scheduler.step

    def step(model_output, timestep, sample, **kwargs):
        seen.append((model_output.clone(), sample.clone()))
        return original_step(model_output, timestep, sample, **kwargs)

    scheduler.step = step
    latents = torch.randn(1, 4, num_frames, 1, 1, generator=torch.Generator().manual_seed(0))
    sampler = StructureGuidedSampler(fake_components(WindowUNet()), scheduler=scheduler)
    result = sampler(prompt_embeds=torch.zeros(1, 77, 8), conditioning=torch.zeros(num_frames, 3, 8, 8), steps=2,
                     guidance_scale=1.0, tau=0.0, latents=latents, output_type="latent", context_window=window,
                     context_stride=stride, context_weighting=weighting)
    windows = expected_windows(num_frames, window, stride)
    assert result.windows == windows and result.controlnet_calls == 0
    position_weight = [float(min(i + 1, window - i)) if weighting == "pyramid" else 1.0 for i in range(window)]
    assert len(seen) == 2
    for model_output, sample in seen:  # each step: the fused prediction from the latents it was given
        fused = torch.zeros_like(sample)
        for f in range(num_frames):
            total = 0.0
            for frames in windows:
                if f in frames:
                    w = position_weight[frames.index(f)]
                    pred = sample[:, :, frames].mean(dim=2) + 0.1 * sample[:, :, f]
                    fused[:, :, f] += w * pred
                    total += w
            fused[:, :, f] /= total
        torch.testing.assert_close(model_output, fused, rtol=1e-5, atol=1e-6)
    # the fusion is not a no-op: a frame covered by two windows differs from either window's own prediction
    first_sample = seen[0][1]
    own = first_sample[:, :, :window].mean(dim=2) + 0.1 * first_sample[:, :, window - 1]
    assert not torch.allclose(seen[0][0][:, :, window - 1], own)


# -- 2. compel padding ---------------------------------------------------------------------------------------
LONG_PROMPT = ", ".join(f"a {c} {a} rabbit" for c in ("red", "green", "blue", "white", "black", "brown")
                        for a in ("small", "happy", "fast", "sleepy", "tall"))  # about 150 tokens
NEGATIVE = "blurry, low quality"


def plain_encoding(components, token_ids: list[int]) -> torch.Tensor:
    """CLIP on one 77-token row: BOS, the ids, EOS, then the tokenizer's padding (the plain pipeline encoding)."""
    tok = components.tokenizer
    row = [tok.bos_token_id, *token_ids, tok.eos_token_id]
    row += [tok.pad_token_id] * (tok.model_max_length - len(row))
    with torch.no_grad():
        return components.text_encoder(torch.tensor([row]))[0]


def test_padded_pair_keeps_the_plain_encoding_values(components):
    from render.prompt_weighting import WeightedPromptEncoder

    tok = components.tokenizer
    ids = tok(LONG_PROMPT, add_special_tokens=False).input_ids
    chunk = tok.model_max_length - 2
    assert chunk < len(ids) <= 2 * chunk, len(ids)
    cond, uncond = WeightedPromptEncoder(tok, components.text_encoder).encode_pair(LONG_PROMPT, NEGATIVE)
    assert cond.shape == uncond.shape == (1, 2 * tok.model_max_length, cond.shape[-1])
    plain_negative = StructureGuidedSampler(components).encode_prompt(NEGATIVE)
    plain_empty = StructureGuidedSampler(components).encode_prompt("")
    assert torch.equal(plain_encoding(components, tok(NEGATIVE, add_special_tokens=False).input_ids), plain_negative)
    # the negative: its own plain encoding, then the empty prompt's (not zeros, not a copy of itself)
    torch.testing.assert_close(uncond[:, :77], plain_negative, rtol=0, atol=1e-5)
    torch.testing.assert_close(uncond[:, 77:], plain_empty, rtol=0, atol=1e-5)
    # the long positive: two 77-token chunks, each the plain encoding of its 75 tokens
    torch.testing.assert_close(cond[:, :77], plain_encoding(components, ids[:chunk]), rtol=0, atol=1e-5)
    torch.testing.assert_close(cond[:, 77:], plain_encoding(components, ids[chunk:]), rtol=0, atol=1e-5)
    # the order does not matter: a long negative pads the short positive the same way
    cond2, uncond2 = WeightedPromptEncoder(tok, components.text_encoder).encode_pair(NEGATIVE, LONG_PROMPT)
    torch.testing.assert_close(cond2, uncond, rtol=0, atol=1e-6)
    torch.testing.assert_close(uncond2, cond, rtol=0, atol=1e-6)


# -- 3. the character trainer's loss -------------------------------------------------------------------------
def alphas_cumprod() -> torch.Tensor:
    """The render's betas (linear 0.00085-0.012 over 1000 steps, storyreel.models.schedulers), computed here."""
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def independent_loss(trainer, batch, prediction_type: str | None = None) -> torch.Tensor:
    """The MSE of UNet + ControlNet (run here) to the noise or, for ``v_prediction``, to the velocity
    ``sqrt(a) * noise - sqrt(1 - a) * x0``; ``prediction_type`` defaults to the trainer's."""
    c = trainer.components
    a = alphas_cumprod()[batch.timesteps].view(-1, 1, 1, 1, 1)
    noisy = a.sqrt() * batch.latents + (1 - a).sqrt() * batch.noise
    if (prediction_type or trainer.prediction_type) == "v_prediction":
        target = a.sqrt() * batch.noise - (1 - a).sqrt() * batch.latents
    else:
        target = batch.noise
    b, ch, frames, h, w = batch.latents.shape
    # the text embeddings with the character's table row per timestep (the CharacterSet hook, reused)
    text = trainer.encode_prompts(batch.prompts, batch.timesteps)
    text = torch.cat([text[i:i + 1].expand(frames, -1, -1) for i in range(b)])
    frames_in = torch.cat([noisy[i].permute(1, 0, 2, 3) for i in range(b)])  # B*L x C x h x w, video-major
    t_frames = torch.cat([batch.timesteps[i:i + 1].expand(frames) for i in range(b)])
    down, mid = c.controlnet(frames_in, t_frames, encoder_hidden_states=text, controlnet_cond=batch.condition,
                             conditioning_scale=1.0, return_dict=False)
    prediction = c.unet(noisy, batch.timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
    return ((prediction - target) ** 2).mean()


def training_settings(**overrides):
    from characters.training import TrainingSettings

    values = dict(name="cat", token="<cat>", class_word="cat", steps=2, rank=4, resolution=64, frames=4,
                  table_lr=1e-3, lora_lr=1e-3, seed=3, batch_size=2)
    values.update(overrides)
    return TrainingSettings(**values)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_trainer_loss_equals_an_independent_mse(components, tiny_depth_model, photos, monkeypatch, prediction_type):
    from characters.training import CharacterTrainer
    from storyreel.models.schedulers import make_scheduler

    scheduler = make_scheduler("ddim", prediction_type=prediction_type)
    monkeypatch.setattr(components, "scheduler", scheduler)
    with CharacterTrainer(components, tiny_depth_model, photos, training_settings()) as trainer:
        assert trainer.prediction_type == prediction_type
        torch.testing.assert_close(trainer.noise_scheduler.alphas_cumprod, alphas_cumprod(), rtol=1e-5, atol=1e-6)
        batch = trainer.held_out_batches(1)[0]
        assert batch.latents.shape[0] == 2 and len(set(batch.timesteps.tolist())) == 2
        with torch.no_grad():
            ours = independent_loss(trainer, batch)
            theirs = trainer.loss(batch)
            assert trainer.evaluate([batch]) == pytest.approx(float(theirs), rel=1e-6)
            # the other target gives another loss: the check tells epsilon from velocity
            other = independent_loss(trainer, batch, "epsilon" if prediction_type == "v_prediction" else
                                     "v_prediction")
        assert float(theirs) == pytest.approx(float(ours), rel=1e-4)
        assert abs(float(other) - float(ours)) > 1e-3 * float(ours)
        # one training step moves the loss of the fixed batch, and the independent computation follows it
        trainer.train_step()
        with torch.no_grad():
            assert float(trainer.loss(batch)) == pytest.approx(float(independent_loss(trainer, batch)), rel=1e-4)
