"""The codec: round trips, precise errors, upcasting, and robustness to any bytes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.errors import EventDecodeError, UnknownEventTypeError
from claudecluster.events import (
    COMMAND_TYPES,
    EVENT_TYPES,
    CancelTask,
    EventEnvelope,
    TaskQueued,
    WorkerHeartbeat,
    decode_command,
    decode_event,
    decode_stored_event,
    encode,
    wrap_command,
    wrap_event,
)
from claudecluster.events.codec import UPCASTERS
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Command
from tests.strategies import envelopes, for_type
from tests.support import T0


def _queued() -> EventEnvelope:
    return wrap_event(TaskQueued(run_id="r1", task_id="t1"), event_id="e1", now=T0)


def _with(raw: bytes, **changes: Any) -> bytes:
    data = json.loads(raw)
    for path, value in changes.items():
        target = data
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return json.dumps(data).encode()


@given(envelopes())
def test_any_event_survives_encode_then_decode_unchanged(envelope: EventEnvelope) -> None:
    assert decode_event(encode(envelope)) == envelope


@given(for_type(Command), st.uuids())
def test_any_command_survives_encode_then_decode_unchanged(command: Command, uid: Any) -> None:
    envelope = wrap_command(command, command_id=uid.hex, now=T0, correlation_id="c")
    assert decode_command(encode(envelope)) == envelope


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_decode_error(data: bytes) -> None:
    # No short random byte string is a valid envelope, so every one must fail cleanly.
    with pytest.raises(EventDecodeError) as caught:
        decode_event(data)
    assert caught.value.field.startswith("$")
    assert caught.value.problem


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "id",
                        "payload",
                        "type",
                        "schema_version",
                        "occurred_at",
                        "correlation_id",
                        "worker_id",
                        "memory_mb",
                    ]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=12,
    )
)
def test_random_json_raises_only_the_decode_error(value: Any) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_event(json.dumps(value).encode())
    assert caught.value.field.startswith("$")


def test_a_wrong_field_type_names_the_field_and_the_problem() -> None:
    bad = _with(encode(_queued()), payload__attempt="two")
    with pytest.raises(EventDecodeError) as caught:
        decode_event(bad)
    assert caught.value.field == "$.payload.attempt"
    assert "int" in caught.value.problem
    assert "$.payload.attempt" in str(caught.value)


def test_an_id_that_cannot_be_a_subject_token_is_rejected_by_name() -> None:
    bad = _with(encode(_queued()), payload__task_id="a.b")
    with pytest.raises(EventDecodeError) as caught:
        decode_event(bad)
    assert caught.value.field == "$.payload.task_id"


def test_a_missing_field_is_named() -> None:
    data = json.loads(encode(_queued()))
    del data["payload"]["run_id"]
    with pytest.raises(EventDecodeError) as caught:
        decode_event(json.dumps(data))
    assert "run_id" in caught.value.problem


def test_an_unknown_type_tag_raises_the_unknown_type_error() -> None:
    with pytest.raises(UnknownEventTypeError) as caught:
        decode_event(_with(encode(_queued()), payload__type="task.teleported"))
    assert caught.value.type_tag == "task.teleported"
    assert caught.value.field == "$.payload.type"


def test_malformed_json_is_reported_at_the_root() -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_event(b'{"id": ')
    assert caught.value.field == "$"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[]", "$"),
        (b'{"payload": 3}', "$.payload"),
        (b'{"payload": {"type": 3}}', "$.payload.type"),
        (b'{"payload": {"type": "task.queued"}, "schema_version": "1"}', "$.schema_version"),
        (b'{"payload": {"type": "task.queued"}, "schema_version": true}', "$.schema_version"),
    ],
)
def test_structural_problems_name_where_they_are(raw: bytes, field: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_event(raw)
    assert caught.value.field == field


def test_a_version_newer_than_the_reader_knows_is_refused_with_advice() -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_event(_with(encode(_queued()), schema_version=9))
    assert "upgrade claudecluster" in caught.value.problem


def _heartbeat_v1(memory_mb: Any) -> bytes:
    return json.dumps(
        {
            "id": "hb-1",
            "occurred_at": "2026-01-01T00:00:00Z",
            "schema_version": 1,
            "correlation_id": "w1",
            "payload": {
                "type": "worker.heartbeat",
                "worker_id": "w1",
                "cpu_percent": 12.5,
                "memory_mb": memory_mb,
                "running_tasks": ["r1/t1"],
            },
        }
    ).encode()


def test_a_v1_heartbeat_is_upcast_to_bytes_of_memory() -> None:
    envelope = decode_event(_heartbeat_v1(1.5))
    assert envelope.schema_version == 2
    assert envelope.payload == WorkerHeartbeat(
        worker_id="w1", cpu_percent=12.5, memory_bytes=1_572_864, running_tasks=("r1/t1",)
    )


def test_an_upcast_event_re_encodes_as_the_current_version() -> None:
    envelope = decode_event(_heartbeat_v1(2))
    again = json.loads(encode(envelope))
    assert again["schema_version"] == 2
    assert "memory_mb" not in again["payload"]
    assert decode_event(encode(envelope)) == envelope


@pytest.mark.parametrize("memory_mb", ["lots", True, None])
def test_a_v1_heartbeat_that_cannot_be_upcast_says_why(memory_mb: Any) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_event(_heartbeat_v1(memory_mb))
    assert "cannot upcast" in caught.value.problem


def test_an_old_version_without_an_upcaster_is_refused() -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode_event(_with(encode(_queued()), schema_version=0))
    assert caught.value.field == "$.schema_version"


def test_every_upcaster_starts_from_a_version_older_than_current() -> None:
    for tag, version in UPCASTERS:
        assert version < EVENT_TYPES[tag].schema_version


def test_every_wire_tag_has_two_tokens_so_subjects_stay_uniform() -> None:
    for tag in [*EVENT_TYPES, *COMMAND_TYPES]:
        assert len(tag.split(".")) == 2, tag
        assert tag == tag.lower()


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    envelope = decode_event(_with(encode(_queued()), payload__added_later="x", extra=1))
    assert envelope == _queued()


def test_a_command_decodes_and_a_bad_one_names_its_field() -> None:
    envelope = wrap_command(
        CancelTask(run_id="r1", task_id="t1"), command_id="c1", now=T0, correlation_id="r1"
    )
    assert decode_command(encode(envelope)) == envelope
    with pytest.raises(EventDecodeError) as caught:
        decode_command(_with(encode(envelope), payload__task_id=7))
    assert caught.value.field == "$.payload.task_id"
    with pytest.raises(UnknownEventTypeError):
        decode_command(encode(_queued()))  # an event is not a command


def test_a_stored_event_line_round_trips_and_bad_lines_name_the_field() -> None:
    stored = StoredEvent(seq=3, subject="cc.evt.r1.t1.task.queued", envelope=_queued())
    assert decode_stored_event(encode(stored)) == stored
    line = json.loads(encode(stored))
    for key, value, field in (
        ("seq", 0, "$.seq"),
        ("subject", "", "$.subject"),
        ("envelope", {"payload": {"type": "task.queued"}, "schema_version": 1}, "$.envelope"),
    ):
        broken = {**line, key: value}
        with pytest.raises(EventDecodeError) as caught:
            decode_stored_event(json.dumps(broken))
        assert caught.value.field.startswith(field)
    with pytest.raises(EventDecodeError):
        decode_stored_event("not json")


def test_envelopes_refuse_naive_times() -> None:
    naive = T0.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone"):
        wrap_event(TaskQueued(run_id="r", task_id="t"), event_id="e", now=naive)
    with pytest.raises(ValueError, match="timezone"):
        wrap_command(
            CancelTask(run_id="r", task_id="t"), command_id="c", now=naive, correlation_id="r"
        )


def test_the_envelope_defaults_its_correlation_to_the_run_or_worker() -> None:
    assert _queued().correlation_id == "r1"
    beat = wrap_event(WorkerHeartbeat(worker_id="w9"), event_id="e", now=T0)
    assert beat.correlation_id == "w9"
    assert beat.schema_version == 2


def test_encoded_events_are_plain_json_other_tools_can_read() -> None:
    data = msgspec.json.decode(encode(_queued()))
    assert data["payload"]["type"] == "task.queued"
    assert data["occurred_at"] == "2026-01-01T00:00:00Z"


def test_merge_events_written_before_merges_were_judged_decode_with_defaults() -> None:
    from claudecluster.events.model import MergeConflict as _Conflict
    from claudecluster.events.model import TaskMerged as _Merged

    merged = msgspec.json.decode(
        b'{"type":"task.merged","run_id":"r","task_id":"t","attempt":1,"commit":"c",'
        b'"integration_branch":"claudecluster/r","files":[]}',
        type=_Merged,
    )
    assert (merged.brought_changes, merged.note) == (True, "")
    conflict = msgspec.json.decode(
        b'{"type":"task.merge_conflict","run_id":"r","task_id":"t","attempt":1,'
        b'"files":["a"],"ours":"o","theirs":"t"}',
        type=_Conflict,
    )
    assert conflict.problem == ""
