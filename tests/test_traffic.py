"""The traffic generator's summary and the comparison of its flows with a dump."""

from __future__ import annotations

import json

import pytest

from lab.dut import traffic

KEY = '"vrf":4001,"family":4,"src":"198.18.0.0","dst":"198.19.0.1","proto":17,' \
      '"sport":{},"dport":4789'


def summary(**changes: object) -> str:
    doc = {"adds": 3, "dels": 1, "gets": 2, "get_misses": 0, "del_misses": 0, "errors": 0,
           "first_error": 0, "live": 2, "attempts_unavailable": 9,
           "still_unavailable": False, "unavailable_ms": [250.5, 300.0, 120.25]}
    doc.update(changes)
    return json.dumps(doc)


def test_the_summary_and_the_acknowledged_flows_are_read() -> None:
    result = traffic.parse_result(summary(), f"{KEY.format(1)}\n{KEY.format(2)}\n")
    assert (result.adds, result.live, result.median_unavailable_ms) == (3, 2, 250.5)
    assert result.acked == {KEY.format(1), KEY.format(2)}


def test_a_short_acknowledged_file_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1 acknowledged keys in .*summary says 2"):
        traffic.parse_result(summary(), f"{KEY.format(1)}\n")


@pytest.mark.parametrize("text", ["not json", json.dumps({"adds": 1})])
def test_a_broken_summary_names_the_tool(text: str) -> None:
    with pytest.raises(ValueError, match="vrhp_traffic"):
        traffic.parse_result(text, "")


def test_dump_lines_give_the_keys_in_the_generators_spelling() -> None:
    dump = "".join(f'{{{KEY.format(n)},"action":1,"packets":0,"bytes":0,"last_used":5}}\n'
                   for n in (1, 2))
    assert traffic.dumped_keys(dump) == {KEY.format(1), KEY.format(2)}
