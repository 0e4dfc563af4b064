"""A sweep of one storyboard setting: ``render-story STORY --sweep tau=0.25,0.5,0.75,1.0``.

:class:`SettingSweep` parses ``NAME=V1,V2,...`` for one of :data:`SWEEPABLE` (a storyboard default) and names each
variant's folder ``NAME=VALUE`` (as typed). :func:`swept_storyboard` is the storyboard with the value: set in
``defaults`` and taken away from every shot that sets its own (a sweep varies every shot), validated as the
file itself is, so a value the format refuses names ``defaults.NAME`` and the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from storyreel.errors import OptionError

SWEEPABLE = {"tau": float, "guidance": float, "steps": int, "seed": int, "eta": float}
PER_SHOT = ("tau", "seed", "eta")  # the swept settings a shot may set for itself


@dataclass(frozen=True)
class SettingSweep:
    """One setting and the values it takes, in the order given."""

    name: str
    texts: tuple[str, ...]  # each value as typed: the variant's folder name
    values: tuple[float | int, ...]

    @classmethod
    def parse(cls, text: str) -> SettingSweep:
        """``tau=0.25,0.5`` → the sweep; :class:`~storyreel.errors.OptionError` (``--sweep: ...``) otherwise."""
        name, sep, values_text = text.partition("=")
        name = name.strip()
        if not sep or not name or not values_text.strip():
            raise OptionError("--sweep", f"expected NAME=V1,V2,... such as tau=0.25,0.5,1.0, got {text!r}")
        if name not in SWEEPABLE:
            raise OptionError("--sweep", f"cannot sweep {name!r}; sweep one of {', '.join(SWEEPABLE)}")
        kind = SWEEPABLE[name]
        texts = tuple(part.strip() for part in values_text.split(","))
        values = []
        for part in texts:
            try:
                values.append(kind(part))
            except ValueError:
                raise OptionError("--sweep", f"{name}: {part!r} is not {'an integer' if kind is int else 'a number'}"
                                  ) from None
        if len(set(values)) != len(values):
            raise OptionError("--sweep", f"{name}: a value is given twice in {values_text!r}")
        return cls(name=name, texts=texts, values=tuple(values))

    def folder_names(self) -> list[str]:
        return [f"{self.name}={text}" for text in self.texts]


def swept_storyboard(story, name: str, value):
    """``story`` with ``defaults.name = value`` and no shot setting its own ``name``; validated (a
    :class:`~storyboard.errors.StoryboardError` naming ``defaults.<name>`` and the file for a value the format
    refuses), with the same source file and folder for its relative paths."""
    from storyboard.loading import parse_storyboard

    data = story.model_dump(mode="python", exclude_unset=True)
    data.setdefault("defaults", {})[name] = value
    if name in PER_SHOT:
        for shot in data["shots"]:
            shot.pop(name, None)
    return parse_storyboard(data, source=story.source, base_dir=story.base_dir)
