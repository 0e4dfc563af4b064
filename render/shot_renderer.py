"""One shot, from its chosen footage to its files: depth → prompt → structure-guided sampling → mp4, gif, preview.

:class:`ShotRenderer` loads the models on first use (a rerun with nothing to render loads nothing) and renders
shot after shot; it runs in the story driver's process (``--engine local``) or in a Ray actor
(:mod:`render.ray_engine`), so what it needs besides the shot is a picklable :class:`RenderSettings`. It returns
the shot's :class:`render.shot_sidecar.ShotSidecar`; the driver adds its retrieval time and writes it.

**Deterministic rendering** (``RenderSettings.deterministic``, ``render-story --deterministic``):
:func:`deterministic_torch` fixes what makes the same shot come out differently from one process to the next
(see :mod:`render.story` for the causes found): torch's CPU intra-op threads are set to
:data:`DETERMINISTIC_CPU_THREADS`, ``torch.use_deterministic_algorithms`` is on (warning, not failing, on an op
without a deterministic version), cuDNN is deterministic and not autotuned, and cuBLAS gets a fixed workspace
(``CUBLAS_WORKSPACE_CONFIG``). Depth is cached apart (:meth:`ShotRenderer.depth_cache_folder`), so depth computed
under other settings is never reused. Characters trained on other base weights are refused unless
``RenderSettings.allow_other_base`` (:class:`characters.CharacterSet`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from render.shot_sidecar import CODE_VERSION, CharacterUse, DepthRecord, Segment, ShotSidecar, WorkerRecord, shot_files
from storyreel.atomic_files import atomic_path
from storyreel.models.specification import ModelSpecification

PREVIEW_FRAMES = 3  # retrieved frames (and their depth) kept for the storyboard sheet
# --deterministic: one CPU thread. Float sums split over N threads round differently for each N (the tiny VAE's
# frames differ between 1 and 2 threads), and N follows the environment (OMP_NUM_THREADS, a Ray worker's CPU
# share, a parent that capped torch's threads); with one thread MKL's dynamic thread choice has nothing to vary.
DETERMINISTIC_CPU_THREADS = 1
CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # one of the two values cuBLAS is deterministic with (CUDA docs)


@dataclass(frozen=True)
class RenderSettings:
    """What a shot renderer needs besides the shot (picklable: Ray workers get a copy)."""

    models: ModelSpecification  # what to load (a preset, a TOML file, swapped components)
    depth_model: str
    device: str | None
    cpu_offload: bool
    out: Path
    progress: bool
    characters: tuple[tuple[str, str, str], ...] = ()  # (name, character file, token), loaded once
    deterministic: bool = False  # bit-identical frames run after run (see deterministic_torch)
    allow_other_base: bool = False  # render characters trained on other base weights (with a warning)
    depth_cache: Path | None = None  # the raw depth cache, shared by a sweep's variants (default: out/cache/depth)
    references: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, pictures): characters with IP-Adapter identity
    ip_adapter: tuple[str, str] | None = None  # (variant, location) of the IP-Adapter for them
    sparsectrl: str | None = None  # the SparseCtrl model of shots animated from a keyframe
    i2vgen: str | None = None  # --animator i2vgen-xl: the I2VGen-XL pipeline that animates keyframe shots instead

    def hub_models(self) -> list:
        """The hub repositories (:class:`storyreel.hub_access.HubModel`) these settings load: render components,
        depth model, and the IP-Adapter, SparseCtrl and I2VGen-XL models when the story uses them."""
        from render.i2vgen_animator import hub_models as i2vgen_models
        from render.sparse_control import hub_models as sparsectrl_models
        from storyreel.models.hub_models import depth_models, ip_adapter_model, render_models

        models = render_models(self.models.resolve(), depth=False) + depth_models(self.depth_model)
        if self.references and self.ip_adapter is not None and self.ip_adapter[1] == "hub":
            models.append(ip_adapter_model(self.ip_adapter[0]))
        if self.sparsectrl is not None:
            models += sparsectrl_models(self.sparsectrl)
        if self.i2vgen is not None:
            models += i2vgen_models(self.i2vgen)
        return models


@dataclass
class _Prompts:
    """Step 2's result: the encoded prompt pair, the characters' per-step hook and what the sidecar records."""

    text: str
    cond: object
    uncond: object
    per_step: object | None
    characters: dict[str, CharacterUse]


class ShotRenderer:
    """Renders shots whose segment is chosen; loads the models on first use (a no-op rerun loads nothing)."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings
        self._components = None
        self._depth = None
        self._characters = None
        self._banks = {}  # consistency banks by file (render.consistent_attention.TokenBank)
        self._ip_adapters = None  # render.ip_adapter.ActiveIPAdapters, one slot per character with pictures
        self._sparse = None  # the SparseCtrl model, loaded for the first keyframe shot
        self._i2vgen = None  # the I2VGen-XL pipeline, loaded for the first keyframe shot under --animator i2vgen-xl
        self._reference_embeddings = {}  # name → (render.ip_adapter.ReferenceEmbedding, its file)

    @property
    def components(self):
        return self._components

    def load(self):
        if self._components is None:
            from storyreel.hub_access import ensure_available
            from storyreel.models.loading import load_render_components
            from structure.depth_models import load_depth_model

            s = self.settings
            ensure_available(s.hub_models())  # offline: every missing model named at once, before any loads
            components = load_render_components(s.models, device=s.device)
            if s.cpu_offload:
                components.enable_model_cpu_offload()
            self._depth = load_depth_model(s.depth_model, device=components.device, progress=False)
            if s.characters:
                self._characters = load_characters(components, s.characters, allow_other_base=s.allow_other_base)
            if s.references:
                self._ip_adapters = install_ip_adapters(components, s.ip_adapter, [name for name, _ in s.references])
            self._components = components
        return self._components, self._depth

    def depth_cache_folder(self) -> Path:
        """``out/cache/depth`` (or the shared ``depth_cache``); under ``deterministic``,
        ``out/cache/depth-deterministic/<device type>``: depth computed with other thread counts or on another
        device is never mixed into a deterministic render."""
        cache = self.settings.out / "cache"
        if not self.settings.deterministic:
            return Path(self.settings.depth_cache) if self.settings.depth_cache is not None else cache / "depth"
        return cache / "depth-deterministic" / self._components.device.type

    def render(self, shot, segment: Segment, settings_hash: str, consistency=None, keyframe=None) -> ShotSidecar:
        """Depth of ``segment`` → structure-guided render → the shot's mp4, gif and preview; returns its sidecar.
        ``consistency`` (a :class:`render.story_consistency.ConsistencyUse`): the consistency banks the shot records
        and attends to; ``keyframe`` (a :class:`render.keyframes.KeyframeUse`): the picture the shot is animated
        from (SparseCtrl RGB at frame 0)."""
        from structure.extract import extract_depth

        components, estimator = self.load()
        timings = {}

        # 1. depth of the footage
        t0 = time.perf_counter()
        depth = extract_depth(segment.range, frames=shot.frames, size=shot.size, estimator=estimator,
                              cache=self.depth_cache_folder(), fps=shot.fps, depth_range=shot.depth_range)
        timings["depth"] = time.perf_counter() - t0

        # 2. encode the prompt (compel) and the characters' per-step embeddings
        t0 = time.perf_counter()
        prompts = self._encode_prompts(shot)

        # 3. structure-guided sampling (with consistent self-attention when the shot shares characters, and the
        # IP-Adapters of its characters with reference pictures)
        consistency_record, ip_adapter_record, keyframe_record = {}, {}, {}
        if keyframe is not None and self.settings.i2vgen is not None:  # --animator i2vgen-xl: no depth, no sampler
            frames, controlnet_calls = self._animate_with_i2vgen(shot, keyframe, keyframe_record), 0
        else:
            image_embeds = self._image_embeds(shot, ip_adapter_record)
            sparse = self._keyframe_condition(keyframe, keyframe_record)
            frames, controlnet_calls = self._sample(shot, prompts, depth, consistency, consistency_record,
                                                    image_embeds, sparse=sparse, sparse_record=keyframe_record)
        timings["render"] = time.perf_counter() - t0

        # 4. write preview, gif, mp4
        t0 = time.perf_counter()
        self._write_files(shot, segment, depth, frames)
        timings["write"] = time.perf_counter() - t0

        # 5. the sidecar
        return ShotSidecar(
            settings_hash=settings_hash, code_version=CODE_VERSION, shot=shot.id, safe_id=shot.safe_id,
            query=shot.motion_query, segment=segment, prompt=prompts.text, negative_prompt=shot.negative_prompt,
            prompt_weighting="compel", characters=prompts.characters, seed=shot.seed, tau=shot.tau, steps=shot.steps,
            guidance=shot.guidance, scheduler=shot.scheduler, frames=shot.frames, fps=shot.fps, width=shot.width,
            height=shot.height, controlnet_calls=controlnet_calls,
            depth=DepthRecord(model=self.settings.depth_model, source=depth.source, settings=depth.settings,
                              cache=str(self.depth_cache_folder().resolve())),
            models=components.record(), settings=shot.to_dict(),
            timings_s={k: round(v, 3) for k, v in timings.items()},
            worker=WorkerRecord(host=socket.gethostname(), pid=os.getpid(), device=str(components.device)),
            rendered_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            deterministic=self.settings.deterministic,
            consistency=consistency_record or None,
            ip_adapter=ip_adapter_record or None,
            keyframe=keyframe_record or None,
        )

    def render_keyframes(self, batch: list[tuple], consistency=None) -> list[dict]:
        """The first frames of a batch of shots as pictures (:mod:`render.keyframes`), in one sampler call: each
        shot's depth (computed and cached as for the shot), its first frame guiding the image model. ``batch``:
        ``(shot, segment, settings_hash)`` triples that :func:`render.keyframes.keyframe_batches` put together
        (the same size, steps, guidance, tau, scheduler, eta, and characters at the same scales); ``consistency``
        only for a batch of one. Writes each ``keyframes/<safe_id>.png`` and returns the records their sidecars
        hold, in ``batch``'s order."""
        from PIL import Image

        from render.keyframes import keyframe_files, same_length_groups
        from storyreel.atomic_files import atomic_path
        from structure.extract import extract_depth

        if consistency is not None and len(batch) > 1:
            raise ValueError("consistent self-attention makes keyframes one at a time: a batch of one")
        self.load()
        began = time.perf_counter()
        depths, prompts, image_embeds, ip_records = [], [], [], []
        for shot, segment, _ in batch:
            depths.append(extract_depth(segment.range, frames=shot.frames, size=shot.size, estimator=self._depth,
                                        cache=self.depth_cache_folder(), fps=shot.fps,
                                        depth_range=shot.depth_range))
            prompts.append(self._encode_prompts(shot))
            ip_records.append({})
            image_embeds.append(self._image_embeds(shot, ip_records[-1]))
        consistency_record, frames, controlnet_calls = {}, [None] * len(batch), 0
        for group in same_length_groups(prompts):  # one token length per sampler call (compel: 77, 154, ...)
            pictures, controlnet_calls = self._sample_keyframes(
                [batch[i][0] for i in group], [prompts[i] for i in group], [depths[i] for i in group],
                [image_embeds[i] for i in group], consistency, consistency_record)
            for index, picture in zip(group, pictures):
                frames[index] = picture
        seconds = time.perf_counter() - began
        records = []
        for index, (shot, segment, settings_hash) in enumerate(batch):
            files = keyframe_files(self.settings.out, shot)
            files["png"].parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(files["png"]) as tmp:
                Image.fromarray(frames[index]).save(tmp, format="PNG")
            with atomic_path(files["preview"]) as tmp:  # the footage's first frame and its depth, for the sheet
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, retrieved=self._footage_frames(shot, segment, [0]),
                                        depth=(depths[index].depth[:1] * 255).round().astype(np.uint8))
            records.append({
                "settings_hash": settings_hash, "shot": shot.id, "safe_id": shot.safe_id, "segment": segment,
                "prompt": prompts[index].text, "seed": shot.seed, "tau": shot.tau, "steps": shot.steps,
                "guidance": shot.guidance, "width": shot.width, "height": shot.height,
                "controlnet_calls": controlnet_calls, "characters": prompts[index].characters,
                "consistency": consistency_record or None, "ip_adapter": ip_records[index] or None,
                "seconds": round(seconds / len(batch), 3),
                "batch": {"shots": [s.id for s, _, _ in batch], "seconds": round(seconds, 3)}})
        return records

    def _encode_prompts(self, shot) -> _Prompts:
        """The render prompt (caption and style) and the negative prompt through compel ((word)1.3, word++,
        more than 77 tokens), with the shot's characters switched on."""
        from render.prompt_weighting import WeightedPromptEncoder

        components = self._components
        prompt = with_style(shot.prompt, shot.style)
        components.use("text_encoder")
        encoder = WeightedPromptEncoder(components.tokenizer, components.text_encoder)
        cond, uncond = encoder.encode_pair(prompt, shot.negative_prompt)
        characters, per_step = self._activate_characters(shot, prompt, encoder)
        return _Prompts(text=prompt, cond=cond, uncond=uncond, per_step=per_step, characters=characters)

    def _sample(self, shot, prompts: _Prompts, depth, consistency=None, consistency_record: dict | None = None,
                image_embeds=None, sparse=None, sparse_record: dict | None = None) -> tuple[np.ndarray, int]:
        """The shot's frames (``T x H x W x 3`` uint8) guided by ``depth``, and how many ControlNet calls it took;
        with ``consistency``, under consistent self-attention, its bank saved and what it did put in
        ``consistency_record``."""
        import torch
        from tqdm import tqdm

        from render.sampler import StructureGuidedSampler
        from storyreel.models.schedulers import preset_scheduler
        from structure.conditioning import controlnet_condition

        # the shot's scheduler with the preset's settings (Lightning's trailing timesteps, say)
        scheduler = preset_scheduler(self._components.preset, shot.scheduler)
        sampler = StructureGuidedSampler(self._components, scheduler=scheduler)
        conditioning = controlnet_condition(depth)
        with tqdm(disable=not self.settings.progress, dynamic_ncols=True, total=shot.steps, desc=f"  {shot.id}",
                  unit="step", leave=False) as steps, \
                self._consistency(shot, consistency, consistency_record):
            result = sampler(prompt_embeds=prompts.cond, negative_prompt_embeds=prompts.uncond,
                             prompt_embeds_for_step=prompts.per_step, conditioning=conditioning,
                             num_frames=len(conditioning), height=shot.height, width=shot.width, steps=shot.steps,
                             guidance_scale=shot.guidance, tau=shot.tau, eta=shot.eta, seed=shot.seed,
                             output_type="np", ip_adapter_image_embeds=image_embeds,
                             sparse_controlnet=None if sparse is None else self._sparse, sparse_condition=sparse,
                             callback=lambda i, t, latents: steps.update(1))
        if sparse_record is not None and sparse is not None:
            sparse_record["sparse_calls"] = int(result.sparse_calls)
        frames = np.asarray(result.frames)
        controlnet_calls = int(result.controlnet_calls)
        del result
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return frames, controlnet_calls

    def _sample_keyframes(self, shots: list, prompts: list[_Prompts], depths: list, image_embeds: list,
                          consistency=None, consistency_record: dict | None = None) -> tuple[np.ndarray, int]:
        """The keyframes of ``shots`` (``B x H x W x 3`` uint8) by the image model (:mod:`render.keyframes`), each
        guided by its first depth frame, with its own prompt, per-step character embeddings, IP-Adapter embeddings
        and seed, all in one sampler call (samples of one batch do not see each other); and the ControlNet calls
        it took."""
        import torch
        from tqdm import tqdm

        from render.keyframes import batched_embeds_hook, batched_image_embeds, image_model
        from render.sampler import StructureGuidedSampler
        from storyreel.models.schedulers import preset_scheduler
        from structure.conditioning import controlnet_condition

        first = shots[0]
        scheduler = preset_scheduler(self._components.preset, first.scheduler)
        sampler = StructureGuidedSampler(self._components, scheduler=scheduler)
        conditioning = torch.cat([controlnet_condition(depth)[:1] for depth in depths])
        name = first.id if len(shots) == 1 else f"{len(shots)} keyframes"
        with tqdm(disable=not self.settings.progress, dynamic_ncols=True, total=first.steps, desc=f"  {name}",
                  unit="step", leave=False) as steps, \
                self._consistency(first, consistency, consistency_record), image_model(self._components.unet):
            result = sampler(prompt_embeds=torch.cat([p.cond for p in prompts]),
                             negative_prompt_embeds=torch.cat([p.uncond for p in prompts]),
                             prompt_embeds_for_step=batched_embeds_hook(prompts), conditioning=conditioning,
                             num_frames=1, height=first.height, width=first.width, steps=first.steps,
                             guidance_scale=first.guidance, tau=first.tau, eta=first.eta,
                             seed=first.seed if len(shots) == 1 else [shot.seed for shot in shots],
                             output_type="np", ip_adapter_image_embeds=batched_image_embeds(image_embeds),
                             callback=lambda i, t, latents: steps.update(1))
        frames, controlnet_calls = np.asarray(result.frames), int(result.controlnet_calls)
        del result
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return frames, controlnet_calls

    @contextlib.contextmanager
    def _consistency(self, shot, use, record: dict | None) -> Iterator[None]:
        """Consistent self-attention for the block when ``use`` says so (a
        :class:`render.story_consistency.ConsistencyUse`): the banks it attends to loaded, the bank it records
        written after the block, and both described in ``record``."""
        if use is None:
            yield
            return
        from render.consistent_attention import (
            ConsistencyController,
            TokenBank,
            bank_bytes,
            bank_device_for,
            consistent_self_attention,
            frames_within_budget,
        )

        unet = self._components.unet
        halves = 2 if shot.guidance > 1.0 else 1
        frames, size, recording = use.settings.bank_frames, 0, None
        if use.records is not None:  # a reference shot: as many bank frames as its budget allows
            element_size, factor = unet.dtype.itemsize, self._components.vae_scale_factor
            frames = frames_within_budget(unet, shot.height, shot.width, use.settings, shot.steps, halves,
                                          element_size, factor)
            size = bank_bytes(unet, shot.height, shot.width, use.settings, shot.steps, halves, frames, element_size,
                              factor)
            recording = TokenBank(shot.id, shot.steps, halves, [], use.settings.rate)
        size += sum(Path(path).stat().st_size for _, path, _ in use.attends)
        device = bank_device_for(self._components.device, size)
        banks = [self._bank(path, device) for _, path, _ in use.attends]
        controller = ConsistencyController(use.settings, shot.steps, halves, shot.seed, record=recording,
                                           banks=tuple(banks), bank_frames=frames, bank_device=device,
                                           bank_dtype=unet.dtype)
        with consistent_self_attention(unet, controller):
            yield
        if recording is not None:
            recording.save(use.records)
            self._banks[str(use.records)] = recording
        if record is not None:
            record.update(
                rate=use.settings.rate, until=use.settings.until, steps=sorted(controller.active),
                records=None if recording is None else {"characters": list(use.reference_of),
                                                       "file": str(use.records.relative_to(self.settings.out)),
                                                       **recording.record()},
                attends=[{"characters": list(names), "source_shot": ref,
                          "file": str(Path(path).relative_to(self.settings.out)), "bytes": bank.nbytes}
                         for (ref, path, names), bank in zip(use.attends, banks)],
                key_tokens={layer: list(counts) for layer, counts in sorted(controller.key_tokens.items())})

    def _keyframe_condition(self, keyframe, record: dict):
        """The SparseCtrl condition of a shot animated from ``keyframe`` (its picture at frame 0), the model loaded
        on first use; what it used described in ``record``. None without a keyframe."""
        if keyframe is None:
            return None
        from PIL import Image

        from render.sparse_control import SparseCondition, load_sparse_controlnet
        from storyreel.hashing import file_sha256

        self._sparse_model(load_sparse_controlnet)
        picture = np.array(Image.open(keyframe.path).convert("RGB"))
        path = Path(keyframe.path)
        record.update(image=str(path.relative_to(self.settings.out)) if path.is_relative_to(self.settings.out)
                      else str(path), source=keyframe.source, sha256=file_sha256(path),
                      sparsectrl=self.settings.sparsectrl, frame_indices=[0])
        return SparseCondition.keyframe(picture, frame_index=0)

    def _animate_with_i2vgen(self, shot, keyframe, record: dict) -> np.ndarray:
        """The shot by diffusers' I2VGen-XL from its keyframe (EpicDiffusion's animator; no depth guidance, no
        characters' LoRA or TimeInv: its prompt is the caption without weights, tokens as class words)."""
        from PIL import Image

        from render.i2vgen_animator import animate_keyframe, load_i2vgen
        from render.i2vgen_animator import record as i2vgen_record
        from storyboard.caption_weights import parse_caption
        from storyreel.hashing import file_sha256

        if self._i2vgen is None:
            self._i2vgen = load_i2vgen(self.settings.i2vgen, device=self._components.device,
                                       dtype=self._components.dtype)
        prompt = " ".join(piece for piece, _ in parse_caption(with_style(shot.prompt, shot.style)))
        for character in shot.characters:  # "<hare> rabbit" → "rabbit", "<hare>" alone → "rabbit"
            prompt = re.sub(rf"{re.escape(character.token)}\s+(?={re.escape(character.class_word)}\b)", "", prompt)
            prompt = prompt.replace(character.token, character.class_word)
        picture = np.array(Image.open(keyframe.path).convert("RGB"))
        frames = animate_keyframe(self._i2vgen, picture, prompt, shot.negative_prompt, shot.frames, shot.height,
                                  shot.width, shot.steps, shot.guidance, shot.seed, shot.fps, eta=shot.eta)
        path = Path(keyframe.path)
        record.update(image=str(path.relative_to(self.settings.out)) if path.is_relative_to(self.settings.out)
                      else str(path), source=keyframe.source, sha256=file_sha256(path), prompt=prompt,
                      **i2vgen_record(self.settings.i2vgen, self._i2vgen))
        return frames

    def _sparse_model(self, load_sparse_controlnet):
        if self._sparse is None:
            components = self._components
            self._sparse = load_sparse_controlnet(self.settings.sparsectrl, device=components.device,
                                                  dtype=components.dtype, components=components)
        return self._sparse

    def render_transition(self, before, after, boundary) -> dict:
        """A generated transition (:mod:`render.transitions`): ``boundary.frames`` frames conditioned through
        SparseCtrl on ``before``'s last frame (frame 0) and ``after``'s first (the last frame), the text travelling
        from ``before``'s prompt to ``after``'s (both shots' characters on), with ``after``'s steps, guidance and
        IP-Adapter and no depth; writes its mp4 and returns its sidecar record."""
        from render.sampler import PromptTravel, StructureGuidedSampler
        from render.sparse_control import SparseCondition, load_sparse_controlnet
        from render.transitions import transition_seed
        from storyreel.models.schedulers import preset_scheduler
        from storyreel.video_files import read_video, write_mp4

        self.load()
        began = time.perf_counter()
        first = read_video(shot_files(self.settings.out, before)["mp4"])[0][-1]
        last = read_video(shot_files(self.settings.out, after)["mp4"])[0][0]
        start, end = self._encode_prompts(before), self._encode_prompts(after)
        characters = {**start.characters, **end.characters}
        if self._characters is not None:  # both shots' characters' LoRAs (after's scale where both have one)
            self._characters.activate({name: use.scale for name, use in characters.items()})
        travel = None
        if start.cond.shape == end.cond.shape:  # compel's lengths (77, 154, ...) must agree to blend
            travel = PromptTravel.linear(end.cond, boundary.frames, negative_prompt_embeds=end.uncond,
                                         prompt_embeds_for_step=end.per_step)
        prompts = start if travel is not None else end  # frame 0's text
        ip_adapter_record = {}
        image_embeds = self._image_embeds(after, ip_adapter_record)
        condition = SparseCondition.transition(first, last)
        sampler = StructureGuidedSampler(self._components, scheduler=preset_scheduler(self._components.preset,
                                                                                      after.scheduler))
        seed = transition_seed(before.seed, after.seed)
        result = sampler(prompt_embeds=prompts.cond, negative_prompt_embeds=prompts.uncond,
                         prompt_embeds_for_step=prompts.per_step, conditioning=None, num_frames=boundary.frames,
                         height=after.height, width=after.width, steps=after.steps, guidance_scale=after.guidance,
                         eta=after.eta, seed=seed, output_type="np", ip_adapter_image_embeds=image_embeds,
                         sparse_controlnet=self._sparse_model(load_sparse_controlnet), sparse_condition=condition,
                         prompt_travel=travel)
        boundary.mp4.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(np.asarray(result.frames), boundary.mp4, after.fps)
        return {"settings_hash": boundary.settings_hash, "from": before.id, "to": after.id,
                "frames": boundary.frames, "seconds_long": boundary.seconds,
                "prompt": {"from": prompts.text, "to": end.text, "travel": "linear" if travel is not None else None},
                "characters": sorted(characters), "seed": seed,
                "steps": after.steps, "guidance": after.guidance, "sparsectrl": self.settings.sparsectrl,
                "sparse_calls": int(result.sparse_calls), "frame_indices": [0, boundary.frames - 1],
                "ip_adapter": ip_adapter_record or None, "seconds": round(time.perf_counter() - began, 3)}

    def _image_embeds(self, shot, record: dict):
        """The sampler's IP-Adapter embeddings for ``shot``: each of its characters with pictures at its
        ``ip_adapter_scale``, the others' adapters at 0; what it used described in ``record``."""
        if self._ip_adapters is None:
            return None
        active = self._ip_adapters
        scales = {c.name: c.ip_adapter_scale for c in shot.characters if c.name in active.names}
        active.set_scales(scales)
        embeddings = {name: self._reference_embedding(name) for name in scales}
        if scales:
            adapter = active.adapters[0]
            record.update(source=adapter.source.describe(), variant=adapter.variant, encoder=adapter.encoder_id,
                          characters={name: {"scale": scale, "pictures": embeddings[name][0].num_images,
                                             "embedding": str(embeddings[name][1].relative_to(self.settings.out))}
                                      for name, scale in scales.items()})
        return active.image_embeds({name: pair[0] for name, pair in embeddings.items()},
                                   guidance=shot.guidance > 1.0)

    def _reference_embedding(self, name: str):
        """A character's reference embedding and its file (``out/cache/ip_adapter/<name>.<hash>.safetensors``): read
        when a run before made it from the same pictures with the same adapter, else encoded and written."""
        if name in self._reference_embeddings:
            return self._reference_embeddings[name]
        import hashlib

        from render.ip_adapter import (
            encode_reference_images,
            image_hash,
            load_reference_embedding,
            save_reference_embedding,
        )

        adapter = self._ip_adapters.adapters[self._ip_adapters.names.index(name)]
        pictures = dict(self.settings.references)[name]
        hashes = [image_hash(path) for path in pictures]
        key = hashlib.sha256(json.dumps([adapter.variant, adapter.encoder_fingerprint(), hashes]).encode())
        path = self.settings.out / "cache" / "ip_adapter" / f"{name}.{key.hexdigest()[:16]}.safetensors"
        embedding = load_reference_embedding(path) if path.is_file() else None
        if embedding is None or not embedding.matches(adapter, hashes):
            embedding = encode_reference_images(adapter, list(pictures))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_reference_embedding(path, embedding)
        self._reference_embeddings[name] = (embedding, path)
        return self._reference_embeddings[name]

    def _bank(self, path: Path, device):
        """A consistency bank by file, loaded once per renderer."""
        from render.consistent_attention import TokenBank

        key = str(path)
        if key not in self._banks:
            self._banks[key] = TokenBank.load(path, device=device)
        return self._banks[key]

    def _write_files(self, shot, segment: Segment, depth, frames: np.ndarray) -> None:
        """The preview (a few footage frames and their depth: the same frames of the shot, for the sheet), then the
        gif and the mp4."""
        from storyreel.video_files import write_gif, write_mp4

        files = shot_files(self.settings.out, shot)
        picks = np.linspace(0, shot.frames - 1, PREVIEW_FRAMES).round().astype(int)
        retrieved = self._footage_frames(shot, segment, picks)
        with atomic_path(files["preview"]) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, retrieved=retrieved,
                                    depth=(depth.depth[picks] * 255).round().astype(np.uint8))
        write_gif(frames, files["gif"], shot.fps)
        write_mp4(frames, files["mp4"], shot.fps)

    @staticmethod
    def _footage_frames(shot, segment: Segment, picks) -> np.ndarray:
        """The footage's frames at the shot's frame indices ``picks``, framed like the render."""
        from retrieval.clip_reader import read_frames_at
        from structure.extract import resolve_source
        from structure.framing import frame_image

        footage = resolve_source(segment.range)
        times = footage.sample_times(shot.frames)
        return np.stack([frame_image(frame, shot.size)
                         for frame in read_frames_at(footage.path, [times[i] for i in picks])])

    def _activate_characters(self, shot, prompt: str, encoder) -> tuple[dict[str, CharacterUse], object]:
        """Turn on the LoRA of each trained character of the shot (at its storyboard scale, the others off)
        and make the per-step hook that embeds their tokens with the TimeInv row of each timestep."""
        if self._characters is None:
            return {}, None
        from characters import per_step_embeddings

        scales = {c.name: c.scale for c in shot.characters if c.name in self._characters}
        self._characters.activate(scales)
        in_prompt = self._characters.characters_in(prompt)
        record = {name: CharacterUse(scale=scale, token=self._characters[name].token, in_prompt=name in in_prompt,
                                     base_weights=self._characters.base_weights_match(name))
                  for name, scale in scales.items()}
        if not in_prompt and not self._characters.characters_in(shot.negative_prompt):
            return record, None
        hook = per_step_embeddings(self._characters, None, prompt, shot.negative_prompt,
                                   encode_pair=encoder.encode_pair)
        return record, hook


