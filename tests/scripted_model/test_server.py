"""The scripted model's HTTP surface, spoken to directly."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest

from claudecluster.scripted_model import Script, open_scripted_model

SCRIPT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[t]]",
                "turns": [{"text": "hi"}],
                "errors": [{"kind": "http_429", "times": 1, "retry_after_s": 2}],
            }
        ]
    }
)


def _post(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{url}/v1/messages", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def _call(url: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await anyio.to_thread.run_sync(_post, url, data)


async def test_an_injected_rate_limit_carries_retry_after_then_the_reply_follows() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "[[t]]"}]}
    async with open_scripted_model(SCRIPT) as model:
        status, headers, body = await _call(model.url, request)
        assert status == 429
        assert headers["retry-after"] == "2"
        assert json.loads(body)["error"]["type"] == "rate_limit_error"
        status, headers, body = await _call(model.url, request)
    assert status == 200
    message = json.loads(body)
    assert message["content"] == [{"type": "text", "text": "hi"}]
    assert message["stop_reason"] == "end_turn"
    assert model.statistics() == {"requests": 2, "errors": 1, "[[t]]": 1}


@pytest.mark.parametrize("body", [b"{not json", b'{"messages": 3}', b"[]"])
async def test_a_malformed_request_is_a_400_naming_the_problem(body: bytes) -> None:
    async with open_scripted_model(SCRIPT) as model:
        status, _, answer = await _call(model.url, body)
    assert status == 400
    assert json.loads(answer)["error"]["type"] == "invalid_request_error"


async def test_a_taken_port_raises_instead_of_exiting_the_process() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError, match="in use"):
            async with open_scripted_model(SCRIPT, port=holder.getsockname()[1]):
                pytest.fail("the server must not start on a taken port")
