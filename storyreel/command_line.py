"""The convention every storyreel command follows: ``error:`` lines, exit codes, ``--quiet``, checked numbers.

Every command (``build-index``, ``search-clips``, ``extract-depth``, ``plan-story``, ``train-character``,
``render-story``) is a :class:`StoryreelCommand`, made with :func:`command`::

    @command("extract-depth")
    @click.option("--frames", type=IntRange(min=1), default=16)
    @quiet_option()
    def main(frames, quiet): ...

What a user sees when something is wrong is always one line on stderr:

* a usage or input error that click finds (an unknown option, a bad value, a missing argument, a
  ``click.Path(exists=True)`` that does not exist) reads ``error: <message> (see '<command> --help')`` and
  exits with code 2; the message names the option (``--frames: must be at least 1, got 0``);
* a :class:`~storyreel.errors.StoryreelError` escaping the command reads ``error: <message>`` and exits with
  the error's :attr:`~storyreel.errors.StoryreelError.exit_code`;
* :func:`fail` prints ``error: <message>`` and exits with code 2, for checks a command makes itself;
* Ctrl-C prints ``aborted`` and exits with code 1.

:class:`IntRange` and :class:`FloatRange` are click's range types whose messages say what is allowed
(``must be at least 1, got 0``, ``must be more than 0 seconds, got 0``). :func:`quiet_option` is the one
progress option, ``-q`` / ``--quiet`` (with a hidden ``--no-progress`` alias where a command had that flag).
:func:`offline_option` is ``--offline`` for the commands that may download (:mod:`storyreel.hub_access`).

This module imports only click and :mod:`storyreel.errors` (and :mod:`storyreel.hub_access` when ``--offline``
is given).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from storyreel.errors import StoryreelError

HELP_OPTION_NAMES = ("-h", "--help")
USAGE_EXIT_CODE = 2
ABORT_EXIT_CODE = 1
_NO_PROGRESS = "storyreel.no_progress"


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with code 2 (bad input, nothing written)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(USAGE_EXIT_CODE)


def named_paths(option: str, items: tuple[str, ...], metavar: str, example: str) -> dict[str, Path]:
    """The ``NAME=PATH`` values of a repeatable option as ``{name: path}``; for an item of another shape,
    :func:`fail` names the option and the item and shows ``metavar`` (``NAME=FILE``) and ``example``."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            fail(f"{option} {item}: expected {metavar}, e.g. {example}")
        named[name] = Path(path)
    return named


def usage_message(exc: click.UsageError) -> str:
    """One line for a click usage error, naming the option or argument at fault: ``--frames: must be at
    least 1, got 0``, ``no such option: --no-such-option``, ``missing option '--out'``."""
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
        hint = _parameter_hint(exc)
        text = f"{hint}: {_sentence(exc.message)}" if hint else _sentence(exc.message)
    else:
        text = _sentence(exc.format_message())
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _parameter_hint(exc: click.BadParameter) -> str | None:
    """The option (its longest name) or argument (its metavar) a bad value was given for."""
    hint = exc.param_hint
    if hint is not None:
        names = [hint] if isinstance(hint, str) else list(hint)
        return max((name.strip("'\"") for name in names), key=len, default=None)
    param = exc.param
    if param is None:
        return None
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return param.human_readable_name


def _sentence(text: str) -> str:
    """click's sentence as a clause: no final full stop, a leading capital lowered (``No such option`` →
    ``no such option``) unless the word is all capitals (a metavar such as ``VIDEO``)."""
    text = text.strip().rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


