"""``fetch-models``: the tiny preset written to folders loads back offline bit for bit (the same frames); an
interrupted fetch is redone and complete folders are skipped; the hub path, against a fake hub, fetches
exactly the config, tokenizer and safetensors files, resumes, and writes models.toml pointing at them."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from model_checks import PROMPT, full_hash, sampler_frames

from storyreel.models import architectures, fetch
from storyreel.models.fetch import MARKER, fetch_models
from storyreel.models.fetch import main as fetch_models_command
from storyreel.models.loading import load_render_components
from storyreel.models.specification import ModelSpecification

pytestmark = pytest.mark.usefixtures("one_thread")

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def quiet_fetch(specification, out):
    return fetch_models(specification, out, progress=False, echo=lambda line: None)


@pytest.fixture()
def no_hub(monkeypatch):
    """Any call to the hub fails the test."""
    def hub(*args, **kwargs):
        raise AssertionError(f"the hub was called: {args}")

    for name in ("snapshot_download", "hf_hub_download", "list_repo_files"):
        monkeypatch.setattr(fetch, name, hub)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub)


@pytest.fixture(scope="module")
def fetched_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("fetched") / "models"
    result = CliRunner().invoke(fetch_models_command, ["tiny", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'models.toml'} (3 fetched, 0 already complete)" in result.stdout
    return out


def test_fetched_tiny_loads_offline_as_the_tiny_preset(fetched_tiny, components, no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    toml = fetched_tiny / "models.toml"
    assert tomllib.loads(toml.read_text()) == {"preset": "tiny", "components": {
        "base": "base", "motion_adapter": "motion_adapter", "controlnet": "controlnet", "depth_model": "tiny"}}
    assert sorted(p.name for p in fetched_tiny.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt")) == []
    monkeypatch.chdir(fetched_tiny / "base")  # paths in models.toml are relative to the file
    loaded = load_render_components(ModelSpecification(config_file=toml), device="cpu")
    record = loaded.record()["components"]
    assert loaded.preset == "tiny" and {entry["kind"] for entry in record.values()} == {"local"}
    assert record["unet"]["source"] == str(fetched_tiny / "base")
    for name, model in components.models().items():
        assert full_hash(getattr(loaded, name)) == full_hash(model), name
    assert loaded.tokenizer(PROMPT).input_ids == components.tokenizer(PROMPT).input_ids
    assert torch.equal(sampler_frames(loaded), sampler_frames(components))


def test_an_interrupted_fetch_is_redone_and_complete_folders_are_skipped(tmp_path, no_hub):
    out = tmp_path / "models"
    first = quiet_fetch(ModelSpecification(preset="tiny"), out)
    assert (first.fetched, first.skipped) == (["base", "motion_adapter", "controlnet"], [])
    # cut short: the ControlNet's weights are half written and its marker (written last) is missing
    weights = out / "controlnet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (out / "controlnet" / MARKER).unlink()
    assert not fetch.is_complete(out / "controlnet", fetch.plan_fetch(
        ModelSpecification(preset="tiny").resolve()).items[-1])
    untouched = {name: (out / name / MARKER).stat().st_mtime_ns for name in ("base", "motion_adapter")}
    again = quiet_fetch(ModelSpecification(preset="tiny"), out)
    assert (again.fetched, again.skipped) == (["controlnet"], ["base", "motion_adapter"])
    assert {name: (out / name / MARKER).stat().st_mtime_ns for name in untouched} == untouched
    from diffusers import ControlNetModel

    redone = ControlNetModel.from_pretrained(str(out / "controlnet"), local_files_only=True)
    assert full_hash(redone) == full_hash(architectures.build_tiny_components(only={"controlnet"})["controlnet"])


# -- the hub path, with a fake hub --------------------------------------------------------------------------------
REPOSITORIES = {
    SD15: ["model_index.json", "README.md", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors",
           "scheduler/scheduler_config.json", "safety_checker/model.safetensors", "safety_checker/config.json",
           "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
           "tokenizer/vocab.json", "text_encoder/config.json", "text_encoder/model.safetensors",
           "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin", "vae/config.json",
           "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
           "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
           "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"],
    "wangfuyun/AnimateLCM": ["config.json", "diffusion_pytorch_model.safetensors", "README.md",
                             "diffusion_pytorch_model.fp16.safetensors", "AnimateLCM_sd15_t2v.ckpt",
                             "AnimateLCM_sd15_t2v_lora.safetensors"],
    "guoyww/animatediff-motion-adapter-v1-5-3": ["config.json", "diffusion_pytorch_model.safetensors",
                                                 "diffusion_pytorch_model.fp16.safetensors"],
    "lllyasviel/control_v11f1p_sd15_depth": ["config.json", "diffusion_pytorch_model.fp16.safetensors",
                                             "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"],
    "Intel/dpt-large": ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"],
    "Intel/dpt-hybrid-midas": ["config.json", "preprocessor_config.json", "model.safetensors"],  # refs/pr/5
    "org/pickles-only": ["config.json", "diffusion_pytorch_model.bin"],
    "guoyww/animatediff-sparsectrl-rgb": ["config.json", "diffusion_pytorch_model.safetensors",
                                          "diffusion_pytorch_model.fp16.safetensors"],
    "h94/IP-Adapter": ["models/ip-adapter_sd15.safetensors", "models/ip-adapter_sd15.bin",
                       "models/ip-adapter-plus_sd15.safetensors", "models/ip-adapter-plus-face_sd15.safetensors",
                       "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
                       "models/image_encoder/pytorch_model.bin", "sdxl_models/ip-adapter_sdxl.safetensors"],
    "ali-vilab/i2vgen-xl": ["model_index.json", "i2vgen_xl_00854500.pth",
                            *(f"{part}/config.json" for part in ("unet", "vae", "text_encoder", "image_encoder")),
                            "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                            "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                            "image_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                            "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json"],
}


class FakeHub:
    """huggingface_hub's list_repo_files, snapshot_download and hf_hub_download over :data:`REPOSITORIES`,
    writing each file's name as its content; ``fail_after`` files are written before a download breaks."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[tuple] = []
        self.fail_after = fail_after

    def list_repo_files(self, repo_id, revision=None):
        return list(REPOSITORIES[repo_id])

    def _write(self, repo_id, filename, local_dir):
        assert filename in REPOSITORIES[repo_id], filename
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise ConnectionError("connection reset by peer")
            self.fail_after -= 1
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{repo_id}/{filename}")

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, local_dir=None):
        self.calls.append(("snapshot", repo_id, sorted(allow_patterns)))
        for filename in allow_patterns:
            self._write(repo_id, filename, local_dir)
        return str(local_dir)

    def hf_hub_download(self, repo_id, filename, revision=None, local_dir=None):
        self.calls.append(("file", repo_id, filename))
        self._write(repo_id, filename, local_dir)
        return str(Path(local_dir) / filename)

    def install(self, monkeypatch):
        from storyreel import hub_access

        for name in ("list_repo_files", "snapshot_download", "hf_hub_download"):
            monkeypatch.setattr(fetch, name, getattr(self, name))
        # the suite runs offline (conftest); this fake hub answers
        monkeypatch.setattr(hub_access, "offline_requested", lambda: False)
        monkeypatch.setattr(hub_access, "hub_reachable", lambda *args, **kwargs: True)
        return self


