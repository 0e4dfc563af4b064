"""Identity: a toy character trained with ``train-character --models toy`` keeps a look no caption names.

The character is a **pink hare** (:data:`toy_world.scenes.CHARACTER_COLOURS`: no clip of a world is pink and no
caption says "pink", so the toy render model cannot draw it from text alone). Its five reference images are
single frames of pink hares in the three backgrounds (:func:`reference_images`); ``train-character`` learns its
token's TimeInv table and a LoRA from them as depth-conditioned pseudo-videos (the recipe:
:data:`TRAINING_ARGUMENTS`).

It is measured as a story uses it: held-out hare clips guide the render with their toy-DPT depth (τ = 1), and
each rendered frame is judged by pixels (:mod:`toy_world.figure_pixels`): the figure's colour is the
character's. The share of such frames is measured with the character's token in the caption ("a <zuri> hare
jumping in a meadow", the token before its class word as storyboards write it: should be at least 0.8) and with
the class word alone ("a hare jumping in a meadow": should be at most 0.3), the character's LoRA on in both.
The kind comes from the guide's depth here: the figure IoU with the guide's hare says the shape is kept, and the
toy CLIP judges each frame's kind as a second opinion (the share of frames whose nearest kind prompt is "a
hare"; on single held-out frames of the world it is right 62-78% of the time, so it is a weak judge).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toy_world.figure_pixels import figure_colour, figure_mask, mask_iou
from toy_world.render_checks import Guide, render_shot
from toy_world.scenes import BACKGROUNDS, FPS, GERUNDS, KINDS, PLACES, ClipSpec, render_clip

NAME = "zuri"
TOKEN = "<zuri>"
KIND = "hare"
COLOUR = "pink"
SUBJECTS = (f"{TOKEN} {KIND}", KIND)  # the caption's subject: the token before its class word, the class word alone
REFERENCE_COUNT = 5
REFERENCE_SEED = 4_000_001  # odd and far from any world's clip seeds
# train-character's arguments for the toy character (beyond --images, --out, --models toy)
# (tried on 4 held-out shots: LoRA lr 1e-3 on qkvo wrecked the backgrounds even without the token; 3e-4 lost the
# figure's shape; a table lr of 0.02 or 0.05 gave less pink than 0.01)
TRAINING_ARGUMENTS = ("--name", NAME, "--token", TOKEN, "--class-word", KIND, "--resolution", "64", "--frames", "8",
                      "--steps", "400", "--buckets", "50", "--table-lr", "0.01", "--lora-lr", "0.0001", "--rank", "4",
                      "--lora-targets", "qkv", "--batch-size", "2", "--checkpoint-every", "100")


def reference_images(count: int = REFERENCE_COUNT, size: int = 64) -> list[np.ndarray]:
    """``count`` frames (``size`` x ``size`` x 3 uint8) of pink hares: other backgrounds, actions and moments."""
    actions = ("walk", "jump", "wave", "run", "spin")
    images = []
    for index in range(count):
        spec = ClipSpec(KIND, COLOUR, actions[index % len(actions)], BACKGROUNDS[index % len(BACKGROUNDS)], 2.0,
                        REFERENCE_SEED + 2 * index)
        frames = render_clip(spec, size=size)[0]
        images.append(frames[(5 * index + 3) % len(frames)])
    return images


def write_reference_images(folder: Path, count: int = REFERENCE_COUNT, size: int = 64) -> list[Path]:
    """The reference images as PNGs in ``folder`` (what ``train-character --images`` reads)."""
    from PIL import Image

    from storyreel.atomic_files import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(reference_images(count, size)):
        path = folder / f"{NAME}-{index}.png"
        with atomic_path(path) as temporary:
            Image.fromarray(image).save(temporary, format="PNG")
        paths.append(path)
    return paths


def identity_caption(spec: ClipSpec, subject: str) -> str:
    """The guide's caption with ``subject`` ("<zuri> hare", or the class word) in place of its colour and kind."""
    return f"a {subject} {GERUNDS[spec.action]} {PLACES[spec.background]}"


def character_clips(clips, shots: int) -> list:
    """The first ``shots`` hare clips without a cut."""
    return [clip for clip in clips if clip.spec.kind == KIND and clip.spec.cut is None][:shots]


