"""Single files: an SD1.5 checkpoint in the original (LDM) layout, a one-file motion adapter and a UNet LoRA
load into the same models as the tiny preset's (bit for bit, the same frames), through ``--base`` and the
model specification; a pickle checkpoint is refused before anything loads.

The original-layout checkpoint is made here from the tiny base by the inverse of diffusers' conversion
(:func:`original_layout_checkpoint`), so loading it runs diffusers' own single-file converters on the tiny
architecture."""

from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner
from model_checks import PROMPT, full_hash, sampler_frames
from safetensors.torch import save_file

from storyreel.models import architectures, loading, single_file
from storyreel.models.loading import load_render_components
from storyreel.models.model_options import model_options, model_specification
from storyreel.models.specification import ModelConfigError, ModelSpecification

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET_NAMES = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
                ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."),
                ("conv_shortcut.", "skip_connection."))
VAE_ATTENTION_NAMES = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                       ("to_out.0.", "proj_out."))


# -- the inverse of diffusers' conversion: diffusers layout -> original Stable Diffusion (LDM) layout --------
def _rename(key: str, renames: list[tuple[str, str]]) -> tuple[str, str, str]:
    """``(old prefix, new prefix, rest)`` of the first rename whose diffusers prefix starts ``key``."""
    for old, new in renames:
        if key.startswith(old):
            return old, new, key[len(old):]
    raise KeyError(f"no original-layout name for {key}")


