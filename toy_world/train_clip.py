"""Train a toy open_clip model on a toy world: ``python -m toy_world.train_clip --world DIR --steps N``.

The model is open_clip's ``CLIP`` from :data:`CLIP_CONFIG` (a small ViT on 64x64 frames, a small text
transformer over open_clip's real BPE tokenizer). Frames are framed exactly as the index frames them
(:func:`retrieval.frame_preprocessing.square_crop` to the model's image size, then open_clip's mean and std, as
:class:`retrieval.clip_models.ClipEmbedder` does), so an index built with it embeds what it was trained on.

Each step takes :data:`BATCH` random frames, in groups of :data:`GROUP_SIZE` frames of one kind and colour (so
that the actions, and not only the looks, tell captions apart), drawn by the step's own seeded generator (a
resumed run draws the same batches), and, for each, a caption of the frame's scene with parts dropped at random
(:func:`partial_caption`): ``a red hare jumping in a meadow``, ``a red hare``, ``someone jumping``, ``a figure
jumping at night``. A caption matches every frame of the batch whose scene has all the attributes it names, and
the loss is CLIP's symmetric cross-entropy with those matches as (normalised) targets, so two frames that both
fit ``a figure jumping`` are not pushed apart. During training only, linear classifiers of kind, colour, action
and background on the image embedding (:class:`AttributeHeads`) add their cross-entropy, so the small vision
tower learns the figures' poses sooner; they are not saved.

Progress (tqdm), the loss, checkpoints every ``--checkpoint-every`` steps (resumed after a kill), and at the end
the float16 weights in ``--out/clip.safetensors`` with their entry in ``--out/manifest.json``, including the
held-out recall of :func:`clip_recall` when ``--heldout`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.clip_models import TOY_CONFIG as CLIP_CONFIG
from retrieval.clip_models import TOY_INIT_SEED, build_small_clip, build_toy_clip
from retrieval.frame_preprocessing import square_crop
from storyreel.models.toy_weights import TOY_WEIGHTS_DIR
from storyreel.seeding import seeded
from toy_world.scenes import ACTIONS, BACKGROUNDS, COLOURS, GERUNDS, KINDS, PLACES, ClipSpec, scene_attributes
from toy_world.training_files import save_trained_weights, trainer_command
from toy_world.training_loop import train_steps
from toy_world.world_files import WorldClip, read_world, world_record

DEFAULT_STEPS = 4800  # what the committed weights were trained for (2400 gave kind + colour recall 0.80)
MODEL_NAME = "clip"
BATCH = 64  # frames per step
GROUP_SIZE = 8  # a batch is BATCH / GROUP_SIZE groups of frames of one kind + colour
HEADS_WEIGHT = 1.0  # the weight of the auxiliary attribute classifiers' loss (AttributeHeads)
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
WARMUP_STEPS = 100
GENERIC_SUBJECTS = ("a figure", "someone", "something")
ATTRIBUTES = ("kind", "colour", "action", "background")


def build_clip_model() -> tuple[torch.nn.Module, object]:
    """The toy CLIP architecture (:data:`retrieval.clip_models.TOY_CONFIG`, seeded initial weights) and open_clip's
    BPE tokenizer at its context length."""
    return build_small_clip(CLIP_CONFIG, TOY_INIT_SEED)


def load_toy_clip(folder: Path = TOY_WEIGHTS_DIR, device: str | torch.device | None = "cpu"):
    """The trained toy CLIP as a :class:`retrieval.clip_models.ClipEmbedder` (spec ``toy``), after checking
    ``clip.safetensors`` against the sha256 in ``folder/manifest.json``
    (:class:`storyreel.models.toy_weights.ToyWeightsError` otherwise)."""
    from retrieval.clip_models import ClipEmbedder, ModelSpec

    model, tokenizer = build_toy_clip(folder)
    return ClipEmbedder(ModelSpec("toy"), model, tokenizer, torch.device(device or "cpu"))


class AttributeHeads(torch.nn.Module):
    """Linear classifiers of a frame's kind, colour, action and background from its image embedding: an auxiliary
    loss during training only (they are not part of the saved model), so the vision tower learns the figures'
    poses quickly instead of waiting for captions that need them."""

    def __init__(self, embed_dim: int):
        super().__init__()
        sizes = {"kind": len(KINDS), "colour": len(COLOURS), "action": len(ACTIONS), "background": len(BACKGROUNDS)}
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(embed_dim, size) for name, size in sizes.items()})
        self.classes = {"kind": KINDS, "colour": tuple(COLOURS), "action": ACTIONS, "background": BACKGROUNDS}

    def loss(self, image: torch.Tensor, scenes: list[ClipSpec]) -> torch.Tensor:
        """The mean cross-entropy of the four classifiers on unit-length image embeddings."""
        features = image * image.shape[1] ** 0.5
        losses = []
        for name, head in self.heads.items():
            labels = torch.tensor([self.classes[name].index(getattr(scene, name)) for scene in scenes])
            losses.append(torch.nn.functional.cross_entropy(head(features), labels))
        return torch.stack(losses).mean()


# -- captions ------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def partial_caption(spec: ClipSpec, rng: np.random.Generator) -> tuple[str, dict]:
    """A caption of ``spec``'s scene naming a random non-empty part of its attributes, and those attributes."""
    values = {"kind": spec.kind, "colour": spec.colour, "action": spec.action, "background": spec.background}
    if rng.random() < 0.25:
        named = set(ATTRIBUTES)
    else:
        named = {name for name in ATTRIBUTES if rng.random() < 0.5}
        if not named:
            named = {ATTRIBUTES[rng.integers(len(ATTRIBUTES))]}
    if "kind" in named and "colour" in named:
        subject = f"{_article(spec.colour)} {spec.colour} {spec.kind}"
    elif "kind" in named:
        subject = f"{_article(spec.kind)} {spec.kind}"
    elif "colour" in named:
        subject = f"{_article(spec.colour)} {spec.colour} figure" if rng.random() < 0.7 else f"something {spec.colour}"
    else:
        subject = GENERIC_SUBJECTS[rng.integers(len(GENERIC_SUBJECTS))]
    parts = [subject]
    if "action" in named:
        parts.append(GERUNDS[spec.action])
    if "background" in named:
        parts.append(PLACES[spec.background])
    return " ".join(parts), {name: values[name] for name in named}


