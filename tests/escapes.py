"""A shell script that tries every escape from an attempt's confinement, and its targets.

The same script runs as a shell task, as the Bash tool of the real Claude Code CLI on the
scripted model, and through a whole worker: each probe prints ``name=denied`` or
``name=ESCAPED`` on one line starting ``escapes:``, so the attempt's own recorded output
says what was tried and what happened. Tests also check the host side (no file written,
no connection accepted, no process left).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROBES", "EscapeTargets", "network_script", "parse_network_report", "parse_report"]

#: Every probe the script runs, in the order it reports them.
PROBES = ("environ", "creds", "home", "write", "other", "gitdir", "net", "outlive")


@dataclass(frozen=True)
class EscapeTargets:
    """What an escaping attempt would reach for, laid out under one temp directory.

    Attributes:
        secret: a value only the worker's own environment holds.
        creds: a credentials file in the project's ``.claudecluster/`` data dir.
        user_home_file: a file in "the user's home".
        outside: a path outside the workspace the attempt tries to write.
        other_workspace_file: a file in another attempt's workspace.
        port: a loopback port something listens on (the NATS port, say).
        sleeper: the argument of the ``sleep`` the attempt tries to leave behind.
    """

    secret: str
    creds: Path
    user_home_file: Path
    outside: Path
    other_workspace_file: Path
    port: int
    sleeper: int

    @classmethod
    def make(cls, root: Path, port: int) -> EscapeTargets:
        """Create the targets under ``root``."""
        data = root / ".claudecluster" / "nats"
        data.mkdir(parents=True)
        creds = data / "worker.creds"
        creds.write_text("-----BEGIN NATS USER JWT-----\n")
        home = root / "user-home"
        home.mkdir()
        (home / ".bash_history").write_text("export AWS_SECRET_ACCESS_KEY=...\n")
        other = root / "workspaces" / "run-other-1" / "ws"
        other.mkdir(parents=True)
        (other / "private.py").write_text("TOKEN = 'someone else'\n")
        return cls(
            secret=f"worker-only-{secrets.token_hex(8)}",
            creds=creds,
            user_home_file=home / ".bash_history",
            outside=home / "planted.txt",
            other_workspace_file=other / "private.py",
            port=port,
            sleeper=4_000_000 + secrets.randbelow(1_000_000),
        )

    def script(self, worker_pid: int | None = None, *, kill_parent: bool = True) -> str:
        """The probe script (bash).

        Args:
            worker_pid: the worker's pid (default: this process).
            kill_parent: end with ``kill -9 $PPID`` (for a shell task: its reaper or the
                sandbox's init; an agent's Bash tool would kill the agent itself).
        """
        pid = worker_pid if worker_pid is not None else os.getpid()
        return "\n".join(
            [
                "r=''",
                # The worker's environment: its /proc entry, any /proc entry, our own env.
                f"if (cat /proc/{pid}/environ /proc/*/environ 2>/dev/null; env) | tr '\\0' '\\n'"
                f' | grep -q {self.secret}; then r="$r environ=ESCAPED"; '
                'else r="$r environ=denied"; fi',
                f'if cat {self.creds} >/dev/null 2>&1; then r="$r creds=ESCAPED"; '
                'else r="$r creds=denied"; fi',
                f'if cat {self.user_home_file} >/dev/null 2>&1; then r="$r home=ESCAPED"; '
                'else r="$r home=denied"; fi',
                f'if echo x 2>/dev/null > {self.outside}; then r="$r write=ESCAPED"; '
                'else r="$r write=denied"; fi',
                f'if cat {self.other_workspace_file} >/dev/null 2>&1; then r="$r other=ESCAPED"; '
                'else r="$r other=denied"; fi',
                'if { echo "[core]" >> .git/config; } 2>/dev/null; then r="$r gitdir=ESCAPED"; '
                'else r="$r gitdir=denied"; fi',
                f"if timeout 5 bash -c 'echo hi > /dev/tcp/127.0.0.1/{self.port}' 2>/dev/null;"
                ' then r="$r net=ESCAPED"; else r="$r net=denied"; fi',
                # Outlive the attempt: a sleeper in its own session, then kill our parent
                # (the reaper, unconfined); the host checks the sleeper is gone afterwards.
                f"setsid sleep {self.sleeper} </dev/null >/dev/null 2>&1 &",
                "kill -9 $PPID 2>/dev/null" if kill_parent else ":",
                'r="$r outlive=tried"',
                'echo "escapes:$r"',
            ]
        )


def parse_report(lines: list[str]) -> dict[str, str]:
    """The probes' verdicts from an attempt's output lines (``{}`` if none reported)."""
    for line in lines:
        if "escapes:" in line:
            report = line.split("escapes:", 1)[1].split()
            return dict(item.split("=", 1) for item in report if "=" in item)
    return {}


def network_script(allowed: list[tuple[str, int]], denied: list[tuple[str, int]]) -> str:
    """A probe script for a plan's network allowance (bash).

    Each allowed ``(host, port)`` must answer (the test's server there sends a greeting,
    which the probe reads); each denied one must not. One line starting ``network:``
    reports ``host:port=reached`` or ``host:port=denied`` for each, then the command's
    capabilities (``caps=<CapEff>/<CapBnd>``).
    """
    lines = ["r=''"]
    for host, port in [*allowed, *denied]:
        lines.append(
            f"if timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}; "
            'read -r -t 4 line <&3; [ -n "$line" ]\' 2>/dev/null;'
            f' then r="$r {host}:{port}=reached"; else r="$r {host}:{port}=denied"; fi'
        )
    lines.append(
        "caps=$(awk '/^CapEff/ {e=$2} /^CapBnd/ {b=$2} END {print e \"/\" b}' /proc/self/status)"
    )
    lines.append('echo "network:$r caps=$caps"')
    return "\n".join(lines)


def parse_network_report(lines: list[str]) -> dict[str, str]:
    """The network probe's verdicts (``{}`` if it reported nothing)."""
    for line in lines:
        if "network:" in line:
            report = line.split("network:", 1)[1].split()
            return dict(item.rsplit("=", 1) for item in report if "=" in item)
    return {}
