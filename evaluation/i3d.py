"""I3D, the standard FVD/KVD feature extractor: Inception-v1 inflated to 3D (Carreira & Zisserman 2017), Kinetics-400.

The network is written here from the paper's description, with the module names and parameter layout of
pytorch-i3d's ``InceptionI3d(400, in_channels=3)``, so a safetensors conversion of its state dict (MCVD's, TATS's
and VideoGPT's ``i3d_pretrained_400.pt``; :mod:`evaluation.i3d_conversion`) loads as it is:

=================== ============================================= ==========================
module              what                                          output (16 x 224 x 224 in)
=================== ============================================= ==========================
``Conv3d_1a_7x7``   7x7x7 conv, stride 2, BN, ReLU                64 x 8 x 112 x 112
(pool)              1x3x3 max pool, stride (1, 2, 2)              64 x 8 x 56 x 56
``Conv3d_2b_1x1``   1x1x1 conv                                    64
``Conv3d_2c_3x3``   3x3x3 conv                                    192
(pool)              1x3x3 max pool, stride (1, 2, 2)              192 x 8 x 28 x 28
``Mixed_3b``, 3c    inception modules                             256, 480
(pool)              3x3x3 max pool, stride 2                      480 x 4 x 14 x 14
``Mixed_4b`` .. 4f  inception modules                             512, 512, 512, 528, 832
(pool)              2x2x2 max pool, stride 2                      832 x 2 x 7 x 7
``Mixed_5b``, 5c    inception modules                             832, 1024
(avg_pool)          2x7x7 average pool, stride 1                  1024 x 1 x 1 x 1
``logits``          1x1x1 conv with bias (no BN, no ReLU)         400 x 1 x 1 x 1
=================== ============================================= ==========================

Every unit (:class:`Unit3D`) is ``conv3d`` (no bias) → ``bn`` (BatchNorm3d, eps 1e-3, momentum 0.01) → ReLU; an
inception module (:class:`InceptionModule`) concatenates four branches: ``b0`` (1x1x1), ``b1a`` → ``b1b``
(1x1x1 → 3x3x3), ``b2a`` → ``b2b`` (1x1x1 → 3x3x3) and ``b3a`` → ``b3b`` (3x3x3 max pool, stride 1 → 1x1x1).
Convolutions and max pools pad as TensorFlow's ``SAME`` does, from the input size (:func:`same_padding`), with
zeros (also before the max pools, as pytorch-i3d does: their inputs follow a ReLU, so a padded zero never exceeds a
real value).

The video feature (:meth:`InceptionI3d.video_features`) is the 400 logits averaged over the time positions left
after the average pool, as DeepMind's kinetics-i3d averages its logits over time and as the TensorFlow FVD
uses them. Preprocessing (:func:`preprocess_video`) is that of VideoGPT's, TATS's and MCVD's FVD code: ``T x H
x W x 3`` uint8 frames, the shorter side scaled to 224 (bilinear, ``align_corners=False``, the longer side
rounded up), the centre 224 x 224 cropped, values mapped to [-1, 1]. A clip of fewer than 16 frames is looped to
16 (frame ``i`` is frame ``i mod T``; the network needs at least 9 frames, and 16 is what FVD code feeds); a
longer clip is used whole (callers sample the frames they want, e.g. 16).

Weights: :func:`load_i3d` reads a local ``.safetensors`` file in this layout, or builds ``tiny``: the same full
architecture (12,697,264 parameters) with seeded random weights (Kaiming-normal convolutions and randomised
batch-norm statistics, so every part of the network matters), for tests.

Checked once against pytorch-i3d's ``pytorch_i3d.py`` (in a throwaway script; the tests never import it): the same
344 state dict keys and shapes and the same parameter count (``tests/test_i3d.py`` records them), and with the same
random weights loaded into both, in eval mode, the same logits (max absolute difference 0.0) on 1x3x16x224x224,
1x3x40x224x224 and 2x3x19x231x237 inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storyreel.errors import ModelLoadError, first_line
from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

TINY = "tiny"
NUM_CLASSES = 400
IMAGE_SIZE = 224
MIN_FRAMES = 16  # shorter clips are looped to this many frames
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
TINY_SEED = 0
# (name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels), in order
INCEPTION_PLAN = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one dimension: ``(front, back)`` zeros so that the output has
    ``ceil(size / stride)`` positions; the odd one goes at the back."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """``x`` (``N x C x T x H x W``) zero-padded for a ``SAME`` convolution or pool of ``kernel`` and ``stride``."""
    pads: list[int] = []
    for dim in (2, 1, 0):  # F.pad takes the last dimension first: W, H, T
        pads += same_padding(x.shape[2 + dim], kernel[dim], stride[dim])
    return F.pad(x, pads) if any(pads) else x


def _triple(value) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)


class MaxPool3dSame(nn.Module):
    """A max pool with ``SAME`` zero padding (no parameters)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """``SAME``-padded 3D convolution → batch norm → ReLU; the logits unit has a bias and neither of the others."""

    def __init__(self, in_channels: int, out_channels: int, kernel=1, stride=1, batch_norm: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = _triple(kernel), _triple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches, concatenated along the channels: 1x1x1; 1x1x1 → 3x3x3; 1x1x1 → 3x3x3; pool → 1x1x1."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3D(in_channels, c0)
        self.b1a = Unit3D(in_channels, c1a)
        self.b1b = Unit3D(c1a, c1b, kernel=3)
        self.b2a = Unit3D(in_channels, c2a)
        self.b2b = Unit3D(c2a, c2b, kernel=3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, c3b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """I3D for Kinetics-400 in pytorch-i3d's parameter layout (see the module docstring for the plan)."""

    STAGES = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
              "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
              "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")  # in order, before the average pool

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 3):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel=7, stride=2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, in_ch, channels in INCEPTION_PLAN[:2]:
            self.add_module(name, InceptionModule(in_ch, channels))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(3, 2)
        for name, in_ch, channels in INCEPTION_PLAN[2:7]:
            self.add_module(name, InceptionModule(in_ch, channels))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(2, 2)
        for name, in_ch, channels in INCEPTION_PLAN[7:]:
            self.add_module(name, InceptionModule(in_ch, channels))
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.dropout = nn.Dropout(0.5)  # pytorch-i3d's (p = 0.5); inactive in eval mode
        self.logits = Unit3D(sum(INCEPTION_PLAN[-1][2][i] for i in (0, 2, 4, 5)), num_classes, batch_norm=False,
                             relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x T x H x W`` in [-1, 1] → the logits per remaining time position, ``N x classes x T'`` (their
        spatial extent is 1 at 224 x 224; at larger sizes the positions are averaged)."""
        for name in self.STAGES:
            x = getattr(self, name)(x)
        return self.logits(self.dropout(self.avg_pool(x))).flatten(3).mean(3)

    def video_features(self, x: torch.Tensor) -> torch.Tensor:
        """The FVD feature: the logits averaged over time, ``N x classes``."""
        return self(x).mean(2)


def preprocess_video(frames: np.ndarray, size: int = IMAGE_SIZE, min_frames: int = MIN_FRAMES) -> torch.Tensor:
    """``T x H x W x 3`` uint8 → ``3 x T' x size x size`` float in [-1, 1] (FVD code's preprocessing; see the
    module docstring), ``T' = max(T, min_frames)``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected T x H x W x 3 frames, got shape {frames.shape}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)  # T x 3 x H x W
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    target = (size, int(np.ceil(width * scale))) if height < width else (int(np.ceil(height * scale)), size)
    if target != (height, width):
        video = F.interpolate(video, size=target, mode="bilinear", align_corners=False)
    top, left = (video.shape[-2] - size) // 2, (video.shape[-1] - size) // 2
    video = video[:, :, top:top + size, left:left + size]
    if len(video) < min_frames:
        video = video[torch.arange(min_frames) % len(video)]
    return video.permute(1, 0, 2, 3).sub(0.5).mul(2.0).contiguous()


