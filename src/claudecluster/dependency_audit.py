"""``make audit``: pip-audit over the installed dependencies, saying plainly what it audited.

pip-audit asks an advisory source (PyPI's JSON API by default, or OSV) about each
installed release. Two ways it can audit nothing and still exit 0 as if all were well:
PyPI answers 404 for every release (a mirror or proxy that serves only the index, as on
machines without internet), and each is then "skipped"; or, with OSV, the service cannot
be reached at all and pip-audit stops with a traceback. This wrapper runs pip-audit with
JSON output and decides:

* a known vulnerability (not in the ignore list): it is listed, exit 1;
* the advisory source cannot be reached, or answered for none of the releases: the
  report says **NOT AUDITED** and why, and exits 0, so CI on a machine without internet
  does not fail for it; with ``--required`` (``AUDIT_REQUIRED=1`` in the Makefile) it
  exits 3 instead, for a CI that can reach the source and must audit;
* some releases audited and some not: those not audited are named; exit 0;
* otherwise: how many releases were audited, none with a known vulnerability.

Run as ``python -m claudecluster.dependency_audit [--required] -- PIP_AUDIT_ARGS``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["AuditReport", "main", "read_report", "unreachable_reason"]

#: Exit status when the audit was required but could not be done.
NOT_AUDITED_STATUS: Final = 3

#: What pip-audit (requests, urllib3) says when the advisory source cannot be reached.
_UNREACHABLE: Final = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|NameResolutionError|Failed to resolve|"
    r"Max retries exceeded|Could not connect|Temporary failure in name resolution|"
    r"Name or service not known|Connection refused|Network is unreachable"
)
_NOT_FOUND: Final = "not found on PyPI"


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What one pip-audit run found, read from its JSON output.

    Attributes:
        audited: releases the source answered for, as ``name==version``.
        not_found: releases the source had no record of (``name (version): reason``).
        skipped: releases pip-audit did not ask about (editable, ...), with why.
        vulnerable: ``(release, advisory id, fixed in)`` for each known vulnerability.
    """

    audited: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    vulnerable: tuple[tuple[str, str, str], ...] = field(default=())


def read_report(data: Any) -> AuditReport:
    """The report in pip-audit's ``-f json`` output (parsed).

    Raises:
        ValueError: the data is not pip-audit's JSON report.
    """
    if not isinstance(data, dict) or not isinstance(data.get("dependencies"), list):
        raise ValueError("pip-audit's output is not its JSON report")  # noqa: TRY004 - bad data, one error type
    audited: list[str] = []
    not_found: list[str] = []
    skipped: list[str] = []
    vulnerable: list[tuple[str, str, str]] = []
    for dependency in data["dependencies"]:
        name = str(dependency.get("name", "?"))
        reason = dependency.get("skip_reason")
        if reason:
            (not_found if _NOT_FOUND in str(reason) else skipped).append(f"{name}: {reason}")
            continue
        release = f"{name}=={dependency.get('version', '?')}"
        audited.append(release)
        for vuln in dependency.get("vulns") or ():
            fixed = ", ".join(str(v) for v in vuln.get("fix_versions") or ()) or "no fix yet"
            vulnerable.append((release, str(vuln.get("id", "?")), fixed))
    return AuditReport(
        audited=tuple(audited),
        not_found=tuple(not_found),
        skipped=tuple(skipped),
        vulnerable=tuple(vulnerable),
    )


def unreachable_reason(stderr: str) -> str | None:
    """Why pip-audit could not reach its advisory source, from its error output, or None."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if _UNREACHABLE.search(line):
            return line[-300:]
    return None


def _not_audited(why: str, required: bool) -> int:
    print(f"dependency audit: NOT AUDITED: {why}")
    if required:
        print("dependency audit: an audit is required here (AUDIT_REQUIRED=1): failing")
        return NOT_AUDITED_STATUS
    print(
        "dependency audit: passing without an audit (no advisory source here); "
        "set AUDIT_REQUIRED=1 where one can be reached"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run pip-audit with ``argv``'s arguments and say what it audited; the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    required = "--required" in args[:split]
    passed = args[split + 1 :]
    pip_audit = Path(sys.executable).with_name("pip-audit")
    command = [str(pip_audit), "--progress-spinner", "off", "-f", "json", *passed]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _not_audited(f"pip-audit did not run to its end ({exc})", required)
    try:
        report = read_report(json.loads(done.stdout))
    except ValueError:
        reason = unreachable_reason(done.stderr)
        if reason is not None:
            return _not_audited(f"the advisory source cannot be reached: {reason}", required)
        sys.stderr.write(done.stderr)
        print(f"dependency audit: pip-audit failed (exit {done.returncode}); see above")
        return done.returncode or 1
    if report.vulnerable:
        print(f"dependency audit: {len(report.vulnerable)} known vulnerabilities:")
        for release, advisory, fixed in report.vulnerable:
            print(f"  {release}: {advisory} (fixed in {fixed})")
        print("fix them, or add --ignore-vuln ID to AUDIT_IGNORE in the Makefile, saying why")
        return 1
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        print(f"dependency audit: pip-audit failed (exit {done.returncode}); see above")
        return done.returncode
    total = len(report.audited) + len(report.not_found)
    if total and not report.audited:
        return _not_audited(
            f"the advisory source answered for none of the {total} installed releases "
            f"(each: {_NOT_FOUND}); it is likely a mirror without advisory data",
            required,
        )
    for line in report.not_found:
        print(f"dependency audit: not audited: {line}")
    print(
        f"dependency audit: {len(report.audited)} of {total} releases audited, no known "
        f"vulnerability; {len(report.not_found)} not audited, {len(report.skipped)} skipped"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
