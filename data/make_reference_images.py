"""Draw a small, deterministic set of reference images of a cartoon hare for the demo's character.

``make demo`` trains a tiny character from these (``train-character --images ...``), so the demo needs
no photographs. Each image shows the same character (a grey-brown hare with long ears, a cream belly and
muzzle, a pink nose and a white tail) in a different pose, place and size, on a different background,
the way a user's 3-20 reference images would vary:

* ``hare_01_meadow.png``   160x160, sitting on a meadow, ears up;
* ``hare_02_sky.png``      192x144, facing left under a sky gradient, ears tilted back;
* ``hare_03_studio.png``   256x256, large, on a plain warm backdrop;
* ``hare_04_closeup.png``  144x192, a close-up of the head and shoulders;
* ``hare_05_flowers.png``  200x176, stretched out mid-hop over a flowery meadow.

Every shape is computed in closed form (the flowers come from a seeded NumPy RNG), drawn at 4x and
downsampled, so every run writes the same pixels. Files are written atomically and kept unless
``--force``.

Usage::

    python data/make_reference_images.py --out data/reference_images/hare [--force]
"""

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
FUR = (139, 115, 92)
FUR_DARK = (98, 80, 64)
BELLY = (236, 224, 200)
EAR_INNER = (232, 170, 178)
NOSE = (222, 120, 140)
EYE = (28, 22, 20)
OUTLINE = (60, 46, 36)


@dataclass(frozen=True)
class Pose:
    """Where and how the hare is drawn, in fractions of the canvas (``x``, ``y``: centre of the body)."""

    name: str
    size: tuple[int, int]
    background: str
    x: float
    y: float
    scale: float  # body height as a fraction of the canvas height
    ear_tilt: float = 0.0  # degrees, positive leans the ears back
    facing_left: bool = False
    stretch: float = 1.0  # body width / height ratio multiplier (a hop stretches it)
    head_only: bool = False


POSES = (
    Pose("hare_01_meadow", (160, 160), "meadow", 0.5, 0.62, 0.42),
    Pose("hare_02_sky", (192, 144), "sky", 0.45, 0.6, 0.45, ear_tilt=25.0, facing_left=True),
    Pose("hare_03_studio", (256, 256), "studio", 0.5, 0.6, 0.52, ear_tilt=-8.0),
    Pose("hare_04_closeup", (144, 192), "sky", 0.5, 0.95, 1.0, ear_tilt=10.0, head_only=True),
    Pose("hare_05_flowers", (200, 176), "flowers", 0.5, 0.58, 0.34, ear_tilt=40.0, stretch=1.7),
)


def _gradient(size, top, bottom) -> Image.Image:
    width, height = size
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = (1 - t) * np.array(top, dtype=np.float64) + t * np.array(bottom, dtype=np.float64)
    return Image.fromarray(np.repeat(rows, width, axis=1).round().astype(np.uint8))


def _background(kind: str, size) -> Image.Image:
    width, height = size
    if kind == "studio":
        return _gradient(size, (246, 226, 196), (214, 180, 150))
    sky = _gradient(size, (120, 170, 230), (215, 232, 250))
    if kind == "sky":
        draw = ImageDraw.Draw(sky)
        for cx, cy, r in ((0.2, 0.2, 0.08), (0.27, 0.18, 0.1), (0.75, 0.28, 0.07), (0.82, 0.26, 0.09)):
            draw.ellipse([(cx - r) * width, (cy - r * 0.6) * height, (cx + r) * width, (cy + r * 0.6) * height],
                         fill=(250, 250, 252))
        return sky
    grass_top = int(height * 0.55)
    grass = _gradient((width, height - grass_top), (118, 176, 80), (70, 128, 48))
    sky.paste(grass, (0, grass_top))
    if kind == "flowers":
        rng = np.random.default_rng(5)
        draw = ImageDraw.Draw(sky)
        for _ in range(40):
            fx, fy = rng.uniform(0, width), rng.uniform(grass_top + 2, height)
            r = rng.uniform(1.5, 3.5) * width / 200
            colour = [(250, 240, 90), (245, 245, 245), (240, 140, 180)][int(rng.integers(3))]
            draw.ellipse([fx - r, fy - r, fx + r, fy + r], fill=colour)
    return sky


def _rotated_ellipse(draw, cx, cy, rx, ry, angle_deg, fill, outline=None, width=0, points=48):
    a = math.radians(angle_deg)
    pts = []
    for i in range(points):
        t = 2 * math.pi * i / points
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)))
    draw.polygon(pts, fill=fill, outline=outline, width=width)


