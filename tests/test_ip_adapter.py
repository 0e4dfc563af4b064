"""IP-Adapter identity from reference images: the tiny adapters in h94's format, equal to diffusers'
AnimateDiffControlNetPipeline with load_ip_adapter, per-character scales, exact removal, reference embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from render.ip_adapter import (
    VARIANTS,
    IPAdapterLoadError,
    IPAdapterSource,
    ReferenceEmbeddingError,
    encode_reference_images,
    install_ip_adapters,
    ip_adapters,
    load_ip_adapter,
    load_reference_embedding,
    save_reference_embedding,
    tiny_ip_adapter,
)
from render.sampler import StructureGuidedSampler
from storyreel.errors import ModelLoadError
from storyreel.weights_policy import PICKLE_REFUSAL
from structure.conditioning import controlnet_condition

PROMPT = "a knight riding a horse"
NEGATIVE = "blurry, low quality"
SIZE = 32
FRAMES = 6
STEPS = 4


def _depth(frames: int, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return np.stack([0.6 * ((x + 0.05 * t) % 1.0) + 0.2 * y for t in range(frames)]).astype(np.float32)


def _picture(seed: int, shape=(40, 48)) -> np.ndarray:
    """A picture with structure (a bright square on a gradient) and noise: H x W x 3 uint8."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = np.linspace(0, 200, w)[None, :, None] * np.ones((h, 1, 3)) * rng.uniform(0.3, 1.0, 3)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[top:top + h // 3, left:left + w // 3] = rng.integers(100, 255, 3)
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def seeded_global_rng(one_thread):
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cond():
    return controlnet_condition(_depth(FRAMES))


@pytest.fixture(scope="module")
def adapters(components):
    return {variant: tiny_ip_adapter(components.unet, variant) for variant in ("base", "plus")}


@pytest.fixture(scope="module")
def embeddings(adapters):
    """alice and bob through each variant (alice from two pictures, bob from one)."""
    return {variant: {"alice": encode_reference_images(adapter, [_picture(1), _picture(2)]),
                      "bob": encode_reference_images(adapter, [_picture(3)])}
            for variant, adapter in adapters.items()}


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory, adapters):
    """Both tiny adapters saved in h94's layout (models/<file>, models/image_encoder)."""
    folder = tmp_path_factory.mktemp("IP-Adapter")
    for adapter in adapters.values():
        adapter.save(folder)
    return folder


