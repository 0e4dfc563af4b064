"""Generate a small, deterministic library of synthetic action clips for the demo and the tests.

The library is laid out like Kinetics/UCF, ``OUT/<label>/<name>.mp4``, where each label folder is an
action phrase (see :data:`LABELS`). Every clip shows a stick figure on a textured gradient background,
moving the way its label says:

* ``running``  - the figure runs quickly across the frame and back, legs and arms swinging wide;
* ``walking``  - the same gait, slowly and with small swings;
* ``jumping``  - the figure crouches and jumps up and down on the spot, arms thrown up in the air;
* ``waving``   - the figure stands still and waves one raised forearm;
* ``spinning`` - the figure, arms and legs spread, rotates about its middle.

Motion amplitudes differ on purpose (running moves the most pixels per second, walking few), so a
motion score such as the mean absolute luma change per second orders them. One extra clip,
:data:`CUT_CLIP`, has a hard scene cut at :data:`CUT_AT_S` seconds: a light scene with a dark figure
starts running left to right, then a dark scene with a larger light figure starts running right to left.

All drawing decisions come from a seeded NumPy RNG and closed-form motion, so every run draws the same
frames (the H.264 bytes may still differ between FFmpeg builds). Clips are written atomically (a hidden
temporary file in the same folder, then ``os.replace``), and existing clips are kept unless ``--force``.

Usage::

    python data/make_sample_clips.py --out data/sample_clips [--force]

Tests import this file by path and call :func:`write_clip` / :func:`make_library`.
"""

# No ``from __future__ import annotations``: tests load this file by path without registering it in
# sys.modules, and dataclasses cannot resolve string annotations of such a module.
import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

LABELS: tuple[str, ...] = ("running", "walking", "jumping", "waving", "spinning")

DEFAULT_FPS = 24
DEFAULT_SIZE = (128, 96)  # width, height; both even (yuv420p needs even sizes)
CRF = "20"  # x264 quality; the frames are tiny, so this stays cheap
PRESET = "veryfast"
FILE_MODE = 0o644

CUT_AT_S = 2.5
CUT_CLIP = ("running", "run_with_cut")  # (label folder, file stem) of the clip with a hard cut

# -- look of a scene ----------------------------------------------------------------------------
GROUND_FRACTION = 0.82  # the ground line sits this far down the frame
FIGURE_FRACTION = 0.42  # figure height (feet to top of head) as a fraction of the frame height
LEG_FRACTION = 0.5  # leg length (thigh + shin) as a fraction of the figure height
EDGE_MARGIN_FRACTION = 0.3  # moving figures turn round this far (in figure heights) from the edges
TEXTURE_CELLS = (5, 7)  # coarse noise grid (rows, cols) upsampled into soft blotches
TEXTURE_AMPLITUDE = 18.0  # +- grey levels of the soft blotches
GRAIN_AMPLITUDE = 5.0  # +- grey levels of the static fine grain

# (top colour, bottom colour, figure colour); light scenes get dark figures and vice versa
LIGHT_PALETTES = (
    ((250, 226, 170), (214, 170, 110), (40, 30, 60)),  # sand
    ((190, 225, 250), (150, 200, 150), (70, 20, 20)),  # sky over grass
    ((240, 210, 230), (200, 170, 200), (20, 50, 40)),  # pink haze
)
DARK_PALETTES = (
    ((20, 30, 80), (40, 60, 110), (250, 240, 120)),  # night blue
    ((20, 60, 40), (50, 90, 50), (250, 250, 250)),  # forest
    ((60, 20, 60), (90, 40, 70), (160, 250, 230)),  # plum
)

