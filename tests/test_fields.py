"""Unit tests for lab.fields: the strict typed readers of parsed JSON/YAML mappings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lab import fields

DOC: dict[str, Any] = {
    "n": 3, "neg": -2, "zero": 0, "big": 2**64, "f": 1.5, "yes": True, "s": "hi", "null": None,
    "o": {"a": 1}, "names": ["a", "b"], "nums": [0, 1, 2], "counts": {"x": 1, "y": 0},
    "objs": [{"a": 1}, {}], "empty": [],
}


def test_integer_accepts_integers_and_never_booleans() -> None:
    assert fields.integer(DOC, "n", "doc") == 3
    assert fields.integer(DOC, "neg", "doc") == -2
    assert fields.integer(DOC, "big", "doc", low=0) == 2**64
    with pytest.raises(fields.FieldError, match=r"^doc: field 'yes' must be an integer, got True$"):
        fields.integer(DOC, "yes", "doc")
    with pytest.raises(fields.FieldError, match=r"field 'f' must be an integer, got 1\.5"):
        fields.integer(DOC, "f", "doc")
    with pytest.raises(fields.FieldError, match="field 'null' must be an integer, got None"):
        fields.integer(DOC, "null", "doc")


def test_integer_bounds() -> None:
    assert fields.integer(DOC, "zero", "doc", low=0) == 0
    with pytest.raises(fields.FieldError, match=r"^doc: field 'neg' must be >= 0, got -2$"):
        fields.integer(DOC, "neg", "doc", low=0)
    with pytest.raises(fields.FieldError, match="field 'n' must be between 4 and 9, got 3"):
        fields.integer(DOC, "n", "doc", low=4, high=9)
    with pytest.raises(fields.FieldError, match="field 'n' must be <= 2, got 3"):
        fields.integer(DOC, "n", "doc", high=2)


def test_missing_field_is_named_unless_there_is_a_default() -> None:
    with pytest.raises(fields.FieldError, match=r"^info\.tables: field 'gone' is missing$"):
        fields.string(DOC, "gone", "info.tables")
    assert fields.integer(DOC, "gone", "doc", default=7) == 7
    assert fields.boolean(DOC, "gone", "doc", default=True) is True
    assert fields.choice(DOC, "gone", "doc", ("a", "b"), default="a") == "a"
    assert fields.opt_string(DOC, "gone", "doc", default=None) is None
    assert fields.counts(DOC, "gone", "doc", default={}) == {}


def test_field_error_keeps_its_parts_and_is_a_value_error() -> None:
    with pytest.raises(ValueError) as info:
        fields.integer(DOC, "s", "run status")
    exc = info.value
    assert isinstance(exc, fields.FieldError)
    assert (exc.source, exc.name, exc.problem) == (
        "run status", "s", "must be an integer, got 'hi'")


def test_optional_readers_take_null_but_still_need_the_field() -> None:
    assert fields.opt_integer(DOC, "null", "doc") is None
    assert fields.opt_integer(DOC, "n", "doc", low=0) == 3
    assert fields.opt_string(DOC, "null", "doc") is None
    assert fields.opt_boolean(DOC, "yes", "doc") is True
    assert fields.opt_obj(DOC, "null", "doc") is None
    with pytest.raises(fields.FieldError, match="field 'gone' is missing"):
        fields.opt_integer(DOC, "gone", "doc")
    with pytest.raises(fields.FieldError, match="must be an integer or null, got 'hi'"):
        fields.opt_integer(DOC, "s", "doc")
    with pytest.raises(fields.FieldError, match="field 'neg' must be >= 0, got -2"):
        fields.opt_integer(DOC, "neg", "doc", low=0)


@pytest.mark.parametrize(("reader", "name", "expected"), [
    (fields.number, "n", 3.0),
    (fields.number, "f", 1.5),
    (fields.string, "s", "hi"),
    (fields.boolean, "yes", True),
    (fields.obj, "o", {"a": 1}),
    (fields.strings, "names", ("a", "b")),
    (fields.integers, "nums", (0, 1, 2)),
    (fields.objects, "objs", [{"a": 1}, {}]),
    (fields.counts, "counts", {"x": 1, "y": 0}),
])
def test_readers_return_the_value(reader: Callable[..., Any], name: str, expected: Any) -> None:
    value = reader(DOC, name, "doc")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("reader", "name", "what"), [
    (fields.number, "yes", "a number"),
    (fields.number, "s", "a number"),
    (fields.string, "n", "a string"),
    (fields.boolean, "zero", "a boolean"),
    (fields.obj, "names", "an object"),
    (fields.strings, "nums", "a list of strings"),
    (fields.strings, "s", "a list of strings"),
    (fields.integers, "names", "a list of integers"),
    (fields.objects, "names", "a list of objects"),
    (fields.counts, "names", "an object"),
])
def test_wrong_types_are_named(reader: Callable[..., Any], name: str, what: str) -> None:
    with pytest.raises(fields.FieldError, match=f"^doc: field '{name}' must be {what}, got "):
        reader(DOC, name, "doc")


def test_choice() -> None:
    assert fields.choice(DOC, "s", "doc", ("hi", "ho")) == "hi"
    with pytest.raises(fields.FieldError, match="field 's' must be one of a, b, got 'hi'"):
        fields.choice(DOC, "s", "doc", ("a", "b"))
    with pytest.raises(fields.FieldError, match="field 'n' must be one of a, b, got 3"):
        fields.choice(DOC, "n", "doc", ("a", "b"))


def test_integer_lists() -> None:
    assert fields.integers(DOC, "nums", "doc", low=0, length=3) == (0, 1, 2)
    with pytest.raises(fields.FieldError, match="must be a list of 5 integers >= 0"):
        fields.integers(DOC, "nums", "doc", low=0, length=5)
    with pytest.raises(fields.FieldError, match="must be a list of integers >= 1"):
        fields.integers(DOC, "nums", "doc", low=1)
    with pytest.raises(fields.FieldError, match="must be a list of integers"):
        fields.integers({"l": [1, True]}, "l", "doc")


def test_objects_can_require_one() -> None:
    assert fields.objects(DOC, "empty", "doc") == []
    with pytest.raises(fields.FieldError, match="'empty' must be a non-empty list of objects"):
        fields.objects(DOC, "empty", "doc", nonempty=True)
    with pytest.raises(fields.FieldError, match="'l' must be a list of objects"):
        fields.objects({"l": [{}, 1]}, "l", "doc")


def test_counts_name_the_bad_count() -> None:
    with pytest.raises(fields.FieldError, match=r"^doc\.c: field 'x' must be >= 0, got -1$"):
        fields.counts({"c": {"x": -1}}, "c", "doc")
    with pytest.raises(fields.FieldError, match=r"^doc\.c: field 'x' must be an integer"):
        fields.counts({"c": {"x": False}}, "c", "doc")
    with pytest.raises(fields.FieldError, match=r"^doc\.c: field '1' is not named by a string"):
        fields.counts({"c": {1: 1}}, "c", "doc")


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(fields.FieldError) as info:
        fields.string({"v": list(range(1000))}, "v", "doc")
    assert len(str(info.value)) < 140 and str(info.value).endswith("...")


def test_load_object() -> None:
    assert fields.load_object('{"a": 1}', "info") == {"a": 1}
    with pytest.raises(ValueError, match=r"^info: agent output is not JSON: "):
        fields.load_object("{", "info", "agent output")
    with pytest.raises(ValueError, match=r"^dump: line 2 is not a JSON object$"):
        fields.load_object("[1]", "dump", "line 2")
