"""Training a character: a TimeInv table and a LoRA, jointly, on pseudo-videos of its reference images.

One training step (batch ``B``, ``L`` frames):

1. per video, from a generator seeded by ``(seed, step)`` alone: a reference image and an augmentation
   (:mod:`characters.pseudo_video`: random crop / scale / mirror, the still repeated into ``L`` frames,
   its depth from the structure stage), or, with probability ``reg_ratio`` when regularisation clips are
   given, a real clip of the class word (:mod:`characters.regularisation`); a prompt (``"a video of
   <token> <class word>"`` and a few other templates; ``"a <class word>"`` for real clips);
2. VAE latents ``B x 4 x L x h x w`` (``latent_dist`` sampled per frame, times the scaling factor), a
   timestep ``t`` uniform in ``[0, T)`` and Gaussian noise; noisy latents from a DDPM scheduler built
   from the components' scheduler configuration (the render's betas);
3. the prompt encoded with the token's table row for ``t`` (the
   :class:`~characters.character_set.CharacterSet` hook, differentiable), repeated per frame; the depth
   ControlNet on the ``B * L`` frames; the motion UNet with the ControlNet's residuals, its spatial
   attention carrying the LoRA (with ``depth_tau``, a video whose timestep a render with that tau denoises
   without depth gets no ControlNet residuals: :func:`depth_conditioned`);
4. MSE between the prediction and the noise (``epsilon``) or the velocity (``v_prediction``); AdamW with
   one learning rate for the table (no weight decay: a row that never sees a gradient keeps its initial
   value) and one for the LoRA; gradient clipping.

TimeInv coverage: the trainer counts the updates of each table row (``row_updates``, kept in checkpoints).
One timestep per video leaves about ``e^-(steps * batch / buckets)`` of the rows untrained (37% at the
defaults), so the character file's table is the trained table with every untrained row derived from its
trained neighbours (:func:`characters.timeinv.fill_untrained_rows`: interpolation in timestep); the
training itself, and the table it optimises, stay the paper's one row per timestep (``buckets`` = None or
1000). The counts go into the file's ``training`` record as ``timeinv_coverage``. Sharing rows instead
(``buckets``, say 50 for 1000 steps) trains every row about ``steps * batch / buckets`` times.

Everything else (text encoder, VAE, ControlNet, the UNet's own weights and its motion modules) is frozen.
Because every random draw of step ``k`` comes from a generator seeded by ``(seed, k)``, a run resumed
from a checkpoint (table, LoRA, optimizer state, step) continues exactly as an uninterrupted one.
Checkpoints are a safetensors file (``checkpoint-<step>.safetensors``) and ``checkpoint.json`` (step,
settings, data, optimizer scalars, the file's SHA-256), each written atomically, the JSON last.

The character file's ``base_model`` record is the caller's (``storyreel.models.loading.base_model_record``:
preset, component sources, configurations) plus ``weights``: the fingerprint of the base weights trained on
(:func:`characters.character_set.base_weights_fingerprint`, taken before the LoRA is added), which the render
checks the loaded weights against. The same fingerprint is part of a checkpoint's data, so a run is never
resumed on other base weights.

On CUDA, ``mixed_precision`` ``fp16`` (with a gradient scaler) or ``bf16`` runs the models under autocast
with the trainable weights in float32, and ``gradient_checkpointing`` recomputes UNet and ControlNet
activations in the backward pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from characters.character_file import Character, export_textual_inversion, save_character
from characters.character_set import CharacterSet, check_name
from characters.errors import CharacterError, CheckpointError
from characters.lora_targets import DEFAULT_LORA_TARGETS, parse_projections
from characters.pseudo_video import (
    DEFAULT_SCALE_RANGE,
    PROMPT_TEMPLATES,
    VideoSample,
    character_prompt,
    pseudo_video,
    sample_augmentation,
)
from characters.reference_images import ReferenceImage
from characters.timeinv import fill_untrained_rows, row_update_counts
from storyreel.hashing import file_sha256
from storyreel.optimizer_state import optimizer_state, optimizer_tensors

MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_VERSION = 1
ROW_UPDATES_KEY = "timeinv_row_updates"  # the checkpoint tensor of the per-row update counts
# Settings that do not change the result: they may differ between a run and its resumption.
_NOT_IDENTITY = ("steps", "gradient_checkpointing")


@dataclass
class TrainingSettings:
    """What ``train-character`` takes (see the CLI for each option's meaning)."""

    name: str
    token: str
    class_word: str
    steps: int = 1000
    rank: int = 8
    resolution: int = 512
    frames: int = 16
    buckets: int | None = None
    table_lr: float = 1e-4
    lora_lr: float = 1e-4
    lora_weight_decay: float = 1e-2
    lora_targets: str = DEFAULT_LORA_TARGETS  # the paper's q, k, v; "qkvo" adds the output projection
    seed: int = 0
    batch_size: int = 1
    reg_ratio: float = 0.5
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE
    flip: bool = True
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # None: every step conditions on depth (the paper's). A render's tau: timesteps that render runs without
    # depth (t < (1 - depth_tau) * T, its late steps) train without the ControlNet's residuals too.
    depth_tau: float | None = None

    def check(self) -> None:
        """Raise :class:`~characters.errors.CharacterError` naming the first bad setting."""
        positive = {"steps": self.steps, "rank": self.rank, "resolution": self.resolution, "frames": self.frames,
                    "batch_size": self.batch_size}
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CharacterError(f"{key} must be a positive whole number, got {value!r}")
        if self.resolution % 8:
            raise CharacterError(f"resolution must be a multiple of 8 (the VAE's cell), got {self.resolution}")
        if self.buckets is not None and (not isinstance(self.buckets, int) or self.buckets < 1):
            raise CharacterError(f"buckets must be a positive whole number, got {self.buckets!r}")
        for key in ("table_lr", "lora_lr"):
            if not getattr(self, key) > 0:
                raise CharacterError(f"{key} must be positive, got {getattr(self, key)!r}")
        if not 0 <= self.reg_ratio <= 1:
            raise CharacterError(f"reg_ratio must be between 0 and 1, got {self.reg_ratio!r}")
        low, high = self.scale_range
        if not 0 < low <= high <= 1:
            raise CharacterError(f"scale_range must satisfy 0 < low <= high <= 1, got {self.scale_range!r}")
        if self.depth_tau is not None and (isinstance(self.depth_tau, bool) or not 0 <= self.depth_tau <= 1):
            raise CharacterError(f"depth_tau must be between 0 and 1 (a render's tau), got {self.depth_tau!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise CharacterError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                                 f"got {self.mixed_precision!r}")
        try:
            parse_projections(self.lora_targets)
        except ValueError as exc:
            raise CharacterError(str(exc)) from None

    def record(self) -> dict:
        record = dataclasses.asdict(self)
        record["scale_range"] = list(self.scale_range)
        return record

    def identity(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it (``depth_tau`` only when set, so
        checkpoints written before it existed keep resuming)."""
        identity = {k: v for k, v in self.record().items() if k not in _NOT_IDENTITY}
        if identity.get("depth_tau") is None:
            identity.pop("depth_tau", None)
        return identity


def step_generator(seed: int, step: int, stream: str = "train") -> torch.Generator:
    """A CPU generator seeded by ``(seed, stream, step)`` only: step ``k`` draws the same numbers in any run."""
    digest = hashlib.sha256(f"storyreel-character:{seed}:{stream}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def training_scheduler(scheduler):
    """A ``DDPMScheduler`` with the betas and prediction type of the components' scheduler."""
    from diffusers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    config = {key: value for key, value in dict(scheduler.config).items() if key in accepted}
    return DDPMScheduler(**config)


def depth_conditioned(timesteps: torch.Tensor, depth_tau: float | None, num_train_timesteps: int) -> torch.Tensor:
    """Which of ``timesteps`` train with depth: all when ``depth_tau`` is None; else those a render with
    ``tau = depth_tau`` conditions on depth. The render conditions its first ``tau`` of the steps, the noisiest,
    so the timesteps ``t >= (1 - depth_tau) * num_train_timesteps`` (tau 1: all, tau 0: none); a boolean per
    timestep."""
    if depth_tau is None:
        return torch.ones(timesteps.shape, dtype=torch.bool, device=timesteps.device)
    return timesteps >= (1.0 - depth_tau) * num_train_timesteps


@dataclass
class Batch:
    """One training batch: clean ``latents`` and ``noise`` ``B x C x L x h x w``, ``timesteps`` ``B``,
    ``condition`` ``B*L x 3 x H x W``, one prompt per video."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    condition: torch.Tensor
    prompts: list[str]
    sources: list[dict] = field(default_factory=list)


class CharacterTrainer:
    """The training loop over a set of components (duck-typed: the render's ``RenderComponents``).

    ``images`` are :class:`~characters.reference_images.ReferenceImage` or ``H x W x 3`` uint8 arrays;
    ``depth_model`` a structure-stage depth model (``N x H x W x 3`` uint8 → raw depth);
    ``regularisation`` a :class:`~characters.regularisation.RegularisationSet` or None; ``base_model`` the
    record of the base model written into the character file. The components get the character's token
    and LoRA while the trainer lives; :meth:`close` restores them.
    """

    def __init__(self, components, depth_model, images: Sequence[ReferenceImage | np.ndarray],
                 settings: TrainingSettings, *, regularisation=None, base_model: dict | None = None):
        settings.check()
        check_name(settings.name)
        if not images:
            raise CharacterError("no reference images to train on")
        self.components = components
        self.depth_model = depth_model
        self.settings = settings
        self.images = [np.ascontiguousarray(img.pixels if isinstance(img, ReferenceImage) else img) for img in images]
        self.image_records = [
            {"name": img.path.name if isinstance(img, ReferenceImage) else f"image-{i}",
             "sha256": _pixels_sha256(pixels)}
            for i, (img, pixels) in enumerate(zip(images, self.images))]
        for record, pixels in zip(self.image_records, self.images):
            if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
                raise CharacterError(f"reference image {record['name']} must be H x W x 3 uint8, got "
                                     f"{pixels.shape} {pixels.dtype}")
        self.regularisation = regularisation if regularisation is not None and len(regularisation) else None
        self.base_model = dict(base_model or {})
        self.device = components.device
        self.noise_scheduler = training_scheduler(components.scheduler)
        self.num_train_timesteps = int(self.noise_scheduler.config.num_train_timesteps)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision)
        if self.autocast_dtype is not None and self.device.type != "cuda":
            raise CharacterError(f"mixed precision ({settings.mixed_precision}) needs a CUDA device; "
                                 f"training runs on {self.device}: use mixed_precision 'no'")
        if self.autocast_dtype is None and components.unet.dtype != torch.float32:
            raise CharacterError(f"the components are {components.unet.dtype}; without mixed precision training "
                                 "needs float32 weights")
        for model in (components.text_encoder, components.vae, components.unet, components.controlnet):
            model.requires_grad_(False)

        self.character_set = CharacterSet(components, base_model=self.base_model or None)
        # what the character file records: the caller's record and the fingerprint of the weights trained on
        self.base_model = {**self.base_model, "weights": self.character_set.base_weights}
        self.entry = self.character_set.add_trainable(
            settings.name, settings.token, settings.class_word, rank=settings.rank, buckets=settings.buckets,
            projections=parse_projections(settings.lora_targets), seed=settings.seed)
        self.table = self.entry.table.weight
        self.lora = self.character_set.lora_parameters(settings.name)
        self.param_names = ["table", *(f"lora.{key}" for key in self.lora)]
        self.parameters = [self.table, *self.lora.values()]
        self.optimizer = torch.optim.AdamW(
            [{"params": [self.table], "lr": settings.table_lr, "weight_decay": 0.0},
             {"params": list(self.lora.values()), "lr": settings.lora_lr, "weight_decay": settings.lora_weight_decay}],
            betas=(0.9, 0.999), eps=1e-8)
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.mixed_precision == "fp16")
        self._checkpointing = []
        if settings.gradient_checkpointing:
            for model in (components.unet, components.controlnet):
                if getattr(model, "_supports_gradient_checkpointing", False) and not model.is_gradient_checkpointing:
                    model.enable_gradient_checkpointing()
                    self._checkpointing.append(model)
        self.step = 0
        self.last_loss: float | None = None
        self.losses: list[float] = []
        # updates of each table row so far: what the file records, and which rows it derives (see the docstring)
        self.row_updates = torch.zeros(self.entry.table.buckets, dtype=torch.long)

    # -- data ------------------------------------------------------------------------------------------
    def data_identity(self) -> dict:
        return {"images": [r["sha256"] for r in self.image_records],
                "regularisation": self.regularisation.record() if self.regularisation is not None else [],
                "base_signature": self.character_set.base_signature,
                "base_weights": self.character_set.base_weights["fingerprint"]}

    def _draw_video(self, generator: torch.Generator) -> VideoSample:
        s = self.settings
        # a fixed number of draws per video, whichever kind it turns out to be
        u = float(torch.rand(1, generator=generator, dtype=torch.float64))
        image_index = int(torch.randint(len(self.images), (1,), generator=generator))
        clip_index = int(torch.randint(max(1, len(self.regularisation or ())), (1,), generator=generator))
        template = PROMPT_TEMPLATES[int(torch.randint(len(PROMPT_TEMPLATES), (1,), generator=generator))]
        augmentation = sample_augmentation(generator, s.scale_range, s.flip)
        if self.regularisation is not None and u < s.reg_ratio:
            sample = self.regularisation.get(clip_index)
            if sample is not None:
                return sample
        return pseudo_video(self.images[image_index], augmentation, s.resolution, s.frames, self.depth_model,
                            character_prompt(s.token, s.class_word, template),
                            source={"image": self.image_records[image_index]["name"]})

    @torch.no_grad()
    def _latents(self, sample: VideoSample, generator: torch.Generator) -> torch.Tensor:
        """``C x L x h x w`` latents of a video (the VAE posterior sampled per frame)."""
        vae = self.components.vae
        with self._autocast():
            posterior = vae.encode(sample.pixels.to(self.device, vae.dtype)).latent_dist
        mean, std = posterior.mean.float(), posterior.std.float()
        eps = torch.randn((sample.frames, *mean.shape[1:]), generator=generator).to(self.device)
        latents = (mean + std * eps) * vae.config.scaling_factor
        return latents.permute(1, 0, 2, 3)

    def sample_batch(self, step: int, stream: str = "train") -> Batch:
        """The batch of ``step`` (a function of ``(seed, stream, step)`` only)."""
        generator = step_generator(self.settings.seed, step, stream)
        videos = [self._draw_video(generator) for _ in range(self.settings.batch_size)]
        latents = torch.stack([self._latents(video, generator) for video in videos])
        timesteps = torch.randint(0, self.num_train_timesteps, (len(videos),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        condition = torch.cat([video.condition_frames() for video in videos])
        return Batch(latents, noise.to(self.device), timesteps.to(self.device), condition.to(self.device),
                     [video.prompt for video in videos], [{"kind": v.kind, **v.source} for v in videos])

    def held_out_batches(self, count: int = 4) -> list[Batch]:
        """Fixed batches (their own seed stream, never trained on) to measure the loss on."""
        return [self.sample_batch(i, stream="held-out") for i in range(count)]

    # -- the model ---------------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def encode_prompts(self, prompts: list[str], timesteps: torch.Tensor) -> torch.Tensor:
        """``B x 77 x D`` text embeddings, the character token at its table row for each prompt's timestep."""
        c = self.components
        ids = c.tokenizer(prompts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(c.text_encoder.device)
        with self.character_set.at_timestep(timesteps):
            return c.text_encoder(ids)[0]

    def loss(self, batch: Batch) -> torch.Tensor:
        """The denoising loss of ``batch`` (differentiable in the table and the LoRA)."""
        c = self.components
        b, channels, frames, h, w = batch.latents.shape
        noisy = self.noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
        if self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
        else:
            target = batch.noise
        text = self.encode_prompts(batch.prompts, batch.timesteps).repeat_interleave(frames, dim=0)
        noisy = noisy.to(c.unet.dtype)
        text = text.to(c.unet.dtype)
        with_depth = depth_conditioned(batch.timesteps, self.settings.depth_tau, self.num_train_timesteps)
        residuals = {}
        if bool(with_depth.any()):  # a batch whose every timestep a render runs without depth skips the ControlNet
            control_input = noisy.transpose(1, 2).reshape(b * frames, channels, h, w)
            down, mid = c.controlnet(control_input, batch.timesteps.repeat_interleave(frames),
                                     encoder_hidden_states=text, controlnet_cond=batch.condition.to(c.controlnet.dtype),
                                     conditioning_scale=1.0, guess_mode=False, return_dict=False)
            if not bool(with_depth.all()):  # conditioning scale 0 for the videos whose timestep runs without depth
                scale = with_depth.repeat_interleave(frames).to(mid.dtype).view(-1, 1, 1, 1)
                down, mid = [d * scale for d in down], mid * scale
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        prediction = c.unet(noisy, batch.timesteps, encoder_hidden_states=text, **residuals).sample
        return F.mse_loss(prediction.float(), target.float())

    @torch.no_grad()
    def evaluate(self, batches: Sequence[Batch]) -> float:
        """The mean loss over ``batches`` (no update)."""
        losses = []
        for batch in batches:
            with self._autocast():
                losses.append(float(self.loss(batch)))
        return float(np.mean(losses))

    def train_step(self) -> float:
        """One optimisation step (step ``self.step``); returns its loss."""
        batch = self.sample_batch(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.row_updates += row_update_counts(batch.timesteps, self.entry.table.buckets, self.num_train_timesteps)
        self.step += 1
        self.last_loss = float(loss.detach())
        self.losses.append(self.last_loss)
        return self.last_loss

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self, folder: str | os.PathLike) -> Path:
        """Write the state after ``self.step`` steps to ``folder`` (older checkpoint files are removed)."""
        from safetensors.torch import save_file

        from storyreel.atomic_files import atomic_path, write_json

        folder = Path(folder)
        name = f"checkpoint-{self.step:07d}.safetensors"
        tensors = {"table": self.table.detach().to("cpu").contiguous(), ROW_UPDATES_KEY: self.row_updates.clone()}
        for key, param in self.lora.items():
            tensors[f"lora.{key}"] = param.detach().to("cpu").contiguous()
        optimizer_part, scalars, param_groups = optimizer_tensors(self.optimizer)
        tensors.update(optimizer_part)
        with atomic_path(folder / name) as tmp:
            save_file(tensors, str(tmp))
        record = {
            "format_version": CHECKPOINT_VERSION, "step": self.step, "tensors": name,
            "sha256": file_sha256(folder / name), "settings": self.settings.identity(), "data": self.data_identity(),
            "param_names": self.param_names, "param_groups": param_groups, "optimizer_scalars": scalars,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None, "loss": self.last_loss,
        }
        write_json(folder / CHECKPOINT_FILE, record)
        for old in folder.glob("checkpoint-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return folder / CHECKPOINT_FILE

    def load_checkpoint(self, folder: str | os.PathLike) -> bool:
        """Continue from ``folder``'s checkpoint; False when there is none. Raises :class:`CheckpointError`
        for a checkpoint of other settings or data, or damaged files."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(folder) / CHECKPOINT_FILE
        if not path.is_file():
            return False
        try:
            record = json.loads(path.read_text())
            tensors_path = Path(folder) / record["tensors"]
            step = int(record["step"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint ({exc}); delete {folder} to start over") from None
        differences = _differences(record.get("settings", {}), self.settings.identity())
        data = self.data_identity()
        if "base_weights" not in record.get("data", {}):  # a checkpoint from before the fingerprint was kept
            del data["base_weights"]
        differences += _differences(record.get("data", {}), data)
        if record.get("param_names") != self.param_names:
            differences.append("trainable parameters differ")
        if differences:
            raise CheckpointError(
                f"{path}: the checkpoint was made with other settings or data ({'; '.join(differences[:5])}); "
                f"resume with the same settings, or delete {folder} (or drop --resume) to start over")
        if step > self.settings.steps:
            raise CheckpointError(f"{path}: the checkpoint is at step {step}, past steps={self.settings.steps}")
        if not tensors_path.is_file() or file_sha256(tensors_path) != record.get("sha256"):
            raise CheckpointError(f"{tensors_path}: missing or does not match {path}; delete {folder} to start over")
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{tensors_path}: not readable ({exc})") from None
        with torch.no_grad():
            self.table.copy_(tensors["table"])
            for key, param in self.lora.items():
                param.copy_(tensors[f"lora.{key}"])
        state = optimizer_state(tensors, record.get("optimizer_scalars", {}), record["param_groups"])
        if ROW_UPDATES_KEY in tensors:
            self.row_updates = tensors[ROW_UPDATES_KEY].to(torch.long).clone()
        else:  # a checkpoint from before the counts were kept: the rows with Adam state were updated (once or more)
            second_moment = state["state"].get(0, {}).get("exp_avg_sq")
            self.row_updates = (second_moment.reshape(second_moment.shape[0], -1).abs().sum(1) > 0).to(torch.long) \
                if second_moment is not None else torch.zeros(self.entry.table.buckets, dtype=torch.long)
        self.optimizer.load_state_dict(state)
        if record.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(record["scaler"])
        self.step = step
        self.last_loss = record.get("loss")
        return True

    # -- results ---------------------------------------------------------------------------------------------
    def coverage_record(self) -> dict:
        """``timeinv_coverage`` of the training record: the updates of every table row, and how untrained
        rows were derived (see :attr:`characters.character_file.Character.coverage`)."""
        updates = self.row_updates.tolist()
        trained = sum(1 for count in updates if count > 0)
        return {"rows": len(updates), "updates": updates, "trained_rows": trained,
                "derived_rows": len(updates) - trained if trained else 0,
                "derivation": "linear interpolation between the nearest trained rows"}

    def training_record(self) -> dict:
        return {**self.settings.record(), "steps_done": self.step, "images": self.image_records,
                "regularisation_clips": len(self.regularisation) if self.regularisation is not None else 0,
                "final_loss": self.last_loss, "prediction_type": self.prediction_type,
                "timeinv_coverage": self.coverage_record()}

    def character(self) -> Character:
        """The character as trained so far (a snapshot; training may go on), its untrained table rows derived
        from the trained ones (:func:`~characters.timeinv.fill_untrained_rows`)."""
        character = self.character_set.character(self.settings.name, base_model=self.base_model,
                                                 training=self.training_record())
        character.table = fill_untrained_rows(character.table, self.row_updates)
        return character

    @contextlib.contextmanager
    def untrained_rows_derived(self):
        """For the duration, the live table holds what the character file will hold (its untrained rows derived
        from the trained ones), so a validation clip reads no row that is still at its initial value; the
        trained values are put back after."""
        with torch.no_grad():
            live = self.table.detach().clone()
            self.table.copy_(fill_untrained_rows(live, self.row_updates))
        try:
            yield
        finally:
            with torch.no_grad():
                self.table.copy_(live)

    def run(self, *, checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 0,
            validate: Callable[["CharacterTrainer", int], None] | None = None, validate_every: int = 0,
            progress: bool = True) -> None:
        """Train up to ``settings.steps``: a progress bar with the loss, a checkpoint every
        ``checkpoint_every`` steps and at the end, ``validate(trainer, step)`` every ``validate_every`` steps."""
        from tqdm.auto import tqdm

        total = self.settings.steps
        with tqdm(total=total, initial=self.step, unit="step", desc=f"train {self.settings.name}",
                  disable=not progress, dynamic_ncols=True) as bar:
            while self.step < total:
                loss = self.train_step()
                recent = self.losses[-20:]
                bar.set_postfix(loss=f"{loss:.4f}", avg=f"{sum(recent) / len(recent):.4f}")
                bar.update(1)
                if checkpoint_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_dir)
                if validate is not None and validate_every and self.step % validate_every == 0:
                    with torch.no_grad():
                        validate(self, self.step)
        if checkpoint_dir is not None and not (checkpoint_every and self.step % checkpoint_every == 0):
            self.save_checkpoint(checkpoint_dir)

    def close(self) -> None:
        """Give the components back as they were (adapter, token and hook removed)."""
        for model in self._checkpointing:
            model.disable_gradient_checkpointing()
        self._checkpointing = []
        self.character_set.remove()

    def __enter__(self) -> "CharacterTrainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pixels_sha256(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def _differences(saved: dict, current: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            if key == "images":
                out.append("the reference images differ")
            else:
                saved_text, current_text = (json.dumps(v, default=str)[:60] for v in (a, b))
                out.append(f"{key}: {saved_text} in the checkpoint, {current_text} now")
    return out


def train_character(components, depth_model, images, settings: TrainingSettings, out: str | os.PathLike, *,
                    checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 100,
                    resume: bool = False, base_model: dict | None = None, regularisation=None,
                    validate: Callable[[CharacterTrainer, int], None] | None = None, validate_every: int = 0,
                    export_ti: str | os.PathLike | None = None, progress: bool = True,
                    echo: Callable[[str], None] | None = None) -> Character:
    """Train (or resume) a character and write its file to ``out`` (and ``export_ti``); returns it.

    Nothing is written at ``out`` until training has finished. The components are restored afterwards.
    """
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise CharacterError(f"{out}: the character file must end in .safetensors")
    with CharacterTrainer(components, depth_model, images, settings, regularisation=regularisation,
                          base_model=base_model) as trainer:
        if resume and checkpoint_dir is not None:
            if trainer.load_checkpoint(checkpoint_dir):
                if echo:
                    echo(f"resuming from {Path(checkpoint_dir) / CHECKPOINT_FILE} at step {trainer.step}")
            elif echo:
                echo(f"no checkpoint in {checkpoint_dir}; starting at step 0")
        trainer.run(checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, validate=validate,
                    validate_every=validate_every, progress=progress)
        character = trainer.character()
    save_character(character, out)
    if export_ti is not None:
        export_textual_inversion(character, export_ti)
    return character
