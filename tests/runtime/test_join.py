"""Joining a host in one line: ``creds join`` prints a token, ``worker --join`` uses it.

The end-to-end test starts a nats-server with TLS (a CA of the test's own, trustme) and
the project's identities and permissions, mints a token with the real CLI, starts a real
``claudecluster worker --join TOKEN`` process with a HOME of its own, and has a driver
run a task on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
import trustme

from claudecluster.errors import ConfigError
from claudecluster.events import RunCompleted, RunFailed, SubmitRun, TaskSpec, TaskStarted
from claudecluster.runtime.connection import BusAuth, open_jetstream_log, open_nats
from claudecluster.runtime.credentials import ensure_credentials
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.embedded_nats import find_nats_server
from claudecluster.runtime.join import (
    JoinToken,
    ca_fingerprint,
    decode_join_token,
    encode_join_token,
    install_join_token,
)
from claudecluster.transport.commands import publish_command
from claudecluster.transport.permissions import inbox_prefix, render_authorization
from tests.support import free_port, make_repo, wait_for_events, wait_for_port

CLI = str(Path(sys.executable).parent / "claudecluster")
RUN_ENDS_WITHIN_S = 180.0
SEED = "SUAM" + "A" * 54


def test_a_token_round_trips_and_its_files_are_private(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = ca.cert_pem.bytes().decode()
    token = JoinToken(url="tls://h:4222", seed=SEED, pool="gpu", ca_pem=pem)
    line = encode_join_token(token)
    assert "\n" not in line
    assert line.startswith("ccjoin1.")
    decoded = decode_join_token(f"  {line}\n")
    assert decoded.url == "tls://h:4222"
    assert decoded.pool == "gpu"
    assert decoded.ca_sha256 == ca_fingerprint(pem)
    files = install_join_token(decoded, tmp_path)
    assert files.seed.read_text().strip() == SEED
    assert files.ca is not None
    assert files.ca.read_text() == pem
    for path in (files.seed, files.ca, files.seed.parent):
        assert path.stat().st_mode & 0o077 == 0, path


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda t: t.replace("ccjoin1.", "xx"), "starts with 'ccjoin1.'"),
        (lambda t: t[:40], "damaged"),
        (lambda t: encode_join_token(JoinToken(url="", seed=SEED)), "no NATS URL"),
        (lambda t: encode_join_token(JoinToken(url="nats://h", seed="SO" + SEED[2:])), "seed"),
    ],
)
def test_a_bad_token_is_refused_naming_the_problem(mangle: object, problem: str) -> None:
    good = encode_join_token(JoinToken(url="nats://h:4222", seed=SEED))
    with pytest.raises(ConfigError, match=problem):
        decode_join_token(mangle(good))  # type: ignore[operator]


def test_a_ca_that_does_not_match_its_fingerprint_is_refused() -> None:
    pem = trustme.CA().cert_pem.bytes().decode()
    other = ca_fingerprint(trustme.CA().cert_pem.bytes().decode())
    forged = encode_join_token(JoinToken(url="tls://h", seed=SEED, ca_pem=pem, ca_sha256=other))
    with pytest.raises(ConfigError, match="fingerprint"):
        decode_join_token(forged)


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A TLS nats-server with the identities of ``tmp_path/ids``: (url, store, ca.pem)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    store = tmp_path / "ids"
    credentials = ensure_credentials(store)
    port = free_port()
    config = tmp_path / "server.conf"
    config.write_text(
        f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        f'tls {{\n  cert_file: "{tmp_path / "server.pem"}"\n'
        f'  key_file: "{tmp_path / "server.key"}"\n}}\n'
        + render_authorization(credentials.bus_users()),
        encoding="utf-8",
    )
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [str(find_nats_server()), "-c", str(config)], stdout=log, stderr=log
        )
    try:
        wait_for_port(port)
        yield f"tls://127.0.0.1:{port}", store, tmp_path / "ca.pem"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    return env | extra


@pytest.mark.anyio
async def test_a_worker_joined_with_a_token_runs_a_task(
    tls_cluster: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, store, ca = tls_cluster
    (tmp_path / "claudecluster.yaml").write_text(f'nats:\n  store_dir: "{store}"\n')
    with anyio.fail_after(60):
        minted = await anyio.run_process(
            [CLI, "creds", "join", "--url", url, "--ca", str(ca)], cwd=tmp_path, env=_env()
        )
    token = minted.stdout.decode().strip()
    assert token.startswith("ccjoin1."), minted.stdout
    assert "\n" not in token
    assert ca_fingerprint(ca.read_text()) in minted.stderr.decode()
    # The new host: nothing but the token (its own HOME, no configuration, no files).
    host = tmp_path / "host"
    host.mkdir()
    repo = make_repo(tmp_path / "repo", {"README.md": "join\n"})
    admin_auth = BusAuth(
        nkey_seed_file=store / "creds" / "admin.nk", inbox_prefix=inbox_prefix("admin"),
        tls_ca=ca,
    )  # fmt: skip
    driver_auth = BusAuth(
        nkey_seed_file=store / "creds" / "driver.nk", inbox_prefix=inbox_prefix("driver"),
        tls_ca=ca,
    )  # fmt: skip
    with (tmp_path / "worker.log").open("wb") as out:
        async with (
            open_jetstream_log(url, name="join-test", auth=driver_auth) as (client, log),
            open_nats(url, name="join-admin", auth=admin_auth) as admin,
            await anyio.open_process(
                [CLI, "worker", "--join", token, "--workspace-root", str(host / "ws"),
                 "--ack-wait", "5"],
                cwd=host, env=_env(HOME=str(host)), stdout=out, stderr=out,
            ) as worker,
            anyio.create_task_group() as group,
        ):  # fmt: skip
            try:
                js = client.jetstream()
                driver = Driver(log, js, DriverOptions(work_dir=tmp_path / "driver", tick_s=0.1))
                await group.start(driver.run)
                task = TaskSpec(task_id="hello", title="hello", prompt="echo hi > hi.txt",
                                executor="shell")  # fmt: skip
                command = SubmitRun(run_id="joined", goal="join", repo=str(repo), plan=(task,))
                await publish_command(
                    admin.jetstream(), command, command_id="join-1", now=datetime.now(UTC)
                )
                events = await wait_for_events(
                    log,
                    lambda es: any(isinstance(e, RunCompleted | RunFailed) for e in es),
                    limit_s=RUN_ENDS_WITHIN_S,
                )
            finally:
                group.cancel_scope.cancel()
                worker.terminate()
                with anyio.move_on_after(20):
                    await worker.wait()
                if worker.returncode is None:
                    worker.kill()
        log_text = (tmp_path / "worker.log").read_text(errors="replace")
    completed = [e for e in events if isinstance(e, RunCompleted)]
    assert completed, f"{events}\n{log_text[-3000:]}"
    assert completed[0].tasks_succeeded == 1
    started = [e for e in events if isinstance(e, TaskStarted)]
    assert len(started) == 1
    # The worker's files came from the token, under its HOME, private.
    joined = list((host / ".claudecluster" / "join").glob("*/worker.nk"))
    assert len(joined) == 1
    assert joined[0].stat().st_mode & 0o077 == 0
