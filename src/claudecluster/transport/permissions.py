"""Who may do what on the bus, as data (``nats/permissions.yaml``), turned into server config.

Each role (driver, worker, front door, reader) is one NATS user with allow lists for
publishing and subscribing; anything not allowed is denied by the server. The file names
subjects with two placeholders, ``{inbox}`` (the role's reply-subject prefix) and
``{pool}`` (a worker's pool), and a role may say ``manages_topology: true`` to be allowed
to create and update everything ``nats/topology.yaml`` declares. This module validates the
file, resolves a role into its subject lists, and renders the ``authorization`` block of a
nats-server configuration for a set of users (nkey public keys).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final, Literal

import pydantic

from claudecluster.config_files import data_dir, load_yaml_model
from claudecluster.transport.topology import Topology, load_topology

__all__ = [
    "ROLES",
    "BusUser",
    "Grant",
    "Permissions",
    "Role",
    "default_permissions_path",
    "inbox_prefix",
    "load_permissions",
    "render_authorization",
    "role_grant",
]

Role = Literal["driver", "worker", "frontdoor", "reader", "admin"]
#: Every role, in the order the server config lists them. ``admin`` is the operator's
#: (the nats CLI, repairs, fault-injecting test harnesses): no actor connects with it.
ROLES: Final[tuple[Role, ...]] = ("driver", "worker", "frontdoor", "reader", "admin")


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class Grant(_Spec):
    """Subjects a user may publish to and subscribe to."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()

    def __add__(self, other: Grant) -> Grant:
        return Grant(
            publish=_unique((*self.publish, *other.publish)),
            subscribe=_unique((*self.subscribe, *other.subscribe)),
        )


class RoleSpec(Grant):
    """One role: what it is for, the groups it uses and its own subjects."""

    description: str = ""
    uses: tuple[str, ...] = ()
    manages_topology: bool = False


class Permissions(_Spec):
    """The whole permissions file."""

    inbox: str = "_INBOX_{role}"
    groups: dict[str, Grant] = pydantic.Field(default_factory=dict)
    roles: dict[Role, RoleSpec]

    @pydantic.model_validator(mode="after")
    def _complete(self) -> Permissions:
        missing = [role for role in ROLES if role not in self.roles]
        if missing:
            raise ValueError(f"roles {missing} are not defined")
        for name, role in self.roles.items():
            unknown = [group for group in role.uses if group not in self.groups]
            if unknown:
                raise ValueError(f"role {name!r} uses unknown groups {unknown}")
        return self


class BusUser(_Spec):
    """One NATS user of a server: its nkey public key, role and (for a worker) pool."""

    public_key: str
    role: Role
    pool: str = "default"
    name: str = ""


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def default_permissions_path() -> Path:
    """``nats/permissions.yaml`` of this installation."""
    return data_dir("nats") / "permissions.yaml"


def load_permissions(path: Path | None = None) -> Permissions:
    """Read and validate a permissions file.

    Raises:
        ConfigError: the file is missing, not YAML, or not valid; names the key and file.
    """
    return load_yaml_model(path or default_permissions_path(), Permissions)


def inbox_prefix(role: Role, permissions: Permissions | None = None) -> str:
    """The reply-subject prefix clients of ``role`` use (``_INBOX_worker`` by default)."""
    template = (permissions or load_permissions()).inbox
    return template.replace("{role}", role)


def _topology_subjects(topology: Topology) -> tuple[str, ...]:
    """Creating and updating every stream behind the topology (KV and object stores too)."""
    streams = [
        *(stream.name for stream in topology.streams),
        *(f"KV_{kv.bucket}" for kv in topology.key_value),
        *(f"OBJ_{store.bucket}" for store in topology.object_stores),
    ]
    subjects = [
        f"$JS.API.STREAM.{verb}.{name}" for name in streams for verb in ("CREATE", "UPDATE")
    ]
    for consumer in topology.consumers:
        subjects.append(
            f"$JS.API.CONSUMER.DURABLE.CREATE.{consumer.stream}.{consumer.durable_name}"
        )
    return tuple(subjects)


def role_grant(
    role: Role,
    *,
    pool: str = "default",
    permissions: Permissions | None = None,
    topology: Topology | None = None,
) -> Grant:
    """Everything ``role`` may publish and subscribe to, placeholders filled in."""
    perms = permissions or load_permissions()
    spec = perms.roles[role]
    grant = Grant()
    for group in spec.uses:
        grant = grant + perms.groups[group]
    grant = grant + Grant(publish=spec.publish, subscribe=spec.subscribe)
    if spec.manages_topology:
        grant = grant + Grant(publish=_topology_subjects(topology or load_topology()))
    inbox = inbox_prefix(role, perms)

    def fill(subject: str) -> str:
        return subject.replace("{inbox}", inbox).replace("{pool}", pool)

    return Grant(
        publish=_unique(tuple(fill(s) for s in grant.publish)),
        subscribe=_unique(tuple(fill(s) for s in grant.subscribe)),
    )


def render_authorization(
    users: list[BusUser],
    *,
    permissions: Permissions | None = None,
    topology: Topology | None = None,
) -> str:
    """The ``authorization`` block of a nats-server config for ``users``.

    nats-server's config format accepts JSON values, so the users are written as JSON:
    every subject is quoted, ``$`` and ``>`` included.
    """
    perms = permissions or load_permissions()
    entries = []
    for user in users:
        grant = role_grant(user.role, pool=user.pool, permissions=perms, topology=topology)
        entries.append(
            {
                "nkey": user.public_key,
                "permissions": {
                    "publish": {"allow": list(grant.publish)},
                    "subscribe": {"allow": list(grant.subscribe)},
                },
            }
        )
    body = json.dumps(entries, indent=2)
    return f"authorization {{\n  users = {body}\n}}\n"
