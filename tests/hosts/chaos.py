"""The chaos run across three namespace hosts, as a function the test and the benchmark share.

The hosts: ``dh`` holds the user's repository, the driver and NATS server a; ``w1`` and
``w2`` each hold a NATS server and two workers. Every client speaks TLS with its own
role's nkey; routes are TLS too. The scripted model API and the observer (submitting,
watching the log as the operator's admin) sit outside, in the root namespace. During one
run of 30 real Claude Code tasks (6 chains of 5):

1. ``w1``'s link is cut and restored: its workers and its server vanish mid-attempt;
2. every process of ``w2`` is killed (server, workers, their agents), and the host comes
   back (its server on its old store, fresh workers);
3. ``dh`` is partitioned from the NATS majority (from ``w1`` and ``w2``) for 20 s: the
   driver is left with server a, which cannot commit anything alone, and pauses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec

from claudecluster.events import RunPolicy, TaskProgress, TaskSpec
from claudecluster.runtime.worker.transcripts import _RESUME_NOTE
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import read_all
from tests.faults.rig import (
    PROGRESS_WITHIN_S,
    RUN_ENDS_WITHIN_S,
    FaultRig,
    RunVerdict,
    logs_on_failure,
    open_rig,
)
from tests.hosts.actors import start_driver, start_worker, wait_replicas_current
from tests.hosts.cluster import open_host_cluster
from tests.hosts.netns import open_hosts
from tests.support import make_repo

__all__ = ["TASKS", "ChaosOutcome", "RunDidNotEndError", "run_chaos"]

TASKS = 30
CHAINS = 6
WORKERS_PER_HOST = 2
#: How long each fault lasts: the link cut outlasts the workers' ack wait, the
#: partition is the issue's 20 s (past the driver lease's 10 s TTL).
LINK_CUT_S = 8.0
PARTITION_S = 20.0
#: The merged counts each fault waits for, so each strikes a run in progress.
CUT_AT, KILL_AT, REBOOT_AT, PARTITION_AT = 4, 9, 12, 16
#: Replicas catching up after a host comes back.
CURRENT_WITHIN_S = 120.0
ACK_WAIT_S = 5.0
MODEL_LATENCY_S = 0.3


class RunDidNotEndError(Exception):
    """The run did not end in time; the message holds the processes' logs."""


@dataclass
class ChaosOutcome:
    """What the chaos run left.

    Attributes:
        verdict: the run as the log and the integration branch tell it.
        story: every event of each task not merged exactly once (empty when all were).
        lost: entries (sequence, event id) the observer saw that the log no longer holds.
        killed: the pids killed on ``w2``.
        driver_exit: the driver's exit code at the end (None: it was still running).
    """

    verdict: RunVerdict
    story: str
    lost: list[tuple[int, str]]
    killed: list[int]
    driver_exit: int | None


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

    # A task taken over from a lost worker resumes its session on a fresh workspace, and
    # the worker tells the agent so: the scripted agent then writes its file again, as a
    # real one would, instead of carrying on past the write (and succeeding with no change).
    return Script.model_validate(
        {
            "latency_s": MODEL_LATENCY_S,
            "tasks": [scripted(i) for i in range(TASKS)],
            "restart_after": _RESUME_NOTE.split(":")[0],
        }
    )


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


async def run_chaos(tmp_path: Path) -> ChaosOutcome:
    """Build the hosts, run the 30 tasks through the three faults, judge, tear down.

    Raises:
        RunDidNotEndError: the run did not complete or fail in time (or a fault's wait for
            progress, or for replicas to catch up, ran out).
    """
    tasks = [_task(i) for i in range(TASKS)]
    policy = RunPolicy(max_attempts=8, backoff_base_s=0.5, backoff_max_s=4.0)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
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

            async def workers_on(name: str, label: str) -> None:
                for n in range(WORKERS_PER_HOST):
                    log = logs / f"{name}-{label}-{n}.log"
                    await start_worker(cluster, network[name], api, log, ack_wait_s=ACK_WAIT_S)

            async def merged(at_least: int) -> None:
                await rig.watch.wait_for(
                    lambda _: rig.merged_count("hosts") >= at_least, PROGRESS_WITHIN_S
                )

            await workers_on("w1", "worker")
            await workers_on("w2", "worker")
            driver = await start_driver(cluster, dh, logs / "dh-driver.log")
            await rig.submit("hosts", tasks, policy)
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
                await workers_on("w2", "worker-again")
                await wait_replicas_current(rig, 3, CURRENT_WITHIN_S)

                await merged(PARTITION_AT)
                network.partition(dh, [w1, w2])
                await anyio.sleep(PARTITION_S)  # the fault's length
                network.heal(dh, [w1, w2])

                await rig.wait_end("hosts", limit_s=RUN_ENDS_WITHIN_S)
            except TimeoutError:
                raise RunDidNotEndError(f"the run did not end\n{logs_on_failure(rig)}") from None
            verdict = rig.verdict("hosts", tasks)
            assert rig.log is not None
            kept = {(s.seq, s.envelope.id) for s in await read_all(rig.log)}
            return ChaosOutcome(
                verdict=verdict,
                story=_stories(rig, verdict),
                lost=[entry for entry in rig.watch.stored if entry not in kept],
                killed=killed,
                driver_exit=driver.returncode,
            )
