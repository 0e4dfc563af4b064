"""Which shots record a character's consistency bank and which attend to it (:mod:`render.consistent_attention`).

A character is *shared* when two or more shots with ``consistency`` on list it. Its reference shot is the first
of them in story order. With ``reference: "first_shot"`` that shot's video records the bank, into
``OUT/cache/consistency/<safe_id>.<hash>.safetensors`` (the reference shot's settings hash, so an edited reference
writes a new bank), and every later shot that lists the character attends to it. With ``reference:
"keyframes"`` (the reference shot's choice) the bank is the one its *keyframe* records
(``<safe_id>.<hash>.keyframe.safetensors``, :mod:`render.keyframes`): the keyframe is made first, and every shot
of the character attends to it, the reference shot's own video included, so all of them follow one picture.
Keyframes themselves always share banks among keyframes (``for_keyframes``). A shot's settings hash includes
the settings hashes of the reference shots it attends to (:func:`bank_dependencies`), so editing a reference
shot renders again every shot of its characters, and editing any other shot renders that shot alone. A shot with
consistency on whose characters are not shared renders as it would without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from render.consistent_attention import ConsistencySettings

BANK_FOLDER = Path("cache") / "consistency"


@dataclass(frozen=True)
class ConsistencyUse:
    """What a shot's render does with consistency banks (picklable: Ray workers get it with the shot).

    ``records``: the bank file this shot writes (it is the reference of ``reference_of``), or None;
    ``attends``: ``(reference shot id, bank file, characters)`` of each bank it attends to."""

    settings: ConsistencySettings
    records: Path | None
    reference_of: tuple[str, ...]
    attends: tuple[tuple[str, Path, tuple[str, ...]], ...]


def settings_of(shot) -> ConsistencySettings:
    c = shot.consistency
    return ConsistencySettings(rate=c.rate, until=c.until, bank_frames=c.bank_frames, budget_mb=c.budget_mb)


def reference_shots(shots: Sequence) -> dict[str, str]:
    """Each shared character's reference shot: character name → shot id (the first of its shots with
    consistency on, when it has two or more)."""
    seen: dict[str, list[str]] = {}
    for shot in shots:
        if shot.consistency is None:
            continue
        for character in shot.characters:
            seen.setdefault(character.name, []).append(shot.id)
    return {name: ids[0] for name, ids in seen.items() if len(ids) >= 2}


def bank_dependencies(shot, references: dict[str, str]) -> list[str]:
    """The reference shots whose banks ``shot`` attends to (not itself), in the order of its characters."""
    if shot.consistency is None:
        return []
    found = [references[c.name] for c in shot.characters if c.name in references]
    return [ref for ref in dict.fromkeys(found) if ref != shot.id]


def bank_file(out: Path, shot, settings_hash: str) -> Path:
    return Path(out) / BANK_FOLDER / f"{shot.safe_id}.{settings_hash[:16]}.safetensors"


def keyframe_bank(path: Path) -> Path:
    """The bank a shot's keyframe records, beside the one its video records (``*.keyframe.safetensors``)."""
    return path.with_name(path.name.removesuffix(".safetensors") + ".keyframe.safetensors")


def is_keyframe_bank(path: Path) -> bool:
    return Path(path).name.endswith(".keyframe.safetensors")


def consistency_uses(shots: Sequence, references: dict[str, str], hashes: dict[str, str], out: Path,
                     for_keyframes: bool = False) -> dict[str, ConsistencyUse]:
    """The :class:`ConsistencyUse` of every shot that records or attends to a bank: of its video, or with
    ``for_keyframes`` of its keyframe (then every reference keyframe records, whatever ``reference`` says)."""
    by_id = {shot.id: shot for shot in shots}
    from_keyframe = set() if for_keyframes else {
        ref for ref in references.values() if by_id[ref].consistency.reference == "keyframes"}

    def bank_of(ref: str) -> Path:
        path = bank_file(out, by_id[ref], hashes[ref])
        return keyframe_bank(path) if for_keyframes or ref in from_keyframe else path

    uses = {}
    for shot in shots:
        if shot.consistency is None:
            continue
        reference_of = tuple(name for name, ref in references.items() if ref == shot.id)
        attends = [(ref, bank_of(ref), tuple(c.name for c in shot.characters if references.get(c.name) == ref))
                   for ref in bank_dependencies(shot, references)]
        records = bank_of(shot.id) if reference_of else None
        if reference_of and shot.id in from_keyframe:  # its keyframe recorded the bank: the video attends to it
            attends.insert(0, (shot.id, records, reference_of))
            records = None
        if reference_of or attends:
            uses[shot.id] = ConsistencyUse(settings_of(shot), records, reference_of, tuple(attends))
    return uses