@pytest.fixture(scope="module")
def reference_pipeline():
    """diffusers' pipeline on its own copy of the tiny components (its IP-Adapter loader changes the UNet)."""
    from diffusers import AnimateDiffControlNetPipeline

    from storyreel.models.loading import load_render_components

    pipe = AnimateDiffControlNetPipeline(**load_render_components("tiny", device="cpu").pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(components, cond, **kwargs):
    args = dict(conditioning=cond, steps=STEPS, guidance_scale=7.5, seed=3, output_type="pt")
    args.update(kwargs)
    return StructureGuidedSampler(components)(PROMPT, NEGATIVE, **args)


def _pipe(pipe, cond, **kwargs):
    return pipe(PROMPT, negative_prompt=NEGATIVE, conditioning_frames=list(cond), num_frames=cond.shape[0],
                height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(3), output_type="pt", **kwargs).frames[0].permute(0, 2, 3, 1)


# -- the tiny adapters and where adapters come from -------------------------------------------------------------
def test_tiny_adapters_are_in_h94_format_and_load_back_from_a_folder_and_a_file(components, adapters,
                                                                                 adapter_folder):
    cross_layers = 6  # the tiny UNet: 2 down, 3 up, 1 mid cross-attention layers
    for variant, adapter in adapters.items():
        path = adapter_folder / "models" / VARIANTS[variant].weight_name
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
        ip_keys = {f"ip_adapter.{k}.to_{kv}_ip.weight" for k in range(1, 2 * cross_layers, 2) for kv in "kv"}
        assert ip_keys <= keys and all(k.startswith(("image_proj.", "ip_adapter.")) for k in keys)
        assert ("image_proj.latents" in keys) == (variant == "plus")
        assert ("image_proj.proj.weight" in keys) == (variant == "base")
        for source in (IPAdapterSource(variant, location=str(adapter_folder)),
                       IPAdapterSource(variant, location=str(path))):
            loaded = load_ip_adapter(source)
            assert loaded.hidden_states == (variant == "plus")
            for part in ("image_proj", "ip_adapter"):
                assert loaded.state_dict[part].keys() == adapter.state_dict[part].keys()
                assert all(torch.equal(v, adapter.state_dict[part][k]) for k, v in loaded.state_dict[part].items())
            assert loaded.encoder_fingerprint() == adapter.encoder_fingerprint()
    # the same seed builds the same adapter; plus-face is the plus architecture with other weights
    again = tiny_ip_adapter(components.unet, "base")
    assert torch.equal(again.state_dict["image_proj"]["proj.weight"], adapters["base"].state_dict["image_proj"][
        "proj.weight"])
    face = load_ip_adapter(IPAdapterSource("plus-face", location="tiny"), unet=components.unet)
    assert face.hidden_states and not torch.equal(face.state_dict["image_proj"]["latents"],
                                                  adapters["plus"].state_dict["image_proj"]["latents"])


def test_pickle_files_are_refused(tmp_path, embeddings):
    (tmp_path / "ip-adapter_sd15.bin").write_bytes(b"not loaded")
    with pytest.raises(IPAdapterLoadError, match=PICKLE_REFUSAL) as error:
        load_ip_adapter(IPAdapterSource("base", location=str(tmp_path / "ip-adapter_sd15.bin")))
    assert "ip-adapter_sd15.bin" in str(error.value)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ip-adapter_sd15.bin").write_bytes(b"not loaded")
    with pytest.raises(IPAdapterLoadError, match=PICKLE_REFUSAL):  # a folder with only the pickle
        load_ip_adapter(IPAdapterSource("base", location=str(tmp_path)))
    embedding = embeddings["base"]["alice"]
    for name in ("alice.pt", "alice.bin"):
        with pytest.raises(ReferenceEmbeddingError, match=PICKLE_REFUSAL):
            save_reference_embedding(tmp_path / name, embedding)
        (tmp_path / name).write_bytes(b"not loaded")
        with pytest.raises(ReferenceEmbeddingError, match=PICKLE_REFUSAL):
            load_reference_embedding(tmp_path / name)


def test_missing_files_raise_model_load_errors_naming_them(tmp_path, adapter_folder):
    missing = tmp_path / "nowhere" / "ip-adapter-plus_sd15.safetensors"
    with pytest.raises(ModelLoadError) as error:
        load_ip_adapter(IPAdapterSource("plus", location=str(missing)))
    assert str(missing) in str(error.value) and "hf download h94/IP-Adapter" in str(error.value)
    with pytest.raises(ModelLoadError) as error:  # a folder without the variant's file
        load_ip_adapter(IPAdapterSource("plus-face", location=str(tmp_path)))
    assert "ip-adapter-plus-face_sd15.safetensors" in str(error.value) and str(tmp_path) in str(error.value)
    weights = adapter_folder / "models" / "ip-adapter_sd15.safetensors"
    with pytest.raises(ModelLoadError) as error:  # the file without its image encoder
        load_ip_adapter(IPAdapterSource("base", location=str(weights), image_encoder=str(tmp_path / "encoder")))
    assert str(tmp_path / "encoder" / "config.json") in str(error.value)
    with pytest.raises(ModelLoadError, match="Resampler"):  # a plus file named as base
        load_ip_adapter(IPAdapterSource("base", location=str(adapter_folder / "models" /
                                                              "ip-adapter-plus_sd15.safetensors")))
    with pytest.raises(ModelLoadError) as error:  # the hub, offline (tests/conftest.py sets HF_HUB_OFFLINE)
        load_ip_adapter(IPAdapterSource("plus-face"))
    assert "h94/IP-Adapter" in str(error.value) and "hf download" in str(error.value)


def test_an_adapter_for_another_unet_is_refused(components, adapters):
    adapter = adapters["base"]
    other = type(adapter)(adapter.source, {"image_proj": adapter.state_dict["image_proj"],
                                           "ip_adapter": {k: v for k, v in adapter.state_dict["ip_adapter"].items()
                                                          if not k.startswith("11.")}},
                          adapter.image_encoder, adapter.image_processor, adapter.encoder_id)
    processors = dict(components.unet.attn_processors)
    with pytest.raises(ModelLoadError, match="5 cross-attention layers but the UNet has 6"):
        install_ip_adapters(components, [other])
    assert components.unet.encoder_hid_proj is None and components.unet.attn_processors == processors


# -- equivalence with diffusers ---------------------------------------------------------------------------------
def test_one_adapter_with_embeds_equals_the_diffusers_pipeline(components, reference_pipeline, adapter_folder,
                                                               embeddings, cond):
    embeds = [embeddings["base"]["alice"].sampler_embeds()]
    assert embeds[0].shape == (2, 1, 32)
    reference_pipeline.load_ip_adapter(str(adapter_folder), subfolder="models",
                                       weight_name="ip-adapter_sd15.safetensors")
    try:
        reference = _pipe(reference_pipeline, cond, ip_adapter_image_embeds=embeds)
    finally:
        reference_pipeline.unload_ip_adapter()
    with ip_adapters(components, [load_ip_adapter(IPAdapterSource("base", location=str(adapter_folder)))]):
        ours = _sample(components, cond, ip_adapter_image_embeds=embeds).frames
    difference = (ours - reference).abs().max().item()
    print(f"one base adapter, embeds: max |ours - diffusers| = {difference:.3g}")
    assert difference < 1e-4
    assert (ours - _sample(components, cond).frames).abs().max().item() > 1e-3  # and the adapter did something


def test_two_adapters_from_pictures_with_scales_equal_the_diffusers_pipeline(components, reference_pipeline,
                                                                              adapters, adapter_folder, cond):
    pictures = [_picture(4), _picture(5)]
    reference_pipeline.load_ip_adapter(str(adapter_folder), subfolder="models",
                                       weight_name=["ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"])
    try:
        reference_pipeline.set_ip_adapter_scale([0.6, 0.3])
        # diffusers' own encoding of one picture per adapter equals ours
        theirs = reference_pipeline.prepare_ip_adapter_image_embeds(
            [[pictures[0]], [pictures[1]]], None, torch.device("cpu"), 1, True)
        ours_embeds = [encode_reference_images(adapters["base"], [pictures[0]]).sampler_embeds(),
                       encode_reference_images(adapters["plus"], [pictures[1]]).sampler_embeds()]
        assert [t.shape for t in theirs] == [t.shape for t in ours_embeds] == [(2, 1, 32), (2, 1, 17, 32)]
        assert all(torch.equal(a, b) for a, b in zip(theirs, ours_embeds))
        reference = _pipe(reference_pipeline, cond, ip_adapter_image=[[pictures[0]], [pictures[1]]])
    finally:
        reference_pipeline.unload_ip_adapter()
    with ip_adapters(components, [adapters["base"], adapters["plus"]]) as active:
        active.set_scales([0.6, 0.3])
        ours = _sample(components, cond, ip_adapter_image_embeds=ours_embeds).frames
    difference = (ours - reference).abs().max().item()
    print(f"base + plus adapters, scales 0.6 / 0.3: max |ours - diffusers| = {difference:.3g}")
    assert difference < 1e-4


# -- scales, characters, removal ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["base", "plus"])
def test_scale_zero_equals_the_render_without_an_adapter(components, adapters, embeddings, cond, variant):
    plain = _sample(components, cond, output_type="latent").latents
    long_cond = controlnet_condition(_depth(12))
    long_plain = _sample(components, long_cond, context_window=8, context_stride=4, output_type="latent").latents
    with ip_adapters(components, [adapters[variant]]) as active:
        embeds = active.image_embeds([embeddings[variant]["alice"]])
        active.set_scales([0.0])
        zero = _sample(components, cond, output_type="latent", ip_adapter_image_embeds=embeds).latents
        long_zero = _sample(components, long_cond, context_window=8, context_stride=4, output_type="latent",
                            ip_adapter_image_embeds=embeds).latents
        active.set_scales([1.0])
        long_one = _sample(components, long_cond, context_window=8, context_stride=4, output_type="latent",
                           ip_adapter_image_embeds=embeds).latents
    assert torch.equal(zero, plain)  # the processor skips an adapter at scale 0: bit-identical
    assert torch.equal(long_zero, long_plain)  # also through context windows
    assert (long_one - long_plain).abs().max().item() > 1e-3


def test_a_shot_without_a_character_renders_as_if_only_the_others_adapter_were_installed(components, adapters,
                                                                                       embeddings, cond):
    alice, bob = embeddings["base"]["alice"], embeddings["plus"]["bob"]
    with ip_adapters(components, [adapters["base"]], names=["alice"]) as active:
        active.set_scales({"alice": 0.8})
        only_alice = _sample(components, cond, ip_adapter_image_embeds=active.image_embeds([alice])).latents
    with ip_adapters(components, [adapters["base"], adapters["plus"]], names=["alice", "bob"]) as active:
        active.set_scales({"alice": 0.8})  # the shot lists alice only: bob's scale is 0
        assert active.scales == [0.8, 0.0]
        both = _sample(components, cond, ip_adapter_image_embeds=active.image_embeds({"alice": alice, "bob": bob}))
        without_bob_embedding = _sample(components, cond, ip_adapter_image_embeds=active.image_embeds({"alice": alice}))
        active.set_scales({"alice": 0.8, "bob": 0.8})
        with_bob = _sample(components, cond, ip_adapter_image_embeds=active.image_embeds({"alice": alice, "bob": bob}))
        with pytest.raises(ValueError, match="carol"):
            active.set_scales({"carol": 1.0})
    assert torch.equal(both.latents, only_alice)
    assert torch.equal(without_bob_embedding.latents, only_alice)
    assert (with_bob.latents - only_alice).abs().max().item() > 1e-3


def test_removal_restores_the_unet_exactly(components, adapters, embeddings, cond):
    unet = components.unet
    before = _sample(components, cond, output_type="latent").latents
    processors = dict(unet.attn_processors)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    modules = list(unet._modules)
    config = (dict(unet.config), unet.config.encoder_hid_dim_type)
    with ip_adapters(components, [adapters["plus"], adapters["base"]]) as active:
        assert unet.config.encoder_hid_dim_type == "ip_image_proj"
        assert len(unet.state_dict()) > len(state)
        _sample(components, cond, output_type="latent",
                ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["bob"], embeddings["base"]["bob"]]))
    with pytest.raises(RuntimeError, match="inside"), ip_adapters(components, [adapters["base"]]):
        raise RuntimeError("a render that fails inside the block")
    assert unet.encoder_hid_proj is None and list(unet._modules) == modules
    assert (dict(unet.config), unet.config.encoder_hid_dim_type) == config
    after = dict(unet.attn_processors)
    assert after.keys() == processors.keys() and all(after[k] is processors[k] for k in processors)
    now = unet.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())
    assert torch.equal(_sample(components, cond, output_type="latent").latents, before)


