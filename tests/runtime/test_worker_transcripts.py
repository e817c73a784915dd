"""A worker stores the agent's transcript with the API key redacted, end to end.

Real NATS, a real worker, the real Claude Code CLI on the scripted model. The agent says
its API key in a reply and prints it with its Bash tool; the transcript the worker
mirrors into ``CC_SESSIONS`` (kept 30 days, readable by anyone who may resume a session)
holds neither, only the redaction mark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import nats.js.errors

from claudecluster.events import TaskFailed, TaskSucceeded
from claudecluster.observability.redaction import REDACTED, Redactor
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.transcripts import SESSIONS_BUCKET, SESSIONS_STREAM
from tests.runtime.conftest import Driver

API_KEY = "sk-ant-api03-transcript-test-0123456789abcdef"


def _script() -> Script:
    return Script.model_validate(
        {
            "tasks": [
                {
                    "marker": "[[task:leak]]",
                    "turns": [
                        {
                            "text": f"My key is {API_KEY}; printing it too.",
                            "tools": [
                                {
                                    "name": "Bash",
                                    "input": {
                                        "command": 'echo "key=$ANTHROPIC_API_KEY"',
                                        "description": "print the key",
                                    },
                                }
                            ],
                        },
                        {"text": "Done."},
                    ],
                }
            ]
        }
    )


async def _stream_messages(js: Any, stream: str) -> list[bytes]:
    """Every message a stream holds, oldest first."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    found = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            message = await js.get_msg(stream, sequence)
        except nats.js.errors.NotFoundError:
            continue  # deleted or superseded
        found.append(message.data or b"")
    return found


async def test_an_api_key_in_the_agents_output_never_reaches_the_stored_transcript(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    _, client = world
    js = client.jetstream()
    # As `claudecluster worker` opens it: the log carries the process's secrets.
    log = JetStreamEventLog(js, redactor=Redactor([API_KEY]))
    driver = Driver(log, js, source, tmp_path)
    async with open_scripted_model(_script()) as model:
        config = WorkerConfig(
            worker_id="w-redact",
            workspace_root=tmp_path / "workspaces",
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": API_KEY},
        )
        worker = Worker(config, log, client)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            await driver.submit("run-redact", "leak", "[[task:leak]] say your key")
            with anyio.fail_after(90):
                async with log.open_reader(follow=True) as events:
                    async for stored in events:
                        payload = stored.envelope.payload
                        if isinstance(payload, TaskSucceeded | TaskFailed):
                            break
            worker.stop()
    assert isinstance(payload, TaskSucceeded), payload
    transcript = b"\n".join(await _stream_messages(js, SESSIONS_STREAM))
    summaries = b"\n".join(await _stream_messages(js, f"KV_{SESSIONS_BUCKET}"))
    # The transcript was stored, with both the reply and the tool's output in it...
    assert b"printing it too" in transcript
    assert b"key=" in transcript
    assert REDACTED.encode() in transcript
    # ... and the key is in none of it, nor in the session's summary.
    assert API_KEY.encode() not in transcript
    assert API_KEY.encode() not in summaries