def character_guides(clips, shots: int, depth_of=None) -> list[Guide]:
    """:func:`character_clips` as guides (their depth from ``depth_of``, default the truth)."""
    return [Guide.from_clip(clip, depth_of=depth_of) for clip in character_clips(clips, shots)]


def load_character_set(components, character):
    """``components`` with ``character`` (a :class:`characters.Character` or the path of its file) registered:
    its token, and its LoRA at scale 1."""
    from characters import Character, CharacterSet, load_character
    from storyreel.models.loading import base_model_record

    if not isinstance(character, Character):
        character = load_character(character)
    character_set = CharacterSet(components, base_model=base_model_record(components))
    character_set.add(character, name=NAME, token=TOKEN)
    character_set.activate({NAME: 1.0})
    return character_set


def kind_judge(embedder):
    """``judge(frames) -> list[str]``: for each frame, the kind whose prompt ("a hare") ``embedder`` (a
    :class:`retrieval.clip_models.ClipEmbedder`, the toy CLIP) finds nearest."""
    texts = embedder.encode_texts([f"a {kind}" for kind in KINDS])

    def judge(frames: np.ndarray) -> list[str]:
        images = embedder.encode_images(embedder.prepare_frames(frames))
        return [KINDS[int(i)] for i in np.argmax(images @ texts.T, axis=1)]

    return judge


def render_subject(components, character_set, encode, guide: Guide, subject: str, seed: int, **render) -> np.ndarray:
    """The frames of the guide's caption with ``subject`` (τ = 1), the character's TimeInv rows per step when the
    subject holds its token."""
    from characters import per_step_embeddings

    prompt = identity_caption(guide.spec, subject)
    hook = per_step_embeddings(character_set, encode, prompt, "") if TOKEN in subject else None
    return render_shot(components, guide, prompt, 1.0, seed, prompt_embeds_for_step=hook, **render)


def identity_figures(components, character_set, guides: list[Guide], seed: int = 0, judge_kind=None,
                     **render) -> dict:
    """The share of rendered frames whose figure is the character's colour, with its token in the caption and
    with the class word alone; the figure IoU with the guide's hare (the shape kept); and, with ``judge_kind``,
    the share of frames judged to be the character's kind."""
    from render.sampler import StructureGuidedSampler

    encode = StructureGuidedSampler(components).encode_prompt
    figures = {}
    for subject, label in zip(SUBJECTS, ("token", "class_word")):
        colours, kinds, overlaps = [], [], []
        for index, guide in enumerate(guides):
            frames = render_subject(components, character_set, encode, guide, subject, seed + index, **render)
            colours += [figure_colour(frame[None], guide.spec.background) == COLOUR for frame in frames]
            overlaps.append(mask_iou(figure_mask(frames, guide.spec.background), guide.mask))
            if judge_kind is not None:
                kinds += [kind == KIND for kind in judge_kind(frames)]
        figures[f"{label}_colour"] = float(np.mean(colours))
        figures[f"{label}_figure_iou"] = float(np.mean(overlaps))
        if judge_kind is not None:
            figures[f"{label}_kind"] = float(np.mean(kinds))
    figures.update(frames=len(colours), shots=len(guides), fps=FPS)
    return figures


def identity_sheet(components, character_set, clips, guides: list[Guide], path, seed: int = 0,
                   frames_shown: int = 4) -> None:
    """A PNG: the five reference images, then for each guide the footage, the render with the token and the
    render with the class word alone (τ = 1, the seeds :func:`identity_figures` uses)."""
    from PIL import Image

    from render.sampler import StructureGuidedSampler
    from storyreel.atomic_files import atomic_path

    encode = StructureGuidedSampler(components).encode_prompt
    size = guides[0].depth.shape[1]
    references = np.concatenate(reference_images(size=size), axis=1)
    width = size * frames_shown
    rows = [np.pad(references, ((0, 0), (0, max(0, width - references.shape[1])), (0, 0)))[:, :width]]
    for index, (clip, guide) in enumerate(zip(clips, guides)):
        picks = np.linspace(0, len(guide.depth) - 1, frames_shown).round().astype(int)
        rows.append(np.concatenate(list(clip.frames[: len(guide.depth)][picks]), axis=1))
        for subject in SUBJECTS:
            frames = render_subject(components, character_set, encode, guide, subject, seed + index)
            rows.append(np.concatenate(list(frames[picks]), axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    sheet = sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST)
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
