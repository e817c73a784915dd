"""Request bodies are bounded on every route (413 problem+json, refused while reading), and
submissions retried with an Idempotency-Key are one run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claudecluster.events import RunSubmitted
from claudecluster.gateway import OPERATIONS
from claudecluster.transport.base import read_all
from tests.gateway.conftest import bearer, serve_cluster
from tests.runtime.test_driver import Cluster, running_driver

pytestmark = pytest.mark.nats

LIMIT = 64 * 1024
_WITH_BODY = sorted({(op.method, op.path) for op in OPERATIONS if op.request is not None})


@pytest.mark.parametrize(("method", "path"), _WITH_BODY)
async def test_a_body_past_the_limit_is_413_on_every_route_that_reads_one(
    nats_url: str, tmp_path: Path, method: str, path: str
) -> None:
    concrete = path.replace("{run_id}", "r1").replace("{task_id}", "t1")
    async with serve_cluster(nats_url, tmp_path, workers=0, driver=False,
                             max_body_bytes=LIMIT) as served:  # fmt: skip
        declared = await served.http.request(
            method, concrete, content=b" " * (LIMIT + 1), headers=bearer("admin")
        )

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: read until past it
            for _ in range(1_000):
                yield b" " * 1024

        streamed = await served.http.request(
            method, concrete, content=chunked(), headers=bearer("admin")
        )
        under = await served.http.request(
            method, concrete, content=b"{" + b" " * 100 + b"}", headers=bearer("admin")
        )
    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert f"limit of {LIMIT} bytes" in answer.json()["detail"]
    assert under.status_code != 413


async def test_a_submission_retried_after_a_503_with_its_idempotency_key_is_one_run(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0, driver=False,
                             answer_timeout_s=0.5) as served:  # fmt: skip
        plan = [{"task_id": "a", "title": "a", "prompt": "true", "executor": "shell"}]
        body = {"goal": "g", "repo": str(served.repo), "plan": plan}
        headers = {**bearer("submit"), "Idempotency-Key": "client-attempt-1"}
        first = await served.http.post("/runs", json=body, headers=headers)
        assert first.status_code == 503  # no driver: the advice is to retry
        async with running_driver(Cluster(served.log, served.door.connection.client,
                                          served.repo, tmp_path)):  # fmt: skip
            retried = await served.http.post("/runs", json=body, headers=headers)
            again = await served.http.post("/runs", json=body, headers=headers)
        events = [s.envelope.payload for s in await read_all(served.log)]
    assert retried.status_code == 202
    assert again.status_code == 202
    assert retried.json()["run_id"] == again.json()["run_id"]
    submitted = [e for e in events if isinstance(e, RunSubmitted)]
    assert [e.run_id for e in submitted] == [retried.json()["run_id"]]
