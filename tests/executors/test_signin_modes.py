"""Each way of signing in, end to end: the real Claude Code CLI sends the scripted model
the credential of the chosen mode, and nothing of the others reaches it.

The configuration is loaded from an environment holding several modes' variables, as a
user's shell may; the scripted model records the headers each request carried.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from claudecluster.domain.outcome import Outcome
from claudecluster.events.model import TaskProgress, TaskRateLimited
from claudecluster.executors.base import AttemptRun
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.settings import load_settings

SCRIPT = Script.model_validate(
    {"tasks": [{"marker": "[[task:hello]]", "turns": [{"text": "Hello."}]}]}
)


async def _ignore(update: TaskProgress | TaskRateLimited) -> None:
    del update


async def _run(tmp_path: Path, environ: dict[str, str], url: str) -> Outcome:
    settings = load_settings(environ={**environ, "ANTHROPIC_BASE_URL": url}).settings
    workspace = tmp_path / "ws"
    workspace.mkdir()
    job = AttemptRun(
        run_id="r1",
        task_id="t1",
        attempt=1,
        prompt="[[task:hello]] say hello",
        workspace=workspace,
        scratch=tmp_path / "scratch",
        session_id=str(uuid.uuid4()),
        api_environment=settings.api_environment(),
    )
    return await ClaudeCodeExecutor().run(job, _ignore)


@pytest.mark.parametrize(
    ("environ", "api_key", "bearer"),
    [
        ({"ANTHROPIC_API_KEY": "sk-ant-api-1", "CLAUDE_CODE_OAUTH_TOKEN": "unused"},
         "sk-ant-api-1", None),
        ({"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-subscription"},
         None, "sk-ant-oat01-subscription"),
        ({"ANTHROPIC_AUTH_TOKEN": "gateway-token-7", "ANTHROPIC_API_KEY": ""},
         None, "gateway-token-7"),
    ],
    ids=["api key", "subscription token", "llm gateway"],
)  # fmt: skip
async def test_claude_code_sends_the_chosen_modes_credential(
    tmp_path: Path, environ: dict[str, str], api_key: str | None, bearer: str | None
) -> None:
    async with open_scripted_model(SCRIPT) as model:
        outcome = await _run(tmp_path, environ, model.url)
    assert outcome.succeeded, outcome
    assert model.served, "Claude Code never reached the model"
    for request in model.served:
        assert (request.api_key, request.bearer) == (api_key, bearer)
