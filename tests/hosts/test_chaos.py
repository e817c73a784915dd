"""Three hosts, one run of real Claude Code agents, and the network and the hosts fail.

The hosts are network namespaces (tests/hosts/netns.py): ``dh`` holds the user's
repository, the driver and NATS server a; ``w1`` and ``w2`` each hold a NATS server and two
workers. Every client speaks TLS with its own role's nkey; routes are TLS too. The
scripted model API and the test itself (submitting, watching the log as the operator's
admin) sit outside, in the root namespace. During one run of 30 tasks:

1. ``w1``'s link is cut and restored: its workers and its server vanish mid-attempt;
2. every process of ``w2`` is killed (server, workers, their agents), and the host comes
   back (its server on its old store, fresh workers);
3. ``dh`` is partitioned from the NATS majority (from ``w1`` and ``w2``) for 20 s: the
   driver is left with server a, which cannot commit anything alone, and pauses.

Every task is merged exactly once (log and branch agree), the run completes, and every
event the test saw while it went on is still in the log afterwards, at the same place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from claudecluster.events import RunPolicy, TaskProgress, TaskSpec
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import read_all
from claudecluster.transport.topology import EVENTS_STREAM
from tests.faults.rig import (
    CLI,
    PROGRESS_WITHIN_S,
    RUN_ENDS_WITHIN_S,
    FaultRig,
    RecordProperty,
    RunVerdict,
    logs_on_failure,
    open_rig,
)
from tests.hosts.cluster import HostCluster, open_host_cluster
from tests.hosts.netns import Host, open_hosts, require_netns
from tests.support import make_repo

pytestmark = [pytest.mark.faults, pytest.mark.hosts]

TASKS = 30
CHAINS = 6
WORKERS_PER_HOST = 2
#: How long each fault lasts: the link cut outlasts the workers' ack wait, the
#: partition is the issue's 20 s (well past the driver lease's TTL).
LINK_CUT_S = 8.0
PARTITION_S = 20.0
#: The merged counts each fault waits for, so each strikes a run in progress.
CUT_AT, KILL_AT, REBOOT_AT, PARTITION_AT = 4, 9, 12, 16
#: Replicas catching up after a host comes back.
CURRENT_WITHIN_S = 120.0
ACK_WAIT_S = 5.0


def _task(index: int) -> TaskSpec:
    name = f"h{index}"
    return TaskSpec(
        task_id=name,
        title=name,
        prompt=f"[[task:{name}]] write {name}.txt",
        depends_on=((f"h{index - CHAINS}",) if index >= CHAINS else ()),
    )


def _script() -> Script:
    def scripted(index: int) -> dict[str, Any]:
        tool = {"name": "Write", "input": {"file_path": f"{{cwd}}/h{index}.txt", "content": "ok\n"}}
        return {
            "marker": f"[[task:h{index}]]",
            "turns": [{"text": "Writing.", "tools": [tool]}, {"text": f"Wrote h{index}.txt."}],
        }

    return Script.model_validate(
        {"latency_s": 0.3, "tasks": [scripted(i) for i in range(TASKS)]}
    )


async def start_worker(cluster: HostCluster, host: Host, api: dict[str, str], log: Path) -> None:
    """One ``claudecluster worker`` on ``host``, its workspaces in the host's directory."""
    env = {**_base_env(), **api, **cluster.actor_env(host, "worker")}
    await host.start(
        [CLI, "worker", "--ack-wait", str(ACK_WAIT_S), "--workspace-root",
         str(host.root / "workspaces"), "--nats", cluster.url],
        env=env,
        log=log,
    )  # fmt: skip


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "IS_SANDBOX")
    return {k: v for k, v in os.environ.items() if k in keep}


async def wait_replicas_current(rig: FaultRig, servers: int, limit_s: float) -> None:
    """Until the event log has a leader and every other server is a current replica."""
    with anyio.fail_after(limit_s):
        while True:
            try:
                info = (await rig.js.stream_info(EVENTS_STREAM)).cluster
            except Exception:  # noqa: BLE001 - a stream without a leader answers errors; ask again
                info = None
            if info is not None and info.leader and len(info.replicas or ()) == servers - 1:
                if all(r.current and not r.offline for r in info.replicas or ()):
                    return
            await anyio.sleep(0.5)


