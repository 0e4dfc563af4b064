"""`render-story` settings reach the denoising loop (issue 12): steps, guidance, scheduler, tau and seed are
observed on the real components while the command runs in-process (forward hooks on the UNet and the
ControlNet, the schedulers' ``step`` wrapped), not read back from report.json. Each assertion fails if
render/shot_renderer.py left the setting out (the sampler's defaults are 25 steps, guidance 7.5, tau 1.0, a
random seed and the components' own scheduler)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from test_render_story import cheap_storyboard, run

SCHEDULER_CLASSES = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "LCMScheduler")


class Recorder:
    """What the sampler did, shot by shot: scheduler steps (class, model output, sample), ControlNet calls
    and UNet calls (batch, output) in the order they ran."""

    def __init__(self):
        self.shots: dict[str, list[tuple]] = {}
        self.current: list[tuple] | None = None

    def add(self, *event):
        assert self.current is not None, "a model ran outside ShotRenderer.render"
        self.current.append(event)

    def events(self, shot: str, kind: str) -> list[tuple]:
        return [e for e in self.shots[shot] if e[0] == kind]

    def steps(self, shot: str) -> list[list[tuple]]:
        """The events of each denoising step (everything up to and including its scheduler step)."""
        out, current = [], []
        for event in self.shots[shot]:
            current.append(event)
            if event[0] == "step":
                out.append(current)
                current = []
        return out


@pytest.fixture
def recorder(monkeypatch):
    import diffusers

    import render.shot_renderer as shot_renderer
    import storyreel.models.loading as loading

    rec = Recorder()
    load = loading.load_render_components

    def hooked_load(*args, **kwargs):
        components = load(*args, **kwargs)
        components.controlnet.register_forward_hook(
            lambda module, args, out: rec.add("controlnet", args[0].shape[0]))
        components.unet.register_forward_hook(
            lambda module, args, out: rec.add("unet", args[0].shape[0], out.sample.detach().clone()))
        return components

    monkeypatch.setattr(loading, "load_render_components", hooked_load)

    for name in SCHEDULER_CLASSES:
        cls = getattr(diffusers, name)

        def wrap(step, name=name):
            @functools.wraps(step)
            def counted(self, model_output, timestep, sample, *args, **kwargs):
                if type(self).__name__ == name:  # the class whose step runs, not a base it inherits from
                    rec.add("step", name, model_output.detach().clone(), sample.detach().clone())
                return step(self, model_output, timestep, sample, *args, **kwargs)
            return counted

        monkeypatch.setattr(cls, "step", wrap(cls.step))

    render = shot_renderer.ShotRenderer.render

    def marked_render(self, shot, *args, **kwargs):
        rec.current = rec.shots.setdefault(shot.id, [])
        try:
            return render(self, shot, *args, **kwargs)
        finally:
            rec.current = None

    monkeypatch.setattr(shot_renderer.ShotRenderer, "render", marked_render)
    return rec


def render_story(tmp_path: Path, clip: Path, defaults: dict, shots: list[dict]) -> dict:
    """Render ``shots`` (id plus own settings; each on ``clip``, no retrieval) at 64x64, 8 frames."""
    def edit(data):
        data["defaults"].update(defaults)
        template = data["shots"][0]
        data["shots"] = []
        for own in shots:
            shot = {k: v for k, v in template.items() if k not in ("tau", "seed")}
            shot.update(own, clip={"path": str(clip), "start": 0.0, "end": 1.0})
            data["shots"].append(shot)
    storyboard = cheap_storyboard(tmp_path, edit)
    out = tmp_path / "out"
    result = run(storyboard, "--out", out, "--models", "tiny")
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


@pytest.fixture
def clip(synthetic_library) -> Path:
    return sorted(Path(synthetic_library).rglob("*.mp4"))[0]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (tests/conftest.py): the tiny models gain nothing from more."""


