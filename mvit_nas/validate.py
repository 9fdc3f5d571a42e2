"""Input checks: the one exception for bad input, its one-line text, and the field checks every record uses.

Every module raises :class:`InputError` for bad input; the CLI turns it into a
one-line message and exit status 2. Anything else is an internal error (exit 1).
The checks below are the only copies of "is this an integer in range", "is this
a finite number", "is this one of the choices" and "are these the allowed keys".

Example:

>>> check_int("--trials", 24, 1)
24
>>> try:
...     check_choice("--device", "tpu", ("cpu", "cuda"))
... except InputError as error:
...     print(error)
--device: must be one of cpu, cuda, got 'tpu'
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

MESSAGE_LIMIT = 500


class InputError(ValueError):
    """Bad input: names the offending field (or flag) and what is allowed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(one_line(f"{field}: {problem}"))


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Messages are printed as one line: newlines escaped, and a hostile input cannot make them huge."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if it has none), at most ``limit`` characters."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, short even for a hostile value (a 5000-digit int has no repr)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(field: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    if is_int(value) and low <= value and (high is None or value <= high):
        return value
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    raise InputError(field, f"must be {allowed}, got {shown(value)}")


def check_number(
    field: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    unit: str = "",
) -> float:
    """``value`` if it is a finite number in ``[low, high]``; ``open_low`` / ``open_high`` exclude the bound."""
    if is_number(value):
        above = value > low if open_low else value >= low
        if above and (value < high if open_high else value <= high):
            return value
    if math.isinf(low) and math.isinf(high):
        allowed = "a finite number"
    elif math.isinf(high):
        allowed = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    raise InputError(field, f"must be {allowed}{unit}, got {shown(value)}")


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value in choices:
        return value
    raise InputError(field, f"must be one of {', '.join(map(str, choices))}, got {shown(value)}")


def check_keys(
    field: str, data: Any, allowed: Collection[str], required: Iterable[str] = (), *, prefix: str = ""
) -> Mapping[str, Any]:
    """``data`` if it is a mapping whose keys are all ``allowed`` and include every ``required`` one.

    An unknown or missing key is named as ``prefix + key`` (e.g. ``layer3.num_heads``).
    """
    if not isinstance(data, Mapping):
        raise InputError(field, f"must be a mapping of fields, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise InputError(f"{prefix}{key}", f"unknown key; allowed keys are {', '.join(map(str, allowed))}")
    for key in required:
        if key not in data:
            raise InputError(f"{prefix}{key}", "is required")
    return data


def writable_folder(path: Path, flag: str) -> Path:
    """Create ``path`` if needed and check that it can be written, naming ``flag`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(flag, f"cannot create {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise InputError(flag, f"{path} is not writable")
    return path
