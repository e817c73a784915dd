"""Submissions with a client's idempotency key: a retry is the same run, even after a
restart of the driver (the key is in the log)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from claudecluster.actors.driver import Record, decide
from claudecluster.errors import ConfigError
from claudecluster.events import CommandRejected, RunSubmitted, SubmitRun
from claudecluster.runtime.front_door import idempotent_run_id, submit_run_command
from tests.domain.test_driver_core import T0, Log, spec
from tests.domain.test_driver_poison import RecordingLog

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _submit(key: str, **extra: object) -> SubmitRun:
    return submit_run_command("g", repo="/repo", plan=[spec("a")], now=NOW,
                              idempotency_key=key, **extra)  # type: ignore[arg-type]  # fmt: skip


def test_a_key_gives_the_same_run_id_per_client_and_different_ones_across_clients() -> None:
    assert _submit("k-1").run_id == _submit("k-1").run_id == idempotent_run_id("k-1")
    assert _submit("k-1").run_id != _submit("k-2").run_id
    assert _submit("k-1", client="alice").run_id != _submit("k-1", client="bob").run_id
    assert _submit("k-1").idempotency_key == "k-1"


@pytest.mark.parametrize("key", ["has space", "tab\t", "x" * 201, "é"])
def test_a_key_that_cannot_be_a_header_value_is_refused_by_name(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _submit(key)
    assert caught.value.key == "idempotency_key"


def test_a_retried_submission_with_its_key_is_the_same_run_before_and_after_a_restart() -> None:
    log = RecordingLog()
    first = _submit("retry-me")
    (recorded,) = log.command(first, command_id="c1")
    assert isinstance(recorded, Record)
    assert isinstance(recorded.event, RunSubmitted)
    assert recorded.event.idempotency_key == "retry-me"
    # Retried while the first is still being recorded, then after it was: nothing new.
    assert log.command(first, command_id="c2") == []
    log.settle(recorded)
    assert log.command(first, command_id="c3") == []
    # A driver rebuilt from the log knows the key too.
    fresh = Log()
    for stored in log.recorded:
        decide(fresh.state, stored, T0)
    assert fresh.command(first, command_id="c4") == []
    # The same run id without the key (or with another) is still a second run: refused.
    for other in ("", "another"):
        clash = SubmitRun(run_id=first.run_id, goal="g", repo="/repo", plan=(spec("a"),),
                          idempotency_key=other)  # fmt: skip
        (refusal,) = fresh.command(clash, command_id=f"c5{other}")
        assert isinstance(refusal, Record)
        assert isinstance(refusal.event, CommandRejected)
        assert "already exists" in refusal.event.reason