def _matches(named: list[dict], scenes: list[ClipSpec]) -> torch.Tensor:
    """``M[i, j] = 1`` when caption ``i``'s named attributes all hold for scene ``j``."""
    rows = [[all(getattr(scene, key) == value for key, value in attrs.items()) for scene in scenes] for attrs in named]
    return torch.tensor(rows, dtype=torch.float32)


# -- data ------------------------------------------------------------------------------------------------
@dataclass
class FrameTable:
    """Every frame of a world, framed for the model (N x S x S x 3 uint8), the scene each one shows, and the
    frames of each kind + colour (``groups``)."""

    frames: np.ndarray
    scenes: list[ClipSpec]
    groups: list[np.ndarray]

    @classmethod
    def from_clips(cls, clips: list[WorldClip], image_size: int) -> FrameTable:
        frames, scenes = [], []
        for clip in clips:
            frames.extend(square_crop(frame, image_size) for frame in clip.frames)
            scenes.extend(scene_attributes(clip.spec)[: len(clip.frames)])
        members: dict[tuple[str, str], list[int]] = {}
        for index, scene in enumerate(scenes):
            members.setdefault((scene.kind, scene.colour), []).append(index)
        return cls(np.stack(frames), scenes, [np.array(members[key]) for key in sorted(members)])

    def batch_picks(self, rng: np.random.Generator) -> np.ndarray:
        """:data:`BATCH` frame indices in groups of :data:`GROUP_SIZE` frames of one kind + colour, so that a
        caption naming an action must tell it from the other actions of figures that look the same."""
        count = BATCH // GROUP_SIZE
        chosen = rng.choice(len(self.groups), size=count, replace=count > len(self.groups))
        return np.concatenate([rng.choice(self.groups[g], size=GROUP_SIZE) for g in chosen])


def _normalise(model: torch.nn.Module, frames: np.ndarray) -> torch.Tensor:
    """Prepared uint8 frames → the model's input, exactly as ClipEmbedder.encode_images normalises them."""
    from open_clip import get_model_preprocess_cfg
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1)
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    return (pixels - mean) / std


def contrastive_step_loss(model, tokenizer, table: FrameTable, seed: int, step: int,
                          heads: AttributeHeads | None = None) -> torch.Tensor:
    """The loss of training step ``step``: its batch (:meth:`FrameTable.batch_picks`, random flips, a
    :func:`partial_caption` per frame) is drawn from ``np.random.default_rng([seed, step])``. With ``heads``,
    :data:`HEADS_WEIGHT` times their classification loss is added."""
    rng = np.random.default_rng([seed, step])
    picks = table.batch_picks(rng)
    frames = table.frames[picks]
    flips = rng.random(len(picks)) < 0.5
    frames = np.where(flips[:, None, None, None], frames[:, :, ::-1], frames)
    scenes = [table.scenes[i] for i in picks]
    texts, named = zip(*(partial_caption(scene, rng) for scene in scenes))
    image = model.encode_image(_normalise(model, frames), normalize=True)
    text = model.encode_text(tokenizer(list(texts)), normalize=True)
    logits = model.logit_scale.exp().clamp(max=100) * text @ image.T  # captions x frames
    targets = _matches(list(named), scenes)
    text_loss = torch.sum(-targets / targets.sum(1, keepdim=True) * logits.log_softmax(1), 1).mean()
    image_loss = torch.sum(-targets.T / targets.T.sum(1, keepdim=True) * logits.T.log_softmax(1), 1).mean()
    loss = (text_loss + image_loss) / 2
    return loss if heads is None else loss + HEADS_WEIGHT * heads.loss(image, scenes)


# -- measuring ------------------------------------------------------------------------------------------
def action_queries() -> list[tuple[str, str]]:
    """``(query, action)`` for every action: ``a figure jumping`` and ``someone jumping``."""
    return [(f"{subject} {GERUNDS[action]}", action) for action in ACTIONS for subject in ("a figure", "someone")]


