"""The embedded server's identities: one nkey per role, made at first start, kept private.

An identity is an nkey seed (ed25519, NATS's own key format) in a file only the user can
read (0600) in a directory only the user can enter (0700), ``<store_dir>/creds/``. The
server is given only the public keys, with each role's permissions
(:mod:`claudecluster.transport.permissions`), so no secret is in its config and none is
ever sent: a client proves it holds the seed by signing the server's nonce. A process that
connects as a role passes the seed file's path to nats-py; nothing secret appears on a
command line, in a URL or in a log.

``users.json`` beside the seeds lists every identity (name, role, pool, public key) so that
more can be minted later (``claudecluster creds worker --pool gpu``) and the server config
rendered again.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Final

import nkeys

from claudecluster.errors import ConfigError
from claudecluster.transport.permissions import ROLES, BusUser, Role, render_authorization

__all__ = [
    "CREDS_DIR",
    "Credentials",
    "ensure_credentials",
    "mint_identity",
    "new_user_seed",
    "public_key_of",
    "write_cluster_authorization",
]

CREDS_DIR: Final = "creds"
_USERS_FILE: Final = "users.json"


def new_user_seed() -> bytes:
    """A new NATS user nkey seed (``SU...``) from the system's random source."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key_of(seed: bytes) -> str:
    """The public key (``U...``) of an nkey seed.

    Raises:
        ConfigError: the bytes are not an nkey seed.
    """
    try:
        key: bytes = nkeys.from_seed(seed.strip()).public_key
    except (nkeys.NkeysError, ValueError) as exc:
        raise ConfigError("nats.nkey_seed", "file", f"not an nkey seed ({exc})") from None
    return key.decode()


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable and writable by the user alone, whole or not at all."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o600)  # the umask cannot widen it, and an old file is narrowed
    finally:
        os.close(fd)
    os.replace(partial, path)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


class Credentials:
    """The identities of one embedded server, in ``<store_dir>/creds/``.

    Args:
        directory: the creds directory.
        users: every identity, by name.
    """

    def __init__(self, directory: Path, users: dict[str, BusUser]) -> None:
        self.directory = directory
        self.users = users

    def seed_file(self, role: Role, pool: str = "default") -> Path:
        """The seed file of the identity for ``role`` (and, for workers, ``pool``).

        Raises:
            ConfigError: no such identity was minted.
        """
        name = _identity_name(role, pool)
        if name not in self.users:
            raise ConfigError(
                "worker.pool",
                "credentials",
                f"no identity {name!r}; mint it with 'claudecluster creds {role} --pool {pool}'",
            )
        return self.directory / f"{name}.nk"

    def bus_users(self) -> list[BusUser]:
        """Every identity, for the server's ``authorization`` block."""
        return [self.users[name] for name in sorted(self.users)]


def _identity_name(role: Role, pool: str) -> str:
    return role if role != "worker" or pool == "default" else f"worker-{pool}"


def _load_users(directory: Path) -> dict[str, BusUser]:
    path = directory / _USERS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {entry["name"]: BusUser.model_validate(entry) for entry in raw}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("(file)", f"file {path}", f"not a list of identities: {exc}") from None


def _save_users(directory: Path, users: dict[str, BusUser]) -> None:
    data = [users[name].model_dump() for name in sorted(users)]
    _write_private(directory / _USERS_FILE, json.dumps(data, indent=2).encode())


def _add(directory: Path, users: dict[str, BusUser], role: Role, pool: str) -> BusUser:
    name = _identity_name(role, pool)
    seed_path = directory / f"{name}.nk"
    if name in users and seed_path.is_file():
        return users[name]
    seed = new_user_seed()
    _write_private(seed_path, seed + b"\n")
    user = BusUser(public_key=public_key_of(seed), role=role, pool=pool, name=name)
    users[name] = user
    return user


def ensure_credentials(store_dir: Path) -> Credentials:
    """The server's identities, made now for every role that has none yet.

    The directory is made 0700 and every file 0600 (narrowed if it was wider).

    Raises:
        ConfigError: ``users.json`` is damaged.
    """
    directory = store_dir / CREDS_DIR
    _private_dir(directory)
    users = _load_users(directory)
    before = dict(users)
    for role in ROLES:
        _add(directory, users, role, "default")
    if users != before or not (directory / _USERS_FILE).is_file():
        _save_users(directory, users)
    for path in directory.iterdir():
        os.chmod(path, 0o600)
    return Credentials(directory, users)


def mint_identity(store_dir: Path, role: Role, pool: str = "default") -> tuple[BusUser, Path]:
    """Add an identity (a worker for another pool, say) and return it with its seed file.

    The embedded server picks it up when its config is rendered again (at its next start,
    or at once through :func:`claudecluster.runtime.embedded_nats.reload_embedded_nats`).

    Raises:
        ConfigError: ``users.json`` is damaged.
    """
    credentials = ensure_credentials(store_dir)
    users = dict(credentials.users)
    user = _add(credentials.directory, users, role, pool)
    _save_users(credentials.directory, users)
    return user, credentials.directory / f"{user.name}.nk"


def write_cluster_authorization(directory: Path) -> tuple[Credentials, Path]:
    """Identities for the cluster configs of ``nats/cluster/`` in ``directory``.

    Makes (or keeps) ``directory/creds/<role>.nk`` and writes
    ``directory/authorization.conf``, which every node's config includes.

    Raises:
        ConfigError: ``users.json`` is damaged.
    """
    credentials = ensure_credentials(directory)
    conf = directory / "authorization.conf"
    text = "# Made by 'claudecluster creds cluster': public keys only, one per role.\n"
    conf.write_text(text + render_authorization(credentials.bus_users()), encoding="utf-8")
    return credentials, conf