@dataclass
class I3DFeatures:
    """A loaded I3D: ``frames → 400-d feature`` (:meth:`__call__`) and batches of videos (:meth:`features`)."""

    model: InceptionI3d
    name: str
    device: torch.device
    batch_size: int = 8

    def __post_init__(self):
        self.model = self.model.to(self.device).eval()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.features([frames])[0]

    @torch.no_grad()
    def features(self, videos: list[np.ndarray]) -> np.ndarray:
        """``len(videos) x 400`` float64: each video's time-mean logits; videos of one length go through together,
        ``batch_size`` at a time."""
        clips = [preprocess_video(video) for video in videos]
        rows: list[np.ndarray | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = {}
        for index, clip in enumerate(clips):
            by_length.setdefault(clip.shape[1], []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), self.batch_size):
                chosen = indices[start:start + self.batch_size]
                batch = torch.stack([clips[i] for i in chosen]).to(self.device)
                out = self.model.video_features(batch).double().cpu().numpy()
                for i, row in zip(chosen, out):
                    rows[i] = row
        return np.stack(rows) if rows else np.zeros((0, NUM_CLASSES))


def build_tiny_i3d() -> InceptionI3d:
    """The full I3D with seeded random weights: Kaiming-normal convolutions (the activations keep their scale
    through the network) and random batch-norm affine parameters and running statistics."""
    from storyreel.seeding import seeded

    with seeded(TINY_SEED):
        model = InceptionI3d()
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.uniform_(module.weight, 0.8, 1.2)
                nn.init.normal_(module.bias, std=0.1)
                module.running_mean.normal_(std=0.1)
                module.running_var.uniform_(0.8, 1.25)
    return model.eval()


