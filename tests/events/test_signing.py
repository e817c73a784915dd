"""Signed attempts: the pure check, and what the projections make of a result nobody signed."""

from __future__ import annotations

import msgspec
import nkeys
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.worker import only_forgeries
from claudecluster.domain.lifecycle import TaskState
from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.model import (
    Event,
    RunPlanned,
    RunSubmitted,
    TaskAssigned,
    TaskPreempted,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.signing import signature_of, signed_bytes, verify_envelope
from claudecluster.projections.cluster import ClusterView, apply, replay
from claudecluster.projections.tasks import NOT_THE_HOLDER
from claudecluster.runtime.credentials import new_user_seed
from tests.support import EnvelopeFactory


def sign(envelope: EventEnvelope, key: nkeys.KeyPair) -> EventEnvelope:
    """What a worker does: sign the envelope as stored (here: as encoded and decoded)."""
    stored = decode_event(encode(envelope))
    return msgspec.structs.replace(stored, signature=signature_of(key.sign(signed_bytes(stored))))


def new_key() -> nkeys.KeyPair:
    return nkeys.from_seed(new_user_seed())


def public(key: nkeys.KeyPair) -> str:
    return str(key.public_key.decode())


make = EnvelopeFactory("sig")
SUCCEEDED = TaskSucceeded(run_id="r1", task_id="t1", attempt=1, worker_id="w1", cost_usd=1.5)


def test_a_signed_envelope_verifies_with_its_key_after_a_trip_through_the_log() -> None:
    key = new_key()
    signed = sign(make(SUCCEEDED), key)

    assert verify_envelope(decode_event(encode(signed)), public(key)) is None


@given(summary=st.text(max_size=50), cost=st.floats(min_value=0, max_value=1e6))
def test_any_change_to_a_signed_event_breaks_its_signature(summary: str, cost: float) -> None:
    key = new_key()
    signed = sign(make(SUCCEEDED), key)
    changed = msgspec.structs.replace(
        signed,
        payload=msgspec.structs.replace(SUCCEEDED, summary=summary + "!", cost_usd=cost),
    )

    assert verify_envelope(changed, public(key)) is not None


def test_an_unsigned_event_another_key_or_a_bad_key_is_refused() -> None:
    key, other = new_key(), new_key()
    envelope = make(SUCCEEDED)

    assert "no signature" in (verify_envelope(envelope, public(key)) or "")
    assert "does not match" in (verify_envelope(sign(envelope, other), public(key)) or "")
    assert "not an nkey" in (verify_envelope(sign(envelope, key), "UNOTAKEY") or "")
    seed_as_key = new_user_seed().decode()
    assert "not an nkey" in (verify_envelope(sign(envelope, key), seed_as_key) or "")


# -- the projections ---------------------------------------------------------------------

SPEC = TaskSpec(task_id="t1", title="t", prompt="p")


def held(key: str) -> tuple[ClusterView, list[StoredEvent]]:
    """A view where attempt 1 of r1/t1 runs on w1, claimed with ``key``."""
    events: list[Event] = [
        RunSubmitted(run_id="r1", goal="g", repo="/r"),
        RunPlanned(run_id="r1", tasks=(SPEC,), base_commit="abc", integration_branch="b"),
        TaskQueued(run_id="r1", task_id="t1", attempt=1),
        TaskAssigned(run_id="r1", task_id="t1", attempt=1, worker_id="w1", worker_key=key),
        TaskStarted(run_id="r1", task_id="t1", attempt=1, worker_id="w1"),
    ]
    stored = [
        StoredEvent(seq=n, subject="s", envelope=make(event)) for n, event in enumerate(events, 1)
    ]
    return replay(stored), stored


def test_a_result_its_holder_did_not_sign_is_refused_and_not_billed() -> None:
    key = new_key()
    view, _ = held(public(key))
    # TaskStarted above is unsigned too: the claim's key makes even the start refused.
    assert view.tasks["r1/t1"].state is TaskState.ASSIGNED
    assert view.anomaly_count == 1

    forged = apply(view, StoredEvent(seq=10, subject="s", envelope=make(SUCCEEDED)))

    assert forged.tasks["r1/t1"].state is TaskState.ASSIGNED
    assert forged.recent_anomalies[-1].reason.startswith(NOT_THE_HOLDER)
    assert forged.costs == view.costs  # a forged cost is nobody's spend


def test_the_holders_signed_events_move_the_attempt() -> None:
    key = new_key()
    view, _ = held(public(key))
    start = TaskStarted(run_id="r1", task_id="t1", attempt=1, worker_id="w1")
    view = apply(view, StoredEvent(seq=10, subject="s", envelope=sign(make(start), key)))
    view = apply(view, StoredEvent(seq=11, subject="s", envelope=sign(make(SUCCEEDED), key)))

    assert view.tasks["r1/t1"].state is TaskState.SUCCEEDED
    assert view.anomaly_count == 1  # only the unsigned start of held()


def test_an_attempt_claimed_without_a_key_is_not_checked_so_old_logs_replay() -> None:
    view, _ = held("")
    view = apply(view, StoredEvent(seq=10, subject="s", envelope=make(SUCCEEDED)))

    assert view.tasks["r1/t1"].state is TaskState.SUCCEEDED
    assert view.anomaly_count == 0


def test_a_worker_steps_over_forgeries_of_its_attempt_but_not_over_a_take_over() -> None:
    key = new_key()
    forged = make(SUCCEEDED)
    mine = sign(make(SUCCEEDED), key)
    take_over = make(TaskQueued(run_id="r1", task_id="t1", attempt=2))

    assert only_forgeries([forged], 1, public(key))
    assert not only_forgeries([forged, take_over], 1, public(key))
    assert not only_forgeries([mine], 1, public(key))
    assert not only_forgeries([], 1, public(key))


def test_a_preemption_of_its_attempt_supersedes_a_worker_and_is_never_a_forgery() -> None:
    key = new_key()
    preempted = make(TaskPreempted(run_id="r1", task_id="t1", attempt=1, other_task_id="t2"))

    # Unsigned and naming the attempt, like a forgery; but only the driver may publish it.
    assert not only_forgeries([preempted], 1, public(key))
    assert not only_forgeries([make(SUCCEEDED), preempted], 1, public(key))
