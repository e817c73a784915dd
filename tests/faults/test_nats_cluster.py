"""A three-server NATS cluster (nats/cluster/) with every stream replicated three times:
kill -9 the server that leads the event log mid-run, and the run completes.

The committed configs fix their ports and store dirs; the test moves them to free ports
and to its own directory, and changes nothing else.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
import pytest

from claudecluster.config_files import data_dir
from claudecluster.runtime.connection import embedded_auth, open_nats
from claudecluster.runtime.credentials import Credentials, write_cluster_authorization
from claudecluster.runtime.embedded_nats import find_nats_server
from claudecluster.transport.topology import EVENTS_STREAM, WORK_STREAM
from tests.faults.rig import (
    PROGRESS_WITHIN_S,
    RUN_ENDS_WITHIN_S,
    RecordProperty,
    chained_shell_tasks,
    kill_9,
    logs_on_failure,
    open_rig,
)
from tests.support import free_port, wait_for_port

pytestmark = pytest.mark.faults

NODES = ("a", "b", "c")
TASKS = 12
KILL_AT_MERGED = 4


def render_cluster(tmp_path: Path) -> tuple[dict[str, Path], dict[str, int], Credentials]:
    """Write the three committed configs with free ports and stores under ``tmp_path``,
    and the identities they include (as ``claudecluster creds cluster`` makes them)."""
    credentials, _ = write_cluster_authorization(tmp_path)
    ports: dict[int, int] = {}
    texts = {
        node: (data_dir("nats") / "cluster" / f"node-{node}.conf").read_text(encoding="utf-8")
        for node in NODES
    }
    for text in texts.values():
        for port in re.findall(r"127\.0\.0\.1:(\d+)", text):
            ports.setdefault(int(port), free_port())
    configs: dict[str, Path] = {}
    client_ports: dict[str, int] = {}
    for node, text in texts.items():
        moved = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m[1])]}", text)
        moved = moved.replace(f"./data/node-{node}", str(tmp_path / "stores" / node))
        assert moved != text
        configs[node] = tmp_path / f"node-{node}.conf"
        configs[node].write_text(moved, encoding="utf-8")
        client_ports[node] = int(re.findall(r"^listen: 127\.0\.0\.1:(\d+)", moved, re.M)[0])
    return configs, client_ports, credentials


@asynccontextmanager
async def open_cluster(
    tmp_path: Path,
) -> AsyncIterator[tuple[dict[str, anyio.abc.Process], str, Credentials]]:
    """Three servers, up with a JetStream leader; each stopped on exit if still running."""
    configs, ports, credentials = render_cluster(tmp_path)
    processes: dict[str, anyio.abc.Process] = {}
    try:
        for node in NODES:
            with (tmp_path / f"nats-{node}.log").open("wb") as out:
                processes[node] = await anyio.open_process(
                    [str(find_nats_server()), "-c", str(configs[node])],
                    cwd=tmp_path,
                    stdout=out,
                    stderr=out,
                )
        for port in ports.values():
            await anyio.to_thread.run_sync(wait_for_port, port)
        url = ",".join(f"nats://127.0.0.1:{ports[node]}" for node in NODES)
        async with open_nats(url, auth=embedded_auth(credentials, "driver")) as client:
            js = client.jetstream()
            with anyio.fail_after(30):
                while True:  # JetStream answers once the servers elected a meta leader
                    try:
                        await js.account_info()
                        break
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                        await anyio.sleep(0.2)
        yield processes, url, credentials
    finally:
        with anyio.CancelScope(shield=True):
            for process in processes.values():
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    await kill_9(process)
                await process.aclose()


def test_the_committed_cluster_configs_route_to_each_other_with_distinct_stores() -> None:
    texts = [
        (data_dir("nats") / "cluster" / f"node-{n}.conf").read_text(encoding="utf-8") for n in NODES
    ]
    names = {re.findall(r"^server_name: (\S+)", t, re.M)[0] for t in texts}
    stores = {re.findall(r'store_dir: "([^"]+)"', t)[0] for t in texts}
    routes = {tuple(re.findall(r"nats-route://(\S+)", t)) for t in texts}
    listens = {re.findall(r"cluster \{\s*name: \S+\s*listen: (\S+)", t)[0] for t in texts}
    assert len(names) == len(stores) == 3
    (route_list,) = routes  # every node knows the same three routes
    assert set(route_list) == listens
    assert all("sync_interval: always" in t for t in texts)
    # Authorization ships with them: no node starts without its users.
    assert all("include ./authorization.conf" in t for t in texts)


async def test_a_run_on_a_replicated_cluster_completes_when_the_log_leader_is_killed(
    repo: Path, tmp_path: Path, record_property: RecordProperty
) -> None:
    tasks = chained_shell_tasks("c", TASKS, chains=4)
    async with (
        open_cluster(tmp_path) as (servers, url, credentials),
        open_rig(
            tmp_path,
            repo,
            url,
            env={"CLAUDECLUSTER_NATS__REPLICAS": "3"},
            replicas=3,
            credentials=credentials,
        ) as rig,
    ):
        for stream in (EVENTS_STREAM, WORK_STREAM):
            assert (await rig.js.stream_info(stream)).config.num_replicas == 3
        for _ in range(3):
            await rig.start_worker()
        await rig.start_driver()
        await rig.submit("cl", tasks)
        try:
            await rig.watch.wait_for(
                lambda _: rig.merged_count("cl") >= KILL_AT_MERGED, PROGRESS_WITHIN_S
            )
            # The server leading the event log: the hardest one to lose, since every
            # append waits for a new leader to be elected.
            leader = (await rig.js.stream_info(EVENTS_STREAM)).cluster.leader
            await kill_9(servers[leader.removeprefix("claudecluster-")])
            await rig.wait_end("cl", limit_s=RUN_ENDS_WITHIN_S)
        except TimeoutError:
            pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
        verdict = rig.verdict("cl", tasks)
        new_leader = (await rig.js.stream_info(EVENTS_STREAM)).cluster.leader
    verdict.report(f"3-node cluster (killed {leader}, the log now led by {new_leader})",
                   record_property)  # fmt: skip
    assert new_leader != leader
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS
    assert verdict.completion_rate == 1.0, verdict