# -- motion of each label -------------------------------------------------------------------------
# speed is in frame widths per second; swings are radians; rates are cycles per second.
RUN_SPEED, RUN_STRIDE_HZ, RUN_LEG_SWING, RUN_ARM_SWING, RUN_LEAN = 0.7, 2.6, 0.95, 0.9, 0.18
RUN_BOUNCE_FRACTION = 0.06  # peak hop of a running stride, as a fraction of the figure height
WALK_SPEED, WALK_STRIDE_HZ, WALK_LEG_SWING, WALK_ARM_SWING = 0.08, 0.9, 0.35, 0.25
JUMP_HZ, JUMP_HEIGHT_FRACTION = 1.1, 0.22  # jumps per second; peak height over the frame height
JUMP_CROUCH_PART = 0.3  # part of each jump cycle spent crouching on the ground
WAVE_HZ, WAVE_SWING = 2.0, 0.7
SPIN_HZ = 0.5  # turns per second
NO_SHADOW_LABELS = ("spinning",)  # the spinning figure turns in mid-air


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the sample library."""

    label: str
    name: str
    seconds: float
    seed: int
    cut_at: float | None = None

    def path(self, out_dir: Path) -> Path:
        return out_dir / self.label / f"{self.name}.mp4"


CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("running", "run_01", 4.0, seed=11),
    ClipSpec("running", "run_02", 5.0, seed=12),
    ClipSpec(CUT_CLIP[0], CUT_CLIP[1], 5.0, seed=13, cut_at=CUT_AT_S),
    ClipSpec("walking", "walk_01", 5.0, seed=21),
    ClipSpec("walking", "walk_02", 6.0, seed=22),
    ClipSpec("jumping", "jump_01", 4.0, seed=31),
    ClipSpec("jumping", "jump_02", 5.0, seed=32),
    ClipSpec("waving", "wave_01", 4.0, seed=41),
    ClipSpec("waving", "wave_02", 5.0, seed=42),
    ClipSpec("spinning", "spin_01", 4.0, seed=51),
    ClipSpec("spinning", "spin_02", 5.0, seed=52),
)


# ==================================================================================================
# Drawing
# ==================================================================================================
@dataclass(frozen=True)
class Scene:
    """Everything about a shot that does not change from frame to frame."""

    background: np.ndarray  # H x W x 3 uint8
    figure_colour: tuple[int, int, int]
    figure_height: float  # pixels, feet to top of head
    direction: int  # +1: first moves right (spins anticlockwise), -1: first moves left (spins clockwise)
    start: float  # where the motion starts, as a fraction of the frame width
    phase: float  # gait/oscillation phase in cycles


@dataclass(frozen=True)
class Pose:
    """A stick-figure pose. Limb angles are radians from straight down; positive swings forward."""

    x: float  # hip position in pixels
    y: float
    tilt: float = 0.0  # whole-body rotation about the body's middle (radians, counter-clockwise)
    facing: int = 1  # +1 faces right, -1 left
    legs: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # thigh, shin (front), thigh, shin (back)
    arms: tuple[float, float, float, float] = (0.3, 0.2, -0.3, -0.2)  # upper, fore (front), upper, fore (back)


def make_background(rng: np.random.Generator, size: tuple[int, int], top, bottom) -> np.ndarray:
    """A vertical gradient with soft blotches, fine grain and a ground line, so frames are not flat."""
    width, height = size
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = (1 - ramp) * np.array(top, np.float32) + ramp * np.array(bottom, np.float32)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    cells = rng.uniform(-1.0, 1.0, TEXTURE_CELLS).astype(np.float32)
    blotches = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    image += TEXTURE_AMPLITUDE * np.asarray(blotches)[:, :, None]
    image += rng.uniform(-GRAIN_AMPLITUDE, GRAIN_AMPLITUDE, (height, width, 1)).astype(np.float32)
    ground = int(round(height * GROUND_FRACTION))
    image[ground:ground + 1] *= 0.6  # a darker ground line to stand, walk and land on
    return np.clip(image, 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator, size: tuple[int, int], tone: str | None = None,
               figure_scale: float = 1.0, direction: int | None = None) -> Scene:
    """A seeded scene; ``tone`` ('light' or 'dark') restricts the palette, else either is drawn."""
    palettes = {"light": LIGHT_PALETTES, "dark": DARK_PALETTES}.get(tone, LIGHT_PALETTES + DARK_PALETTES)
    top, bottom, figure = palettes[int(rng.integers(len(palettes)))]
    if direction is None:
        direction = 1 if rng.random() < 0.5 else -1
    return Scene(
        background=make_background(rng, size, top, bottom),
        figure_colour=figure,
        figure_height=size[1] * FIGURE_FRACTION * figure_scale,
        direction=direction,
        start=float(rng.uniform(0.15, 0.3)),
        phase=float(rng.random()),
    )


def _rotate(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    # image y points down, so a counter-clockwise turn on screen is (x, y) -> (x c + y s, -x s + y c)
    matrix = np.array([[c, -s], [s, c]])
    return (points - centre) @ matrix + centre


def _limb(start: np.ndarray, upper: float, lower: float, length: float, facing: int) -> list[np.ndarray]:
    """Two segments hanging from ``start``; angles from straight down, positive towards ``facing``."""
    joint = start + length * np.array([facing * math.sin(upper), math.cos(upper)])
    end = joint + length * np.array([facing * math.sin(upper + lower), math.cos(upper + lower)])
    return [start, joint, end]


def draw_figure(draw: ImageDraw.ImageDraw, pose: Pose, height: float, colour) -> None:
    """Draw a stick figure whose hip is at (pose.x, pose.y), about ``height`` pixels tall."""
    segment = height * LEG_FRACTION / 2  # thigh = shin = upper arm = forearm
    torso = height * 0.32
    head = height * 0.09
    width = max(2, int(round(height / 14)))
    hip = np.array([pose.x, pose.y])
    shoulder = hip - np.array([0.0, torso])
    neck_top = shoulder - np.array([0.0, head * 0.4])
    head_centre = neck_top - np.array([0.0, head])
    polylines = [[hip, shoulder, neck_top]]
    polylines += [_limb(hip, pose.legs[i], pose.legs[i + 1], segment, pose.facing) for i in (0, 2)]
    polylines += [_limb(shoulder, pose.arms[i], pose.arms[i + 1], segment, pose.facing) for i in (0, 2)]
    centre = (hip + shoulder) / 2
    if pose.tilt:
        polylines = [list(_rotate(np.array(line), pose.tilt, centre)) for line in polylines]
        head_centre = _rotate(head_centre[None], pose.tilt, centre)[0]
    for line in polylines:
        draw.line([tuple(p) for p in line], fill=colour, width=width, joint="curve")
    hx, hy = head_centre
    draw.ellipse([hx - head, hy - head, hx + head, hy + head], fill=colour)


def draw_shadow(draw: ImageDraw.ImageDraw, x: float, ground: float, height: float, lift: float) -> None:
    """A flat dark ellipse on the ground under the figure that shrinks as the figure rises."""
    radius = height * 0.22 * (1.0 - 0.5 * min(lift / height, 1.0))
    draw.ellipse([x - radius, ground - 1.5, x + radius, ground + 1.5], fill=(0, 0, 0))


# ==================================================================================================
# Motion: one pose per label, as a closed-form function of time
# ==================================================================================================
def _back_and_forth(scene: Scene, t: float, speed: float, width: int) -> tuple[float, int]:
    """Position and facing of a figure moving at ``speed`` frame widths per second that turns round
    at the frame edges, so it stays in view."""
    low = scene.figure_height * EDGE_MARGIN_FRACTION
    span = width - 2 * low
    travelled = (scene.start * width - low + speed * width * t) % (2 * span)
    x, facing = (low + travelled, 1) if travelled < span else (low + 2 * span - travelled, -1)
    return (x, facing) if scene.direction > 0 else (width - x, -facing)


def _standing_hip(scene: Scene, size: tuple[int, int]) -> float:
    """Hip height (pixels from the top) at which straight legs touch the ground line."""
    return size[1] * GROUND_FRACTION - scene.figure_height * LEG_FRACTION


def _gait(scene: Scene, t: float, stride_hz: float, leg_swing: float, arm_swing: float):
    """Legs and arms of a walking/running stride; ``swing`` in [-1, 1] is the stride position."""
    swing = math.sin(2 * math.pi * (stride_hz * t + scene.phase))
    knee = 0.5 * leg_swing  # the trailing knee bends more the wider the stride
    legs = (leg_swing * swing, -knee * max(0.0, -swing), -leg_swing * swing, -knee * max(0.0, swing))
    arms = (-arm_swing * swing, 0.6 * arm_swing, arm_swing * swing, 0.6 * arm_swing)
    return legs, arms, swing


def _hip_drop(scene: Scene, thigh: float, shin: float) -> float:
    """How far the hip sits below standing height for a leg with these angles to reach the ground."""
    segment = scene.figure_height * LEG_FRACTION / 2
    return 2 * segment - segment * (math.cos(thigh) + math.cos(thigh + shin))


def running_pose(scene: Scene, t: float, size: tuple[int, int]) -> tuple[Pose, float]:
    legs, arms, swing = _gait(scene, t, RUN_STRIDE_HZ, RUN_LEG_SWING, RUN_ARM_SWING)
    bounce = abs(swing) * scene.figure_height * RUN_BOUNCE_FRACTION  # airborne at the ends of a stride
    front = legs[:2] if legs[0] > legs[2] else legs[2:]
    hip_y = _standing_hip(scene, size) + _hip_drop(scene, *front) - bounce
    x, facing = _back_and_forth(scene, t, RUN_SPEED, size[0])
    return Pose(x, hip_y, tilt=-facing * RUN_LEAN, facing=facing, legs=legs, arms=arms), bounce


def walking_pose(scene: Scene, t: float, size: tuple[int, int]) -> tuple[Pose, float]:
    legs, arms, _ = _gait(scene, t, WALK_STRIDE_HZ, WALK_LEG_SWING, WALK_ARM_SWING)
    hip_y = _standing_hip(scene, size) + _hip_drop(scene, legs[0], legs[1])
    x, facing = _back_and_forth(scene, t, WALK_SPEED, size[0])
    return Pose(x, hip_y, facing=facing, legs=legs, arms=arms), 0.0


def jumping_pose(scene: Scene, t: float, size: tuple[int, int]) -> tuple[Pose, float]:
    """Crouch on the ground for part of each cycle, then a parabolic flight with arms thrown up."""
    u = (JUMP_HZ * t + scene.phase) % 1.0
    x = scene.start * size[0] + size[0] * 0.3
    if u < JUMP_CROUCH_PART:  # knees bend and straighten again, arms swing back
        depth = math.sin(math.pi * u / JUMP_CROUCH_PART)
        legs = (0.9 * depth, -1.6 * depth, 0.9 * depth, -1.6 * depth)
        arms = (-0.8 * depth, 0.2, -0.8 * depth, 0.2)
        hip_y = _standing_hip(scene, size) + _hip_drop(scene, legs[0], legs[1])
        return Pose(x, hip_y, legs=legs, arms=arms), 0.0
    flight = (u - JUMP_CROUCH_PART) / (1.0 - JUMP_CROUCH_PART)
    lift = 4 * flight * (1 - flight) * size[1] * JUMP_HEIGHT_FRACTION
    tuck = 4 * flight * (1 - flight) * 0.5  # knees pulled up most at the top
    legs = (tuck, -1.5 * tuck, 0.8 * tuck, -1.2 * tuck)
    arms = (2.6, 0.2, 2.4, 0.2)
    return Pose(x, _standing_hip(scene, size) - lift, legs=legs, arms=arms), lift


def waving_pose(scene: Scene, t: float, size: tuple[int, int]) -> tuple[Pose, float]:
    wave = math.sin(2 * math.pi * (WAVE_HZ * t + scene.phase))
    arms = (2.4, 0.6 + WAVE_SWING * wave, -0.15, -0.1)  # front arm raised, forearm waving
    x = scene.start * size[0] + size[0] * 0.3
    legs = (0.15, 0.0, -0.15, 0.0)
    return Pose(x, _standing_hip(scene, size) + _hip_drop(scene, 0.15, 0.0), legs=legs, arms=arms), 0.0


def spinning_pose(scene: Scene, t: float, size: tuple[int, int]) -> tuple[Pose, float]:
    """Arms and legs spread like a star, turning in the image plane about the body's middle."""
    turn = 2 * math.pi * (SPIN_HZ * t + scene.phase) * scene.direction
    legs = (0.5, 0.0, -0.5, 0.0)
    arms = (math.pi / 2, 0.0, -math.pi / 2, 0.0)
    hip_y = size[1] * GROUND_FRACTION - scene.figure_height * 0.45  # clear of the ground while turning
    return Pose(size[0] / 2, hip_y, tilt=turn, legs=legs, arms=arms), 0.0


