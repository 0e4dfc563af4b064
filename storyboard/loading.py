"""Reading and writing storyboard files.

:func:`load_storyboard` reads a JSON file, validates it and checks that the files it references exist;
every failure is one :class:`~storyboard.errors.StoryboardError` whose lines name the file and the JSON
path of each bad field. :func:`parse_storyboard` does the same for text or a dict already in memory (an
LLM's answer, say). :func:`save_storyboard` writes one atomically (``storyreel.atomic_files``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from storyboard.errors import Problem, StoryboardError, describe, problems_from_validation_error
from storyboard.format import Storyboard
from storyreel.atomic_files import write_text


def load_storyboard(path: str | os.PathLike, *, check_files: bool = True) -> Storyboard:
    """Read, validate and resolve the storyboard at ``path``.

    Relative paths inside are relative to the file's folder. With ``check_files`` (the default) every
    character embedding and clip it references must exist.
    """
    path = Path(path)
    return parse_storyboard(read_text_file(path, "storyboard"), source=path, check_files=check_files)


def read_text_file(path: Path, kind: str) -> str:
    """The UTF-8 text of ``path``; :class:`StoryboardError` naming the file (a ``kind`` file) otherwise."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoryboardError([Problem("", f"no such {kind} file")], path) from None
    except IsADirectoryError:
        raise StoryboardError([Problem("", f"is a folder, not a {kind} file")], path) from None
    except UnicodeDecodeError as exc:
        raise StoryboardError([Problem("", f"not UTF-8 text (byte {exc.start})")], path) from None
    except OSError as exc:
        raise StoryboardError([Problem("", f"cannot be read: {exc.strerror or exc}")], path) from None


def read_json_file(path: Path, kind: str) -> Any:
    """The strict JSON value in ``path`` (no duplicate keys, no NaN/Infinity); errors name the file and line."""
    return parse_json(read_text_file(path, kind), path)


def parse_storyboard(data: str | bytes | Mapping[str, Any], *, source: str | os.PathLike | None = None,
                     base_dir: str | os.PathLike | None = None, check_files: bool = False) -> Storyboard:
    """Validate a storyboard given as JSON text or as a dict.

    ``source`` names it in errors and, unless ``base_dir`` is given, its folder is where relative paths
    start (without either: the current directory). ``check_files`` checks that referenced files exist.
    """
    raw = parse_json(data, source) if isinstance(data, (str, bytes)) else data
    if not isinstance(raw, Mapping):
        raise StoryboardError([Problem("", f"a storyboard must be a JSON object, got {describe(raw)}")], source)
    try:
        storyboard = Storyboard.model_validate(dict(raw))
    except ValidationError as exc:
        raise StoryboardError(problems_from_validation_error(exc, _schema()), source) from None
    storyboard.attach_source(source, base_dir)
    if check_files:
        missing = storyboard.missing_files()
        if missing:
            raise StoryboardError(missing, source)
    return storyboard


def save_storyboard(storyboard: Storyboard, path: str | os.PathLike) -> Storyboard:
    """Write ``storyboard`` to ``path`` atomically and return it as read from there.

    Relative paths are rewritten to stay pointing at the same files from the new file's folder when the
    storyboard knows where it came from (it was loaded, or ``attach_source`` was called); otherwise they are
    written as they are, and so become relative to ``path``'s folder.
    """
    path = Path(path)
    target_dir = path.absolute().parent
    data = storyboard.model_dump(mode="json", exclude_none=True)
    if storyboard.base_dir is not None and storyboard.base_dir != target_dir:
        for character in data["characters"].values():
            if "embedding" in character:
                character["embedding"] = _rebase(storyboard, character["embedding"], target_dir)
        for shot in data["shots"]:
            if "clip" in shot:
                shot["clip"]["path"] = _rebase(storyboard, shot["clip"]["path"], target_dir)
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return parse_storyboard(data, source=path)


def _rebase(storyboard: Storyboard, written: str, target_dir: Path) -> str:
    if Path(written).expanduser().is_absolute():
        return written
    resolved = storyboard.resolve_path(written)
    try:
        return Path(os.path.relpath(resolved, target_dir)).as_posix()
    except ValueError:              # another drive on Windows: no relative path exists
        return str(resolved)


def strict_json_loads(data: str | bytes) -> Any:
    """``json.loads`` that refuses a key twice in one object and NaN/Infinity (ValueError); storyboards,
    characters files and LLM answers are all read with it."""
    return json.loads(data, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)


def parse_json(data: str | bytes, source) -> Any:
    try:
        return strict_json_loads(data)
    except json.JSONDecodeError as exc:
        raise StoryboardError(
            [Problem("", f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}")], source) from None
    except _JsonValueError as exc:
        raise StoryboardError([Problem("", f"invalid JSON: {exc}")], source) from None
    except UnicodeDecodeError as exc:
        raise StoryboardError([Problem("", f"not UTF-8 text (byte {exc.start})")], source) from None


class _JsonValueError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _JsonValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name: str):
    raise _JsonValueError(f"{name} is not a number in JSON")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return Storyboard.model_json_schema()
