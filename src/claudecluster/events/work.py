"""Work items: what the driver puts on a pool's work queue for one task attempt.

A work item is not an event (it is deleted from the work-queue stream once a worker acks
it); what happened to it is recorded as events. It is self-contained, so a worker on
another machine needs nothing but NATS: the prompt and limits, and where the base commit's
history is in the object store: the repository's chain of segments (the first bundle with
the history of the first base, each later one only the commits after the ones before it),
of which a worker host fetches only those its repository cache lacks.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from claudecluster.events.codec import decode_guard
from claudecluster.events.model import ArtifactRef, Attempt, Id, TaskSpec

__all__ = [
    "WORK_PREFIX",
    "BaseSegment",
    "WorkItem",
    "decode_work_item",
    "encode_work_item",
    "work_subject",
]

WORK_PREFIX: Final = "cc.work"


class BaseSegment(msgspec.Struct, frozen=True, kw_only=True):
    """One bundle of a repository's chain: its tip commit and where it is stored."""

    commit: str
    bundle: ArtifactRef


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one task, ready for any worker of the pool."""

    run_id: Id
    attempt: Attempt
    spec: TaskSpec
    base_commit: str
    base_bundle: Annotated[
        ArtifactRef | None,
        msgspec.Meta(description="A bundle of the base with all its history (before chains)."),
    ] = None
    pool: Id = "default"
    resume_session_id: Annotated[
        str, msgspec.Meta(description="A session to resume (a previous attempt's), or empty.")
    ] = ""
    model: str = ""
    permission_mode: str = "acceptEdits"
    allowed_tools: tuple[str, ...] = ()
    append_system_prompt: str = ""
    mcp_config: Annotated[
        str, msgspec.Meta(description="Claude Code's MCP servers JSON, or empty for none.")
    ] = ""
    repo_key: Annotated[
        str,
        msgspec.Meta(description="The repository's cache key on worker hosts (its root commit)."),
    ] = ""
    base_segments: Annotated[
        tuple[BaseSegment, ...],
        msgspec.Meta(description="The repository's chain of history bundles, oldest first."),
    ] = ()
    queued_seq: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description=(
                "The log sequence of the TaskQueued this item was published for, or 0 when "
                "not known (a republished item): a claim conditional on it needs no read."
            ),
        ),
    ] = 0

    @property
    def task_id(self) -> str:
        """The task's id (from its spec)."""
        return self.spec.task_id

    @property
    def message_id(self) -> str:
        """Deduplication key: one message per attempt, however often it is published."""
        return f"work-{self.run_id}-{self.spec.task_id}-{self.attempt}"


def work_subject(pool: str) -> str:
    """The subject of a pool's work queue."""
    return f"{WORK_PREFIX}.{pool}"


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(WorkItem)


def encode_work_item(item: WorkItem) -> bytes:
    """A work item as JSON."""
    return _ENCODER.encode(item)


def decode_work_item(data: bytes) -> WorkItem:
    """Decode a work item.

    Raises:
        EventDecodeError: the bytes are not a valid work item; names the field.
    """
    with decode_guard("work item"):
        return _DECODER.decode(data)
