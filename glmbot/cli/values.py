"""Option values checked while the command line is parsed: a bad one names the flag, the value and the fix.

Typer's own messages ("'abc' is not a valid float") name neither the fix nor, for a value that
parses but is out of range (`--steps -1`), the problem. A parser here raises `BadOptionError`,
which the main app prints as one line with exit code 1, like every other glmbot error.
"""

from __future__ import annotations

import sys
from typing import Callable

from glmbot.errors import GlmbotError


class BadOptionError(GlmbotError):
    """A command-line option got a value it cannot use."""


def checked(flag: str | tuple[str, ...], kind: type, ok: Callable[[float], bool], need: str,
            example: str) -> Callable[[str], object]:
    """A Typer `parser` for `flag` (or its aliases, the first the main one): `kind` (int or float)
    values for which `ok` holds. An error names the alias the user typed.

    need: what a good value is ("a whole number >= 0"); example: a value that works ("200").
    """
    noun = "a whole number" if kind is int else "a number"
    aliases = (flag,) if isinstance(flag, str) else flag

    def parse(value: str):  # noqa: ANN202 - int or float
        flag = typed(aliases)
        text = str(value).strip()
        try:
            number = kind(text)
        except ValueError:
            raise BadOptionError(f"{flag} {text!r} is not {noun}: give {need}, e.g. {flag} {example}") from None
        if not ok(number):  # NaN fails every comparison: refused here too
            raise BadOptionError(f"{flag} {text}: must be {need}, e.g. {flag} {example}")
        return number

    return parse


def typed(aliases: tuple[str, ...]) -> str:
    """The spelling of an option the command line used (`--max-steps` for `--steps`), else the first."""
    for arg in sys.argv[1:]:
        for alias in aliases:
            if arg == alias or arg.startswith(alias + "="):
                return alias
    return aliases[0]
