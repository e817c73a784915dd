"""Starting ClaudeCluster's actors on namespace hosts, as an operator would on machines.

Each actor is the ``claudecluster`` CLI run inside its host's namespace, with the host's
HOME and directories, its role's seed and the CA copied to that host, and the cluster's
``tls://`` URL. Shared by the chaos test and benchmarks/bench_multi_host.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.abc
import nats.errors
import nats.js.errors

from claudecluster.transport.topology import EVENTS_STREAM
from tests.faults.rig import CLI, FaultRig
from tests.hosts.cluster import HostCluster
from tests.hosts.netns import Host

__all__ = ["base_env", "start_driver", "start_worker", "wait_replicas_current"]

_POLL_S = 0.5


def base_env() -> dict[str, str]:
    """The little of the test's environment an actor needs (no ``CLAUDECLUSTER_*``)."""
    keep = ("PATH", "LANG", "LC_ALL", "IS_SANDBOX")
    return {k: v for k, v in os.environ.items() if k in keep}


async def start_worker(
    cluster: HostCluster,
    host: Host,
    api: dict[str, str],
    log: Path,
    *,
    ack_wait_s: float,
) -> anyio.abc.Process:
    """One ``claudecluster worker`` on ``host``, its workspaces in the host's directory."""
    env = {**base_env(), **api, **cluster.actor_env(host, "worker")}
    return await host.start(
        [CLI, "worker", "--ack-wait", str(ack_wait_s), "--workspace-root",
         str(host.root / "workspaces"), "--nats", cluster.url],
        env=env,
        log=log,
    )  # fmt: skip


async def start_driver(
    cluster: HostCluster, host: Host, log: Path, *, work_dir: str = "driver"
) -> anyio.abc.Process:
    """One ``claudecluster driver`` on ``host`` (it stands by while another holds the lease)."""
    return await host.start(
        [CLI, "driver", "--work-dir", str(host.root / work_dir), "--nats", cluster.url],
        env={**base_env(), **cluster.actor_env(host, "driver")},
        log=log,
    )


async def wait_replicas_current(rig: FaultRig, servers: int, limit_s: float) -> None:
    """Until the event log has a leader and every other server is a current replica.

    Raises:
        TimeoutError: not within ``limit_s``.
    """
    with anyio.fail_after(limit_s):
        while True:
            try:
                info = (await rig.js.stream_info(EVENTS_STREAM)).cluster
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                info = None  # a stream without a leader answers errors: ask again
            replicas = (info.replicas or []) if info is not None else []
            if (
                info is not None
                and info.leader
                and len(replicas) == servers - 1
                and all(r.current and not r.offline for r in replicas)
            ):
                return
            await anyio.sleep(_POLL_S)
