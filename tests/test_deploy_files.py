"""The deployment files (docs/deploy/) say only what the product accepts.

They are not run by the suite (that needs a container engine and images from registries
these machines cannot reach; docs/deploy/README.md says what was run by hand). What can be
checked on every run is checked here: each command line in them parses as a claudecluster
command, each ``CLAUDECLUSTER_*`` variable is a real setting, and the NATS configs are
ones nats-server accepts with the authorization the ``creds`` service writes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cyclopts.exceptions import CycloptsError

from claudecluster.cli import app
from claudecluster.errors import ConfigError
from claudecluster.runtime.embedded_nats import find_nats_server
from claudecluster.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy"
CLI = str(Path(sys.executable).parent / "claudecluster")
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)[^}]*\}")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _k8s_containers() -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all((DEPLOY / "k8s" / "claudecluster.yaml").read_text()):
        if document and document.get("kind") == "Deployment":
            yield from document["spec"]["template"]["spec"]["containers"]


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every claudecluster command line, named by where it is."""
    for name, service in _compose()["services"].items():
        if service.get("image") != "claudecluster:latest" or "entrypoint" in service:
            continue
        yield f"compose:{name}", [str(part) for part in service["command"]]
    for container in _k8s_containers():
        yield f"k8s:{container['name']}", [str(part) for part in container["args"]]


def _environments() -> Iterator[tuple[str, dict[str, str]]]:
    for name, service in _compose()["services"].items():
        environment = service.get("environment") or {}
        yield f"compose:{name}", {k: str(v) for k, v in environment.items()}
    for container in _k8s_containers():
        # A value from a Secret stands for one the operator made: long enough to pass.
        environment = {e["name"]: str(e.get("value", "s" * 64)) for e in container.get("env", [])}
        yield f"k8s:{container['name']}", environment


def test_the_files_name_the_actors_a_deployment_needs() -> None:
    services = _compose()["services"]
    assert {"nats-a", "nats-b", "nats-c", "driver", "driver-standby", "gateway", "worker",
            "prometheus"} <= set(services)  # fmt: skip
    commands = {where: line[0] for where, line in _command_lines()}
    assert commands["compose:driver"] == commands["compose:driver-standby"] == "driver"
    assert {"k8s:driver", "k8s:worker", "k8s:gateway"} <= set(commands)


@pytest.mark.parametrize(("where", "line"), list(_command_lines()), ids=lambda v: str(v)[:40])
def test_every_command_line_is_one_the_cli_accepts(where: str, line: list[str]) -> None:
    try:
        app.parse_args(line, exit_on_error=False, print_error=False)
    except CycloptsError as refused:
        pytest.fail(f"{where}: claudecluster {' '.join(line)}: {refused}")


def test_a_command_line_the_cli_refuses_is_caught() -> None:
    """The check above can fail: an unknown flag is refused, not ignored."""
    with pytest.raises(CycloptsError):
        app.parse_args(["driver", "--no-such-flag"], exit_on_error=False, print_error=False)


@pytest.mark.parametrize(("where", "environment"), list(_environments()), ids=lambda v: str(v)[:30])
def test_every_claudecluster_variable_is_a_setting(
    where: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no claudecluster.yaml of the repository's is read
    for key in [k for k in os.environ if k.startswith("CLAUDECLUSTER_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        if key.startswith("CLAUDECLUSTER_"):
            secret = "s" * 64  # what ${VAR:?...} asks the operator for
            monkeypatch.setenv(key, _INTERPOLATION.sub(secret, value))
    try:
        load_settings()
    except ConfigError as refused:
        pytest.fail(f"{where}: {refused}")


@pytest.mark.parametrize("node", ["a", "b", "c"])
def test_the_nats_configs_pass_the_servers_own_check(node: str, tmp_path: Path) -> None:
    """As the compose file lays them out: the config, and beside it the ``cluster`` volume
    the creds service fills."""
    shutil.copy(DEPLOY / f"nats-{node}.conf", tmp_path / "nats.conf")
    made = subprocess.run(
        [CLI, "creds", "cluster", "--dir", str(tmp_path / "cluster")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    checked = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr + checked.stdout
    (tmp_path / "cluster" / "authorization.conf").unlink()
    refused = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode != 0  # without the identities the server does not start
