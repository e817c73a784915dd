"""nats/permissions.yaml grants each role the events its code records, and no others.

A stale grant (an event type a role no longer publishes, such as ``worker.heartbeat``
since liveness moved to the ``cc_workers`` registry) is a permission nobody needs; a
missing one is a refusal the role meets at run time on an authenticated bus. Both are
found here without a server: the event types a role's modules construct (read from
their source) against the event subjects its grant lets it publish.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

from claudecluster.events.codec import EVENT_TYPES
from claudecluster.events.model import EventBase, RunEvent, TaskEvent, WorkerEvent
from claudecluster.events.subjects import subject_matches
from claudecluster.transport.permissions import Role, role_grant

PACKAGE: Final = Path(__file__).resolve().parents[2] / "src" / "claudecluster"

#: The modules whose events each role's process records.
MODULES: Final[dict[Role, tuple[str, ...]]] = {
    "driver": (
        "actors/driver.py", "actors/merging.py", "actors/collisions.py", "actors/scaling.py",
        "runtime/driver.py", "runtime/merge_queue.py", "runtime/autoscaler.py",
    ),
    "worker": (
        "actors/worker.py", "actors/progress.py", "runtime/worker.py",
        "runtime/worker_health.py", "runtime/workspace_preparation.py",
        "executors/claude_stream.py", "executors/claude_code.py", "executors/shell.py",
    ),
}  # fmt: skip

_BY_NAME: Final = {cls.__name__: cls for cls in EVENT_TYPES.values()}


def _constructed(role: Role) -> set[type[EventBase]]:
    """The event types the role's modules construct (``TaskQueued(...)`` calls)."""
    found: set[type[EventBase]] = set()
    for module in MODULES[role]:
        tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in _BY_NAME:
                    found.add(_BY_NAME[name])
    return found


def _sample_subject(kind: type[EventBase]) -> str:
    tag = kind.__struct_config__.tag
    if issubclass(kind, TaskEvent):
        return f"cc.evt.r1.t1.{tag}"
    if issubclass(kind, WorkerEvent):
        return f"cc.evt._workers.w1.{tag}"
    if issubclass(kind, RunEvent):
        return f"cc.evt.r1._.{tag}"
    raise AssertionError(f"{kind.__name__} has no subject scope this test knows")


def _event_grants(role: Role) -> list[str]:
    return [s for s in role_grant(role).publish if s.startswith("cc.evt.")]


@pytest.mark.parametrize("role", list(MODULES))
def test_a_role_may_publish_every_event_its_code_records(role: Role) -> None:
    grants = _event_grants(role)
    constructed = _constructed(role)
    assert constructed, f"found no event constructed in {MODULES[role]}"
    refused = sorted(
        kind.__name__
        for kind in constructed
        if not any(subject_matches(grant, _sample_subject(kind)) for grant in grants)
    )
    assert refused == [], f"{role} records {refused} but may not publish them"


@pytest.mark.parametrize("role", list(MODULES))
def test_every_single_event_a_role_may_publish_is_one_its_code_records(role: Role) -> None:
    constructed = {kind.__struct_config__.tag for kind in _constructed(role)}
    # Grants of one event type end in its two-token tag; wildcards (a run's own events)
    # are checked by the test above.
    single = [g for g in _event_grants(role) if not g.endswith(">")]
    stale = sorted(g for g in single if ".".join(g.split(".")[-2:]) not in constructed)
    assert stale == [], f"{role} may publish {stale}, which its code no longer records"


@pytest.mark.parametrize("role", ["frontdoor", "reader"])
def test_front_doors_and_readers_may_publish_no_event(role: Role) -> None:
    assert _event_grants(role) == []


def test_heartbeats_are_no_longer_granted_but_old_ones_still_decode() -> None:
    assert not any("worker.heartbeat" in g for g in role_grant("worker").publish)
    assert "worker.heartbeat" in EVENT_TYPES  # old logs still decode and replay
