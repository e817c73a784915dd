"""nats/permissions.yaml grants each role no event type its code no longer records.

A stale grant (an event type a role no longer publishes, such as ``worker.heartbeat``
since liveness moved to the ``cc_workers`` registry) is a permission nobody needs. It is
found here without a server: the event types a role's modules construct (read from
their source) against the single event subjects its grant lets it publish. The other
direction (every event a role's code records is granted) is
``test_every_event_an_actor_records_is_one_its_role_may_publish`` in test_permissions.py.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

from claudecluster.events.codec import EVENT_TYPES
from claudecluster.events.model import EventBase
from claudecluster.transport.permissions import Role, role_grant

PACKAGE: Final = Path(__file__).resolve().parents[2] / "src" / "claudecluster"

#: The modules whose events each role's process records.
MODULES: Final[dict[Role, tuple[str, ...]]] = {
    "driver": (
        "actors/driver/commands.py", "actors/driver/reconcile.py", "actors/driver/fold.py",
        "actors/driver/decide.py", "actors/driver/liveness.py", "actors/driver/state.py",
        "actors/driver/effects.py", "actors/merging.py", "actors/collisions.py",
        "actors/scaling.py",
        "actors/merge_outcomes.py", "actors/work_items.py", "actors/lease.py",
        "runtime/standby.py", "transport/fenced.py",
        "runtime/driver.py", "runtime/merge_queue.py", "runtime/autoscaler.py",
        "runtime/pool_scaler.py",
    ),
    "worker": (
        "actors/worker.py", "actors/progress.py", "runtime/worker/__init__.py",
        "runtime/worker/serve.py", "runtime/worker/attempt.py", "runtime/worker/config.py",
        "runtime/worker/failures.py", "runtime/worker/transcripts.py",
        "runtime/worker/workspaces.py", "runtime/worker_health.py",
        "runtime/workspace_preparation.py",
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


def _event_grants(role: Role) -> list[str]:
    return [s for s in role_grant(role).publish if s.startswith("cc.evt.")]


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
