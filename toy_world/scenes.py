"""Procedural toy clips with known inverse depth, a foreground mask and a caption.

A clip is a figure (a stick ``person``, a round ``hare``, a flat ``tortoise``) of one colour doing one action
(walk, run, jump, wave, spin, approach) on one background (``meadow``, ``desert``, ``night``). Some clips have a
hard cut halfway to another scene (:attr:`ClipSpec.cut`). Everything is drawn from the spec alone: the same
spec gives the same arrays on every call and every machine.

Geometry (the ground truth of :func:`render_clip`): a pinhole camera looks level over a flat ground. The sky is
far, at the constant inverse depth :data:`SKY_INVERSE_DEPTH`; the ground's inverse depth grows linearly from
:data:`HORIZON_INVERSE_DEPTH` at the horizon row to 1 at the bottom row. A figure is a flat cut-out standing
upright on the ground: its inverse depth is the ground's at its contact row times :data:`FIGURE_DEPTH_MARGIN`
(so it is always nearer than the ground behind it), and its size in pixels is proportional to that inverse
depth (perspective). A jump lifts the figure but keeps its contact point (its shadow); ``approach`` moves the
contact point down the frame, so the figure grows and gets nearer.

Splits: :func:`world_specs` derives each clip's seed from ``(seed, split, index)``; train seeds are even and
held-out seeds odd, so the two splits never share a per-clip seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("person", "hare", "tortoise")
COLOURS = {
    "red": (225, 30, 30),
    "blue": (30, 70, 250),
    "white": (250, 250, 250),
    "purple": (160, 40, 220),
    "orange": (255, 140, 0),
}
# Colours no clip of a world has and no caption names: the looks of toy characters (toy_world.identity_checks),
# which can only come from a trained character, never from the captions.
CHARACTER_COLOURS = {
    "pink": (255, 105, 180),
}
FIGURE_COLOURS = {**COLOURS, **CHARACTER_COLOURS}
ACTIONS = ("walk", "run", "jump", "wave", "spin", "approach")
GERUNDS = {"walk": "walking", "run": "running", "jump": "jumping", "wave": "waving", "spin": "spinning",
           "approach": "approaching"}
BACKGROUNDS = ("meadow", "desert", "night")
PLACES = {"meadow": "in a meadow", "desert": "in a desert", "night": "at night"}
SPLITS = ("train", "heldout")

FPS = 8
MIN_SECONDS, MAX_SECONDS = 2.0, 6.0
CUT_PROBABILITY = 0.15
SKY_INVERSE_DEPTH = 0.1
HORIZON_INVERSE_DEPTH = 0.15
FIGURE_DEPTH_MARGIN = 1.04
FIGURE_HEIGHT_PER_INVERSE_DEPTH = 0.8  # figure height / frame height at inverse depth 1

# (sky top, sky at the horizon, ground at the horizon, ground at the bottom)
PALETTES = {
    "meadow": ((100, 160, 230), (175, 215, 245), (55, 125, 45), (95, 180, 70)),
    "desert": ((225, 215, 190), (245, 240, 225), (195, 160, 100), (230, 200, 140)),
    "night": ((5, 8, 30), (25, 35, 85), (20, 26, 28), (50, 58, 52)),
}


@dataclass(frozen=True)
class ClipSpec:
    """One toy clip: what is drawn, for how long, from which seed; ``cut`` is the scene after a hard cut halfway."""

    kind: str
    colour: str
    action: str
    background: str
    seconds: float
    seed: int
    cut: ClipSpec | None = None

    def __post_init__(self):
        for field, value, allowed in (("kind", self.kind, KINDS), ("colour", self.colour, tuple(FIGURE_COLOURS)),
                                      ("action", self.action, ACTIONS), ("background", self.background, BACKGROUNDS)):
            if value not in allowed:
                raise ValueError(f"ClipSpec.{field}: {value!r} is not one of {', '.join(allowed)}")
        if not MIN_SECONDS <= self.seconds <= MAX_SECONDS:
            raise ValueError(f"ClipSpec.seconds: must be between {MIN_SECONDS:g} and {MAX_SECONDS:g}, "
                             f"got {self.seconds:g}")
        if self.cut is not None and self.cut.cut is not None:
            raise ValueError("ClipSpec.cut: a clip has at most one cut")

    @property
    def label(self) -> str:
        """The clip's label (its folder name): the gerund of the first scene's action, e.g. ``jumping``."""
        return GERUNDS[self.action]

    def frame_count(self, fps: int = FPS) -> int:
        return max(2, round(self.seconds * fps))

    def cut_frame(self, fps: int = FPS) -> int | None:
        """The index of the first frame of the scene after the cut (None: no cut)."""
        return None if self.cut is None else self.frame_count(fps) // 2

    def cut_seconds(self, fps: int = FPS) -> float | None:
        """When the cut happens, in seconds from the start (None: no cut)."""
        frame = self.cut_frame(fps)
        return None if frame is None else frame / fps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClipSpec:
        data = dict(data)
        if data.get("cut") is not None:
            data["cut"] = cls.from_dict(data["cut"])
        return cls(**data)


def scene_caption(spec: ClipSpec) -> str:
    """One scene in words: ``a red hare jumping in a meadow``, ``an orange tortoise waving at night``."""
    article = "an" if spec.colour[0] in "aeiou" else "a"
    return f"{article} {spec.colour} {spec.kind} {GERUNDS[spec.action]} {PLACES[spec.background]}"


def caption(spec: ClipSpec) -> str:
    """The clip's caption: its scene, and the scene after the cut if there is one (``..., then a ...``)."""
    text = scene_caption(spec)
    return text if spec.cut is None else f"{text}, then {scene_caption(spec.cut)}"


