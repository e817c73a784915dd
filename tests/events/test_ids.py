"""One id check, used by every door: an id is the whole string, not a prefix of it."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pydantic
import pytest

from claudecluster.errors import ConfigError, EventDecodeError, InvalidIdError
from claudecluster.events.codec import decode_command, encode
from claudecluster.events.envelope import wrap_command
from claudecluster.events.model import CancelRun, TaskSpec, is_id
from claudecluster.events.subjects import check_id
from claudecluster.mcp_server.models import RunId, TaskRef
from claudecluster.runtime.front_door import submit_run_command

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
#: Python's ``$`` matches before a final newline: each of these passed a ``^...$`` match.
_TRAILING = ["run-1\n", "a\n", "x" * 64 + "\n"]


@pytest.mark.parametrize("bad", _TRAILING)
def test_an_id_ending_in_a_newline_is_not_an_id(bad: str) -> None:
    assert not is_id(bad)
    with pytest.raises(InvalidIdError):
        check_id("run", bad)


@pytest.mark.parametrize("bad", _TRAILING)
def test_an_event_field_id_ending_in_a_newline_does_not_decode(bad: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="task_id"):
        msgspec.convert({"task_id": bad, "title": "t", "prompt": "p"}, TaskSpec)
    command = wrap_command(CancelRun(run_id="r1"), command_id="c1", now=_NOW, correlation_id="c1")
    data = encode(command)
    with pytest.raises(EventDecodeError) as caught:
        decode_command(data.replace(b'"r1"', msgspec.json.encode(bad)))
    assert caught.value.field == "$.payload.run_id"


@pytest.mark.parametrize("bad", _TRAILING)
def test_the_mcp_tools_refuse_an_id_ending_in_a_newline(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        pydantic.TypeAdapter(RunId).validate_python(bad)
    with pytest.raises(pydantic.ValidationError):
        pydantic.TypeAdapter(TaskRef).validate_python(f"run-1/{bad}")


def test_a_submission_refuses_a_run_id_ending_in_a_newline() -> None:
    with pytest.raises(ConfigError) as caught:
        submit_run_command(
            "goal", repo="/r", plan=[TaskSpec(task_id="t", title="t", prompt="p")],
            run_id="run-1\n", now=_NOW,
        )  # fmt: skip
    assert caught.value.key == "run_id"


def test_valid_ids_still_pass_everywhere() -> None:
    assert is_id("run-1")
    assert check_id("run", "A_b-9") == "A_b-9"
    assert pydantic.TypeAdapter(RunId).validate_python("run-1") == "run-1"
    assert pydantic.TypeAdapter(TaskRef).validate_python("run-1/t1") == "run-1/t1"
