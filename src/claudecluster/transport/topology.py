"""The JetStream topology as declarative data (``nats/topology.yaml``), applied idempotently.

Every actor applies the topology when it connects, so whichever starts first creates what is
missing and the others find it as expected. Applying twice changes nothing; applying a
changed file updates the streams that differ (within what JetStream lets change in place).

On a cluster, creating a replicated stream waits for its peers to elect the stream's
leader; on a loaded machine that outlasts a JetStream request (5 s), and the request
times out although the server goes on and creates the stream. Each step is therefore
tried again while the cluster does not answer in time (idempotent: a stream created in
the meantime is found as it should be), for up to :data:`_APPLY_PATIENCE_S`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Final, Literal

import anyio
import nats.errors
import nats.js.errors
import pydantic
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from claudecluster.config_files import data_dir, load_yaml_model
from claudecluster.errors import EventStoreError
from claudecluster.observability.logging import get_logger
from claudecluster.transport.streams import (
    COMMANDS_STREAM,
    EVENTS_STREAM,
    QUARANTINE_STREAM,
    WORK_STREAM,
)

__all__ = [
    "COMMANDS_STREAM",
    "EVENTS_STREAM",
    "QUARANTINE_STREAM",
    "WORK_STREAM",
    "ConsumerSpec",
    "KeyValueSpec",
    "ObjectStoreSpec",
    "StreamSpec",
    "Topology",
    "apply_topology",
    "default_topology_path",
    "load_topology",
]


_STREAM_NAME_IN_USE: Final = 10058
#: How long one step of applying the topology is tried again while the cluster does not
#: answer in time (a new stream's leader being elected; no JetStream leader yet).
_APPLY_PATIENCE_S: Final = 30.0
_RETRY_FIRST_S: Final = 0.25
_RETRY_MAX_S: Final = 2.0
#: What a cluster that is not ready yet answers, or fails to answer, a JetStream request.
_NOT_READY: Final = (
    TimeoutError,  # nats.errors.TimeoutError too
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)
_log = get_logger(__name__)
_NAME = pydantic.constr(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class StreamSpec(_Spec):
    """One stream."""

    name: _NAME  # type: ignore[valid-type]
    subjects: list[str] = pydantic.Field(min_length=1)
    description: str = ""
    retention: Literal["limits", "workqueue", "interest"] = "limits"
    storage: Literal["file", "memory"] = "file"
    discard: Literal["old", "new"] = "old"
    deny_delete: bool = False
    deny_purge: bool = False
    duplicate_window_s: float = pydantic.Field(default=120.0, ge=0)
    max_age_s: float = pydantic.Field(default=0.0, ge=0)
    max_bytes: int = -1
    allow_direct: bool = False
    replicas: int = pydantic.Field(default=1, ge=1, le=5)

    def to_config(self, replicas: int | None) -> StreamConfig:
        """The nats-py stream configuration."""
        return StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            discard=DiscardPolicy(self.discard),
            deny_delete=self.deny_delete,
            deny_purge=self.deny_purge,
            duplicate_window=self.duplicate_window_s,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            allow_direct=self.allow_direct,
            num_replicas=replicas or self.replicas,
        )


class ConsumerSpec(_Spec):
    """One durable consumer, named ``<actor>__<purpose>``."""

    stream: str
    durable_name: _NAME  # type: ignore[valid-type]
    filter_subject: str
    ack_wait_s: float = pydantic.Field(default=30.0, gt=0)
    max_ack_pending: int = pydantic.Field(default=1000, ge=1)
    max_deliver: int = -1

    def to_config(self) -> ConsumerConfig:
        """The nats-py consumer configuration."""
        return ConsumerConfig(
            durable_name=self.durable_name,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            max_deliver=self.max_deliver,
        )


class KeyValueSpec(_Spec):
    """One key-value bucket (derived, rebuildable state)."""

    bucket: _NAME  # type: ignore[valid-type]
    description: str = ""
    history: int = pydantic.Field(default=1, ge=1, le=64)
    ttl_s: float = pydantic.Field(default=0.0, ge=0)
    storage: Literal["file", "memory"] = "file"
    replicas: int = pydantic.Field(default=1, ge=1, le=5)
    #: entries may carry their own TTL (``Nats-TTL``), as the leases do
    allow_msg_ttl: bool = False


class ObjectStoreSpec(_Spec):
    """One object store bucket (artifacts)."""

    bucket: _NAME  # type: ignore[valid-type]
    description: str = ""
    storage: Literal["file", "memory"] = "file"
    replicas: int = pydantic.Field(default=1, ge=1, le=5)


class Topology(_Spec):
    """Everything the cluster needs on the JetStream server."""

    streams: list[StreamSpec]
    consumers: list[ConsumerSpec] = []
    key_value: list[KeyValueSpec] = []
    object_stores: list[ObjectStoreSpec] = []

    @pydantic.model_validator(mode="after")
    def _consumers_name_streams(self) -> Topology:
        names = {stream.name for stream in self.streams}
        for consumer in self.consumers:
            if consumer.stream not in names:
                raise ValueError(
                    f"consumer {consumer.durable_name!r} names unknown stream {consumer.stream!r}"
                )
        return self


def default_topology_path() -> Path:
    """``nats/topology.yaml`` of this installation."""
    return data_dir("nats") / "topology.yaml"


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate a topology file.

    Raises:
        ConfigError: the file is missing, not YAML, or not a valid topology; the error
            names the key and the file.
    """
    return load_yaml_model(path or default_topology_path(), Topology)