def test_the_image_embeds_reach_the_unet(components, adapters, embeddings, cond):
    plain = _sample(components, cond, output_type="latent").latents
    with ip_adapters(components, [adapters["plus"]]) as active:
        alice = _sample(components, cond, output_type="latent",
                        ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["alice"]])).latents
        bob = _sample(components, cond, output_type="latent",
                      ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["bob"]])).latents
        active.set_scales(0.5)
        half = _sample(components, cond, output_type="latent",
                       ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["alice"]])).latents
        no_guidance = _sample(components, cond, output_type="latent", guidance_scale=1.0,
                              ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["alice"]],
                                                                          guidance=False)).latents
        with pytest.raises(ValueError, match="pass ip_adapter_image_embeds"):
            _sample(components, cond)
        with pytest.raises(ValueError, match="expected 2 x images"):
            _sample(components, cond, ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["alice"]],
                                                                                  guidance=False))
        with pytest.raises(ValueError, match="2 ip_adapter_image_embeds for 1"):
            _sample(components, cond, ip_adapter_image_embeds=active.image_embeds([embeddings["plus"]["bob"]]) * 2)
        with pytest.raises(ValueError, match="no reference embedding for IP-Adapter 'adapter0' at scale 0.5"):
            active.image_embeds([None])
        with pytest.raises(ValueError, match="encode the pictures with this adapter"):
            active.image_embeds([embeddings["base"]["bob"]])
    with pytest.raises(ValueError, match="no IP-Adapter is installed"):
        _sample(components, cond, ip_adapter_image_embeds=[embeddings["plus"]["alice"].sampler_embeds()])
    for a, b in ((alice, plain), (bob, alice), (half, alice), (half, plain)):
        assert (a - b).abs().max().item() > 1e-3
    plain_no_guidance = _sample(components, cond, output_type="latent", guidance_scale=1.0).latents
    assert (no_guidance - plain_no_guidance).abs().max().item() > 1e-3


