"""Reading typed fields out of parsed JSON/YAML mappings, strictly.

This module's one job: take a field from a mapping that ``json.loads`` or a YAML loader
produced, check that it has the expected type (a boolean is never an integer or a
number), and raise :class:`FieldError` naming the source and the field when it is
missing or wrong. Every reader is ``reader(data, name, source, ...)`` and every message
reads ``"{source}: field '{name}' {problem}"``, e.g.
``"info.tables.flow: field 'entries' must be an integer, got 'x'"``.

A reader with ``default=`` returns the default when the field is absent; without one an
absent field is an error. The ``opt_*`` readers also accept an explicit null (``None``).
:class:`FieldError` keeps ``source``, ``name`` and ``problem`` apart, so a caller that
names places its own way (a topology file's node) can reword the message.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from typing import Any


class FieldError(ValueError):
    """A field is missing or has the wrong type or value."""

    def __init__(self, source: str, name: str, problem: str) -> None:
        super().__init__(f"{source}: field {name!r} {problem}")
        self.source = source
        self.name = name
        self.problem = problem


class Required(enum.Enum):
    """The type of :data:`REQUIRED`."""

    REQUIRED = enum.auto()


#: the default of every reader's ``default``: the field must be present
REQUIRED = Required.REQUIRED


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"


def _in_bounds(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _read(data: Mapping[str, Any], name: str, source: str, default: object, nullable: bool,
          what: str, ok: Callable[[Any], bool]) -> Any:
    """The field's value once `ok` accepts it; the default if absent; None if null and
    `nullable`."""
    if name not in data:
        if default is REQUIRED:
            raise FieldError(source, name, "is missing")
        return default
    value = data[name]
    if value is None and nullable:
        return None
    if not ok(value):
        null = " or null" if nullable else ""
        raise FieldError(source, name, f"must be {what}{null}, got {_shown(value)}")
    return value


def _checked_int(value: int | None, name: str, source: str, low: int | None,
                 high: int | None) -> int | None:
    if value is not None and not _in_bounds(value, low, high):
        raise FieldError(source, name, f"must be {_bounds(low, high)}, got {value}")
    return value


# ------------------------------------------------------------------ scalars


def integer(data: Mapping[str, Any], name: str, source: str, *, low: int | None = None,
            high: int | None = None, default: int | Required = REQUIRED) -> int:
    """An integer (never a boolean), optionally within ``low``..``high`` (``low=0``: a
    non-negative one). A default is returned as given, unchecked."""
    if name not in data and not isinstance(default, Required):
        return default
    value: int = _read(data, name, source, REQUIRED, False, "an integer", _is_int)
    _checked_int(value, name, source, low, high)
    return value


def opt_integer(data: Mapping[str, Any], name: str, source: str, *, low: int | None = None,
                high: int | None = None,
                default: int | Required | None = REQUIRED) -> int | None:
    """:func:`integer`, or None for null."""
    if name not in data and not isinstance(default, Required):
        return default
    value: int | None = _read(data, name, source, REQUIRED, True, "an integer", _is_int)
    return _checked_int(value, name, source, low, high)


def number(data: Mapping[str, Any], name: str, source: str, *,
           default: float | Required = REQUIRED) -> float:
    """An integer or a float (never a boolean), as a float."""
    return float(_read(data, name, source, default, False, "a number",
                       lambda v: _is_int(v) or isinstance(v, float)))


def string(data: Mapping[str, Any], name: str, source: str, *,
           default: str | Required = REQUIRED) -> str:
    value: str = _read(data, name, source, default, False, "a string",
                       lambda v: isinstance(v, str))
    return value


def opt_string(data: Mapping[str, Any], name: str, source: str, *,
               default: str | Required | None = REQUIRED) -> str | None:
    value: str | None = _read(data, name, source, default, True, "a string",
                              lambda v: isinstance(v, str))
    return value


def boolean(data: Mapping[str, Any], name: str, source: str, *,
            default: bool | Required = REQUIRED) -> bool:
    value: bool = _read(data, name, source, default, False, "a boolean",
                        lambda v: isinstance(v, bool))
    return value


def opt_boolean(data: Mapping[str, Any], name: str, source: str, *,
                default: bool | Required | None = REQUIRED) -> bool | None:
    value: bool | None = _read(data, name, source, default, True, "a boolean",
                               lambda v: isinstance(v, bool))
    return value


def choice(data: Mapping[str, Any], name: str, source: str, choices: tuple[str, ...], *,
           default: str | Required = REQUIRED) -> str:
    """One of the strings in ``choices``."""
    value: str = _read(data, name, source, default, False, f"one of {', '.join(choices)}",
                       lambda v: isinstance(v, str) and v in choices)
    return value


# ------------------------------------------------------------------ containers


def obj(data: Mapping[str, Any], name: str, source: str, *,
        default: dict[str, Any] | Required = REQUIRED) -> dict[str, Any]:
    """A JSON object (a mapping), as the dict it is."""
    value: dict[str, Any] = _read(data, name, source, default, False, "an object",
                                  lambda v: isinstance(v, dict))
    return value


def opt_obj(data: Mapping[str, Any], name: str, source: str, *,
            default: dict[str, Any] | Required | None = REQUIRED) -> dict[str, Any] | None:
    value: dict[str, Any] | None = _read(data, name, source, default, True, "an object",
                                         lambda v: isinstance(v, dict))
    return value


def objects(data: Mapping[str, Any], name: str, source: str, *,
            nonempty: bool = False) -> list[dict[str, Any]]:
    """A list of objects (at least one if ``nonempty``)."""
    what = "a non-empty list of objects" if nonempty else "a list of objects"
    value: list[dict[str, Any]] = _read(
        data, name, source, REQUIRED, False, what,
        lambda v: isinstance(v, list) and (bool(v) or not nonempty)
        and all(isinstance(x, dict) for x in v))
    return value


def strings(data: Mapping[str, Any], name: str, source: str) -> tuple[str, ...]:
    """A list of strings, as a tuple."""
    value: list[str] = _read(data, name, source, REQUIRED, False, "a list of strings",
                             lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v))
    return tuple(value)


def integers(data: Mapping[str, Any], name: str, source: str, *, low: int | None = None,
             length: int | None = None) -> tuple[int, ...]:
    """A list of integers (never booleans), each >= ``low`` if given, exactly ``length``
    of them if given; as a tuple."""
    what = "a list of " + (f"{length} " if length is not None else "") + "integers" + (
        f" >= {low}" if low is not None else "")
    value: list[int] = _read(
        data, name, source, REQUIRED, False, what,
        lambda v: isinstance(v, list) and (length is None or len(v) == length)
        and all(_is_int(x) and _in_bounds(x, low, None) for x in v))
    return tuple(value)


def counts(data: Mapping[str, Any], name: str, source: str, *,
           default: dict[str, int] | Required = REQUIRED) -> dict[str, int]:
    """An object of non-negative integer counts; a bad count is named as field
    ``KEY`` of ``source.name``."""
    if name not in data and not isinstance(default, Required):
        return default
    value = obj(data, name, source)
    where = f"{source}.{name}"
    for key in value:
        if not isinstance(key, str):
            raise FieldError(where, str(key), "is not named by a string")
        integer(value, key, where, low=0)
    return dict(value)


# ------------------------------------------------------------------ documents


def load_object(text: str, source: str, what: str = "text") -> dict[str, Any]:
    """Parse `text` as one JSON object; ValueError naming `source` (and `what` it is)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: {what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: {what} is not a JSON object")
    return data
