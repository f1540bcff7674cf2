"""The errors a user can cause, under one base class, and the checks the APIs share: integers, and JSON.

Every error here is a `ValueError` (a bad value the caller supplied) and names what is wrong: the file,
key, line or shape. The command line prints any of them as one line and exits with status 1.
"""

from __future__ import annotations

import json
import numbers
import re
from typing import Any


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


_JSON_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[\[\]{}]')  # a string (skipped whole) or a bracket


def parse_json(data: str | bytes, where: str | None = None, *, error: type[EmbeddingGemmaError] = InputError) -> Any:
    """`json.loads`, every failure of which is an `error` naming `where` (e.g. "file.jsonl:3") and the position:
    bad syntax, bytes that are not UTF-8, and nesting deeper than the parser's recursion limit (json raises
    RecursionError for that, which is no ValueError: `skip_malformed` and the CLI missed it)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as e:
        problem = f"not valid UTF-8 (byte {e.start})"
    except json.JSONDecodeError as e:
        problem = f"invalid JSON ({e.msg} at {_position(text, e.pos)})"
    except RecursionError:
        depth, pos = _deepest(text)
        problem = f"invalid JSON (nested {depth:,} levels deep at {_position(text, pos)}; too deep for the parser)"
    raise error(f"{where}: {problem}" if where else problem)


def _position(text: str, pos: int) -> str:
    """'line L column C' of a character, or 'column C' in a one-line text (a JSONL row, an option)."""
    line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
    return f"line {line} column {column}" if "\n" in text.rstrip("\n") else f"column {column}"


def _deepest(text: str) -> tuple[int, int]:
    """The deepest nesting of a JSON text and where it is first reached (brackets inside strings skipped)."""
    depth = deepest = at = 0
    for m in _JSON_TOKEN.finditer(text):
        if m[0] in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, m.start()
        elif m[0] in "]}":
            depth -= 1
    return deepest, at
