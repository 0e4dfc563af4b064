"""Render model presets: the tiny preset runs the real AnimateDiff + ControlNet path, sd15-random has the real
sizes (checked against the real config files), sd15 fails fast offline, and model configs are validated."""

from __future__ import annotations

import inspect
import json
import os
import time

import pytest
import torch
from model_checks import full_hash

from storyreel.models import architectures, presets, schedulers
from storyreel.models.clip_tokenizer import build_clip_tokenizer
from storyreel.models.loading import (
    ModelConfigError,
    RenderModelLoadError,
    load_render_components,
    read_config_file,
    resolve_sources,
)

KNIGHT = "a knight riding a horse"
KNIGHT_IDS = [49406, 320, 7355, 6765, 320, 4558, 49407]  # the real SD1.5 tokenizer's (shared README)
SD15_DIR = "stable-diffusion-v1-5"
# Parameter counts of the real models (meta-device counts): FIELD-NOTES, and v1-5-3 (no motion mid block).
REAL_SIZES = {"unet2d": 859.5e6, "controlnet": 361.3e6, "motion_adapter_v152": 453.2e6, "vae": 83.7e6,
              "text_encoder": 123.1e6, "motion_adapter": 417.1e6}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _json(value):
    return json.loads(json.dumps(value))


def _render(pipe, condition: torch.Tensor, scale: float = 1.0, output_type: str = "pt") -> torch.Tensor:
    return pipe(KNIGHT, num_frames=len(condition), height=32, width=32, num_inference_steps=2, guidance_scale=7.5,
                conditioning_frames=list(condition), controlnet_conditioning_scale=scale,
                generator=torch.Generator().manual_seed(0), output_type=output_type).frames


