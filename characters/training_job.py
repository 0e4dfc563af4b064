"""What one ``train-character`` run is asked to do: :class:`TrainCharacterJob`, built from the flags and checked
once.

The command line builds the job from its options (one field per flag, named as click names them), calls
:meth:`TrainCharacterJob.validate` before anything is loaded, and hands the job to the run. The job gives the
training's own settings (:meth:`~TrainCharacterJob.settings`, a
:class:`~characters.training.TrainingSettings`), the models (:meth:`~TrainCharacterJob.model_specification`,
from the model zoo's flags ``--models``, ``--model-config``, ``--base``, ``--motion-adapter``, ``--controlnet``,
``--vae``, ``--depth-model``), the device and precision it resolves, and the checkpoint folder. Errors name
the flag (:class:`TrainCharacterJobError`; :class:`~storyreel.models.specification.ModelConfigError` for a
model value, naming its flag or TOML key), or the setting (:class:`~characters.errors.CharacterError` from
:meth:`TrainingSettings.check <characters.training.TrainingSettings.check>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from characters.errors import CharacterError
from characters.lora_targets import DEFAULT_LORA_TARGETS
from storyreel.errors import OptionError
from storyreel.models import presets
from storyreel.models.specification import ModelSpecification

CHARACTER_SUFFIX = ".safetensors"


class TrainCharacterJobError(OptionError, CharacterError):
    """A ``train-character`` flag that cannot be used; the message starts with the flag (``--out: ...``)."""


@dataclass
class TrainCharacterJob:
    """A ``train-character`` run: reference images, the character's identity, the models, the training's
    settings, checkpoints, validation clips and outputs (see ``train-character --help`` for each field)."""

    images: Path
    name: str
    token: str
    class_word: str
    out: Path
    models: str | None = None  # None: the --model-config file's preset, else the default preset
    model_config: Path | None = None
    base: str | None = None
    motion_adapter: str | None = None
    controlnet: str | None = None
    vae: str | None = None
    depth_model: str | None = None
    steps: int = 1000
    rank: int = 8
    lora_targets: str = DEFAULT_LORA_TARGETS
    resolution: int = 512
    frames: int = 16
    buckets: int | None = None
    table_lr: float = 1e-4
    lora_lr: float = 1e-4
    batch_size: int = 1
    seed: int = 0
    reg_index: Path | None = None
    reg_count: int = 200
    reg_ratio: float = 0.5
    checkpoint_every: int = 100
    checkpoint_dir: Path | None = None
    resume: bool = False
    validate_every: int = 0
    validation_prompt: str | None = None
    validation_steps: int = 20
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    depth_tau: float | None = None  # a render's tau: train its unguided timesteps without depth (None: never)
    export_ti: Path | None = None
    device: str | None = None
    quiet: bool = False

    def validate(self) -> None:
        """Raise :class:`TrainCharacterJobError` naming the first flag that cannot be used, or
        :class:`~characters.errors.CharacterError` for a bad training setting. Loads nothing, writes nothing."""
        from characters.character_set import check_name

        for flag, path in (("--out", self.out), ("--export-ti", self.export_ti)):
            if path is not None and Path(path).suffix.lower() != CHARACTER_SUFFIX:
                raise TrainCharacterJobError(flag, f"expected a {CHARACTER_SUFFIX} file, got '{path}'")
        if self.export_ti is not None and Path(self.export_ti).resolve() == Path(self.out).resolve():
            raise TrainCharacterJobError("--export-ti", "must be another file than --out", " ")
        if self.models is not None and self.models not in presets.PRESETS:
            raise TrainCharacterJobError(
                "--models", f"unknown preset {self.models!r}; use one of {', '.join(presets.PRESET_NAMES)}")
        self.model_specification().validate()  # ModelConfigError naming the flag or the TOML file and key
        if self.reg_index is not None and not Path(self.reg_index).is_dir():
            raise TrainCharacterJobError("--reg-index",
                                         f"'{self.reg_index}' is not a folder (an index made by build-index)")
        device = self.torch_device()
        precision = self.precision()
        if precision != "no" and device.type != "cuda":
            raise TrainCharacterJobError("--mixed-precision",
                                         f"{precision} needs a CUDA device (training runs on {device})", " ")
        try:
            check_name(self.name)
        except CharacterError as exc:
            raise TrainCharacterJobError("--name", str(exc)) from None
        self.settings().check()

    def torch_device(self):
        """The ``torch.device`` to train on: ``device``, else CUDA when there is one, else the CPU."""
        import torch

        if self.device:
            return torch.device(self.device)
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def precision(self) -> str:
        """``mixed_precision`` with ``auto`` resolved: fp16 on CUDA, else no."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "fp16" if self.torch_device().type == "cuda" else "no"

    def checkpoints(self) -> Path:
        """The checkpoint folder: ``checkpoint_dir``, else OUT without ``.safetensors``, plus ``.checkpoints``."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        out = Path(self.out)
        return out.with_name(out.name[: -len(out.suffix)] + ".checkpoints")

    def model_specification(self) -> ModelSpecification:
        """The render models and depth model to train on (the model zoo's flags)."""
        return ModelSpecification(preset=self.models, config_file=self.model_config, base=self.base,
                                  motion_adapter=self.motion_adapter, controlnet=self.controlnet, vae=self.vae,
                                  depth_model=self.depth_model)

    def depth_model_spec(self) -> str:
        """The depth model of the pseudo-videos: ``depth_model``, else the model config's, else the preset's."""
        return self.model_specification().depth_model_spec()

    def settings(self):
        """The :class:`~characters.training.TrainingSettings` of this job (what a checkpoint must match)."""
        from characters.training import TrainingSettings

        return TrainingSettings(name=self.name, token=self.token, class_word=self.class_word, steps=self.steps,
                                rank=self.rank, resolution=self.resolution, frames=self.frames, buckets=self.buckets,
                                table_lr=self.table_lr, lora_lr=self.lora_lr, lora_targets=self.lora_targets,
                                seed=self.seed, batch_size=self.batch_size, reg_ratio=self.reg_ratio,
                                mixed_precision=self.precision(), gradient_checkpointing=self.gradient_checkpointing,
                                depth_tau=self.depth_tau)
