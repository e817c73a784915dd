"""``make audit`` is honest: it fails on a known vulnerability, says NOT AUDITED when the
advisory source cannot be reached or knows nothing, and never passes silently as audited.

The real pip-audit runs over a tiny installation of one release, asking an OSV service
on loopback that the test serves (or a loopback port nothing listens on).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from claudecluster.dependency_audit import (
    NOT_AUDITED_STATUS,
    read_report,
    unreachable_reason,
)

ADVISORY = "GHSA-test-0000-0000"
VULNERABLE = {
    "vulns": [
        {
            "id": ADVISORY,
            "summary": "tinypkg runs what it is given",
            "affected": [
                {
                    "package": {"name": "tinypkg", "ecosystem": "PyPI"},
                    "ranges": [
                        {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.1"}]}
                    ],
                }
            ],
        }
    ]
}


def _site(root: Path) -> Path:
    """An installation path holding one release, tinypkg 1.0."""
    dist = root / "site" / "tinypkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
    (dist / "RECORD").write_text("")
    return root / "site"


@contextmanager
def _osv(answer: dict[str, Any]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OSV query service on loopback answering every query with ``answer``."""
    queries: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            queries.append(json.loads(self.rfile.read(length)))
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            del args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/query", queries
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _audit(tmp_path: Path, url: str, *ours: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    command = [
        sys.executable, "-m", "claudecluster.dependency_audit", *ours, "--",
        "--path", str(_site(tmp_path)), "-s", "osv", "--osv-url", url,
        "--cache-dir", str(tmp_path / "cache"), "--timeout", "30", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout + done.stderr


def test_a_known_vulnerability_fails_the_audit_naming_it(tmp_path: Path) -> None:
    with _osv(VULNERABLE) as (url, queries):
        status, output = _audit(tmp_path, url)
    assert status == 1, output
    assert f"tinypkg==1.0: {ADVISORY} (fixed in 1.1)" in output
    assert queries == [{"package": {"name": "tinypkg", "ecosystem": "PyPI"}, "version": "1.0"}]


def test_an_ignored_advisory_passes_and_a_clean_release_is_counted_as_audited(
    tmp_path: Path,
) -> None:
    with _osv(VULNERABLE) as (url, _):
        status, output = _audit(tmp_path, url, extra=("--ignore-vuln", ADVISORY))
    assert status == 0, output
    assert "1 of 1 releases audited, no known vulnerability" in output
    with _osv({}) as (url, _):
        status, output = _audit(tmp_path / "clean", url)
    assert status == 0, output
    assert "1 of 1 releases audited, no known vulnerability" in output


def test_an_unreachable_advisory_source_says_not_audited_and_passes_unless_required(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/query"
    status, output = _audit(tmp_path / "a", url)
    assert status == 0, output
    assert "NOT AUDITED: the advisory source cannot be reached" in output
    assert "audited, no known vulnerability" not in output
    status, output = _audit(tmp_path / "b", url, "--required")
    assert status == NOT_AUDITED_STATUS, output
    assert "NOT AUDITED" in output


def test_a_source_that_knows_none_of_the_releases_is_not_an_audit() -> None:
    """PyPI's JSON API behind a mirror answers 404 for every release: pip-audit skips each
    and says "No known vulnerabilities found"; that is reported as no audit at all."""
    report = read_report(
        {
            "dependencies": [
                {"name": "anyio", "skip_reason": "Dependency not found on PyPI and could "
                 "not be audited: anyio (4.16.0)"},
                {"name": "claudecluster", "skip_reason": "distribution marked as editable"},
            ],
            "fixes": [],
        }
    )  # fmt: skip
    assert report.audited == ()
    assert len(report.not_found) == 1
    assert report.skipped == ("claudecluster: distribution marked as editable",)


def test_connection_errors_are_told_apart_from_other_failures() -> None:
    assert unreachable_reason(
        "Traceback ...\nrequests.exceptions.ConnectionError: HTTPSConnectionPool("
        "host='api.osv.dev', port=443): Max retries exceeded (NameResolutionError)\n"
    ) == (
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.osv.dev', "
        "port=443): Max retries exceeded (NameResolutionError)"
    )
    assert unreachable_reason("ValueError: bad requirement\n") is None
    with pytest.raises(ValueError, match="not its JSON report"):
        read_report({"unexpected": True})