def kind_colour_queries() -> list[tuple[str, tuple[str, str]]]:
    """``(query, (kind, colour))`` for every kind and colour: ``a red hare``."""
    return [(f"{_article(colour)} {colour} {kind}", (kind, colour)) for kind in KINDS for colour in COLOURS]


def clip_recall(embedder, clips: list[WorldClip]) -> dict:
    """Text → clip recall@1 of ``embedder`` (a :class:`~retrieval.clip_models.ClipEmbedder`) on held-out clips.

    Only clips without a cut are ranked. Each clip is embedded as the index embeds a segment: every frame framed
    by ``embedder.prepare_frames``, embedded, and the normalised mean of the frames' unit vectors taken
    (``encode_segments``). A query is embedded with ``encode_texts`` and the clips ranked by cosine similarity.

    * ``action_recall_at_1``: over the queries of :func:`action_queries` (two per action), the fraction whose
      top-ranked clip shows that action;
    * ``kind_colour_recall_at_1``: over the queries of :func:`kind_colour_queries` whose kind and colour occur
      among the clips, the fraction whose top-ranked clip shows a figure of that kind and that colour.
    """
    clips = [clip for clip in clips if clip.spec.cut is None]
    if not clips:
        raise ValueError("no held-out clips without a cut to rank")
    vectors = np.concatenate([embedder.encode_segments(embedder.prepare_frames(clip.frames)[None]) for clip in clips])
    actions = [clip.spec.action for clip in clips]
    kinds_colours = [(clip.spec.kind, clip.spec.colour) for clip in clips]

    def recall(queries, truth):
        queries = [(text, wanted) for text, wanted in queries if wanted in truth]
        top = np.argmax(embedder.encode_texts([text for text, _ in queries]) @ vectors.T, axis=1)
        hits = [truth[index] == wanted for (_, wanted), index in zip(queries, top)]
        return float(np.mean(hits)), len(hits)

    action_recall, action_count = recall(action_queries(), actions)
    kind_colour_recall, kind_colour_count = recall(kind_colour_queries(), kinds_colours)
    return {"action_recall_at_1": action_recall, "action_queries": action_count,
            "kind_colour_recall_at_1": kind_colour_recall, "kind_colour_queries": kind_colour_count,
            "heldout_clips": len(clips)}


# -- training -------------------------------------------------------------------------------------------
def train_clip(world: Path, out: Path, steps: int, seed: int = 0, checkpoints: Path | None = None,
               checkpoint_every: int = 200, heldout: Path | None = None, progress: bool = True,
               max_clips: int | None = None) -> dict:
    """Train the toy CLIP on ``world`` for ``steps`` steps (resuming ``checkpoints``), save it to ``out``;
    returns the manifest entry (with the held-out recall when ``heldout`` is given)."""
    from retrieval.clip_models import ClipEmbedder, ModelSpec

    world, out = Path(world), Path(out)
    checkpoints = Path(checkpoints) if checkpoints is not None else world / ".checkpoints" / MODEL_NAME
    model, tokenizer = build_clip_model()
    clips = read_world(world, limit=max_clips)
    table = FrameTable.from_clips(clips, CLIP_CONFIG["vision_cfg"]["image_size"])
    with seeded(TOY_INIT_SEED + 1):
        heads = AttributeHeads(CLIP_CONFIG["embed_dim"])
    trainee = torch.nn.ModuleDict({"clip": model, "heads": heads})  # what is optimised and checkpointed
    recipe = {"config": CLIP_CONFIG, "batch": BATCH, "group_size": GROUP_SIZE, "heads_weight": HEADS_WEIGHT,
              "learning_rate": LEARNING_RATE,
              "weight_decay": WEIGHT_DECAY, "warmup_steps": WARMUP_STEPS, "init_seed": TOY_INIT_SEED, "seed": seed,
              "steps": steps, "world": str(world.resolve()), "clips": len(clips), "frames": len(table.frames)}
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    record = {"recipe": recipe, "world_made_with": world_record(world), "threads": torch.get_num_threads()}
    record.update(train_steps(trainee, optimizer, lambda step: contrastive_step_loss(model, tokenizer, table, seed,
                                                                                     step, heads),
                              steps=steps, warmup_steps=WARMUP_STEPS, checkpoints=checkpoints, recipe=recipe,
                              checkpoint_every=checkpoint_every, description="toy clip", progress=progress))
    if heldout is not None:
        record["heldout"] = {"path": str(Path(heldout).resolve()), "made_with": world_record(heldout)}
        embedder = ClipEmbedder(ModelSpec("toy-world-clip"), model, tokenizer, torch.device("cpu"))
        record["metrics"] = clip_recall(embedder, read_world(heldout))
    save_trained_weights(out, MODEL_NAME, model, record)
    return record


main = trainer_command("toy-world-train-clip", train_clip, MODEL_NAME, DEFAULT_STEPS, 200, "recall",
                       "Train the toy CLIP model on a toy world.")


if __name__ == "__main__":
    main()