def expected_initial_latents(seed: int) -> torch.Tensor:
    """The sampler's starting noise for a 64x64, 8-frame tiny shot, drawn here from ``seed``."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((1, 4, 8, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def test_euler_four_steps_guidance_three_tau_and_seeds(tmp_path, clip, recorder):
    """One story: 4 euler steps at guidance 3; shots with tau 0.5, 0.25 and 1.0, two sharing a seed."""
    render_story(tmp_path, clip, dict(steps=4, guidance=3.0, scheduler="euler", tau=0.5, seed=11),
                 [dict(id="half", seed=5), dict(id="quarter", tau=0.25, seed=5), dict(id="full", tau=1.0, seed=6)])
    assert list(recorder.shots) == ["half", "quarter", "full"]
    for shot in recorder.shots:
        steps = recorder.steps(shot)
        # steps: 4 scheduler steps, each EulerDiscreteScheduler's, each after one guided UNet call
        assert len(steps) == 4, shot
        assert [s[-1][1] for s in steps] == ["EulerDiscreteScheduler"] * 4
        assert [len([e for e in s if e[0] == "unet"]) for s in steps] == [1] * 4
        for events in steps:
            unet = [e for e in events if e[0] == "unet"][0]
            # guidance 3: a [uncond, cond] batch (2 videos of 8 frames), and the step gets uncond + 3 (cond - uncond)
            assert unet[1] == 2
            uncond, cond = unet[2].chunk(2)
            torch.testing.assert_close(events[-1][2], uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-6)
            assert not torch.allclose(events[-1][2], uncond + 7.5 * (cond - uncond), rtol=1e-3, atol=1e-4)
    # tau: the ControlNet on the first tau * steps steps only (the storyboard's 0.5, a shot's 0.25 and 1.0)
    calls = {shot: [len([e for e in s if e[0] == "controlnet"]) for s in recorder.steps(shot)]
             for shot in recorder.shots}
    assert calls == {"half": [1, 1, 0, 0], "quarter": [1, 0, 0, 0], "full": [1, 1, 1, 1]}
    assert all(e[1] == 2 * 8 for shot in recorder.shots for e in recorder.events(shot, "controlnet"))
    # seed: the first step starts from the seed's noise (times Euler's init_noise_sigma), equal for equal seeds
    from storyreel.models.schedulers import make_scheduler

    sigma = make_scheduler("euler")
    sigma.set_timesteps(4)
    first = {shot: recorder.steps(shot)[0][-1][3] for shot in recorder.shots}
    assert torch.equal(first["half"], first["quarter"])
    assert not torch.allclose(first["half"], first["full"])
    torch.testing.assert_close(first["half"], expected_initial_latents(5) * sigma.init_noise_sigma)
    torch.testing.assert_close(first["full"], expected_initial_latents(6) * sigma.init_noise_sigma)


def test_ddim_three_steps_without_guidance(tmp_path, clip, recorder):
    """3 ddim steps at guidance 1.0: no unconditional half; the story seed derives a shot seed."""
    report = render_story(tmp_path, clip, dict(steps=3, guidance=1.0, scheduler="ddim", tau=1.0, seed=11),
                          [dict(id="plain")])
    steps = recorder.steps("plain")
    assert len(steps) == 3
    assert [s[-1][1] for s in steps] == ["DDIMScheduler"] * 3
    for events in steps:
        unet = [e for e in events if e[0] == "unet"]
        control = [e for e in events if e[0] == "controlnet"]
        # one video (the ControlNet: its 8 frames), no [uncond, cond] pair
        assert [e[1] for e in unet] == [1] and [e[1] for e in control] == [8]
        torch.testing.assert_close(events[-1][2], unet[0][2])  # the UNet's prediction, unguided
    # the derived seed (storyboard.format.derive_seed of the story seed and the shot id) gives the first noise
    from storyboard.shot_settings import derive_seed

    seed = derive_seed(11, "plain")
    assert report["shots"][0]["seed"] == seed
    torch.testing.assert_close(steps[0][-1][3], expected_initial_latents(seed))  # DDIM: init_noise_sigma 1
