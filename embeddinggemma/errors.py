"""The errors a user can cause, under one base class, and the integer check the APIs share.

Every error here is a `ValueError` (a bad value the caller supplied) and names what is wrong: the file,
key, line or shape. The command line prints any of them as one line and exits with status 1.
"""

from __future__ import annotations

import numbers


class EmbeddingGemmaError(ValueError):
    """A problem the user can fix: a bad file, option or value."""


class CheckpointError(EmbeddingGemmaError):
    """A checkpoint directory is missing a file, or holds a setting or tensor we cannot honour."""


class InputError(EmbeddingGemmaError):
    """A user-supplied file cannot be used (missing, empty, not UTF-8, bad JSON, wrong shape)."""


class DataError(EmbeddingGemmaError):
    """A training or evaluation input cannot be read; the message names the file and row."""


class OutputError(EmbeddingGemmaError):
    """An output path would overwrite an input or another output, exists already, or cannot be written."""


def check_int(value: object, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int: a TypeError unless it is an integer (a bool is not one), a ValueError outside
    minimum..maximum. Python and numpy integers both pass."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in {minimum}..{maximum}, got {value}")
    if value < minimum:
        raise ValueError(
            f"{name} must be a positive int, got {value!r}"
            if minimum == 1
            else f"{name} must be >= {minimum}, got {value}"
        )
    return int(value)