def with_style(prompt: str, style: str) -> str:
    """The render prompt: the caption, then the story's style unless the caption already has it (planned
    captions end with it; adding it twice would weight it twice)."""
    if not style or style.strip().lower() in prompt.lower():
        return prompt
    return f"{prompt}, {style}"


def install_ip_adapters(components, source: tuple[str, str], names: list[str]):
    """One IP-Adapter slot per character with reference pictures (the same weights in each), installed on the
    components for the renderer's life (the components are the renderer's own)."""
    from render import ip_adapter

    variant, location = source
    adapter = ip_adapter.load_ip_adapter(ip_adapter.IPAdapterSource(variant, location), unet=components.unet,
                                         device=components.device, dtype=components.dtype)
    return ip_adapter.install_ip_adapters(components, [adapter] * len(names), names)


def load_characters(components, characters: tuple[tuple[str, str, str], ...], allow_other_base: bool = False):
    """A :class:`characters.CharacterSet` on ``components`` with each ``(name, file, token)`` loaded once: its
    token registered and its LoRA a named adapter. A file made for another base model is refused here, and so
    is one trained on other base weights unless ``allow_other_base``."""
    from characters import CharacterSet, load_character
    from storyreel.models.loading import base_model_record

    character_set = CharacterSet(components, base_model=base_model_record(components),
                                 allow_other_base=allow_other_base)
    for name, path, token in characters:
        character_set.add(load_character(path), name=name, token=token)
    return character_set


