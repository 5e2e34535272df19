"""The admin wire schema (wire.py): each vocabulary spelt once, and an answer outside it a
clean error rather than a traceback."""

from __future__ import annotations

from typing import get_args

import pytest

from animllm_cli.errors import AnimllmError
from animllm_cli.wire import SWITCH_REASONS, EngineStatus, SwitchReason, SwitchReport, read


def test_every_switch_reason_has_its_words() -> None:
    assert set(SWITCH_REASONS) == set(get_args(SwitchReason))


def test_an_answer_from_another_version_is_a_clean_error() -> None:
    """A newer gateway may send a state this release does not know."""
    with pytest.raises(AnimllmError, match=r"the gateway at http://x answered in a form this animllm does not "
                                           r"read: state: ") as raised:
        read(EngineStatus, {"model": "a", "state": "hibernating"}, "the gateway at http://x")
    assert "another animllm version" in raised.value.hint


def test_a_known_answer_reads_as_its_model() -> None:
    report = read(SwitchReport, {"from_model": None, "to_model": "a", "outcome": "ok", "reason": "sleep"}, "x")
    assert report.reason == "sleep" and report.to_json()["outcome"] == "ok"
