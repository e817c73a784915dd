"""The bus's roles against a real nats-server: each is refused what it must not do.

The embedded server (with the identities it makes at first start) is the one under test;
the permissions come from nats/permissions.yaml.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client

import claudecluster
from claudecluster.events import model
from claudecluster.events.codec import encode
from claudecluster.events.envelope import wrap_command, wrap_event
from claudecluster.events.model import (
    Event,
    RunPlanned,
    SubmitRun,
    TaskFilesTouched,
    TaskMerged,
    TaskPreempted,
    TaskProgress,
    TaskSucceeded,
    WorkerHeartbeat,
    WorkerJoined,
)
from claudecluster.events.subjects import command_subject, event_subject
from claudecluster.runtime.connection import embedded_auth, open_jetstream_log, open_nats
from claudecluster.runtime.credentials import ensure_credentials
from claudecluster.runtime.embedded_nats import EmbeddedNats, open_embedded_nats
from claudecluster.transport.artifacts import FILE_CHUNK, JetStreamArtifactStore
from claudecluster.transport.base import read_all
from claudecluster.transport.mcp_sessions import JetStreamMcpSessionStore, McpSession
from claudecluster.transport.permissions import (
    ROLES,
    Role,
    load_permissions,
    render_authorization,
    role_grant,
)
from claudecluster.transport.topology import EVENTS_STREAM, load_topology
from tests.transport.test_permission_subjects import MODULES

pytestmark = pytest.mark.nats

REFUSAL_TIMEOUT_S = 10.0
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """The embedded server with its identities, the topology applied by the driver."""
    async with open_embedded_nats(tmp_path / "nats") as running:
        assert running.credentials is not None
        auth = embedded_auth(running.credentials, "driver")
        async with open_jetstream_log(running.url, name="setup", auth=auth):
            pass
        yield running


class Refusals:
    """The errors the server sent one client (a permission violation arrives this way)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._arrived = anyio.Event()

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        self._arrived.set()

    async def wait_for(self, subject: str) -> str:
        with anyio.fail_after(REFUSAL_TIMEOUT_S):
            while True:
                found = [
                    e
                    for e in self.errors
                    if "permissions violation" in e.lower() and subject.lower() in e.lower()
                ]
                if found:
                    return found[0]
                self._arrived = anyio.Event()
                await self._arrived.wait()


async def connect_as(server: EmbeddedNats, role: Role, refusals: Refusals) -> Client:
    assert server.credentials is not None
    options = embedded_auth(server.credentials, role).connect_options()
    return await nats.connect(server.url, error_cb=refusals.on_error, **options)


async def events_stored(server: EmbeddedNats) -> int:
    assert server.credentials is not None
    async with open_nats(server.url, auth=embedded_auth(server.credentials, "reader")) as client:
        info = await client.jetstream().stream_info(EVENTS_STREAM)
        return int(info.state.messages)


def _event_bytes(event: Event) -> bytes:
    return encode(wrap_event(event, event_id=f"forged-{type(event).__name__}", now=NOW))


SUCCEEDED = TaskSucceeded(run_id="r1", task_id="t1", attempt=1, worker_id="w1")
PLANNED = RunPlanned(run_id="r1", tasks=(), base_commit="abc", integration_branch="cc/r1")
MERGED = TaskMerged(run_id="r1", task_id="t1", attempt=1, commit="abc", integration_branch="b")
SUBMIT = SubmitRun(run_id="r1", goal="g", repo="/tmp/r")
PREEMPTED = TaskPreempted(run_id="r1", task_id="t1", attempt=1, other_task_id="t2")


