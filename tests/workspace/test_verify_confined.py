"""The verify command runs code agents wrote: confined, with a minimal environment, and
its output is cut and masked before it becomes a verdict (and so a recorded event)."""

from __future__ import annotations

from pathlib import Path

import pytest

from claudecluster.executors.confined import ConfinedVerify
from claudecluster.executors.confinement import Confinement, Mechanism
from claudecluster.workspace.integration import Integration
from tests.support import commit_all, git_output, make_repo


async def _merge_with(
    repo: Path, tmp_path: Path, verify: str, confinement: Confinement
) -> tuple[bool, str]:
    base = git_output(repo, "rev-parse", "HEAD").strip()
    git_output(repo, "checkout", "-q", "-b", "task")
    (repo / "feature.py").write_text("FEATURE = 1\n")
    commit_all(repo, "the task's work")
    theirs = git_output(repo, "rev-parse", "HEAD").strip()
    git_output(repo, "checkout", "-q", "main")
    integration = Integration(
        repo, tmp_path / "driver" / "integration", "claudecluster/r1",
        run_verify=ConfinedVerify(confinement),
    )  # fmt: skip
    await integration.start(base)
    outcome, verdict = await integration.merge(
        head=base, theirs=theirs, key="r1/t1/1", message="t1", verify=verify
    )
    await integration.close()
    assert verdict is not None
    assert (outcome.commit is not None) == verdict.passed
    return verdict.passed, verdict.output


async def test_verify_sees_no_secret_writes_nothing_outside_and_its_output_is_masked(
    sandbox: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-key-of-the-driver")
    repo = make_repo(tmp_path / "repo", {"app.py": "v1\n"})
    planted = repo / "planted-by-verify"
    # A long output first (only its tail is kept), then every environment it can read.
    verify = (
        "test -e feature.py && python3 -c 'print(\"y\" * 10000)'; "
        "(env; cat /proc/*/environ) 2>/dev/null | tr '\\0' '\\n' | grep -e cloud-key -e PATH=; "
        f"echo x > {planted} 2>/dev/null; exit 1"
    )
    passed, output = await _merge_with(repo, tmp_path, verify, Confinement(mechanism=sandbox))
    assert not passed
    assert output.startswith("the verify command exited with status 1: ")
    assert "PATH=" in output  # the environments were read and printed
    assert "cloud-key-of-the-driver" not in output
    assert not planted.exists()
    assert len(output) < 2100  # the tail only, whatever the command printed
    assert "y" * 100 in output


async def test_secret_named_assignments_in_verify_output_are_masked(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "v1\n"})
    verify = "echo 0 > /dev/null; echo API_TOKEN=printed-by-a-test-suite; echo ok=1; exit 2"
    passed, output = await _merge_with(repo, tmp_path, verify, Confinement(mechanism=sandbox))
    assert not passed
    assert "printed-by-a-test-suite" not in output
    assert "API_TOKEN=[REDACTED]" in output
    assert "ok=1" in output


async def test_without_the_sandbox_verify_still_gets_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-key-of-the-driver")
    repo = make_repo(tmp_path / "repo", {"app.py": "v1\n"})
    verify = "if env | grep -q cloud-key-of; then exit 1; fi; test -e feature.py"
    passed, output = await _merge_with(repo, tmp_path, verify, Confinement.unconfined())
    assert passed, output
