"""The gateway's commands as a user runs them: serve, write the OpenAPI file, mint tokens."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import jwt
import pytest

from claudecluster.cli import run
from tests.cli.test_cli import SCRIPT, clean_env, cli, restore_structlog

__all__ = ["restore_structlog"]  # a fixture these tests use
from tests.gateway.conftest import SECRET


def _env(**extra: str) -> dict[str, str]:
    return {**clean_env(), "CLAUDECLUSTER_GATEWAY__JWT_SECRET": SECRET, **extra}


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch, restore_structlog: None) -> None:
    """The signing secret in the environment, as an operator would set it."""
    del restore_structlog
    monkeypatch.setenv("CLAUDECLUSTER_GATEWAY__JWT_SECRET", SECRET)


def test_token_create_mints_a_token_with_the_nested_scopes(
    secret: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert run(["token", "create", "--scope", "submit", "--ttl", "30m"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"],
                        audience="claudecluster-gateway")  # fmt: skip
    assert claims["scope"] == "read submit"
    assert claims["exp"] - claims["iat"] == 1800


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--ttl", "soon"], "not a lifetime"), (["--ttl", "0"], "not a lifetime"),
     (["--scope", "root"], "")],
)  # fmt: skip
def test_token_create_refuses_bad_input_with_a_usage_error(
    secret: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], args: list[str], message: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert run(["token", "create", *args]) == 2
    assert message in capsys.readouterr().err


def test_token_create_without_a_secret_names_the_variable_to_set(
    restore_structlog: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLAUDECLUSTER_GATEWAY__JWT_SECRET", raising=False)
    assert run(["token", "create"]) == 2
    assert "CLAUDECLUSTER_GATEWAY__JWT_SECRET" in capsys.readouterr().err


def test_gateway_openapi_check_passes_on_the_committed_file_and_names_a_stale_one(
    restore_structlog: None, tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["gateway", "openapi", str(repo_root / "docs" / "openapi.json"), "--check"]) == 0
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n")
    assert run(["gateway", "openapi", str(stale), "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert run(["gateway", "openapi", str(stale)]) == 0
    assert run(["gateway", "openapi", str(stale), "--check"]) == 0


def test_the_gateway_command_serves_until_sigterm(tmp_path: Path, nats_url: str) -> None:
    # A proxy's name for the MCP endpoint comes from the configuration.
    env = {**_env(), "CLAUDECLUSTER_GATEWAY__MCP_ALLOWED_HOSTS": '["tools.example:*"]'}
    with subprocess.Popen(
        [str(SCRIPT), "gateway", "--port", "0", "--nats", nats_url],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        try:
            assert process.stderr is not None
            url = None
            for line in process.stderr:  # ends when the process exits, so this cannot hang
                found = re.search(r"gateway at (http://\S+)", line)
                if found:
                    url = found.group(1)
                    break
            assert url is not None, "the gateway never said where it listens"
            assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
            assert httpx.get(f"{url}/runs", timeout=10).status_code == 401
            token = cli("token", "create", cwd=tmp_path, env=_env()).stdout.strip()
            auth = {"Authorization": f"Bearer {token}"}
            assert httpx.get(f"{url}/runs", headers=auth, timeout=10).status_code == 200
            ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            mcp = {**auth, "Accept": "application/json, text/event-stream"}
            named = httpx.post(f"{url}/mcp", json=ping, timeout=10,
                               headers={**mcp, "Host": "tools.example:443"})  # fmt: skip
            assert named.status_code != 421, named.text  # the configured name passes the check
            other = httpx.post(f"{url}/mcp", json=ping, timeout=10,
                               headers={**mcp, "Host": "evil.example:443"})  # fmt: skip
            assert other.status_code == 421, other.text
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
