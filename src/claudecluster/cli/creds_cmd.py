"""``claudecluster creds``: the bus's identities, for a new worker host or a cluster.

``creds worker`` (and ``creds reader``, ``creds frontdoor``) hand out the seed file of one
role of this project's embedded server, minting a worker identity for another pool when
asked (the running server reloads its config at once). ``creds cluster`` makes a set of
identities for the three-server configs in ``nats/cluster/``: the seeds and the
``authorization.conf`` those configs include.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
from cyclopts import App
from rich.console import Console

from claudecluster.cli.app import EXIT_OK
from claudecluster.errors import ConfigError
from claudecluster.events.subjects import check_id
from claudecluster.runtime.credentials import mint_identity, write_cluster_authorization
from claudecluster.runtime.embedded_nats import reload_embedded_nats
from claudecluster.runtime.join import JoinToken, ca_fingerprint, encode_join_token
from claudecluster.settings import load_settings
from claudecluster.transport.permissions import Role

__all__ = ["creds_app"]

creds_app = App(name="creds", help="The bus's identities: seed files for workers and tools.")


def _store_dir(config: Path | None) -> Path:
    settings = load_settings(config_file=config).settings
    store = settings.nats.store_dir
    return store if store.is_absolute() else Path.cwd() / store


def _hand_out(role: Role, pool: str, out: Path | None, config: Path | None) -> int:
    console = Console(highlight=False, soft_wrap=True)
    store = _store_dir(config)
    user, seed = mint_identity(store, role, check_id("pool", pool))
    reloaded = anyio.run(reload_embedded_nats, store)
    if out is not None:
        if out.exists():
            raise ConfigError("out", f"flag --out {out}", "exists already; not overwritten")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle, seed.open("rb") as source:
            shutil.copyfileobj(source, handle)
        seed = out
    console.out(str(seed))  # alone on stdout, so $(claudecluster creds worker) is the path
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"{user.name}: public key {user.public_key}"
        + ("; the running server now admits it" if reloaded else ""),
        markup=False,
        style="dim",
    )
    return EXIT_OK


@creds_app.command
def worker(*, pool: str = "default", out: Path | None = None, config: Path | None = None) -> int:
    """Print the path of a worker's seed file (or copy it to --out, mode 0600).

    A worker on another host joins with it:
    ``claudecluster worker --nats tls://HOST:4222 --creds FILE``. A pool other than
    default gets an identity of its own, allowed that pool's queue only.

    Args:
        pool: The pool the worker serves.
        out: Write the seed to this new file instead of printing where it is.
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    return _hand_out("worker", pool, out, config)


@creds_app.command
def join(
    *,
    url: str,
    pool: str = "default",
    ca: Path | None = None,
    config: Path | None = None,
) -> int:
    """Print a join token: one line that makes a new host a worker of this cluster.

    On the new host: ``claudecluster worker --join TOKEN``. The token carries the URL,
    the worker seed of ``pool`` (minted if missing) and the CA certificate to trust, so
    it is a secret: send it the way you would send the seed file.

    Examples:
        claudecluster creds join --url tls://nats.example:4222 --ca nats/ca.pem

    Args:
        url: The NATS URL the new host reaches the cluster at (tls://HOST:4222).
        pool: The pool the new worker serves.
        ca: The CA certificate (PEM) the servers' TLS certificates are signed by.
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    store = _store_dir(config)
    user, seed = mint_identity(store, "worker", check_id("pool", pool))
    anyio.run(reload_embedded_nats, store)
    try:
        ca_pem = ca.read_text(encoding="utf-8") if ca is not None else ""
    except OSError as exc:
        raise ConfigError("ca", f"flag --ca {ca}", f"cannot be read: {exc}") from None
    if url.startswith("tls://") and not ca_pem:
        Console(stderr=True, highlight=False).print(
            "no --ca: the new host trusts its system's CAs for the TLS certificate",
            markup=False, style="dim",
        )  # fmt: skip
    token = encode_join_token(
        JoinToken(url=url, seed=seed.read_text(encoding="utf-8").strip(), pool=pool, ca_pem=ca_pem)
    )
    Console(highlight=False, soft_wrap=True).out(token)  # alone on stdout: one line to paste
    fingerprint = f", CA {ca_fingerprint(ca_pem)}" if ca_pem else ""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"{user.name}: on the new host run: claudecluster worker --join TOKEN{fingerprint}",
        markup=False,
        emoji=False,  # a fingerprint's ":AB:" is not an emoji
        style="dim",
    )
    return EXIT_OK


@creds_app.command
def reader(*, out: Path | None = None, config: Path | None = None) -> int:
    """Print the path of the read-only consumer's seed file (or copy it to --out).

    Args:
        out: Write the seed to this new file instead of printing where it is.
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    return _hand_out("reader", "default", out, config)


@creds_app.command
def cluster(*, dir: Path = Path("nats/cluster")) -> int:
    """Make identities for the three-server cluster configs (nats/cluster/).

    Writes ``DIR/creds/<role>.nk`` (seeds, 0600, in a 0700 directory; kept if they exist)
    and ``DIR/authorization.conf`` (public keys and each role's permissions), which
    ``node-a.conf``, ``node-b.conf`` and ``node-c.conf`` include. Copy the conf next to
    each server's config and each seed to the host that runs that role.

    Args:
        dir: Where the configs are.
    """
    credentials, conf = write_cluster_authorization(dir)
    console = Console(highlight=False, soft_wrap=True)
    console.out(str(conf))
    for user in credentials.bus_users():
        console.out(f"{user.name}: {credentials.directory / f'{user.name}.nk'}")
    return EXIT_OK
