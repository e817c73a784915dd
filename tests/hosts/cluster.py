"""A three-server NATS cluster across namespace hosts, with nkey identities and TLS.

The operator's side lives in the test's own directory (the root namespace): the CA
(trustme), the identities (``write_cluster_authorization``, as ``claudecluster creds
cluster`` makes them) and the admin seed the test connects with. Each server host is
handed only what a server needs (its certificate and key, the CA, the public keys);
each actor host only its role's seed and the CA, copied into its own directory.

Clients and routes both speak TLS: clients check the servers' certificates against the
CA, routes check each other's both ways.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
import trustme

from claudecluster.runtime.connection import BusAuth, open_nats
from claudecluster.runtime.credentials import Credentials, write_cluster_authorization
from claudecluster.runtime.embedded_nats import find_nats_server
from claudecluster.transport.permissions import Role, inbox_prefix
from tests.hosts.netns import Host, HostNetwork

__all__ = ["CLIENT_PORT", "HostCluster", "open_host_cluster"]

CLIENT_PORT = 4222
ROUTE_PORT = 6222
#: A server listening, and JetStream electing its meta leader, after the servers start.
_SERVER_UP_S = 60.0
_POLL_S = 0.2


@dataclass
class HostCluster:
    """The servers, the URL every client is given, and how to hand out identities.

    Attributes:
        network: the hosts.
        servers: the host each server runs on, by host name.
        processes: each server's process, by host name (the latest, after a restart).
        url: every server's ``tls://`` address, comma-separated.
        credentials: the operator's identities (seeds stay in the operator's directory).
        ca: the CA certificate, in the operator's directory.
    """

    network: HostNetwork
    servers: dict[str, Host]
    processes: dict[str, anyio.abc.Process]
    url: str
    credentials: Credentials
    ca: Path

    def auth(self, role: Role) -> BusAuth:
        """How the test itself connects as ``role`` (from the operator's directory)."""
        return BusAuth(
            nkey_seed_file=self.credentials.seed_file(role),
            inbox_prefix=inbox_prefix(role),
            tls_ca=self.ca,
        )

    def actor_env(self, host: Host, role: Role) -> dict[str, str]:
        """The settings an actor of ``role`` on ``host`` starts with: its seed and the CA,
        copied into the host's own directory first (nothing is read across hosts)."""
        secrets = host.root / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        seed = shutil.copy2(self.credentials.seed_file(role), secrets / f"{role}.nk")
        ca = shutil.copy2(self.ca, secrets / "ca.pem")
        return {
            "CLAUDECLUSTER_NATS__CREDS": str(seed),
            "CLAUDECLUSTER_NATS__TLS__CA": str(ca),
            "CLAUDECLUSTER_NATS__REPLICAS": str(len(self.servers)),
        }

    async def start_server(self, name: str) -> anyio.abc.Process:
        """(Re)start the server of host ``name`` on its own config and store."""
        host = self.servers[name]
        config = host.root / "nats" / "server.conf"
        process = await host.start(
            [str(find_nats_server()), "-c", str(config)],
            env={"PATH": "/usr/bin:/bin"},
            log=host.root / "logs" / "nats-server.log",
        )
        self.processes[name] = process
        await _wait_listening(host.address, CLIENT_PORT)
        return process


def _render(host: Host, peers: Sequence[Host], ca: trustme.CA, authorization: Path) -> None:
    """Write ``host``'s server config, certificate and authorization into its directory."""
    directory = host.root / "nats"
    directory.mkdir(exist_ok=True)
    cert = ca.issue_cert(host.address)
    cert.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    shutil.copy2(authorization, directory / "authorization.conf")
    tls = (
        f'cert_file: "{directory / "server.crt"}"\n    key_file: "{directory / "server.key"}"\n'
        f'    ca_file: "{directory / "ca.pem"}"\n    timeout: 5'
    )
    routes = "\n".join(f"    nats-route://{p.address}:{ROUTE_PORT}" for p in peers)
    # One server alone is not a cluster (a cluster block would wait for peers).
    cluster = (
        "cluster {\n  name: claudecluster\n"
        f"  listen: {host.address}:{ROUTE_PORT}\n"
        f"  tls {{\n    {tls}\n    verify: true\n  }}\n"
        f"  routes: [\n{routes}\n  ]\n}}\n"
        if len(peers) > 1
        else ""
    )
    (directory / "server.conf").write_text(
        f"server_name: claudecluster-{host.name}\n"
        f"listen: {host.address}:{CLIENT_PORT}\n"
        "max_payload: 8MB\n"
        f'jetstream {{\n  store_dir: "{directory / "store"}"\n  sync_interval: always\n}}\n'
        f"tls {{\n    {tls}\n}}\n"
        f"{cluster}include ./authorization.conf\n",
        encoding="utf-8",
    )


async def _wait_listening(address: str, port: int) -> None:
    with anyio.fail_after(_SERVER_UP_S):
        while True:
            try:
                stream = await anyio.connect_tcp(address, port)
            except OSError:
                await anyio.sleep(_POLL_S)
                continue
            await stream.aclose()
            return


async def wait_jetstream(url: str, auth: BusAuth) -> None:
    """Until JetStream answers through ``url`` (the servers elected a meta leader).

    Raises:
        TimeoutError: not within a minute.
    """
    async with open_nats(url, auth=auth) as client:
        js = client.jetstream()
        with anyio.fail_after(_SERVER_UP_S):
            while True:
                try:
                    await js.account_info()
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    await anyio.sleep(_POLL_S)
                else:
                    return


@asynccontextmanager
async def open_host_cluster(
    network: HostNetwork, operator_dir: Path, names: Sequence[str]
) -> AsyncIterator[HostCluster]:
    """One server on each of the hosts ``names``, up with a JetStream leader.

    The servers are ended with their hosts (:func:`open_hosts` ends every process).
    """
    await anyio.Path(operator_dir).mkdir(parents=True, exist_ok=True)
    credentials, authorization = write_cluster_authorization(operator_dir)
    ca = trustme.CA()
    ca_file = operator_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    servers = {name: network[name] for name in names}
    for host in servers.values():
        _render(host, list(servers.values()), ca, authorization)
    cluster = HostCluster(
        network=network,
        servers=servers,
        processes={},
        url=",".join(f"tls://{h.address}:{CLIENT_PORT}" for h in servers.values()),
        credentials=credentials,
        ca=ca_file,
    )
    for name in names:
        await cluster.start_server(name)
    await wait_jetstream(cluster.url, cluster.auth("admin"))
    yield cluster
