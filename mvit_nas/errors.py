"""The one exception type that means "the user asked for something invalid".

Every module raises :class:`InputError` for bad input; the CLI turns it into a
one-line message and exit status 2. Anything else is an internal error (exit 1).
"""

from __future__ import annotations

import os
from pathlib import Path


class InputError(ValueError):
    """Bad input: names the offending field (or flag) and what is allowed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(_one_line(f"{field}: {problem}"))


def _one_line(text: str, limit: int = 500) -> str:
    """Messages are printed as one line: newlines escaped, and a hostile input cannot make them huge."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, short even for a hostile value (a 5000-digit int has no repr)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def writable_folder(path: Path, flag: str) -> Path:
    """Create ``path`` if needed and check that it can be written, naming ``flag`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(flag, f"cannot create {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise InputError(flag, f"{path} is not writable")
    return path
