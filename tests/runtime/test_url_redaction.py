"""A NATS URL's credentials never reach a message we print or log."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from claudecluster.errors import DriverUnavailableError, NatsServerError
from claudecluster.events import SubmitRun, TaskSpec
from claudecluster.runtime.connection import Connection, open_nats
from claudecluster.runtime.front_door import open_front_door
from tests.conftest import fresh_jetstream_log

pytestmark = pytest.mark.nats


async def test_the_start_a_driver_hint_names_the_url_without_its_password(nats_url: str) -> None:
    with_password = nats_url.replace("nats://", "nats://ops:hunter2-password@")
    async with fresh_jetstream_log(nats_url) as log, open_nats(nats_url) as client:
        conn = Connection(with_password, client, log, embedded=False)
        async with open_front_door(conn, answer_timeout_s=0.2) as door:
            command = SubmitRun(run_id="r", goal="g", repo="/repo",
                                plan=(TaskSpec(task_id="t", title="t", prompt="p"),))  # fmt: skip
            with pytest.raises(DriverUnavailableError) as caught:
                await door.submit_run(command)
    assert "hunter2-password" not in str(caught.value)
    assert "ops:[REDACTED]@" in str(caught.value)


async def test_an_unreachable_url_is_reported_without_its_password() -> None:
    with capture_logs() as logs, pytest.raises(NatsServerError) as caught:
        async with open_nats("nats://ops:hunter2-password@127.0.0.1:9", connect_timeout=0.5):
            pass
    assert "nats://ops:[REDACTED]@127.0.0.1:9" in str(caught.value)
    assert all("hunter2-password" not in repr(entry) for entry in logs)