async def apply_topology(
    js: JetStreamContext, topology: Topology, *, replicas: int | None = None
) -> None:
    """Create what is missing and update streams whose configuration changed.

    Args:
        js: a JetStream context of a connected client.
        topology: what should exist.
        replicas: overrides every replica count (3 on a three-server cluster).

    Raises:
        EventStoreError: the server refused part of the topology.
    """
    try:
        for stream in topology.streams:
            await _patiently(stream.name, partial(_apply_stream, js, stream.to_config(replicas)))
        for consumer in topology.consumers:
            add = partial(js.add_consumer, consumer.stream, consumer.to_config())
            await _patiently(consumer.durable_name, add)
        for kv in topology.key_value:
            await _patiently(kv.bucket, partial(_apply_key_value, js, kv, replicas))
        for store in topology.object_stores:
            await _patiently(store.bucket, partial(_apply_object_store, js, store, replicas))
    except (nats.errors.Error, TimeoutError) as exc:
        detail = getattr(exc, "description", None) or repr(exc)
        raise EventStoreError(f"applying the JetStream topology failed: {detail}") from exc


async def _patiently(name: str, step: Callable[[], Awaitable[object]]) -> None:
    """Carry out ``step``, again while the cluster does not answer in time.

    Raises:
        TimeoutError: still no answer after ``_APPLY_PATIENCE_S``.
        nats.errors.Error: the server refused the step, or was still not ready.
    """
    deadline = anyio.current_time() + _APPLY_PATIENCE_S
    delay = _RETRY_FIRST_S
    while True:
        try:
            await step()
        except _NOT_READY as exc:
            if anyio.current_time() + delay > deadline:
                raise
            _log.warning("topology step not answered; trying again", name=name, error=repr(exc))
            await anyio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
        else:
            return


async def _apply_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        await _update_stream(js, config)


async def _update_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Update a stream in place; one created denying purges keeps denying them.

    JetStream refuses to cancel ``deny_purge`` on an existing stream, and ``CC_EVENTS``
    denied purges before runs could be archived: such a stream is updated in everything
    else, and ``claudecluster archive`` then says it cannot purge (docs/operations.md
    says how to move the log to a stream that allows it).
    """
    try:
        await js.update_stream(config)
    except nats.js.errors.ServerError as exc:
        if config.deny_purge or "deny purge" not in (exc.description or ""):
            raise
        config.deny_purge = True
        await js.update_stream(config)
        _log.warning(
            "stream was created denying purges and keeps denying them; archived runs "
            "cannot be purged from it",
            stream=config.name,
        )


async def _apply_key_value(js: JetStreamContext, kv: KeyValueSpec, replicas: int | None) -> None:
    config = KeyValueConfig(
        bucket=kv.bucket,
        description=kv.description or None,
        history=kv.history,
        ttl=kv.ttl_s or None,
        storage=StorageType(kv.storage),
        replicas=replicas or kv.replicas,
    )
    stream = f"KV_{kv.bucket}"
    try:
        await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        # The bucket exists with other settings: change what JetStream lets change in place.
        current = (await js.stream_info(stream)).config
        current.description = kv.description or None
        current.max_msgs_per_subject = kv.history
        current.max_age = kv.ttl_s or 0
        await js.update_stream(current)
    if kv.allow_msg_ttl:
        # nats-py's KV config cannot say so: set it on the bucket's stream (it can be
        # turned on in place, never off).
        current = (await js.stream_info(stream)).config
        if not current.allow_msg_ttl:
            current.allow_msg_ttl = True
            await js.update_stream(current)


async def _apply_object_store(
    js: JetStreamContext, store: ObjectStoreSpec, replicas: int | None
) -> None:
    config = ObjectStoreConfig(
        description=store.description or None,
        storage=StorageType(store.storage),
        replicas=replicas or store.replicas,
    )
    try:
        await js.create_object_store(store.bucket, config=config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        stream = f"OBJ_{store.bucket}"
        current = (await js.stream_info(stream)).config
        current.description = store.description or None
        await js.update_stream(current)
