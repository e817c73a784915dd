"""A plan's network allowance: what an entry may be, where it is checked, how it merges."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.driver import DriverConfig, Record
from claudecluster.actors.worker import item_problem
from claudecluster.domain.network import (
    MAX_ALLOWED_DESTINATIONS,
    Destination,
    allowance_problem,
    parse_destination,
)
from claudecluster.domain.submission import submission_problem
from claudecluster.events import CommandRejected, SubmitRun, TaskNetwork, TaskSpec
from claudecluster.events.plan import plan_from_data, plan_to_specs
from claudecluster.events.work import WorkItem, decode_work_item, encode_work_item
from tests.domain.test_driver_core import Log


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("pypi.org:443", Destination("pypi.org", 443)),
        ("Files.PythonHosted.org.:443", Destination("files.pythonhosted.org", 443)),
        ("127.0.0.1:5432", Destination("127.0.0.1", 5432)),
        ("127.1.2.3:1", Destination("127.1.2.3", 1)),
        ("localhost:65535", Destination("localhost", 65535)),
        ("db-1:6379", Destination("db-1", 6379)),
    ],
)
def test_a_host_name_or_loopback_address_and_a_port_is_a_destination(
    entry: str, expected: Destination
) -> None:
    assert parse_destination(entry) == expected


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("pypi.org", "not of the form host:port"),
        (":443", "not of the form host:port"),
        ("pypi.org:0", "from 1 to 65535"),
        ("pypi.org:65536", "from 1 to 65535"),
        ("pypi.org:https", "from 1 to 65535"),
        ("pypi.org:80-90", "from 1 to 65535"),
        ("10.0.0.5:5432", "name the host instead"),
        ("0.0.0.0:80", "name the host instead"),
        ("[::1]:80", "IPv6"),
        ("::1:80", "IPv6"),
        ("*.example.com:443", "not a host name"),
        ("https://pypi.org:443", "is a URL; give host:port"),
        ("py pi.org:443", "not a host name"),
        ("-bad.org:443", "not a host name"),
        ("1.2.3:443", "neither a host name nor an IPv4 address"),
        ("a" * 300 + ".org:443", "not a host name"),
    ],
)
def test_anything_wider_or_stranger_is_refused_saying_why(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_destination(entry)
    assert problem in (allowance_problem(["pypi.org:443", entry]) or "")
    assert (allowance_problem(["pypi.org:443", entry]) or "").startswith("entry 1: ")


@given(st.text(max_size=300))
def test_no_entry_raises_anything_but_a_clear_refusal(entry: str) -> None:
    problem = allowance_problem([entry])
    if problem is None:
        destination = parse_destination(entry)
        assert parse_destination(str(destination)) == destination
    else:
        assert problem.startswith("entry 0: ")
        with pytest.raises(ValueError, match=r".") as caught:
            parse_destination(entry)
        assert problem == f"entry 0: {caught.value}"


def test_the_count_is_bounded() -> None:
    many = [f"h{i}.example:443" for i in range(MAX_ALLOWED_DESTINATIONS + 1)]
    assert allowance_problem(many[:-1]) is None
    assert allowance_problem(many) == (
        f"{MAX_ALLOWED_DESTINATIONS + 1} destinations, more than the limit of "
        f"{MAX_ALLOWED_DESTINATIONS} per task"
    )


def _submit(*allow: str) -> SubmitRun:
    spec = TaskSpec(task_id="t", title="t", prompt="p", network=TaskNetwork(allow=allow))
    return SubmitRun(run_id="r", goal="g", repo="/r", plan=(spec,))


def test_a_bad_allowance_is_refused_at_the_doors_and_in_the_core() -> None:
    assert submission_problem(_submit("pypi.org:443"), max_tasks=500) is None
    command = _submit("pypi.org:443", "10.0.0.5:5432")
    found = submission_problem(command, max_tasks=500)
    assert found is not None
    assert found[0] == "plan[0].network.allow"
    assert found[1].startswith("entry 1: '10.0.0.5:5432': a bare IP address")
    (refusal,) = Log(DriverConfig(max_tasks=500)).command(command)
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert refusal.event.reason.startswith("plan[0].network.allow: entry 1")


def test_a_plans_allowance_applies_to_every_task_and_a_tasks_own_is_added() -> None:
    plan = plan_from_data(
        {
            "network": {"allow": ["pypi.org:443"]},
            "tasks": [
                {"id": "a", "prompt": "p"},
                {"id": "b", "prompt": "p",
                 "network": {"allow": ["127.0.0.1:5432", "pypi.org:443"]}},
            ],
        },
        "plan.yaml",
    )  # fmt: skip
    a, b = plan_to_specs(plan)
    assert a.network.allow == ("pypi.org:443",)
    assert b.network.allow == ("pypi.org:443", "127.0.0.1:5432")
    bare = plan_to_specs(plan_from_data({"tasks": [{"id": "c", "prompt": "p"}]}, "p"))
    assert bare[0].network == TaskNetwork()


def test_the_allowance_travels_in_the_work_item_and_old_items_decode_without_one() -> None:
    item = WorkItem(run_id="r", attempt=1, base_commit="c" * 40,
                    spec=_submit("pypi.org:443").plan[0])  # type: ignore[index]  # fmt: skip
    assert decode_work_item(encode_work_item(item)).spec.network.allow == ("pypi.org:443",)
    old = msgspec.json.encode({"run_id": "r", "attempt": 1, "base_commit": "c" * 40,
                               "spec": {"task_id": "t", "title": "t", "prompt": "p"}})  # fmt: skip
    assert decode_work_item(old).spec.network == TaskNetwork()


def test_a_worker_refuses_an_item_whose_allowance_breaks_the_rules() -> None:
    """A work item is the driver's, but the worker checks it again before it runs."""
    spec = TaskSpec(task_id="t", title="t", prompt="p",
                    network=TaskNetwork(allow=("*.example.com:443",)))  # fmt: skip
    item = WorkItem(run_id="r", attempt=1, base_commit="c" * 40, spec=spec)
    problem = item_problem(item, permission_modes=("acceptEdits",), allow_mcp_config=False)
    assert problem is not None
    assert problem.startswith("the item's network.allow is refused: entry 0:")
    fine = WorkItem(run_id="r", attempt=1, base_commit="c" * 40, spec=_submit("a.b:1").plan[0])  # type: ignore[index]
    assert item_problem(fine, permission_modes=("acceptEdits",), allow_mcp_config=False) is None
    assert "permission mode 'bypassPermissions' is not allowed" in (
        item_problem(
            msgspec.structs.replace(fine, permission_mode="bypassPermissions"),
            permission_modes=("acceptEdits",),
            allow_mcp_config=False,
        )
        or ""
    )
