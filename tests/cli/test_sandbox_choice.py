"""Where agents cannot be confined, the processes that run them refuse to start, unless
the operator chose to go without (``--no-sandbox``, ``sandbox.enabled: false``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from claudecluster.cli import run
from claudecluster.errors import ConfigError
from claudecluster.executors import confinement
from claudecluster.runtime.sandboxing import confinement_for
from claudecluster.settings import Settings

_MISSING = "bubblewrap (bwrap) is not installed"


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This machine, as one without bubblewrap."""
    monkeypatch.setattr(confinement, "probe_mechanism", lambda: _MISSING)
    monkeypatch.delenv(confinement.SANDBOX_ENABLED_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_bwrap")
def test_without_bubblewrap_the_sandbox_setting_refuses_and_says_what_to_do() -> None:
    with pytest.raises(ConfigError) as refused:
        confinement_for(Settings())
    assert refused.value.key == "sandbox.enabled"
    assert _MISSING in str(refused.value)
    assert "apt-get install bubblewrap socat" in str(refused.value)
    assert "--no-sandbox" in str(refused.value)
    chosen = confinement_for(Settings.model_validate({"sandbox": {"enabled": False}}))
    assert not chosen.confined


@pytest.mark.usefixtures("no_bwrap")
@pytest.mark.parametrize(
    "command",
    [
        ["worker", "--nats", "nats://127.0.0.1:9"],
        ["driver", "--nats", "nats://127.0.0.1:9"],
        ["demo"],
    ],
)
def test_a_worker_driver_or_demo_without_bubblewrap_does_not_start(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(command) == 2
    err = capsys.readouterr().err
    assert "agents cannot be confined here" in err
    assert "--no-sandbox" in err


@pytest.mark.usefixtures("no_bwrap")
def test_with_no_sandbox_the_worker_starts_unconfined_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Past the sandbox check it gets as far as the (unreachable) NATS server.
    assert run(["worker", "--no-sandbox", "--nats", "nats://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "the sandbox is off (--no-sandbox)" in err
    assert "agents cannot be confined here" not in err
