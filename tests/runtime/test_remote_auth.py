"""Remote servers: TLS with a CA of the user's choice, credentials files, user and password
outside the URL. Each test makes its own certificates (trustme) and identities and starts
its own nats-server with them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from claudecluster.errors import ConfigError, NatsServerError
from claudecluster.events import WorkerLost
from claudecluster.runtime.connection import BusAuth, configured_auth, open_configured_cluster
from claudecluster.runtime.credentials import ensure_credentials
from claudecluster.runtime.embedded_nats import find_nats_server
from claudecluster.settings import NatsSettings, NatsTlsSettings, Settings
from claudecluster.transport.base import read_all
from claudecluster.transport.permissions import render_authorization
from tests.support import EnvelopeFactory, free_port, wait_for_port

pytestmark = pytest.mark.nats

PASSWORD = "a-long-nats-password"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _serve(tmp_path: Path, body: str) -> Iterator[int]:
    port = free_port()
    config = tmp_path / "server.conf"
    config.write_text(
        f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "store"}" }}\n{body}',
        encoding="utf-8",
    )
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [str(find_nats_server()), "-c", str(config)], stdout=log, stderr=log
        )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _server_tls(tmp_path: Path, ca: trustme.CA, *, verify_clients: bool) -> str:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    verify = f'  verify: true\n  ca_file: "{tmp_path / "ca.pem"}"\n' if verify_clients else ""
    return (
        f'tls {{\n  cert_file: "{tmp_path / "server.pem"}"\n'
        f'  key_file: "{tmp_path / "server.key"}"\n{verify}}}\n'
    )


@pytest.fixture
def tls_password_server(tmp_path: Path, ca: trustme.CA) -> Iterator[int]:
    body = _server_tls(tmp_path, ca, verify_clients=False)
    body += f'authorization {{ users = [ {{ user: "alice", password: "{PASSWORD}" }} ] }}\n'
    yield from _serve(tmp_path, body)


async def _round_trip(settings: Settings) -> list[WorkerLost]:
    envelope = EnvelopeFactory("remote")(WorkerLost(worker_id="w1"))
    async with open_configured_cluster(settings, role="driver") as conn:
        await conn.log.append(envelope)
        stored = await read_all(conn.log)
    return [s.envelope.payload for s in stored if isinstance(s.envelope.payload, WorkerLost)]


async def test_tls_with_the_users_ca_and_a_password_outside_the_url_connects(
    tls_password_server: int, tmp_path: Path
) -> None:
    settings = Settings(
        nats=NatsSettings(
            url=f"tls://127.0.0.1:{tls_password_server}",
            user="alice",
            password=PASSWORD,
            tls=NatsTlsSettings(ca=tmp_path / "ca.pem"),
        )
    )

    assert await _round_trip(settings) == [WorkerLost(worker_id="w1")]
    assert PASSWORD in settings.secret_values()  # so the redactor strips it from every log
    assert PASSWORD not in repr(configured_auth(settings, "driver"))
    assert PASSWORD not in repr(settings.nats)


async def test_tls_refuses_a_server_whose_certificate_the_ca_did_not_sign(
    tls_password_server: int, tmp_path: Path
) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    settings = Settings(
        nats=NatsSettings(
            url=f"tls://127.0.0.1:{tls_password_server}",
            user="alice",
            password=PASSWORD,
            tls=NatsTlsSettings(ca=tmp_path / "other-ca.pem"),
        )
    )

    with pytest.raises(NatsServerError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await _round_trip(settings)


async def test_a_wrong_password_is_refused_and_not_shown(
    tls_password_server: int, tmp_path: Path
) -> None:
    wrong = "not-the-right-password"
    settings = Settings(
        nats=NatsSettings(
            url=f"tls://127.0.0.1:{tls_password_server}",
            user="alice",
            password=wrong,
            tls=NatsTlsSettings(ca=tmp_path / "ca.pem"),
        )
    )

    with pytest.raises(NatsServerError, match="uthorization") as caught:
        await _round_trip(settings)
    assert wrong not in str(caught.value)


@pytest.fixture
def mutual_tls_nkey_server(tmp_path: Path, ca: trustme.CA) -> Iterator[int]:
    credentials = ensure_credentials(tmp_path / "ids")
    body = _server_tls(tmp_path, ca, verify_clients=True)
    body += render_authorization(credentials.bus_users())
    client = ca.issue_cert("claudecluster-driver")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    yield from _serve(tmp_path, body)


@pytest.mark.parametrize("key", ["creds", "nkey_seed"])
async def test_a_credentials_file_and_a_client_certificate_connect_to_a_mutual_tls_server(
    mutual_tls_nkey_server: int, tmp_path: Path, key: str
) -> None:
    seed = tmp_path / "ids" / "creds" / "driver.nk"
    settings = Settings(
        nats=NatsSettings(
            url=f"tls://127.0.0.1:{mutual_tls_nkey_server}",
            tls=NatsTlsSettings(
                ca=tmp_path / "ca.pem", cert=tmp_path / "client.pem", key=tmp_path / "client.key"
            ),
            **{key: seed},
        )
    )

    assert await _round_trip(settings) == [WorkerLost(worker_id="w1")]


async def test_without_a_client_certificate_a_mutual_tls_server_refuses(
    mutual_tls_nkey_server: int, tmp_path: Path
) -> None:
    settings = Settings(
        nats=NatsSettings(
            url=f"tls://127.0.0.1:{mutual_tls_nkey_server}",
            creds=tmp_path / "ids" / "creds" / "driver.nk",
            tls=NatsTlsSettings(ca=tmp_path / "ca.pem"),
        )
    )

    with pytest.raises(NatsServerError):
        await _round_trip(settings)


def test_an_unreadable_credentials_file_is_named_in_a_configuration_error(tmp_path: Path) -> None:
    auth = BusAuth(creds_file=tmp_path / "missing.creds")

    with pytest.raises(ConfigError, match=r"missing\.creds"):
        auth.connect_options()


def test_a_jwt_creds_file_is_given_to_nats_py_as_user_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n")

    options = BusAuth(creds_file=creds).connect_options()

    assert options == {"user_credentials": str(creds)}


def test_only_an_identity_gets_its_roles_reply_prefix() -> None:
    # An anonymous client of an open server has no permission that binds its replies,
    # so it keeps nats-py's own prefix (and a read does not load the permission file).
    anonymous = Settings(nats=NatsSettings(url="nats://127.0.0.1:1"))
    assert configured_auth(anonymous, "frontdoor").inbox_prefix is None
    named = Settings(nats=NatsSettings(url="nats://127.0.0.1:1", user="alice", password="p"))
    assert configured_auth(named, "frontdoor").inbox_prefix == "_INBOX_frontdoor"
    assert configured_auth(named, "worker").inbox_prefix == "_INBOX_worker"
    chosen = Settings(
        nats=NatsSettings(url="nats://127.0.0.1:1", user="alice", inbox_prefix="_MINE")
    )
    assert configured_auth(chosen, "worker").inbox_prefix == "_MINE"
    assert (
        configured_auth(
            Settings(nats=NatsSettings(url="nats://127.0.0.1:1", inbox_prefix="_MINE")), "worker"
        ).inbox_prefix
        == "_MINE"
    )