# -- reference embeddings -----------------------------------------------------------------------------------------
def test_reference_embeddings_average_pictures_and_round_trip(tmp_path, adapters, embeddings):
    base, plus = adapters["base"], adapters["plus"]
    one, two = (encode_reference_images(base, [_picture(s)]) for s in (1, 2))
    alice = embeddings["base"]["alice"]
    assert alice.image_embeds.shape == (1, 32) and alice.num_images == 2
    assert torch.allclose(alice.image_embeds, (one.image_embeds + two.image_embeds) / 2, atol=1e-6)
    assert torch.equal(alice.negative_image_embeds, torch.zeros(1, 32))  # diffusers' uncond for base
    plus_alice = embeddings["plus"]["alice"]
    assert plus_alice.image_embeds.shape == (1, 17, 32)
    zeros = torch.zeros(1, 3, 32, 32)
    assert torch.equal(plus_alice.negative_image_embeds,
                       plus.image_encoder(zeros, output_hidden_states=True).hidden_states[-2])
    # PIL pictures give the same embedding as arrays; the hashes are of the pixels
    from PIL import Image

    assert torch.equal(encode_reference_images(base, [Image.fromarray(_picture(1))]).image_embeds, one.image_embeds)
    assert one.image_hashes == alice.image_hashes[:1] and alice.image_hashes[0] != alice.image_hashes[1]
    for embedding in (alice, plus_alice):
        path = save_reference_embedding(tmp_path / f"{embedding.variant}.safetensors", embedding)
        loaded = load_reference_embedding(path)
        assert torch.equal(loaded.image_embeds, embedding.image_embeds)
        assert torch.equal(loaded.negative_image_embeds, embedding.negative_image_embeds)
        assert (loaded.variant, loaded.encoder_id, loaded.encoder_fingerprint, loaded.image_hashes) == (
            embedding.variant, embedding.encoder_id, embedding.encoder_fingerprint, embedding.image_hashes)
        adapter = adapters[embedding.variant]
        assert loaded.matches(adapter, embedding.image_hashes) and not loaded.matches(adapter, ["other"])
    assert not alice.matches(plus)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "plus.safetensors"]  # no temp files
    with pytest.raises(ReferenceEmbeddingError, match="no such file"):
        load_reference_embedding(tmp_path / "carol.safetensors")
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        encode_reference_images(base, [np.zeros((8, 8), dtype=np.uint8)])