def _stories(rig: FaultRig, verdict: RunVerdict) -> str:
    """For each task not merged exactly once: its merges, commits and every event of it."""
    lines = []
    for task in verdict.planned:
        if verdict.merges[task] == 1 and verdict.trailers[task] == 1:
            continue
        lines.append(f"{task}: merged {verdict.merges[task]}x, {verdict.trailers[task]} commits")
        for (seq, _), event in zip(rig.watch.stored, rig.watch.events, strict=True):
            if getattr(event, "task_id", None) == task and not isinstance(event, TaskProgress):
                lines.append(f"  {seq} {msgspec.json.encode(event).decode()[:300]}")
    return "\n".join(lines)


async def test_a_run_across_three_hosts_survives_a_cut_link_a_dead_host_and_a_partition(
    tmp_path: Path, record_property: RecordProperty
) -> None:
    require_netns()
    tasks = [_task(i) for i in range(TASKS)]
    policy = RunPolicy(max_attempts=8, backoff_base_s=0.5, backoff_max_s=4.0)
    logs = tmp_path / "logs"
    logs.mkdir()
    async with open_hosts(tmp_path / "hosts", ["dh", "w1", "w2"]) as network:
        dh, w1, w2 = network["dh"], network["w1"], network["w2"]
        repo = make_repo(dh.root / "repo", {"README.md": "hosts\n"})
        async with (
            open_host_cluster(network, tmp_path / "operator", ["dh", "w1", "w2"]) as cluster,
            open_scripted_model(_script(), host=network.gateway) as model,
            open_rig(
                tmp_path, repo, cluster.url, replicas=3, credentials=cluster.credentials,
                auth=cluster.auth("admin"), ack_wait_s=ACK_WAIT_S,
            ) as rig,
        ):  # fmt: skip
            api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-scripted"}
            for host in (w1, w2):
                for n in range(WORKERS_PER_HOST):
                    await start_worker(cluster, host, api, logs / f"{host.name}-worker-{n}.log")
            driver = await dh.start(
                [CLI, "driver", "--work-dir", str(dh.root / "driver"), "--nats", cluster.url],
                env={**_base_env(), **cluster.actor_env(dh, "driver")},
                log=logs / "dh-driver.log",
            )
            await rig.submit("hosts", tasks, policy)

            async def merged(at_least: int) -> None:
                await rig.watch.wait_for(
                    lambda _: rig.merged_count("hosts") >= at_least, PROGRESS_WITHIN_S
                )

            try:
                await merged(CUT_AT)
                network.cut(w1)
                await anyio.sleep(LINK_CUT_S)  # the fault's length, not a wait for a result
                network.restore(w1)
                await wait_replicas_current(rig, 3, CURRENT_WITHIN_S)

                await merged(KILL_AT)
                killed = await w2.kill_everything()
                await merged(REBOOT_AT)
                await cluster.start_server("w2")
                for n in range(WORKERS_PER_HOST):
                    await start_worker(cluster, w2, api, logs / f"w2-worker-again-{n}.log")
                await wait_replicas_current(rig, 3, CURRENT_WITHIN_S)

                await merged(PARTITION_AT)
                network.partition(dh, [w1, w2])
                await anyio.sleep(PARTITION_S)  # the fault's length
                network.heal(dh, [w1, w2])

                await rig.wait_end("hosts", limit_s=RUN_ENDS_WITHIN_S)
            except TimeoutError:
                pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
            verdict = rig.verdict("hosts", tasks)
            story = _stories(rig, verdict)
            seen = list(rig.watch.stored)
            kept = {(s.seq, s.envelope.id) for s in await read_all(rig.log)}  # type: ignore[arg-type]
            driver_exit = driver.returncode
    verdict.report("three hosts, a cut link, a killed host, a partition", record_property)
    record_property("killed_on_w2", len(killed))
    assert len(killed) >= 1 + WORKERS_PER_HOST  # the server and the workers at least
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS
    assert verdict.completion_rate == 1.0, story
    # No acknowledged event lost: everything the log served while the faults went on is
    # still there, at the sequence it had.
    assert [entry for entry in seen if entry not in kept] == []
    # The driver lived through the partition (paused, then resumed) rather than exiting.
    assert driver_exit is None