POSES = {
    "running": running_pose,
    "walking": walking_pose,
    "jumping": jumping_pose,
    "waving": waving_pose,
    "spinning": spinning_pose,
}


def pose_at(label: str, scene: Scene, t: float, size: tuple[int, int]) -> tuple[Pose, float]:
    """The pose for ``label`` at time ``t`` and how high above the ground the feet are (pixels)."""
    if label not in POSES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return POSES[label](scene, t, size)


def render_frame(label: str, scene: Scene, t: float, size: tuple[int, int]) -> np.ndarray:
    """One RGB frame (H x W x 3 uint8) of ``label`` at time ``t`` in ``scene``."""
    image = Image.fromarray(scene.background.copy())
    draw = ImageDraw.Draw(image)
    pose, lift = pose_at(label, scene, t, size)
    if label not in NO_SHADOW_LABELS:
        draw_shadow(draw, pose.x, size[1] * GROUND_FRACTION, scene.figure_height, lift)
    draw_figure(draw, pose, scene.figure_height, scene.figure_colour)
    return np.asarray(image)


# ==================================================================================================
# Writing
# ==================================================================================================
def _encoder_name() -> str:
    return "libx264" if "libx264" in av.codecs_available else "h264"


def _check_args(label: str, seconds: float, fps: int, size: tuple[int, int], cut_at: float | None) -> None:
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be positive")
    if size[0] <= 0 or size[1] <= 0 or size[0] % 2 or size[1] % 2:
        raise ValueError(f"size must be positive and even (yuv420p), got {size}")
    if cut_at is not None and not 0 < cut_at < seconds:
        raise ValueError(f"cut_at must lie inside the clip (0, {seconds}), got {cut_at}")


