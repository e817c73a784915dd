"""Request bodies are bounded on every route: 413 problem+json, refused while reading."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claudecluster.gateway import OPERATIONS
from tests.gateway.conftest import bearer, serve_cluster

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