# -- the world's clips ---------------------------------------------------------------------------------
def clip_seed(seed: int, split: str, index: int) -> int:
    """The per-clip seed of clip ``index`` of ``split``: train seeds are even, held-out seeds odd."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    state = int(np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1, np.uint64)[0])
    return (state >> 2) << 1 | SPLITS.index(split)


def world_specs(seed: int, clips: int, split: str = "train") -> list[ClipSpec]:
    """``clips`` clip specs of ``split`` (``train`` or ``heldout``) of the world ``seed``.

    Kind, colour and action cycle through every combination (in a seeded order), so each kind + colour and
    each action is as common as the others; the background, the length and the cut (about
    :data:`CUT_PROBABILITY` of the clips) come from each clip's own seed.
    """
    if clips < 0:
        raise ValueError(f"clips must be 0 or more, got {clips}")
    combos = [(k, c, a) for k in KINDS for c in COLOURS for a in ACTIONS]
    order = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 0, 7]).permutation(len(combos))
    specs = []
    for index in range(clips):
        own_seed = clip_seed(seed, split, index)
        rng = np.random.default_rng(own_seed)
        kind, colour, action = combos[order[index % len(combos)]]
        background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        seconds = float(rng.integers(4, 13)) / 2  # 2.0 .. 6.0 in half seconds
        cut = None
        if rng.random() < CUT_PROBABILITY:
            cut = ClipSpec(
                kind=KINDS[(KINDS.index(kind) + 1 + rng.integers(len(KINDS) - 1)) % len(KINDS)],
                colour=list(COLOURS)[rng.integers(len(COLOURS))],
                action=ACTIONS[rng.integers(len(ACTIONS))],
                background=BACKGROUNDS[(BACKGROUNDS.index(background) + 1 + rng.integers(2)) % len(BACKGROUNDS)],
                seconds=seconds, seed=own_seed ^ (1 << 40),
            )
        specs.append(ClipSpec(kind, colour, action, background, seconds, own_seed, cut))
    return specs


# -- drawing ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """What a scene's seed decides once: the horizon, colours, texture, where the figure stands and moves."""

    horizon: float  # row of the horizon, as a fraction of the frame height
    start_x: float  # the figure's first position, as a fraction of the frame width
    direction: int  # +1: moves to the right
    ground_row: float  # contact row (fraction of the height) of figures that do not approach
    phase: float  # seconds added to the clock (limbs do not all start the same way)
    colour_jitter: tuple[int, int, int]
    stars: tuple[tuple[float, float], ...]
    grain_seed: int


def _layout(spec: ClipSpec) -> _Layout:
    rng = np.random.default_rng([spec.seed, 1])
    return _Layout(
        horizon=float(rng.uniform(0.36, 0.46)),
        start_x=float(rng.uniform(0.3, 0.7)),
        direction=1 if rng.random() < 0.5 else -1,
        ground_row=float(rng.uniform(0.8, 0.9)),
        phase=float(rng.uniform(0, 2)),
        colour_jitter=tuple(int(v) for v in rng.integers(-12, 13, size=3)),
        stars=tuple((float(x), float(y)) for x, y in rng.uniform(0, 1, size=(14, 2))),
        grain_seed=int(rng.integers(2**31)),
    )


def _ground_inverse_depth(rows: np.ndarray, horizon_row: float, height: int) -> np.ndarray:
    """Inverse depth of the ground at (fractional) pixel rows: linear from the horizon to 1 at the bottom row."""
    fraction = (rows - horizon_row) / max(height - 1 - horizon_row, 1e-6)
    return HORIZON_INVERSE_DEPTH + (1.0 - HORIZON_INVERSE_DEPTH) * np.clip(fraction, 0.0, 1.0)


