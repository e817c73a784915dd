"""A secret an agent echoes into its output never reaches the bytes JetStream stores."""

from __future__ import annotations

import pytest

from claudecluster.events.model import TaskProgress
from claudecluster.observability.redaction import REDACTED, Redactor
from claudecluster.runtime.connection import open_jetstream_log
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import EVENTS_STREAM
from tests.support import EnvelopeFactory

pytestmark = pytest.mark.nats

SECRET = "sk-ant-api03-stored-never-0123456789"


async def test_a_secret_in_task_progress_is_redacted_before_jetstream_stores_it(
    nats_url: str, jetstream_log: JetStreamEventLog
) -> None:
    # jetstream_log is asked for its fresh, empty streams; the log under test is our own.
    del jetstream_log
    envelope = EnvelopeFactory("secret")(
        TaskProgress(
            run_id="r-secret",
            task_id="t1",
            attempt=1,
            kind="tool_result",
            text=f"ANTHROPIC_API_KEY={SECRET}",
        )
    )

    async with open_jetstream_log(nats_url, name="test", redactor=Redactor([SECRET])) as (
        client,
        log,
    ):
        result = await log.append(envelope)
        raw = await client.jetstream().get_msg(EVENTS_STREAM, result.seq)
        [stored] = await read_all(log, from_seq=result.seq)

    assert raw.data is not None
    assert SECRET.encode() not in raw.data
    assert f"ANTHROPIC_API_KEY={REDACTED}".encode() in raw.data
    assert isinstance(stored.envelope.payload, TaskProgress)
    assert stored.envelope.payload.text == f"ANTHROPIC_API_KEY={REDACTED}"