# -- deterministic rendering ----------------------------------------------------------------------------------
def deterministic_record() -> dict:
    """What ``report.json`` records of a ``--deterministic`` run: the settings :func:`deterministic_torch` uses."""
    return {"cpu_threads": DETERMINISTIC_CPU_THREADS, "torch_deterministic_algorithms": True,
            "cudnn_deterministic": True, "cudnn_benchmark": False, "cublas_workspace_config": CUBLAS_WORKSPACE_CONFIG}


def enable_deterministic_torch() -> Callable[[], None]:
    """Put torch in deterministic mode for this process (see the module docstring); returns the function that
    puts back the settings it found."""
    import torch

    cudnn = torch.backends.cudnn
    found = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.deterministic, cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG  # read when torch makes its cuBLAS workspace
    torch.set_num_threads(DETERMINISTIC_CPU_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False

    def restore() -> None:
        threads, algorithms, warn_only, cudnn_deterministic, cudnn_benchmark, workspace = found
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        cudnn.deterministic, cudnn.benchmark = cudnn_deterministic, cudnn_benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace

    return restore


@contextlib.contextmanager
def deterministic_torch(enabled: bool = True) -> Iterator[None]:
    """Deterministic torch inside the block (:func:`enable_deterministic_torch`), the settings found restored
    after it; ``enabled=False`` changes nothing."""
    if not enabled:
        yield
        return
    restore = enable_deterministic_torch()
    try:
        yield
    finally:
        restore()