def _background(spec: ClipSpec, layout: _Layout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The static frame behind the figure (H x W x 3 float) and its inverse depth (H x W)."""
    sky_top, sky_low, ground_far, ground_near = (np.array(c, dtype=np.float32) for c in PALETTES[spec.background])
    horizon_row = layout.horizon * size
    rows = np.arange(size, dtype=np.float32)
    sky_t = np.clip(rows / max(horizon_row, 1), 0, 1)[:, None]
    ground_t = np.clip((rows - horizon_row) / (size - horizon_row), 0, 1)[:, None]
    inverse = _ground_inverse_depth(rows, horizon_row, size)
    # stripes at equal steps of depth: they crowd together towards the horizon (a perspective cue)
    stripes = np.sign(np.sin(2 * math.pi * 1.5 / inverse))[:, None] * 5.0
    sky = sky_top + (sky_low - sky_top) * sky_t
    ground = ground_far + (ground_near - ground_far) * ground_t + stripes
    is_sky = (rows < horizon_row)[:, None]
    column = np.where(is_sky, sky, ground) + np.array(layout.colour_jitter, dtype=np.float32)
    image = np.repeat(column[:, None, :], size, axis=1)
    grain = np.random.default_rng(layout.grain_seed).normal(0, 2.0, size=(size, size, 1)).astype(np.float32)
    image = image + grain
    if spec.background == "night":
        for x, y in layout.stars:
            row, col = int(y * horizon_row * 0.9), int(x * (size - 1))
            image[row, col] = (235, 235, 210)
    depth_column = np.where(rows < horizon_row, SKY_INVERSE_DEPTH, inverse).astype(np.float32)
    return image, np.repeat(depth_column[:, None], size, axis=1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, points: int = 20) -> list[tuple[float, float]]:
    angles = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _limb(x: float, y: float, length: float, angle: float) -> tuple[float, float]:
    """The end of a limb of ``length`` from (x, y) at ``angle`` from straight down (positive: forwards)."""
    return x + length * math.sin(angle), y - length * math.cos(angle)


def _figure_shapes(kind: str, action: str, t: float) -> tuple[list[list[tuple[float, float]]], list[tuple]]:
    """The figure in local units (height 1, feet at y=0, y up, facing +x): filled polygons and thick lines
    ``(start, end, width)``, posed for the action at time ``t`` seconds."""
    swing = {"walk": (0.35, 1.0), "run": (0.9, 2.6), "approach": (0.35, 1.0)}.get(action, (0.0, 1.0))
    stride = swing[0] * math.sin(2 * math.pi * swing[1] * t)
    wave = 0.6 * math.sin(2 * math.pi * 2.0 * t) if action == "wave" else 0.0
    tuck = 0.5 if action == "jump" else 0.0
    polygons: list[list[tuple[float, float]]] = []
    lines: list[tuple] = []
    if action == "approach":  # coming towards the camera: seen from the front, stepping left and right
        return _frontal_shapes(kind, t)
    if kind == "person":
        hip, shoulder = (0.0, 0.46), (0.0, 0.78)
        polygons.append(_ellipse(0.0, 0.89, 0.11, 0.11))
        lines.append((hip, shoulder, 0.08))
        spread = {"spin": 0.45, "wave": 0.15}.get(action, 0.0)  # legs apart (and arms out when spinning)
        for sign in (1, -1):
            knee = _limb(*hip, 0.23, sign * (stride + spread) + tuck * 0.9)
            lines.append((hip, knee, 0.07))
            lines.append((knee, _limb(*knee, 0.23, sign * (stride * 0.6 + spread) - tuck * 0.9), 0.07))
        arms_out = 1.7 if action == "spin" else 0.25
        lines.append((shoulder, _limb(*shoulder, 0.3, -stride * 0.8 - tuck * 4.5 - arms_out), 0.06))
        front = math.pi - 0.5 + wave * 0.6 if action == "wave" else stride * 0.8 + tuck * 4.5 + arms_out
        lines.append((shoulder, _limb(*shoulder, 0.38 if action == "wave" else 0.3, front), 0.07))
    elif kind == "hare":
        polygons.append(_ellipse(-0.05, 0.32, 0.3, 0.2))  # body
        polygons.append(_ellipse(0.22, 0.55, 0.14, 0.12))  # head
        for number, offset in enumerate((0.0, 0.08)):
            root = (0.16 + offset, 0.63)
            lines.append((root, _limb(*root, 0.33, math.pi + 0.2 + 0.3 * number + (wave if number else 0.0)), 0.07))
        for sign in (1, -1):
            lines.append(((sign * 0.12, 0.15), _limb(sign * 0.12, 0.15, 0.15, sign * stride + tuck * 1.2), 0.08))
        if action == "wave":
            lines.append(((0.15, 0.4), _limb(0.15, 0.4, 0.4, math.pi - 0.5 + wave * 0.7), 0.08))
    else:  # tortoise: a wide dome shell on four short legs, head in front
        shell = [(0.5 * math.cos(a), 0.12 + 0.38 * math.sin(a)) for a in np.linspace(0, math.pi, 16)]
        polygons.append(shell)
        polygons.append([(-0.52, 0.1), (0.52, 0.1), (0.52, 0.16), (-0.52, 0.16)])  # rim
        polygons.append(_ellipse(0.62, 0.22 + 0.05 * math.sin(4 * t) * (action == "wave"), 0.11, 0.09))
        for x in (-0.35, -0.12, 0.12, 0.35):
            sign = 1 if x in (-0.35, 0.12) else -1
            lines.append(((x, 0.12), _limb(x, 0.12, 0.12, sign * stride * 0.6 + tuck * 1.2), 0.08))
        if action == "wave":
            lines.append(((0.4, 0.2), _limb(0.4, 0.2, 0.45, 2.4 + wave * 0.7), 0.09))
    return polygons, lines


def _frontal_shapes(kind: str, t: float) -> tuple[list[list[tuple[float, float]]], list[tuple]]:
    """The figure seen from the front (approaching), in the units of :func:`_figure_shapes`."""
    step = 0.12 * math.sin(2 * math.pi * 1.0 * t)  # the body rocks from one foot to the other
    polygons: list[list[tuple[float, float]]] = []
    lines: list[tuple] = []
    if kind == "person":
        hip, shoulder = (0.0, 0.46), (0.0, 0.78)
        polygons.append(_ellipse(0.0, 0.89, 0.11, 0.11))
        lines.append((hip, shoulder, 0.1))
        for sign in (1, -1):
            lines.append((hip, (sign * 0.12, max(0.0, sign * step)), 0.08))
            lines.append((shoulder, (sign * 0.24, 0.5), 0.07))
    elif kind == "hare":
        polygons.append(_ellipse(0.0, 0.3, 0.19, 0.24))  # body
        polygons.append(_ellipse(0.0, 0.6, 0.13, 0.12))  # head
        for sign in (1, -1):
            lines.append(((sign * 0.05, 0.66), (sign * 0.13, 1.0), 0.07))  # ears
            lines.append(((sign * 0.1, 0.1), (sign * 0.14, max(0.0, sign * step * 0.5)), 0.08))
    else:
        polygons.append([(0.3 * math.cos(a), 0.14 + 0.3 * math.sin(a)) for a in np.linspace(0, math.pi, 12)])
        polygons.append(_ellipse(0.0, 0.16, 0.1, 0.09))  # head, in front of the shell
        for sign in (1, -1):
            lines.append(((sign * 0.26, 0.14), (sign * 0.34, max(0.0, sign * step * 0.3)), 0.09))
    return polygons, lines


def _figure_pose(spec: ClipSpec, layout: _Layout, t: float, size: int) -> dict:
    """Where the figure stands at ``t``: its contact point (pixels), height (pixels), lift, rotation, facing."""
    height_px = size - 1
    horizon_row = layout.horizon * size
    duration = spec.frame_count() / FPS
    ground_row = layout.ground_row * height_px
    if spec.action == "approach":
        progress = min(1.0, t / max(duration - 1.0 / FPS, 1e-6))
        start = horizon_row + 0.25 * (height_px - horizon_row)
        ground_row = start + progress * (0.97 * height_px - start)
    inverse = float(_ground_inverse_depth(np.array([ground_row]), horizon_row, size)[0])
    figure_height = FIGURE_HEIGHT_PER_INVERSE_DEPTH * inverse * size
    speed = {"walk": 0.07, "run": 0.3}.get(spec.action, 0.0)
    span = 0.7  # the figure turns round between 15% and 85% of the width
    travel = (layout.start_x - 0.15 + layout.direction * speed * t) % (2 * span)
    x_fraction = 0.15 + (travel if travel <= span else 2 * span - travel)
    facing = layout.direction * (1 if (layout.start_x - 0.15 + layout.direction * speed * t) % (2 * span) <= span
                                 else -1)
    lift = 0.0
    if spec.action == "jump":
        lift = 0.3 * abs(math.sin(math.pi * 1.2 * (t + layout.phase)))
    elif spec.action == "run":
        lift = 0.05 * abs(math.sin(2 * math.pi * 2.6 * (t + layout.phase)))
    elif spec.action == "spin":  # spinning in the air, clear of the ground
        lift = 0.55 if spec.kind == "tortoise" else 0.15
    rotation = 2 * math.pi * 0.75 * (t + layout.phase) * layout.direction if spec.action == "spin" else 0.0
    lean = 0.35 if spec.action == "run" and spec.kind != "tortoise" else 0.0  # forwards, about the feet
    return {"x": x_fraction * (size - 1), "ground_row": ground_row, "inverse": inverse,
            "height": figure_height, "lift": lift, "rotation": rotation, "lean": lean, "facing": facing}


def _draw_figure(spec: ClipSpec, pose: dict, t: float, size: int) -> np.ndarray:
    """The figure's mask (H x W bool) at ``pose``."""
    polygons, lines = _figure_shapes(spec.kind, spec.action, t)
    scale, facing, rotation = pose["height"], pose["facing"], pose["rotation"]
    centre = 0.5 if spec.kind != "tortoise" else 0.25
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    cos_l, sin_l = math.cos(pose["lean"]), math.sin(pose["lean"])

    def place(point):
        x, y = point[0] * cos_l + point[1] * sin_l, point[1] * cos_l - point[0] * sin_l
        x, y = x * facing, y - centre
        x, y = x * cos_r - y * sin_r, x * sin_r + y * cos_r
        return (pose["x"] + x * scale, pose["ground_row"] - (y + centre + pose["lift"]) * scale)

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for polygon in polygons:
        draw.polygon([place(p) for p in polygon], fill=255)
    for start, end, width in lines:
        draw.line([place(start), place(end)], fill=255, width=max(1, round(width * scale)))
    return np.asarray(image) > 127


def _render_scene(spec: ClipSpec, frames: range, size: int, fps: int):
    layout = _layout(spec)
    background, background_depth = _background(spec, layout, size)
    figure_colour = np.clip(np.array(FIGURE_COLOURS[spec.colour], dtype=np.float32) + layout.colour_jitter, 0, 255)
    shadow_rows, shadow_cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb, depth, masks = [], [], []
    for index in frames:
        t = index / fps
        pose = _figure_pose(spec, layout, t, size)
        mask = _draw_figure(spec, pose, t + layout.phase, size)
        frame = background.copy()
        # a soft shadow on the ground under the figure's contact point (it stays there when the figure jumps)
        shadow = ((shadow_cols - pose["x"]) / max(pose["height"] * 0.35, 1)) ** 2 + \
                 ((shadow_rows - pose["ground_row"]) / max(pose["height"] * 0.06, 0.7)) ** 2
        frame *= 1.0 - 0.35 * np.clip(1.0 - shadow, 0, 1)[:, :, None]
        shade = 1.0 - 0.25 * np.clip((shadow_rows - (pose["ground_row"] - pose["height"])) / max(pose["height"], 1),
                                     0, 1)[:, :, None]
        frame = np.where(mask[:, :, None], figure_colour * shade, frame)
        rgb.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
        depth.append(np.where(mask, np.float32(pose["inverse"] * FIGURE_DEPTH_MARGIN), background_depth))
        masks.append(mask)
    return rgb, depth, masks


def render_clip(spec: ClipSpec, size: int = 64, fps: int = FPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``spec``: frames (T x H x W x 3 uint8), inverse depth (T x H x W float32, near = large) and the
    figure's mask (T x H x W bool), with H = W = ``size`` (even, at least 32) and T = ``seconds * fps``.

    After a cut the second scene starts from its own time 0 at :meth:`ClipSpec.cut_frame`.
    """
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number of pixels, at least 32, got {size}")
    count = spec.frame_count(fps)
    cut = spec.cut_frame(fps) if spec.cut is not None else count
    rgb, depth, masks = _render_scene(spec, range(0, cut), size, fps)
    if spec.cut is not None:
        more = _render_scene(spec.cut, range(0, count - cut), size, fps)
        rgb, depth, masks = rgb + more[0], depth + more[1], masks + more[2]
    return np.stack(rgb), np.stack(depth).astype(np.float32), np.stack(masks)


def scene_attributes(spec: ClipSpec, fps: int = FPS) -> list[ClipSpec]:
    """The scene each frame shows (the spec itself, or its cut after the cut frame): one entry per frame."""
    count = spec.frame_count(fps)
    cut = spec.cut_frame(fps) if spec.cut is not None else count
    return [spec] * cut + [spec.cut] * (count - cut)
