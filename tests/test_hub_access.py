"""First contact offline: the local cache first, the hub asked once, every missing model named at once, within
15 s; hub downloads are safetensors only (storyreel.hub_access, storyreel.models.hub_models, the commands)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storyreel import hub_access
from storyreel.hub_access import HubModel

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
OFFLINE_BUDGET_S = 15.0


# -- a fake hub cache and hubs that do not answer ---------------------------------------------------------
def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes | str], revision: str = "main",
               commit: str = COMMIT) -> Path:
    """``repo_id`` at ``revision`` in a hub cache laid out as huggingface_hub writes it; returns the snapshot."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    ref = root / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    snapshot = root / "snapshots" / commit
    for name, content in files.items():
        path = snapshot / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


class SilentHub:
    """A server that accepts connections and never answers: the hub as a dead network shows it (the request
    hangs until its timeout). Counts the connections made to it."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.connections = 0
        self._held = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(connection)

    def close(self):
        self.socket.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def silent_hub():
    hub = SilentHub()
    yield hub
    hub.close()


@pytest.fixture
def answering_hub():
    """A hub that answers every request with 404 (reachable, whatever it holds)."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.fixture
def online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (conftest); these tests need it unset, as on a user's machine."""
    from huggingface_hub import constants

    for name in hub_access.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def point_at(monkeypatch, endpoint: str, cache: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


# -- the cache ---------------------------------------------------------------------------------------------
def test_the_cache_is_read_as_the_hub_client_writes_it(tmp_path):
    cache_repo(tmp_path, "org/model", {"config.json": "{}", "unet/config.json": "{}",
                                       "unet/diffusion_pytorch_model.safetensors": b"x" * 10})
    cache_repo(tmp_path, "org/depth", {"config.json": "{}"}, revision="refs/pr/5", commit="f" * 40)
    model = HubModel("org/model", "test", None, ("unet/config.json", "unet/diffusion_pytorch_model*.safetensors"))
    assert hub_access.is_cached(model, tmp_path)
    assert hub_access.cached_size(model, tmp_path) == 2 + 2 + 10
    assert hub_access.missing_files(HubModel("org/model", "t", None, ("vae/config.json", "unet/config.json")),
                                    tmp_path) == ["vae/config.json"]
    assert hub_access.cached_snapshot(HubModel("org/depth", "t", "refs/pr/5"), tmp_path).name == "f" * 40
    assert hub_access.cached_snapshot(HubModel("org/depth", "t", None), tmp_path) is None  # main never fetched
    assert hub_access.cached_snapshot(HubModel("org/model", "t", COMMIT), tmp_path) is not None
    assert not hub_access.is_cached(HubModel("org/absent", "t"), tmp_path)


def test_an_interrupted_download_does_not_count_as_cached(tmp_path):
    snapshot = cache_repo(tmp_path, "org/model", {"config.json": "{}"})
    (snapshot / "model.safetensors").symlink_to(tmp_path / "blobs-that-never-arrived")
    assert hub_access.missing_files(HubModel("org/model", "t"), tmp_path) == ["*.safetensors"]


def test_models_of_one_repository_are_named_once():
    merged = hub_access.merge([HubModel("a/b", "render unet", None, ("unet/config.json",)),
                               HubModel("c/d", "depth"), HubModel("a/b", "render vae", None, ("vae/config.json",))])
    assert [(m.repo_id, m.what, m.required) for m in merged] == [
        ("a/b", "render unet; render vae", ("unet/config.json", "vae/config.json")),
        ("c/d", "depth", hub_access.DEFAULT_REQUIRED)]
    again = hub_access.parse_fetch_argument(merged[0].fetch_argument())
    assert (again.repo_id, again.revision, again.required) == ("a/b", None, merged[0].required)
    assert hub_access.parse_fetch_argument("Intel/dpt-hybrid-midas@refs/pr/5").revision == "refs/pr/5"


# -- the probe ---------------------------------------------------------------------------------------------
def test_a_hub_that_does_not_answer_is_given_up_after_one_timeout(online, monkeypatch, tmp_path, silent_hub):
    point_at(monkeypatch, silent_hub.url, tmp_path)
    began = time.monotonic()
    assert hub_access.hub_reachable(timeout=1.0) is False
    assert time.monotonic() - began < 2.5
    assert "timed out" in hub_access.probe_problem() or "no answer" in hub_access.probe_problem()
    assert hub_access.hub_reachable(timeout=1.0) is False  # asked once per process
    assert silent_hub.connections == 1


def test_a_hub_that_answers_any_status_is_reachable(online, monkeypatch, tmp_path, answering_hub):
    url, seen = answering_hub
    point_at(monkeypatch, url, tmp_path)
    assert hub_access.hub_reachable(timeout=2.0) is True
    assert seen == ["/api/models"]


def test_offline_asks_nothing(monkeypatch, tmp_path, silent_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    point_at(monkeypatch, silent_hub.url, tmp_path)
    assert hub_access.hub_reachable() is False
    time.sleep(0.2)
    assert silent_hub.connections == 0


# -- ensure_available ------------------------------------------------------------------------------------------
def test_everything_cached_goes_offline_without_a_request(online, monkeypatch, tmp_path, silent_hub):
    from huggingface_hub import constants

    point_at(monkeypatch, silent_hub.url, tmp_path)
    cache_repo(tmp_path, "org/model", {"config.json": "{}", "model.safetensors": b"0"})
    assert hub_access.ensure_available([HubModel("org/model", "test")]) == []
    assert hub_access.offline_requested() and constants.HF_HUB_OFFLINE is True
    time.sleep(0.2)
    assert silent_hub.connections == 0


def test_offline_for_a_cached_model_is_undone_when_a_later_model_is_missing(online, monkeypatch, tmp_path,
                                                                            answering_hub):
    url, seen = answering_hub
    point_at(monkeypatch, url, tmp_path)
    cache_repo(tmp_path, "org/cached", {"config.json": "{}", "model.safetensors": b"0"})
    hub_access.ensure_available([HubModel("org/cached", "first stage")])
    assert hub_access.offline_requested()
    missing = hub_access.ensure_available([HubModel("org/later", "second stage")])
    assert [model.repo_id for model in missing] == ["org/later"]  # downloaded as usual, not refused as offline
    assert not hub_access.offline_requested() and seen == ["/api/models"]


def test_every_missing_model_is_named_at_once_with_the_command_that_fetches_them(online, monkeypatch, tmp_path,
                                                                                    silent_hub):
    point_at(monkeypatch, silent_hub.url, tmp_path)
    monkeypatch.setattr(hub_access, "PROBE_TIMEOUT_SECONDS", 1.0)
    cache_repo(tmp_path, "org/cached", {"config.json": "{}", "model.safetensors": b"0"})
    wanted = [HubModel("org/cached", "cached"), HubModel("org/one", "render unet", None, ("unet/config.json",)),
              HubModel("org/two", "depth model", "refs/pr/5")]
    began = time.monotonic()
    with pytest.raises(hub_access.HubUnavailableError) as raised:
        hub_access.ensure_available(wanted)
    assert time.monotonic() - began < 3
    message = str(raised.value)
    assert "2 models are not in the local hub cache" in message
    assert "org/one (render unet)" in message and "org/two@refs/pr/5 (depth model)" in message
    assert "org/cached" not in message
    assert "fetch-models --hub-cache 'org/one:unet/config.json' 'org/two@refs/pr/5:config.json,*.safetensors'" \
        in message
    assert raised.value.exit_code == 2


def test_offline_mode_names_the_missing_models_without_asking(monkeypatch, tmp_path, silent_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    point_at(monkeypatch, silent_hub.url, tmp_path)
    with pytest.raises(hub_access.HubUnavailableError, match="offline mode is on .*org/one"):
        hub_access.ensure_available([HubModel("org/one", "x")])
    assert silent_hub.connections == 0


# -- what each model value needs ---------------------------------------------------------------------------------
def test_presets_need_the_safetensors_of_their_repositories():
    from storyreel.models.hub_models import preset_models

    sd15 = {m.repo_id: m for m in hub_access.merge(preset_models("sd15"))}
    assert set(sd15) == {"stable-diffusion-v1-5/stable-diffusion-v1-5", "guoyww/animatediff-motion-adapter-v1-5-3",
                         "lllyasviel/control_v11f1p_sd15_depth", "Intel/dpt-hybrid-midas",
                         "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"}
    assert sd15["Intel/dpt-hybrid-midas"].revision == "refs/pr/5"
    assert sd15["laion/CLIP-ViT-B-32-laion2B-s34B-b79K"].required == ("open_clip_model.safetensors",)
    assert "unet/diffusion_pytorch_model*.safetensors" in sd15["stable-diffusion-v1-5/stable-diffusion-v1-5"].required
    for preset in ("sd15", "sd15-lightning", "sd15-lcm"):
        for model in preset_models(preset):
            assert not any(pattern.endswith(PICKLES) for pattern in model.required), model
            assert any(pattern.endswith(".safetensors") for pattern in model.required) or \
                all(p.endswith((".json", ".txt")) for p in model.required), model
    assert preset_models("tiny") == [] and preset_models("toy") == [] and preset_models("sd15-random") == []


def test_an_open_clip_tag_without_hub_weights_is_refused_naming_it(monkeypatch):
    import open_clip

    from storyreel.models import hub_models

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"url": "https://example.org/w.pt"})
    with pytest.raises(hub_models.NoSafetensorsError, match="'ViT-B-32:someone' has no weights on the hub.*pickle"):
        hub_models.clip_models("ViT-B-32:someone")


# -- no pickle is asked for -------------------------------------------------------------------------------------
def test_no_pickle_is_requested_for_any_preset_or_model(monkeypatch):
    """Every hub download call of every loader is intercepted (each one fails, as a missing file does, so the
    loaders' fallbacks run): only configs, tokenizer files and safetensors are asked for."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from evaluation.metric_models import METRIC_PRESETS, load_dino, load_video_classifier
    from render.i2vgen_animator import I2VGEN_XL, load_i2vgen
    from render.ip_adapter import IPAdapterSource, load_ip_adapter
    from render.sparse_control import SPARSECTRL_RGB, load_sparse_controlnet
    from retrieval.clip_models import load_clip_model
    from storyreel.errors import ModelLoadError
    from storyreel.models import presets
    from storyreel.models.loading import load_render_components
    from structure.depth_models import load_depth_model

    requested = []

    def fake_file(repo_id, filename, *args, subfolder=None, **kwargs):
        requested.append((repo_id, f"{subfolder}/{filename}" if subfolder else filename))
        raise EntryNotFoundError(f"{repo_id}: {filename} is not here")

    def fake_snapshot(repo_id, *args, allow_patterns=None, **kwargs):
        requested.extend((repo_id, pattern) for pattern in (allow_patterns or ["*"]))
        raise EntryNotFoundError(f"{repo_id}: nothing here")

    replacements = {id(huggingface_hub.hf_hub_download): fake_file,
                    id(huggingface_hub.snapshot_download): fake_snapshot}
    originals = {id(fake_file): huggingface_hub.hf_hub_download, id(fake_snapshot): huggingface_hub.snapshot_download}
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if id(value) in replacements and callable(value):
                monkeypatch.setattr(module, name, replacements[id(value)])
    # huggingface_hub loads its attributes lazily: the package's own names are set here
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    # the hub "answers" and nothing is cached, so every loader goes on to download (the libraries themselves stay
    # offline, as the suite runs: nothing reaches a network)
    monkeypatch.setattr(hub_access, "offline_requested", lambda: False)
    monkeypatch.setattr(hub_access, "is_cached", lambda model, cache=None: False)
    monkeypatch.setattr(hub_access, "hub_reachable", lambda *args, **kwargs: True)

    attempts = []
    for preset in ("sd15", "sd15-lightning", "sd15-lcm"):
        attempts += [lambda p=preset: load_render_components(p, device="cpu"),
                     lambda p=preset: load_depth_model(p, device="cpu", progress=False),
                     lambda p=preset: load_clip_model(presets.PRESETS[p].clip_model, device="cpu")]
    real = METRIC_PRESETS["real"]
    attempts += [lambda: load_clip_model(real.clip, device="cpu"), lambda: load_dino(real.dino, "cpu"),
                 lambda: load_video_classifier(real.action, "cpu"),
                 lambda: load_ip_adapter(IPAdapterSource("plus")), lambda: load_sparse_controlnet(SPARSECTRL_RGB),
                 lambda: load_i2vgen(I2VGEN_XL)]
    try:
        for attempt in attempts:
            with pytest.raises(ModelLoadError):
                attempt()
    finally:  # a module first imported during the attempts took the fake by name: give it the original back
        for module in list(sys.modules.values()):
            for name, value in list(getattr(module, "__dict__", {}).items()):
                if id(value) in originals and module is not huggingface_hub:
                    setattr(module, name, originals[id(value)])
    assert requested, "no download call was intercepted"
    pickles = [(repo, name) for repo, name in requested if name.lower().endswith(PICKLES)]
    assert not pickles
    asked = {name for _, name in requested}
    assert "open_clip_model.safetensors" in asked  # the CLIP weights are asked for by their safetensors file


# -- the commands, offline ----------------------------------------------------------------------------------------
def run_offline(args, cache: Path, endpoint: str, cwd: Path, extra_env: dict | None = None):
    env = {key: value for key, value in os.environ.items() if key not in hub_access.OFFLINE_VARIABLES}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=endpoint, OMP_NUM_THREADS="1", **(extra_env or {}))
    began = time.monotonic()
    result = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, env=env,
                            cwd=cwd, timeout=120)
    return result, time.monotonic() - began


SD15_REPOS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "guoyww/animatediff-motion-adapter-v1-5-3",
              "lllyasviel/control_v11f1p_sd15_depth", "Intel/dpt-hybrid-midas@refs/pr/5")


def offline_cases(real_clips: Path, tiny_index: Path, references: Path, out: Path):
    clip = real_clips / "v_SoccerJuggling_g23_c01.avi"
    clip_repo = ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K",)
    return {
        "build-index": (["build-index", real_clips, "--out", out / "idx", "--models", "sd15"], clip_repo),
        "search-clips": (["search-clips", tiny_index, "a person", "--models", "ViT-B-32:laion2b_s34b_b79k"],
                         None),  # the index was built with another model: refused before any model is needed
        "extract-depth": (["extract-depth", clip, "--out", out / "d.npz", "--models", "dpt-hybrid"],
                          ("Intel/dpt-hybrid-midas@refs/pr/5",)),
        "render-story": (["render-story", REPO / "data/examples/fable.json", "--index", tiny_index, "--out",
                          out / "story"], SD15_REPOS),
        "train-character": (["train-character", "--images", references, "--name", "hare", "--token", "<hare>",
                             "--class-word", "hare", "--resolution", "256", "--out", out / "hare.safetensors"],
                            SD15_REPOS),
        "fetch-models": (["fetch-models", "sd15", "--out", out / "models"], SD15_REPOS[:3]),
        "fetch-models --hub-cache": (["fetch-models", "sd15", "--hub-cache"], SD15_REPOS + clip_repo),
    }


def test_each_command_offline_fails_in_seconds_naming_every_missing_model(tmp_path, real_clips, tiny_index,
                                                                          reference_images, silent_hub):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    for name, (args, repos) in offline_cases(real_clips, tiny_index, reference_images, tmp_path).items():
        result, seconds = run_offline(args, cache, silent_hub.url, tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert seconds < OFFLINE_BUDGET_S, (name, seconds)
        # one error line, last (a warning about the input may come before it), and no retry noise
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (name, result.stderr[-2000:])
        assert not [line for line in lines if "Retrying" in line or "Retry " in line], (name, lines)
        if repos is None:
            continue
        assert "cannot be reached" in errors[0], (name, errors[0])
        for repo in repos:
            assert repo in errors[0], (name, repo, errors[0])
        if name not in ("fetch-models", "fetch-models --hub-cache"):
            assert "fetch-models --hub-cache" in errors[0]
    assert not (tmp_path / "story").exists() and not (tmp_path / "hare.safetensors").exists()
    assert silent_hub.connections <= len(offline_cases(real_clips, tiny_index, reference_images, tmp_path))


def test_offline_flag_and_variable_need_no_probe(tmp_path, real_clips, silent_hub):
    clip = real_clips / "v_SoccerJuggling_g23_c01.avi"
    for args, extra in ((["--offline"], {}), ([], {"HF_HUB_OFFLINE": "1"})):
        result, seconds = run_offline(["extract-depth", clip, "--out", tmp_path / "d.npz", "--models", "dpt-hybrid",
                                       *args], tmp_path / "cache", silent_hub.url, tmp_path, extra)
        assert result.returncode == 2 and "offline mode is on" in result.stderr, result.stderr
        assert "Intel/dpt-hybrid-midas@refs/pr/5" in result.stderr and seconds < OFFLINE_BUDGET_S
    time.sleep(0.2)
    assert silent_hub.connections == 0


def test_cached_models_run_without_touching_the_network(tmp_path, real_clips, synthetic_library, silent_hub):
    """A depth model and an open_clip model in the local hub cache: extract-depth and build-index run with the
    hub unreachable, and make no connection to it; a pickle beside the safetensors file is never read."""
    from safetensors.torch import save_file

    from retrieval.clip_models import TINY_CONFIG, build_small_clip
    from structure.depth_models import build_tiny_model

    cache = tmp_path / "cache"
    depth = cache_repo(cache, "Intel/dpt-hybrid-midas", {}, revision="refs/pr/5", commit="d" * 40)
    model, processor = build_tiny_model()
    model.save_pretrained(depth)
    processor.save_pretrained(depth)
    (depth / "pytorch_model.bin").write_bytes(b"not a pickle: loading this would fail")
    clip = cache_repo(cache, "test-org/tiny-clip", {
        "open_clip_config.json": json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}),
        "open_clip_pytorch_model.bin": b"not a pickle either"})
    clip_model, _ = build_small_clip(TINY_CONFIG, 7)
    state = {key: value.contiguous() for key, value in clip_model.state_dict().items()}
    save_file(state, str(clip / "open_clip_model.safetensors"))

    video = real_clips / "v_SoccerJuggling_g23_c01.avi"
    result, seconds = run_offline(["extract-depth", video, "--end", "1", "--frames", "4", "--size", "64x64", "--out",
                                   tmp_path / "d.npz", "--models", "dpt-hybrid", "--no-cache", "-q"],
                                  cache, silent_hub.url, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "d.npz").is_file()
    result, seconds = run_offline(["build-index", synthetic_library / "running", "--out", tmp_path / "idx",
                                   "--models", "hf-hub:test-org/tiny-clip", "--workers", "1", "-q"],
                                  cache, silent_hub.url, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["model"]["spec"] == "hf-hub:test-org/tiny-clip"
    time.sleep(0.2)
    assert silent_hub.connections == 0


def test_a_cached_render_component_loads_without_touching_the_network(online, monkeypatch, tmp_path, silent_hub,
                                                                      components):
    """A ControlNet in the local hub cache under a hub id: the render loads it from there, the hub never asked."""
    from storyreel.models import architectures
    from storyreel.models.loading import load_render_components

    point_at(monkeypatch, silent_hub.url, tmp_path)
    snapshot = cache_repo(tmp_path, "test-org/tiny-controlnet", {})
    architectures.build_tiny_components(merge=False)["controlnet"].save_pretrained(snapshot)
    (snapshot / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle: reading it would fail")
    loaded = load_render_components("tiny", overrides={"controlnet": "test-org/tiny-controlnet"}, device="cpu")
    assert loaded.weights_fingerprint() == components.weights_fingerprint()
    assert hub_access.offline_requested()  # everything was cached: no request, not even for updates
    time.sleep(0.2)
    assert silent_hub.connections == 0