def _encode(path: Path, frames, fps: int, size: tuple[int, int]) -> None:
    """Encode RGB frames as H.264/yuv420p into an mp4 at ``path``."""
    with av.open(str(path), "w", format="mp4") as container:
        options = {"crf": CRF, "preset": PRESET, "g": str(fps)}  # a key frame every second
        stream = container.add_stream(_encoder_name(), rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_clip(path, label: str, seconds: float = 4.0, fps: int = DEFAULT_FPS,
               size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0, cut_at: float | None = None) -> Path:
    """Write one synthetic ``label`` clip to ``path`` (atomically) and return the path.

    With ``cut_at``, frames from that time on show a second, clearly different scene: a light scene with
    a dark figure before the cut and a dark scene with a larger, light figure moving the other way after.
    """
    path = Path(path)
    size = (int(size[0]), int(size[1]))
    _check_args(label, seconds, fps, size, cut_at)
    rng = np.random.default_rng(seed)
    if cut_at is None:
        scenes = [(0.0, make_scene(rng, size))]
    else:
        first = make_scene(rng, size, tone="light", direction=1)
        second = make_scene(rng, size, tone="dark", figure_scale=1.3, direction=-1)
        scenes = [(0.0, first), (cut_at, second)]
    frame_count = int(round(seconds * fps))

    def frames():
        for index in range(frame_count):
            t = index / fps
            start, scene = next((s, sc) for s, sc in reversed(scenes) if t >= s - 1e-9)
            yield render_frame(label, scene, t - start, size)

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        _encode(Path(temporary), frames(), fps, size)
        os.chmod(temporary, FILE_MODE)  # mkstemp makes owner-only files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@dataclass
class LibraryResult:
    written: list[Path]
    present: list[Path]

    @property
    def paths(self) -> list[Path]:
        return sorted(self.written + self.present)


def build_library(out_dir, force: bool = False) -> LibraryResult:
    """Write every clip of :data:`CLIPS` under ``out_dir``; existing clips are kept unless ``force``."""
    out_dir = Path(out_dir)
    result = LibraryResult(written=[], present=[])
    for spec in CLIPS:
        path = spec.path(out_dir)
        if path.is_file() and not force:
            result.present.append(path)
            continue
        write_clip(path, spec.label, seconds=spec.seconds, seed=spec.seed, cut_at=spec.cut_at)
        result.written.append(path)
    return result


def make_library(out_dir, force: bool = False) -> list[Path]:
    """Make sure the whole sample library exists under ``out_dir``; return all clip paths, sorted."""
    return build_library(out_dir, force=force).paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="library folder (OUT/<label>/<name>.mp4)")
    parser.add_argument("--force", action="store_true", help="rewrite clips that already exist")
    args = parser.parse_args(argv)
    result = build_library(args.out, force=args.force)
    print(f"sample clips: {len(result.written)} written, {len(result.present)} already present, "
          f"in {args.out} ({len(LABELS)} labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