# -- tiny ------------------------------------------------------------------------------------------------
def test_tiny_is_deterministic_and_leaves_the_global_rng_alone(components):
    state = torch.random.get_rng_state()
    again = load_render_components("tiny", device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    for name, model in components.models().items():
        assert full_hash(model) == full_hash(getattr(again, name)), name
    assert components.weights_fingerprint() == again.weights_fingerprint()
    assert components.record() == again.record()
    # one seed per component: a part built alone equals the same part of the whole preset
    alone = architectures.build_tiny_components(only={"controlnet", "vae"})
    assert alone["unet"] is None and alone["tokenizer"] is None
    assert full_hash(alone["controlnet"]) == full_hash(components.controlnet)
    assert full_hash(alone["vae"]) == full_hash(components.vae)
    # a different preset seed gives different weights (the hash would notice a change)
    other = architectures._build_preset(architectures.TINY_CONFIGS, architectures.TINY_SEED + 1, None, {"controlnet"},
                                        True, True)
    assert full_hash(other["controlnet"]) != full_hash(components.controlnet)


def test_tiny_has_the_real_architectures(components):
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(components.unet, UNetMotionModel) and isinstance(components.controlnet, ControlNetModel)
    assert isinstance(components.vae, AutoencoderKL) and isinstance(components.text_encoder, CLIPTextModel)
    assert isinstance(components.tokenizer, CLIPTokenizer) and isinstance(components.scheduler, DDIMScheduler)
    assert components.unet.config.cross_attention_dim == components.text_encoder.config.hidden_size
    assert components.controlnet.config.cross_attention_dim == components.text_encoder.config.hidden_size
    assert components.text_encoder.config.vocab_size == len(components.tokenizer) == 49408
    assert components.vae_scale_factor == 8  # SD1.5's latent grid
    assert components.unet.down_blocks[0].motion_modules is not None and not components.unet.config.use_motion_mid_block
    assert all(not p.requires_grad for p in components.unet.parameters())
    assert components.dtype == torch.float32 and components.device.type == "cpu"


def test_tiny_tokenizer_is_the_real_clip_bpe():
    tokenizer = build_clip_tokenizer()
    assert tokenizer(KNIGHT).input_ids == KNIGHT_IDS
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    padded = tokenizer(KNIGHT, padding="max_length", max_length=77, truncation=True).input_ids
    assert padded == KNIGHT_IDS + [49407] * 70
    # each call gives a fresh tokenizer: adding a token (textual inversion) does not leak into the next one
    tokenizer.add_tokens(["<knight-token>"])
    assert len(build_clip_tokenizer()) == 49408


def test_tokenizer_equals_the_real_sd15_tokenizer_files(shared_data):
    from transformers import CLIPTokenizer

    from storyreel.models.clip_tokenizer import clip_vocab_and_merges

    folder = shared_data / "model_configs" / SD15_DIR / "tokenizer"
    merges, tokens = clip_vocab_and_merges()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == {token: index for index, token in enumerate(tokens)}
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and [tuple(line.split()) for line in lines[1:]] == list(merges)
    real = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    ours = build_clip_tokenizer()
    for text in [KNIGHT, "A Knight, riding  a HORSE!!", "naïve café 123 🐴", "it's <|endoftext|> done", "x" * 300]:
        assert ours(text, padding="max_length", max_length=77, truncation=True).input_ids == \
            real(text, padding="max_length", max_length=77, truncation=True).input_ids, text


def test_tiny_controlnet_is_perturbed_and_depth_changes_the_render(components, tiny_pipeline):
    embedding = components.controlnet.controlnet_cond_embedding
    controlnet = components.controlnet
    for conv in (embedding.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        assert conv.weight.abs().sum() > 0  # zero-initialised in a fresh ControlNet
    near = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    far = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    video = _render(tiny_pipeline, near)
    elapsed = time.perf_counter() - start
    assert video.shape == (1, 4, 3, 32, 32) and torch.isfinite(video).all()
    assert elapsed < 1.0, f"2 steps x 4 frames x 32x32 took {elapsed:.2f} s"
    assert torch.equal(video, _render(tiny_pipeline, near))  # deterministic
    changed = (video - _render(tiny_pipeline, far)).abs().mean()
    assert changed > 1e-3, f"depth barely changes the video ({changed:.2e})"
    # the same holds in latent space, and switching the ControlNet off changes it too
    latents = _render(tiny_pipeline, near, output_type="latent")
    assert (latents - _render(tiny_pipeline, far, output_type="latent")).abs().mean() > 0.02 * latents.abs().mean()
    assert (latents - _render(tiny_pipeline, near, scale=0.0, output_type="latent")).abs().mean() > 0.05


def test_tiny_scheduler_and_record(components):
    record = components.record()
    assert record["preset"] == "tiny" and record["dtype"] == "float32"
    assert set(record["components"]) == {"tokenizer", "text_encoder", "vae", "unet", "motion_adapter", "controlnet"}
    assert all(entry["kind"] == "tiny" and len(entry["config"]) == 16 for entry in record["components"].values())
    assert record["components"]["motion_adapter"]["class"] == "MotionAdapter"
    assert record["scheduler"]["config"]["beta_schedule"] == "linear"
    json.dumps(record)  # a report can store it as it is


# -- sd15-random: the real sizes ---------------------------------------------------------------------------
def _class_defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


# Keys of the v1-5-2 motion adapter config that MotionAdapter no longer takes (diffusers 0.42.1 hard-codes
# these values in its motion modules, so they are not settings).
MOTION_ADAPTER_FIXED = {"motion_activation_fn": "geglu", "motion_attention_bias": False,
                        "motion_cross_attention_dim": None}
METADATA = {"_class_name", "_diffusers_version", "_name_or_path", "architectures", "model_type", "torch_dtype",
            "transformers_version", "_commit_hash"}


def _compare(real: dict, preset: dict, defaults: dict, ignored: dict | None = None, expect: dict | None = None):
    problems = []
    for key, value in real.items():
        if key in METADATA:
            continue
        if ignored and key in ignored:
            if value != ignored[key]:
                problems.append(f"{key}: real {value!r}, diffusers hard-codes {ignored[key]!r}")
            continue
        want = (expect or {}).get(key, value)
        if key in preset:
            if _json(preset[key]) != _json(want):
                problems.append(f"{key}: preset {preset[key]!r}, real {want!r}")
        elif key not in defaults or _json(defaults[key]) != _json(want):
            problems.append(f"{key}: missing from the preset, real {want!r} is not the default")
    return problems


def test_sd15_random_configs_match_the_real_files(shared_data):
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig

    root = shared_data / "model_configs"
    load = lambda path: json.loads((root / path).read_text(encoding="utf-8"))  # noqa: E731
    text_defaults = {key: getattr(CLIPTextConfig(), key) for key in load(f"{SD15_DIR}/text_encoder/config.json")
                     if hasattr(CLIPTextConfig(), key)}
    checks = {
        "unet": _compare(load(f"{SD15_DIR}/unet/config.json"), architectures.SD15_UNET_CONFIG,
                         _class_defaults(UNet2DConditionModel)),
        "vae": _compare(load(f"{SD15_DIR}/vae/config.json"), architectures.SD15_VAE_CONFIG,
                        _class_defaults(AutoencoderKL)),
        "text_encoder": _compare(load(f"{SD15_DIR}/text_encoder/config.json"), architectures.SD15_TEXT_ENCODER_CONFIG,
                                 text_defaults),
        # v1-5-3 is v1-5-2 without the motion mid block
        "motion_adapter": _compare(load("animatediff-motion-adapter-v1-5-2/config.json"),
                                   architectures.MOTION_ADAPTER_CONFIG, _class_defaults(MotionAdapter),
                                   ignored=MOTION_ADAPTER_FIXED, expect={"use_motion_mid_block": False}),
        # Depth Anything's depth ControlNet: the SD1.5 ControlNet architecture the v1.1 depth model shares
        "controlnet": _compare(load("depth-anything-controlnet-sd15/config.json"), architectures.SD15_CONTROLNET_CONFIG,
                               _class_defaults(ControlNetModel)),
    }
    assert {name: problems for name, problems in checks.items() if problems} == {}
    # SD1.5's VAE scaling factor is diffusers' default (the 0.6.0 file predates the key)
    assert architectures.SD15_VAE_CONFIG["scaling_factor"] == _class_defaults(AutoencoderKL)["scaling_factor"]


def test_sd15_random_has_the_real_parameter_counts():
    built = architectures.build_random_components(torch.device("meta"), merge=False)
    assert built["tokenizer"](KNIGHT).input_ids == KNIGHT_IDS
    for name, model in built.items():
        if name != "tokenizer":
            assert next(model.parameters()).device.type == "meta", name
    counts = {"unet2d": _params(built["unet"]), "controlnet": _params(built["controlnet"]),
              "motion_adapter": _params(built["motion_adapter"]), "vae": _params(built["vae"]),
              "text_encoder": _params(built["text_encoder"])}
    with torch.device("meta"):
        counts["motion_adapter_v152"] = _params(
            architectures.build_motion_adapter({**architectures.MOTION_ADAPTER_CONFIG, "use_motion_mid_block": True}))
    for name, real in REAL_SIZES.items():
        assert abs(counts[name] - real) <= 1e-3 * real, f"{name}: {counts[name] / 1e6:.1f}M, real {real / 1e6:.1f}M"
    # every preset value reached the model (no key silently ignored)
    for name, config in architectures.SD15_RANDOM_CONFIGS.items():
        model = built["unet" if name == "unet" else name]
        for key, value in config.items():
            got = getattr(model.config, key) if name == "text_encoder" else model.config[key]
            assert _json(got) == _json(value), f"{name}.{key}"
    merged = load_render_components("sd15-random", device="meta")
    assert _params(merged.unet) == counts["unet2d"] + counts["motion_adapter"]
    assert merged.record()["components"]["unet"]["kind"] == "random"
    assert merged.weights_fingerprint()["unet"] == "meta"


def test_scheduler_presets(shared_data):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    real = json.loads((shared_data / "model_configs" / SD15_DIR / "scheduler" / "scheduler_config.json")
                      .read_text(encoding="utf-8"))
    pndm_only = {"skip_prk_steps"}
    assert schedulers.SD15_SCHEDULER_CONFIG == {k: v for k, v in real.items() if k not in METADATA | pndm_only}
    differences = {k for k in schedulers.SD15_SCHEDULER_CONFIG
                   if schedulers.SD15_SCHEDULER_CONFIG[k] != schedulers.RENDER_SCHEDULER_CONFIG[k]}
    assert differences == {"beta_schedule"} and schedulers.RENDER_SCHEDULER_CONFIG["beta_schedule"] == "linear"

    ddim = schedulers.make_scheduler("ddim")
    assert isinstance(ddim, DDIMScheduler)
    config = ddim.config
    assert (config.beta_schedule, config.clip_sample, config.set_alpha_to_one) == ("linear", False, False)
    ddim.set_timesteps(50)
    assert ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1
    sd15 = schedulers.make_scheduler("ddim", schedulers.SD15_SCHEDULER_CONFIG)
    assert sd15.config.beta_schedule == "scaled_linear" and not torch.equal(sd15.betas, ddim.betas)
    euler = schedulers.make_scheduler("euler")
    assert isinstance(euler, EulerDiscreteScheduler) and euler.config.beta_schedule == "linear"
    dpm = schedulers.make_scheduler("dpmpp_2m", steps_offset=0)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert (dpm.config.algorithm_type, dpm.config.solver_order, dpm.config.steps_offset) == ("dpmsolver++", 2, 0)
    with pytest.raises(ValueError, match="ddim, euler, dpmpp_2m"):
        schedulers.make_scheduler("plms")
    assert isinstance(load_render_components("tiny", device="meta", scheduler="dpmpp_2m").scheduler,
                      DPMSolverMultistepScheduler)


# -- sd15: hub ids, offline, local folders -----------------------------------------------------------------
def test_sd15_sources_are_the_preset_ids():
    sources = resolve_sources("sd15")
    assert {name: (s.location, s.subfolder) for name, s in sources.items()} == {
        "tokenizer": (presets.SD15_BASE_ID, "tokenizer"), "text_encoder": (presets.SD15_BASE_ID, "text_encoder"),
        "vae": (presets.SD15_BASE_ID, "vae"), "unet": (presets.SD15_BASE_ID, "unet"),
        "motion_adapter": ("guoyww/animatediff-motion-adapter-v1-5-3", None),
        "controlnet": ("lllyasviel/control_v11f1p_sd15_depth", None)}
    assert presets.DEFAULT_PRESET == "sd15"
    with pytest.raises(RenderModelLoadError, match="sd15, tiny, sd15-random"):
        resolve_sources("sd21")


def test_sd15_offline_fails_fast_naming_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RenderModelLoadError) as error:
        load_render_components("sd15", device="cpu")
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "tokenizer" in message
    assert "--models tiny" in message and '[components] base = "DIR"' in message and "offline" in message


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """The tiny preset saved as downloaded models are laid out: an SD1.5 folder, an adapter, a ControlNet."""
    root = tmp_path_factory.mktemp("tiny_models")
    parts = architectures.build_tiny_components(merge=False)
    for name in ("tokenizer", "text_encoder", "vae", "unet"):
        parts[name].save_pretrained(root / "sd15" / name)
    parts["motion_adapter"].save_pretrained(root / "motion-adapter")
    parts["controlnet"].save_pretrained(root / "controlnet", variant="fp16")  # only an fp16 safetensors variant
    return root


def test_local_folders_load_offline_and_give_the_same_model(components, tiny_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tmp_path / "models.toml"
    relative = os.path.relpath(tiny_folders / "controlnet", tmp_path)  # relative to the TOML file
    config.write_text(f'[components]\nbase = "{tiny_folders / "sd15"}"\n'
                      f'motion_adapter = "{tiny_folders / "motion-adapter"}"\ncontrolnet = "{relative}"\n')
    monkeypatch.chdir(tiny_folders)  # relative paths resolve against the file, not the working directory
    loaded = load_render_components("sd15", config_file=config, device="cpu")
    assert loaded.weights_fingerprint() == components.weights_fingerprint()
    assert loaded.tokenizer(KNIGHT).input_ids == KNIGHT_IDS
    record = loaded.record()["components"]
    assert record["vae"]["kind"] == "local" and record["vae"]["source"] == str((tiny_folders / "sd15").resolve())
    assert record["controlnet"]["source"] == str((tiny_folders / "controlnet").resolve())
    assert {name: entry["config"] for name, entry in record.items()} == \
        {name: entry["config"] for name, entry in components.record()["components"].items()}
    # a per-component override may point at an SD1.5-layout folder: its own subfolder is used
    only_vae = load_render_components("tiny", overrides={"vae": tiny_folders / "sd15"}, device="cpu")
    assert only_vae.record()["components"]["vae"]["subfolder"] is None
    assert only_vae.weights_fingerprint() == components.weights_fingerprint()


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers' hub call
def test_missing_controlnet_id_is_named_offline(tiny_folders, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = {"base": tiny_folders / "sd15", "motion_adapter": tiny_folders / "motion-adapter"}
    with pytest.raises(RenderModelLoadError) as error:
        load_render_components("sd15", overrides=overrides, device="cpu")
    message = str(error.value)
    assert "lllyasviel/control_v11f1p_sd15_depth (render controlnet)" in message and "1 model is not" in message
    assert '[components] controlnet = "DIR"' in message


def test_pickle_only_folders_and_files_are_refused(tmp_path):
    folder = tmp_path / "pickled-controlnet"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    refused = r"no \.safetensors weights \(it holds diffusion_pytorch_model\.bin\)"
    with pytest.raises(RenderModelLoadError, match=refused):
        load_render_components("tiny", overrides={"controlnet": str(folder)}, device="cpu")
    (tmp_path / "model.ckpt").write_bytes(b"not loaded")
    with pytest.raises(ModelConfigError, match="pickle"):
        load_render_components("tiny", overrides={"unet": str(tmp_path / "model.ckpt")}, device="cpu")


def test_incompatible_components_are_refused(tmp_path):
    wider = dict(architectures.TINY_CONTROLNET_CONFIG, block_out_channels=(16, 32))
    architectures.build_controlnet(wider).save_pretrained(tmp_path / "wide-controlnet")
    with pytest.raises(RenderModelLoadError, match=r"controlnet's blocks \[16, 32\] do not match the unet's \[8, 16\]"):
        load_render_components("tiny", overrides={"controlnet": str(tmp_path / "wide-controlnet")}, device="cpu")


# -- TOML config errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, field, detail", [
    ('[components]\nbase = "a/b"\nloras = "x/y"\n', "loras", "unknown component 'loras'"),
    ('[components]\nbase = "a/b"\n[scheduler]\nname = "ddim"\n', "scheduler", "unknown key"),
    ('base = "a/b"\n', "base", "unknown key"),
    ('[components]\nvae = 3\n', "vae", "expected a string"),
    ('[components]\nvae = ""\n', "vae", "empty value"),
    ('[components]\nvae = "./no-such-folder"\n', "vae", "no such folder"),
    ('[components]\nvae = "not an id"\n', "vae", "neither an existing folder nor a hub id"),
    ('[components]\nvae = "org/name@"\n', "vae", "neither an existing folder nor a hub id"),
    ('[components\nvae = "x"\n', None, "not valid TOML"),
])
def test_bad_config_files_name_the_file_and_key(tmp_path, text, field, detail):
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ModelConfigError) as error:
        load_render_components("tiny", config_file=path, device="meta")
    assert error.value.field == field and str(path) in str(error.value) and detail in str(error.value)
    if field:
        assert field in str(error.value)


def test_config_file_values():
    with pytest.raises(ModelConfigError, match="no such model config file"):
        read_config_file("/no/such/models.toml")
    sources = resolve_sources("sd15", overrides={"base": "org/my-sd15@v2", "vae": "org/vaes/ft-mse"})
    unet = sources["unet"]
    assert (unet.location, unet.subfolder, unet.revision) == ("org/my-sd15", "unet", "v2")
    assert (sources["vae"].location, sources["vae"].subfolder, sources["vae"].key) == ("org/vaes", "ft-mse", "vae")
    assert sources["controlnet"].location == presets.CONTROLNET_ID
    with pytest.raises(RenderModelLoadError, match="meta device"):
        load_render_components("tiny", overrides={"vae": "org/vae"}, device="meta")