async def anonymous_connect(port: int) -> bytes:
    """What the server answers a client that offers no credentials (the raw protocol)."""
    with anyio.fail_after(REFUSAL_TIMEOUT_S):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            greeting = await stream.receive()
            await stream.send(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            answer = b""
            while b"\r\n" not in answer:
                answer += await stream.receive()
    assert greeting.startswith(b"INFO ")
    return answer


async def test_without_credentials_the_embedded_server_lets_no_one_in(
    server: EmbeddedNats,
) -> None:
    answer = await anonymous_connect(server.port)

    assert answer.startswith(b"-ERR 'Authorization Violation'"), answer


async def test_a_worker_cannot_publish_a_command(server: EmbeddedNats) -> None:
    refusals = Refusals()
    client = await connect_as(server, "worker", refusals)
    try:
        command = wrap_command(SUBMIT, command_id="c1", now=NOW, correlation_id="r1")
        await client.publish(command_subject(SUBMIT), encode(command))
        assert "cc.cmd.run.submit" in await refusals.wait_for("cc.cmd.run.submit")
    finally:
        await client.close()


@pytest.mark.parametrize(
    "event",
    [PLANNED, MERGED, PREEMPTED],
    ids=["the driver's run.planned", "the driver's task.merged", "the driver's task.preempted"],
)
async def test_a_worker_cannot_publish_the_drivers_events(
    server: EmbeddedNats, event: RunPlanned | TaskMerged | TaskPreempted
) -> None:
    refusals = Refusals()
    client = await connect_as(server, "worker", refusals)
    try:
        await client.publish(event_subject(event), _event_bytes(event))
        await refusals.wait_for(event_subject(event))
    finally:
        await client.close()
    assert await events_stored(server) == 0


@pytest.mark.parametrize("role", ["worker", "frontdoor"])
@pytest.mark.parametrize(
    "subject",
    ["cc.evt._driver.d1.driver.lease_taken", "$KV.cc_leases.driver"],
    ids=["the fence", "the lease"],
)
async def test_only_the_driver_may_move_the_fence_or_the_lease(
    server: EmbeddedNats, role: str, subject: str
) -> None:
    """A worker or a front door that could write either could fence the driver out."""
    refusals = Refusals()
    client = await connect_as(server, role, refusals)  # type: ignore[arg-type]
    try:
        await client.publish(subject, b"{}")
        await refusals.wait_for(subject)
    finally:
        await client.close()


async def test_a_worker_cannot_put_work_on_a_queue(server: EmbeddedNats) -> None:
    refusals = Refusals()
    client = await connect_as(server, "worker", refusals)
    try:
        await client.publish("cc.work.default", b"{}")
        await refusals.wait_for("cc.work.default")
    finally:
        await client.close()


async def test_a_worker_cannot_consume_another_pools_queue(server: EmbeddedNats) -> None:
    refusals = Refusals()
    client = await connect_as(server, "worker", refusals)
    try:
        subject = "$JS.API.CONSUMER.CREATE.CC_WORK.worker__gpu.cc.work.gpu"
        await client.publish(subject, b"{}")
        await refusals.wait_for(subject)
    finally:
        await client.close()


async def test_a_worker_may_record_its_joining_progress_and_touched_files(
    server: EmbeddedNats,
) -> None:
    assert server.credentials is not None
    auth = embedded_auth(server.credentials, "worker")
    joined = WorkerJoined(worker_id="w1")
    progress = TaskProgress(run_id="r1", task_id="t1", attempt=1, kind="text", text="hi")
    touched = TaskFilesTouched(run_id="r1", task_id="t1", attempt=1, files=("app.py",))
    async with open_jetstream_log(server.url, auth=auth, apply=False) as (_, log):
        for event in (joined, progress, touched):
            await log.append(wrap_event(event, event_id=f"ok-{type(event).__name__}", now=NOW))
    assert await events_stored(server) == 3


async def test_a_worker_can_no_longer_publish_a_heartbeat_event(server: EmbeddedNats) -> None:
    """Liveness is the registry entry's TTL now; old heartbeat records still decode."""
    heartbeat = WorkerHeartbeat(worker_id="w1")
    refusals = Refusals()
    client = await connect_as(server, "worker", refusals)
    try:
        await client.publish(event_subject(heartbeat), _event_bytes(heartbeat))
        await refusals.wait_for(event_subject(heartbeat))
    finally:
        await client.close()
    assert await events_stored(server) == 0


async def test_a_worker_may_report_the_files_its_attempt_touched(server: EmbeddedNats) -> None:
    # Refused, the report failed the attempt after its agent had finished, and the item
    # was taken over by a new attempt that found nothing left to do.
    assert server.credentials is not None
    auth = embedded_auth(server.credentials, "worker")
    touched = TaskFilesTouched(run_id="r1", task_id="t1", attempt=1, files=("app.py",))
    async with open_jetstream_log(server.url, auth=auth, apply=False) as (_, log):
        await log.append(wrap_event(touched, event_id="ok-touched", now=NOW))
    assert await events_stored(server) == 1


async def test_a_front_door_cannot_publish_task_succeeded(server: EmbeddedNats) -> None:
    refusals = Refusals()
    client = await connect_as(server, "frontdoor", refusals)
    try:
        await client.publish(event_subject(SUCCEEDED), _event_bytes(SUCCEEDED))
        await refusals.wait_for(event_subject(SUCCEEDED))
    finally:
        await client.close()
    assert await events_stored(server) == 0


async def test_a_front_door_may_publish_a_command(server: EmbeddedNats) -> None:
    refusals = Refusals()
    client = await connect_as(server, "frontdoor", refusals)
    try:
        command = wrap_command(SUBMIT, command_id="c2", now=NOW, correlation_id="r1")
        ack = await client.jetstream().publish(command_subject(SUBMIT), encode(command))
        assert ack.seq >= 1
    finally:
        await client.close()
    assert refusals.errors == []


@pytest.mark.parametrize(
    "subject",
    ["cc.evt.r1.t1.task.progress", "cc.cmd.run.submit", "cc.work.default", "$KV.cc_workers.w1",
     "$JS.API.STREAM.DELETE.CC_EVENTS", "$JS.API.STREAM.PURGE.CC_EVENTS"],
)  # fmt: skip
async def test_a_reader_can_publish_nothing(server: EmbeddedNats, subject: str) -> None:
    refusals = Refusals()
    client = await connect_as(server, "reader", refusals)
    try:
        await client.publish(subject, b"{}")
        await refusals.wait_for(subject)
    finally:
        await client.close()


async def test_a_reader_reads_the_event_stream_through_its_own_consumer(
    server: EmbeddedNats,
) -> None:
    assert server.credentials is not None
    worker = embedded_auth(server.credentials, "worker")
    async with open_jetstream_log(server.url, auth=worker, apply=False) as (_, log):
        await log.append(wrap_event(WorkerJoined(worker_id="w1"), event_id="joined", now=NOW))
    reader = embedded_auth(server.credentials, "reader")
    async with open_jetstream_log(server.url, auth=reader, apply=False) as (client, log):
        events = await read_all(log)
        durable = await client.jetstream().pull_subscribe("cc.evt.>", durable="dashboard")
        fetched = await durable.fetch(1, timeout=REFUSAL_TIMEOUT_S)
        await fetched[0].ack()
    assert [s.envelope.payload for s in events] == [WorkerJoined(worker_id="w1")]
    assert fetched[0].subject == "cc.evt._workers.w1.worker.joined"


def test_the_credentials_are_the_users_alone(tmp_path: Path) -> None:
    credentials = ensure_credentials(tmp_path / "nats")

    assert stat.S_IMODE(os.stat(credentials.directory).st_mode) == 0o700
    files = list(credentials.directory.iterdir())
    assert {f.name for f in files} >= {f"{role}.nk" for role in ROLES}
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_credentials_are_made_once_and_kept(tmp_path: Path) -> None:
    first = ensure_credentials(tmp_path / "nats")
    second = ensure_credentials(tmp_path / "nats")

    assert first.users == second.users
    assert (first.directory / "worker.nk").read_bytes().startswith(b"SU")


def test_every_role_gets_only_its_inbox_and_the_driver_alone_manages_the_topology() -> None:
    permissions = load_permissions()
    actors = [role for role in ROLES if role != "admin"]
    grants = {role: role_grant(role, permissions=permissions) for role in actors}

    for role, grant in grants.items():
        assert f"_INBOX_{role}.>" in grant.subscribe
        assert not any(s.startswith("_INBOX.") for s in grant.subscribe)
    creates = {role: [s for s in g.publish if "STREAM.CREATE" in s] for role, g in grants.items()}
    assert creates["driver"]
    assert creates["worker"] == creates["frontdoor"] == creates["reader"] == []
    assert "cc.cmd.>" in grants["frontdoor"].publish
    assert not any(s.startswith("cc.cmd") for s in grants["worker"].publish)
    assert not any(s.startswith(("cc.", "$KV", "$O")) for s in grants["reader"].publish)
    streams = {s.name for s in load_topology().streams}
    assert {f"$JS.API.STREAM.CREATE.{name}" for name in streams} <= set(grants["driver"].publish)


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` the rest."""
    want, have = pattern.split("."), subject.split(".")
    for n, token in enumerate(want):
        if token == ">":
            return len(have) > n
        if n >= len(have) or token not in ("*", have[n]):
            return False
    return len(want) == len(have)


def test_only_the_operator_may_purge_the_event_log() -> None:
    # CC_EVENTS allows purges (archiving finished runs); the permissions keep them the
    # operator's: no actor's identity may send one.
    purge = f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}"
    allowed = {role for role in ROLES if any(_matches(p, purge) for p in role_grant(role).publish)}
    assert allowed == {"admin"}


def test_a_worker_of_another_pool_is_held_to_that_pools_queue() -> None:
    grant = role_grant("worker", pool="gpu")

    assert "$JS.API.CONSUMER.MSG.NEXT.CC_WORK.worker__gpu" in grant.publish
    assert not any("worker__default" in s for s in grant.publish)


def test_the_rendered_authorization_names_public_keys_only(tmp_path: Path) -> None:
    credentials = ensure_credentials(tmp_path / "nats")
    text = render_authorization(credentials.bus_users())

    for user in credentials.bus_users():
        assert user.public_key in text
    for role in ROLES:
        seed = (credentials.directory / f"{role}.nk").read_text().strip()
        assert seed not in text


# -- another local user ------------------------------------------------------------------

#: Run as the unprivileged user: only the standard library, so it needs nothing of ours.
_AS_NOBODY = r"""
import json, os, socket, sys
port, creds_dir = int(sys.argv[1]), sys.argv[2]
found = {"uid": os.getuid()}
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    sock.settimeout(10)
    found["greeting"] = sock.recv(4096).decode(errors="replace")[:4]
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    found["answer"] = sock.recv(4096).decode(errors="replace").strip()
for name in ("driver.nk", "worker.nk", "frontdoor.nk", "reader.nk"):
    try:
        with open(os.path.join(creds_dir, name), "rb") as handle:
            found[name] = handle.read(2).decode()
    except OSError as exc:
        found[name] = type(exc).__name__
try:
    found["listing"] = os.listdir(creds_dir)
except OSError as exc:
    found["listing"] = type(exc).__name__
print(json.dumps(found))
"""

_SETPRIV = shutil.which("setpriv")
_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(_SETPRIV is None, reason="setpriv (util-linux) is not installed")
async def test_an_unprivileged_local_user_can_neither_connect_nor_read_the_credentials(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another uid with setpriv needs root")
    assert _SETPRIV is not None
    # A project directory every user may enter, so only our own modes protect the creds.
    project = Path(tempfile.mkdtemp(prefix="cc-shared-", dir="/tmp"))
    os.chmod(project, 0o755)
    try:
        async with open_embedded_nats(project / "nats") as running:
            assert running.credentials is not None
            done = await anyio.run_process(
                [_SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups",
                 _PYTHON, "-I", "-c", _AS_NOBODY, str(running.port),
                 str(running.credentials.directory)],
                cwd="/", check=False,
            )  # fmt: skip
    finally:
        shutil.rmtree(project)
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(done.stdout)
    assert found["uid"] == 65534
    assert found["greeting"] == "INFO"  # it reached the server ...
    assert found["answer"].startswith("-ERR 'Authorization Violation'")  # ... and was refused
    for role in ("driver", "worker", "frontdoor", "reader"):
        assert found[f"{role}.nk"] == "PermissionError"
    assert found["listing"] == "PermissionError"


async def test_a_front_door_keeps_its_mcp_sessions_and_a_worker_its_registry_entry(
    server: EmbeddedNats,
) -> None:
    assert server.credentials is not None
    session = McpSession(session_id="ab" * 16, protocol_version="2025-06-18", created_at=NOW)
    front = embedded_auth(server.credentials, "frontdoor")
    async with open_nats(server.url, auth=front) as client:
        store = JetStreamMcpSessionStore(client.jetstream())
        await store.put(session)
        assert await store.get(session.session_id) == session
        await store.delete(session.session_id)
        assert await store.get(session.session_id) is None
    worker = embedded_auth(server.credentials, "worker")
    async with open_nats(server.url, auth=worker) as client:
        registry = await client.jetstream().key_value("cc_workers")
        await registry.put("w1", b"{}")
        assert (await registry.get("w1")).value == b"{}"
        await registry.delete("w1")


def _nats_match(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


#: Where the events each actor records are made: one list, shared with the reverse check.
_MODULES_OF_ROLE = MODULES
_SURELY_MADE = {
    "worker": {"TaskStarted", "TaskSucceeded", "TaskProgress", "TaskFilesTouched"},
    "driver": {"RunPlanned", "TaskQueued", "TaskMerged", "CollisionPredicted", "DriverLeaseTaken"},
}


@pytest.mark.parametrize("role", sorted(_MODULES_OF_ROLE))
def test_every_event_an_actor_records_is_one_its_role_may_publish(role: str) -> None:
    """A new event without its permission fails here, not in a user's run (the workers'
    files-touched reports were refused by the server, and their attempts died of it)."""
    root = Path(claudecluster.__file__).parent
    event_classes = {
        name: cls
        for name, cls in vars(model).items()
        if isinstance(cls, type) and issubclass(cls, model.EventBase) and cls is not model.EventBase
    }
    made: set[str] = set()
    for module in _MODULES_OF_ROLE[role]:  # type: ignore[index]
        tree = ast.parse((root / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if called and node.func.id in event_classes:  # type: ignore[attr-defined]
                made.add(node.func.id)  # type: ignore[attr-defined]
    assert _SURELY_MADE[role] <= made
    grant = role_grant(role)  # type: ignore[arg-type]
    refused = []
    for name in sorted(made):
        cls = event_classes[name]
        tag = cls.__struct_config__.tag
        if issubclass(cls, model.TaskEvent):
            subject = f"cc.evt.r1.t1.{tag}"
        elif issubclass(cls, model.RunEvent):
            subject = f"cc.evt.r1._.{tag}"
        elif issubclass(cls, model.DriverEvent):
            subject = f"cc.evt._driver.d1.{tag}"
        else:
            subject = f"cc.evt._workers.w1.{tag}"
        if not any(_nats_match(pattern, subject) for pattern in grant.publish):
            refused.append(subject)
    assert refused == []


async def test_a_worker_reads_a_many_chunk_artifact_the_driver_stored(
    server: EmbeddedNats, tmp_path: Path
) -> None:
    # Big files are read through a pull consumer of the reader's own: the worker's role
    # must allow asking it for the next chunks, or no history reaches a host.
    assert server.credentials is not None
    data = os.urandom(3 * FILE_CHUNK + 1000)  # four chunks
    (tmp_path / "history.bundle").write_bytes(data)
    driver_auth = embedded_auth(server.credentials, "driver")
    async with open_jetstream_log(server.url, auth=driver_auth, apply=False) as (client, _):
        ref = await JetStreamArtifactStore(client.jetstream()).put_file(
            "repos/k/x.bundle", tmp_path / "history.bundle"
        )
    worker_auth = embedded_auth(server.credentials, "worker")
    async with open_jetstream_log(server.url, auth=worker_auth, apply=False) as (client, _):
        store = JetStreamArtifactStore(client.jetstream())
        got = await store.get_file(ref, tmp_path / "got.bundle")
        chunks: list[bytes] = []
        size = await store.get_into(ref, chunks.append)
    assert got.read_bytes() == data
    assert (size, b"".join(chunks)) == (len(data), data)
    assert len(chunks) == 4