class StoryreelCommand(click.Command):
    """A click command that reports every error the storyreel way (see the module docstring).

    ``-h`` works like ``--help``. Called with ``standalone_mode=False`` it leaves errors to the caller,
    as click does.
    """

    def __init__(self, *args: Any, context_settings: dict | None = None, **kwargs: Any):
        settings = {"help_option_names": list(HELP_OPTION_NAMES), **(context_settings or {})}
        super().__init__(*args, context_settings=settings, **kwargs)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command; report errors as one ``error:`` line and exit with their code."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            name = exc.ctx.command_path if exc.ctx is not None else (prog_name or self.name)
            click.echo(f"error: {usage_message(exc)} (see '{name} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {_sentence(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except StoryreelError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("aborted", err=True)
            sys.exit(ABORT_EXIT_CODE)
        except OSError as exc:  # stdout closed early (``search-clips ... | head``): stop quietly, as click does
            if exc.errno != errno.EPIPE:
                raise
            _silence_stdout()
            sys.exit(1)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind sys.stdout
        pass


def command(name: str, **kwargs: Any) -> Callable[[Callable], StoryreelCommand]:
    """``click.command(name, cls=StoryreelCommand, ...)``: the decorator every storyreel command uses."""
    return click.command(name, cls=StoryreelCommand, **kwargs)


# -- the progress option --------------------------------------------------------------------------------
def _remember_no_progress(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_NO_PROGRESS] = True


def _quiet_value(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    return bool(value or ctx.meta.get(_NO_PROGRESS, False))


def quiet_option(help: str = "No progress bars.", no_progress_alias: bool = False) -> Callable[[Callable], Callable]:
    """``-q`` / ``--quiet``, the command's ``quiet`` parameter; with ``no_progress_alias`` also a hidden
    ``--no-progress`` that means the same (the flag's old name in build-index and render-story)."""

    def decorate(function: Callable) -> Callable:
        function = click.option("-q", "--quiet", "quiet", is_flag=True, help=help, callback=_quiet_value)(function)
        if no_progress_alias:  # eager: seen before --quiet's callback, wherever it stands on the command line
            function = click.option("--no-progress", is_flag=True, hidden=True, expose_value=False, is_eager=True,
                                    callback=_remember_no_progress)(function)
        return function

    return decorate


def _go_offline(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from storyreel.hub_access import go_offline

        go_offline()


def offline_option() -> Callable[[Callable], Callable]:
    """``--offline``: no hub request at all, as ``HF_HUB_OFFLINE=1`` does (models come from the local cache, and
    a missing one is named at once); eager, so it holds before any other option's callback."""
    return click.option("--offline", is_flag=True, expose_value=False, is_eager=True, callback=_go_offline,
                        help="Never reach the hub (as HF_HUB_OFFLINE=1): models come from the local cache; the "
                             "missing ones are named at once.")


# -- numbers with a range ------------------------------------------------------------------------------
def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class _RangeMessage:
    """What a range type says when a number is outside it: ``must be at least 1, got 0``."""

    number_type: click.ParamType
    unit: str = ""

    def requirement(self) -> str:
        """``must be ...``: the range in words (with the unit, such as ``seconds``)."""
        low, high = self.min, self.max
        unit = f" {self.unit}" if self.unit else ""
        if low is not None and high is not None and not (self.min_open or self.max_open):
            return f"must be between {_number_text(low)} and {_number_text(high)}{unit}"
        parts = []
        if low is not None:
            if self.min_open:
                parts.append(f"more than {_number_text(low)}")
            elif low == 0:
                parts.append(f"{_number_text(low)} or more")
            else:
                parts.append(f"at least {_number_text(low)}")
        if high is not None:
            parts.append(f"{'less than' if self.max_open else 'at most'} {_number_text(high)}")
        return f"must be {' and '.join(parts)}{unit}"

    def convert(self, value, param, ctx):
        number = self.number_type.convert(value, param, ctx)  # not a number: click's own message
        try:
            return super().convert(number, param, ctx)
        except click.BadParameter:
            self.fail(f"{self.requirement()}, got {_number_text(number)}", param, ctx)


class IntRange(_RangeMessage, click.IntRange):
    """``click.IntRange`` whose message says what is allowed: ``--shots: must be at least 1, got 0``."""

    number_type = click.INT

    def __init__(self, min: int | None = None, max: int | None = None, min_open: bool = False,
                 max_open: bool = False, unit: str = ""):
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.unit = unit


class FloatRange(_RangeMessage, click.FloatRange):
    """``click.FloatRange`` whose message says what is allowed: ``--timeout: must be more than 0 seconds, got 0``."""

    number_type = click.FLOAT

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False, unit: str = ""):
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.unit = unit