def unet_to_original(state: dict, config: dict) -> dict:
    """A ``UNet2DConditionModel`` state dict under the names of the original SD UNet (``model.diffusion_model.``):
    input_blocks (conv_in, then per level ``layers_per_block`` resnet[+attention] blocks and a downsampler),
    middle_block (resnet, attention, resnet), output_blocks (per level ``layers_per_block + 1`` blocks, the
    upsampler in the last one, after the attention when the level has one), out."""
    levels, per = len(config["block_out_channels"]), config["layers_per_block"]
    renames = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
               ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
               ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
               ("mid_block.resnets.1.", "middle_block.2.")]
    for level in range(levels):
        for layer in range(per):
            block = level * (per + 1) + layer + 1
            renames += [(f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0."),
                        (f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1.")]
        for layer in range(per + 1):
            block = level * (per + 1) + layer
            renames += [(f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{block}.0."),
                        (f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{block}.1.")]
        if level < levels - 1:
            with_attention = config["up_block_types"][level].startswith("CrossAttn")
            renames += [(f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(level + 1) * (per + 1)}.0.op."),
                        (f"up_blocks.{level}.upsamplers.0.",
                         f"output_blocks.{level * (per + 1) + per}.{2 if with_attention else 1}.")]
    original = {}
    for key, value in state.items():
        old, new, rest = _rename(key, renames)
        if ".resnets." in old:
            for diffusers_name, original_name in RESNET_NAMES:
                rest = rest.replace(diffusers_name, original_name) if rest.startswith(diffusers_name) else rest
        original[single_file.LDM_UNET_PREFIX + new + rest] = value
    return original


def vae_to_original(state: dict, config: dict) -> dict:
    """An ``AutoencoderKL`` state dict under the original VAE's names (``first_stage_model.``): encoder.down.N,
    decoder.up.N counted from the bottom, mid.block_1/2 and mid.attn_1 with 1x1-convolution projections."""
    levels = len(config["block_out_channels"])
    renames = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for level in range(levels):
        renames += [(f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."),
                    (f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."),
                    (f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{levels - 1 - level}.block."),
                    (f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{levels - 1 - level}.upsample.")]
    for part in ("encoder", "decoder"):
        renames += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                    (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                    (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]
    original = {}
    for key, value in state.items():
        try:
            _, new, rest = _rename(key, renames)
        except KeyError:  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
            new, rest = "", key
        if new.endswith("attn_1."):
            for diffusers_name, original_name in VAE_ATTENTION_NAMES:
                rest = original_name + rest[len(diffusers_name):] if rest.startswith(diffusers_name) else rest
            value = value[:, :, None, None] if value.ndim == 2 else value  # linear -> 1x1 convolution
        original["first_stage_model." + (new + rest).replace("conv_shortcut.", "nin_shortcut.")] = value
    return original


def text_encoder_to_original(state: dict) -> dict:
    """A ``CLIPTextModel`` state dict under the original checkpoint's names (``cond_stage_model.transformer.``)."""
    return {single_file.LDM_TEXT_ENCODER_PREFIX + key.removeprefix("text_model."): value
            for key, value in state.items()}


def original_layout_checkpoint(parts: dict) -> dict:
    """One original-layout checkpoint of the tiny base's text encoder, VAE and UNet."""
    checkpoint = {**unet_to_original(parts["unet"].state_dict(), architectures.TINY_UNET_CONFIG),
                  **vae_to_original(parts["vae"].state_dict(), architectures.TINY_VAE_CONFIG),
                  **text_encoder_to_original(parts["text_encoder"].state_dict())}
    return {key: value.detach().contiguous() for key, value in checkpoint.items()}


# -- helpers and fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_parts():
    return architectures.build_tiny_components(merge=False)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory, tiny_parts):
    path = tmp_path_factory.mktemp("single_file") / "tiny-sd15.safetensors"
    save_file(original_layout_checkpoint(tiny_parts), str(path))
    return path


def specification_from_flags(*flags: str) -> ModelSpecification:
    """The specification a command decorated with ``model_options()`` builds from ``flags``."""
    seen = []

    @click.command()
    @model_options()
    def probe(**options):
        seen.append(model_specification(**options))

    result = CliRunner().invoke(probe, list(flags), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen[0]


# -- the tests ---------------------------------------------------------------------------------------------------
def test_the_checkpoint_is_in_the_original_layout(checkpoint_file):
    shapes = single_file.tensor_shapes(checkpoint_file)
    assert "model.diffusion_model.input_blocks.0.0.weight" in shapes
    assert not any(name.startswith("down_blocks") for name in shapes)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (16, 16, 1, 1)
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in shapes
    assert single_file.sd_checkpoint_problem(shapes, architectures.TINY_CONFIGS, label="tiny") is None
    assert "SD1.5's [320, 4, 3, 3]" in single_file.sd_checkpoint_problem(shapes, architectures.SD15_RANDOM_CONFIGS)


def test_a_single_file_base_loads_as_the_tiny_base(checkpoint_file, components, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    specification = specification_from_flags("--models", "tiny", "--base", str(checkpoint_file))
    assert (specification.preset, specification.base) == ("tiny", str(checkpoint_file))
    loaded = load_render_components(specification, device="cpu")
    for name, model in components.models().items():  # text encoder, VAE, UNet (with the motion modules), ControlNet
        assert full_hash(getattr(loaded, name)) == full_hash(model), name
    assert loaded.tokenizer(PROMPT).input_ids == components.tokenizer(PROMPT).input_ids
    record = loaded.record()["components"]
    assert record["unet"]["kind"] == record["vae"]["kind"] == record["text_encoder"]["kind"] == "file"
    assert record["unet"]["source"] == str(checkpoint_file.resolve()) and record["tokenizer"]["kind"] == "builtin"
    assert record["controlnet"]["kind"] == "tiny"
    assert {name: entry["config"] for name, entry in record.items()} == \
        {name: entry["config"] for name, entry in components.record()["components"].items()}
    assert torch.equal(sampler_frames(loaded), sampler_frames(components))


def test_a_checkpoint_with_weights_missing_is_refused(tmp_path, tiny_parts):
    checkpoint = original_layout_checkpoint(tiny_parts)
    del checkpoint["model.diffusion_model.middle_block.1.proj_out.weight"]
    path = tmp_path / "cut.safetensors"
    save_file(checkpoint, str(path))
    with pytest.raises(single_file.SingleFileMismatch, match=r"its UNET lacks 1 weights \(mid_block.attentions.0"):
        single_file.load_sd_checkpoint(path, ("unet",), architectures.TINY_CONFIGS)
    with pytest.raises(loading.RenderModelLoadError, match="cannot load the render's base"):
        load_render_components(ModelSpecification(preset="tiny", base=path), device="cpu")


def test_a_ckpt_base_is_refused_before_anything_loads(tmp_path, monkeypatch):
    def loads(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for module, name in ((single_file, "load_sd_checkpoint"), (loading, "load_component"),
                         (architectures, "build_tiny_components")):
        monkeypatch.setattr(module, name, loads)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"a pickle is never opened")
    with pytest.raises(ModelConfigError) as raised:
        load_render_components(specification_from_flags("--models", "tiny", "--base", str(ckpt)), device="cpu")
    assert str(raised.value).startswith("--base: refusing ") and "model.ckpt" in str(raised.value)
    assert "pickle-based checkpoints can run code" in str(raised.value)


def test_a_single_file_motion_adapter_loads_into_a_motion_adapter(tmp_path, tiny_parts, components):
    path = tmp_path / "adapter_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_parts["motion_adapter"].state_dict().items()}, str(path))
    loaded = load_render_components(specification_from_flags("--models", "tiny", "--motion-adapter", str(path)),
                                    device="cpu")
    assert full_hash(loaded.unet) == full_hash(components.unet)
    assert loaded.record()["components"]["motion_adapter"]["kind"] == "file"
    # without the position encodings (they are computed, not learned) it is the same adapter
    weights = {k: v.contiguous() for k, v in tiny_parts["motion_adapter"].state_dict().items() if not k.endswith(".pe")}
    save_file(weights, str(path))
    assert full_hash(single_file.load_motion_adapter_file(path, architectures.TINY_MOTION_ADAPTER_CONFIG)) == \
        full_hash(tiny_parts["motion_adapter"])


def test_an_sd15_one_file_adapter_is_a_plain_motion_adapter():
    """AnimateDiff-Lightning's files are a plain ``MotionAdapter()`` (v2, with the motion mid block): the
    configuration read from such a file's tensor shapes is the default one."""
    from diffusers import MotionAdapter

    with torch.device("meta"):
        plain = MotionAdapter()
    shapes = {name: tuple(tensor.shape) for name, tensor in plain.state_dict().items()}
    config = single_file.motion_adapter_config(shapes, architectures.MOTION_ADAPTER_CONFIG)
    assert {key: list(v) if isinstance(v, tuple) else v for key, v in config.items()} == \
        {key: list(v) if isinstance(v, tuple) else v for key, v in plain.config.items() if key in config}
    assert config["use_motion_mid_block"] is True
    assert single_file.motion_adapter_problem(shapes, architectures.SD15_UNET_CONFIG) is None
    assert single_file.motion_adapter_problem(shapes, architectures.TINY_UNET_CONFIG, "tiny") == \
        "its motion modules cover 4 UNet levels, tiny's UNet has 2"
    wide_tiny = {**architectures.TINY_UNET_CONFIG, "block_out_channels": (8, 16, 32, 32)}
    assert single_file.motion_adapter_problem(shapes, wide_tiny, "tiny") == \
        "its motion modules are for 320-channel blocks, tiny's first UNet block has 8"


def lora_file(path, unet, rank: int = 2) -> list[str]:
    """A diffusers-format UNet LoRA (``unet.<module>.lora_A/B.weight``) on the spatial attention of ``unet``."""
    generator = torch.Generator().manual_seed(3)
    modules = [name for name, module in unet.named_modules()
               if name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_k")) and ".motion_modules." not in name]
    tensors = {}
    for name in modules:
        layer = unet.get_submodule(name)
        tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator)
        tensors[f"unet.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.1
    save_file(tensors, str(path))
    return modules


def test_a_lora_is_fused_as_diffusers_fuses_it(tmp_path, components):
    from diffusers import AnimateDiffControlNetPipeline

    path = tmp_path / "lcm_like_lora.safetensors"
    modules = lora_file(path, components.unet)
    toml = tmp_path / "models.toml"
    toml.write_text(f'preset = "tiny"\n[components]\nlora = "{path.name}"\nlora_scale = 0.5\n')
    ours = load_render_components(ModelSpecification(config_file=toml), device="cpu")
    reference = load_render_components("tiny", device="cpu")
    pipe = AnimateDiffControlNetPipeline(**reference.pipeline_kwargs())
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=0.5)
    pipe.unload_lora_weights()
    assert full_hash(ours.unet) == full_hash(pipe.unet)
    assert full_hash(ours.unet) != full_hash(components.unet)
    assert not getattr(ours.unet, "peft_config", None)  # plain layers: characters add their own adapters
    assert ours.record()["lora"] == {"kind": "file", "source": str(path.resolve()), "subfolder": None,
                                     "revision": None, "scale": 0.5, "layers": len(modules)}
    changed = [name for name, value in ours.unet.state_dict().items()
               if not torch.equal(value, components.unet.state_dict()[name])]
    assert sorted(changed) == sorted(f"{name}.weight" for name in modules)