def check_state_dict(state: dict, source: str, model: InceptionI3d | None = None) -> None:
    """:class:`ModelLoadError` naming ``source`` and the first missing, unexpected or misshapen key, unless
    ``state`` has exactly :class:`InceptionI3d`'s keys and shapes."""
    expected = {key: tuple(value.shape) for key, value in (model or InceptionI3d()).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ModelLoadError(f"'{source}': not pytorch-i3d's InceptionI3d(400) state dict: {len(missing)} key(s) "
                             f"missing, the first '{missing[0]}'")
    if unexpected:
        raise ModelLoadError(f"'{source}': not pytorch-i3d's InceptionI3d(400) state dict: {len(unexpected)} "
                             f"unexpected key(s), the first '{unexpected[0]}'")
    for key in sorted(expected):
        shape = tuple(state[key].shape)
        if shape != expected[key]:
            raise ModelLoadError(f"'{source}': key '{key}' has shape {list(shape)}, InceptionI3d(400) has "
                                 f"{list(expected[key])}")


def load_i3d(spec: str | Path, device: torch.device | str = "cpu") -> I3DFeatures:
    """``tiny`` (seeded random weights) or a local ``.safetensors`` file of pytorch-i3d's ``InceptionI3d(400)``
    state dict (made by ``python -m evaluation.i3d_conversion``); pickles are refused, a missing file or one of
    another layout raises :class:`ModelLoadError` naming it."""
    device = torch.device(device)
    if str(spec) == TINY:
        return I3DFeatures(build_tiny_i3d(), TINY, device)
    path = Path(spec).expanduser()
    if is_pickle_checkpoint(path):
        raise ModelLoadError(f"refusing to load '{path}': {PICKLE_REFUSAL}; convert pytorch-i3d's state dict once "
                             "with python -m evaluation.i3d_conversion IN.pt OUT.safetensors")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"I3D weights '{path}': expected a .safetensors file")
    if not path.is_file():
        raise ModelLoadError(f"I3D weights: no such file '{path}' (convert pytorch-i3d's i3d_pretrained_400.pt with "
                             "python -m evaluation.i3d_conversion)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"I3D weights '{path}': not a readable safetensors file ({first_line(exc)})") from exc
    model = InceptionI3d()
    check_state_dict(state, str(path), model)
    model.load_state_dict(state)
    return I3DFeatures(model.eval(), str(path), device)