def test_the_hub_path_fetches_safetensors_and_configs_only(tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    out = tmp_path / "models"
    specification = ModelSpecification(preset="sd15-lcm", depth_model="Intel/dpt-large")
    report = quiet_fetch(specification, out)
    assert report.fetched == ["base", "motion_adapter", "controlnet", "lora", "depth_model"]
    assert hub.calls == [
        ("snapshot", SD15, ["text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
                            "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                            "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                            "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]),
        ("snapshot", "wangfuyun/AnimateLCM", ["config.json", "diffusion_pytorch_model.safetensors"]),
        ("snapshot", "lllyasviel/control_v11f1p_sd15_depth",  # only an fp16 safetensors variant there
         ["config.json", "diffusion_pytorch_model.fp16.safetensors"]),
        ("file", "wangfuyun/AnimateLCM", "AnimateLCM_sd15_t2v_lora.safetensors"),
        ("snapshot", "Intel/dpt-large", ["config.json", "model.safetensors", "preprocessor_config.json"])]
    assert tomllib.loads(report.models_toml.read_text()) == {"preset": "sd15-lcm", "components": {
        "base": "base", "motion_adapter": "motion_adapter", "controlnet": "controlnet",
        "lora": "lora/AnimateLCM_sd15_t2v_lora.safetensors", "lora_scale": 0.8, "depth_model": "depth_model"}}
    marker = json.loads((out / "base" / MARKER).read_text())
    assert marker["request"]["repo_id"] == SD15 and "unet/diffusion_pytorch_model.safetensors" in marker["files"]

    # the file, read back, names the fetched folders: offline, nothing refers to the hub any more
    resolved = ModelSpecification(config_file=report.models_toml).resolve()
    assert resolved.preset == "sd15-lcm" and resolved.depth_model == str(out / "depth_model")
    assert {name: (s.kind, s.location, s.subfolder) for name, s in resolved.sources.items()} == {
        **{part: ("local", str(out / "base"), part) for part in ("tokenizer", "text_encoder", "vae", "unet")},
        "motion_adapter": ("local", str(out / "motion_adapter"), None),
        "controlnet": ("local", str(out / "controlnet"), None)}
    assert (resolved.lora.kind, resolved.lora.location, resolved.lora_scale) == (
        "file", str(out / "lora" / "AnimateLCM_sd15_t2v_lora.safetensors"), 0.8)

    # a rerun fetches nothing; an interrupted component (no marker) is fetched again, alone
    hub.calls.clear()
    assert quiet_fetch(specification, out).fetched == [] and hub.calls == []
    (out / "motion_adapter" / MARKER).unlink()
    again = quiet_fetch(specification, out)
    assert again.fetched == ["motion_adapter"] and [call[:2] for call in hub.calls] == [
        ("snapshot", "wangfuyun/AnimateLCM")]


def test_a_broken_download_leaves_no_marker_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "models"
    FakeHub(fail_after=3).install(monkeypatch)
    result = CliRunner().invoke(fetch_models_command, ["sd15", "--out", str(out), "-q"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot fetch base from {SD15}: connection reset by peer")
    assert "rerun fetch-models to resume" in result.stderr
    assert (out / "base" / "tokenizer").is_dir() and not (out / "base" / MARKER).exists()
    assert not (out / "models.toml").exists()
    hub = FakeHub().install(monkeypatch)
    result = CliRunner().invoke(fetch_models_command, ["sd15", "--out", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [call[1] for call in hub.calls] == [SD15, "guoyww/animatediff-motion-adapter-v1-5-3",
                                               "lllyasviel/control_v11f1p_sd15_depth", "Intel/dpt-hybrid-midas"]
    assert hub.calls[-1][2] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    # the structure stage's named depth model is fetched too: the preset works offline, depth included
    assert tomllib.loads((out / "models.toml").read_text())["components"]["depth_model"] == "depth_model"


def test_a_repository_with_pickles_only_is_refused(tmp_path, monkeypatch):
    FakeHub().install(monkeypatch)
    result = CliRunner().invoke(fetch_models_command, ["sd15", "--controlnet", "org/pickles-only", "--out",
                                                       str(tmp_path / "models"), "-q"])
    assert result.exit_code == 2
    assert "error: 'org/pickles-only' holds no .safetensors weights in '/' (only diffusion_pytorch_model.bin)" \
        in result.stderr


def test_an_uncached_hub_file_offline_says_how_to_fetch_it(monkeypatch, tmp_path):
    from storyreel.models import loading
    from storyreel.models.specification import ComponentSource

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    adapter = ComponentSource("hub_file", "ByteDance/AnimateDiff-Lightning",
                              filename="animatediff_lightning_4step_diffusers.safetensors")
    with pytest.raises(loading.RenderModelLoadError) as raised:
        loading.weights_file("motion_adapter", adapter)
    message = str(raised.value)
    assert "cannot load the render's motion_adapter (MotionAdapter) from 'ByteDance/AnimateDiff-Lightning' (file " \
           "'animatediff_lightning_4step_diffusers.safetensors')" in message
    assert "offline" in message and "fetch-models PRESET --out DIR" in message
    assert '[components] motion_adapter = "DIR/animatediff_lightning_4step_diffusers.safetensors"' in message


def test_with_fetches_the_models_stories_add_and_models_toml_names_them(tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    out = tmp_path / "models"
    report = fetch.fetch_models(ModelSpecification(preset="tiny"), out, progress=False, echo=lambda line: None,
                                extras=("sparsectrl", "ip-adapter-plus", "i2vgen-xl"))
    calls = {call[1]: call[2] for call in hub.calls}
    assert calls["guoyww/animatediff-sparsectrl-rgb"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert calls["h94/IP-Adapter"] == ["models/image_encoder/config.json", "models/image_encoder/model.safetensors",
                                       "models/ip-adapter-plus_sd15.safetensors"]
    assert "model_index.json" in calls["ali-vilab/i2vgen-xl"]
    assert "unet/diffusion_pytorch_model.safetensors" in calls["ali-vilab/i2vgen-xl"]
    assert not [name for names in calls.values() for name in names if name.endswith((".bin", ".pth", ".ckpt"))]
    components = tomllib.loads(report.models_toml.read_text())["components"]
    assert (components["sparsectrl"], components["ip_adapter"], components["i2vgen"]) == (
        "sparsectrl", "ip_adapter_plus", "i2vgen")
    resolved = ModelSpecification(config_file=report.models_toml).resolve()
    assert resolved.extras == {"sparsectrl": str(out / "sparsectrl"), "i2vgen": str(out / "i2vgen"),
                               "ip_adapter": str(out / "ip_adapter_plus")}
    assert any("--ip-adapter-variant plus" in note for note in report.notes)


def test_hub_cache_fetches_exactly_the_files_commands_look_for(tmp_path, monkeypatch):
    """fetch-models --hub-cache: into the hub cache (no --out), the chosen files of each repository, skipping
    what is cached; afterwards storyreel.hub_access finds every model."""
    from huggingface_hub import constants

    from storyreel import hub_access
    from storyreel.models.hub_models import extra_models, preset_models

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub = FakeHub().install(monkeypatch)

    def snapshot_into_cache(repo_id, revision=None, allow_patterns=None, local_dir=None):
        assert local_dir is None  # the hub cache, not a folder
        hub.calls.append(("snapshot", repo_id, sorted(allow_patterns)))
        root = cache / ("models--" + repo_id.replace("/", "--"))
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / (revision or "main")).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / (revision or "main")).write_text("c" * 40)
        for name in allow_patterns:
            target = root / "snapshots" / ("c" * 40) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(name)
        return str(root / "snapshots" / ("c" * 40))

    monkeypatch.setattr(fetch, "snapshot_download", snapshot_into_cache)
    models = preset_models("sd15-lcm") + extra_models(["sparsectrl"])
    models = [m for m in models if not m.repo_id.startswith("laion/")]  # (no open_clip repository in the fake hub)
    assert fetch.fill_hub_cache(models, progress=False, echo=lambda line: None)
    calls = {call[1]: call[2] for call in hub.calls}
    assert calls["lllyasviel/control_v11f1p_sd15_depth"] == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert "unet/diffusion_pytorch_model.safetensors" in calls[SD15]
    assert "unet/diffusion_pytorch_model.non_ema.safetensors" not in calls[SD15]  # one variant, never every match
    assert calls["Intel/dpt-hybrid-midas"] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert all(hub_access.is_cached(model) for model in models)
    hub.calls.clear()
    assert fetch.fill_hub_cache(models, progress=False, echo=lambda line: None) == [] and hub.calls == []
