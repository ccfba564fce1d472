"""Unit tests for lab.dut.abi: the entry bytes it builds and the agent's exit status of
each HP_CONFIG outcome (no VMs)."""

from __future__ import annotations

import pytest

from lab.dut import abi


def test_flow_entry_bytes_follow_the_uapi_layout() -> None:
    key = abi.flow_key_bytes(5, "203.0.113.1", "198.51.100.2", 17, 1000, 53)
    assert len(key) == 44
    assert key[:4] == bytes([203, 0, 113, 1]) and key[4:16] == bytes(12)
    assert key[32:44] == bytes([5, 0, 0, 0, 0xE8, 0x03, 53, 0, 17, 4, 0, 0])
    entry = abi.expected_flow_entry(1, key, 9, 2, 3, 4)
    assert len(entry) == abi.FLOW_ENTRY_SIZE
    assert entry[52:80] == bytes([9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
                                  4, 0, 0, 0, 0, 0, 0, 0])
    v6 = abi.flow_key_bytes(1, "2001:db8::1", "2001:db8::2", 6, 1, 2)
    assert v6[41] == 6
    with pytest.raises(ValueError, match="family"):
        abi.flow_key_bytes(1, "2001:db8::1", "203.0.113.1", 6, 1, 2)


def test_bridge_entry_bytes_follow_the_uapi_layout() -> None:
    entry = abi.expected_bridge_entry(1, 7, "02:aa:bb:cc:dd:ee", 12, 34, 56)
    assert len(entry) == abi.BRIDGE_ENTRY_SIZE
    assert entry[8:20] == bytes([7, 0, 0, 0, 2, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0, 0])
    assert entry[20:24] == bytes([12, 0, 0, 0]) and entry[32:40] == bytes([56] + [0] * 7)


def test_outcome_exit_codes() -> None:
    assert abi.Outcome.SUCCESS.agent_exit_code == 0
    assert abi.Outcome.ALREADY_INITIALISED.agent_exit_code == 0
    assert abi.Outcome.HUGEPAGE_FAILURE_FALLBACK_IN_USE.agent_exit_code == 3
    assert abi.Outcome.LAYOUT_MISMATCH.agent_exit_code == 2
    assert abi.Outcome.REFUSED.agent_exit_code == 2