def draw_hare(pose: Pose) -> Image.Image:
    """One reference image (RGB, ``pose.size``)."""
    width, height = pose.size
    s = SUPERSAMPLE
    canvas = _background(pose.background, pose.size).resize((width * s, height * s), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    unit = pose.scale * height * s  # body height in supersampled pixels
    cx, cy = pose.x * width * s, pose.y * height * s
    line = max(1, int(unit * 0.02))
    direction = -1 if pose.facing_left else 1

    if not pose.head_only:
        # tail, body, belly, hind foot
        tail_x = cx - direction * unit * 0.5 * pose.stretch
        draw.ellipse([tail_x - unit * 0.12, cy - unit * 0.05, tail_x + unit * 0.12, cy + unit * 0.19],
                     fill=(250, 250, 248), outline=OUTLINE, width=line)
        bw, bh = unit * 0.5 * pose.stretch, unit * 0.5
        draw.ellipse([cx - bw, cy - bh, cx + bw, cy + bh], fill=FUR, outline=OUTLINE, width=line)
        draw.ellipse([cx - bw * 0.45 + direction * bw * 0.25, cy - bh * 0.1, cx + bw * 0.45 + direction * bw * 0.25,
                      cy + bh * 0.85], fill=BELLY)
        foot_x = cx - direction * bw * 0.35
        draw.ellipse([foot_x - unit * 0.28, cy + bh * 0.72, foot_x + unit * 0.28, cy + bh * 1.02], fill=FUR_DARK,
                     outline=OUTLINE, width=line)
        head_x, head_y, head_r = cx + direction * bw * 0.75, cy - bh * 0.85, unit * 0.3
    else:
        draw.ellipse([cx - unit * 0.55, cy - unit * 0.3, cx + unit * 0.55, cy + unit * 0.6], fill=FUR,
                     outline=OUTLINE, width=line)
        head_x, head_y, head_r = cx, cy - unit * 0.45, unit * 0.26

    # ears (drawn behind the head), leaning back by ear_tilt
    for offset, lean in ((-0.45, -8.0), (0.45, 8.0)):
        angle = lean - direction * pose.ear_tilt
        ex = head_x + offset * head_r
        length = head_r * 1.6
        ax = math.radians(angle)
        ecx, ecy = ex + math.sin(ax) * length * 0.8, head_y - head_r * 0.6 - math.cos(ax) * length * 0.8
        _rotated_ellipse(draw, ecx, ecy, head_r * 0.28, length * 0.75, angle, FUR, OUTLINE, line)
        _rotated_ellipse(draw, ecx, ecy + head_r * 0.05, head_r * 0.14, length * 0.6, angle, EAR_INNER)
    # head, muzzle, eye, nose, whiskers
    draw.ellipse([head_x - head_r, head_y - head_r, head_x + head_r, head_y + head_r], fill=FUR, outline=OUTLINE,
                 width=line)
    mx = head_x if pose.head_only else head_x + direction * head_r * 0.45
    draw.ellipse([mx - head_r * 0.45, head_y + head_r * 0.05, mx + head_r * 0.45, head_y + head_r * 0.75], fill=BELLY)
    if pose.head_only:
        eyes = [head_x - head_r * 0.38, head_x + head_r * 0.38]
    else:
        eyes = [head_x + direction * head_r * 0.2]
    for ex in eyes:
        er = head_r * 0.14
        draw.ellipse([ex - er, head_y - head_r * 0.35 - er, ex + er, head_y - head_r * 0.35 + er], fill=EYE)
        eye_y = head_y - head_r * 0.35
        draw.ellipse([ex - er * 0.2, eye_y - er * 0.7, ex + er * 0.35, eye_y - er * 0.15], fill=(255, 255, 255))
    nx = head_x + direction * head_r * 0.8 if not pose.head_only else head_x
    nr = head_r * 0.12
    draw.ellipse([nx - nr, head_y + head_r * 0.1 - nr, nx + nr, head_y + head_r * 0.1 + nr], fill=NOSE)
    for dy in (-0.05, 0.12, 0.29):
        for side in ((-1, 1) if pose.head_only else (direction,)):
            draw.line([nx, head_y + head_r * 0.2, nx + side * head_r * 0.9, head_y + head_r * (0.2 + dy)],
                      fill=OUTLINE, width=max(1, line // 2))
    return canvas.resize(pose.size, Image.Resampling.LANCZOS)


def _write_png(image: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def make_reference_images(out: Path, force: bool = False) -> list[Path]:
    """Write the :data:`POSES` into ``out``; returns the paths (existing files kept unless ``force``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for pose in POSES:
        path = out / f"{pose.name}.png"
        if force or not path.exists():
            _write_png(draw_hare(pose), path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/reference_images/hare"),
                        help="folder to write the images into [default: %(default)s]")
    parser.add_argument("--force", action="store_true", help="rewrite existing images")
    args = parser.parse_args(argv)
    paths = make_reference_images(args.out, args.force)
    print(f"{len(paths)} reference images of a cartoon hare in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
