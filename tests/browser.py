"""Headless Chromium for the tests that must see a page as a browser renders it.

The browser is Debian's ``chromium`` package, which ``make test`` installs where it can
(Debian, as root). Without it the tests that need it are skipped with the reason, except
under CI, where a missing browser is a failure: CI must not pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from claudecluster.reporting import OUTCOME_COLOURS

__all__ = ["SUCCEEDED_GREEN", "HeadlessChromium", "headless_chromium"]

_NAMES: Final = ("chromium", "chromium-browser", "google-chrome")
# Root needs --no-sandbox; the rest keep Chromium off this machine's closed network, where
# its background connections are refused and slow every start.
_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_TIMEOUT_S: Final = 90.0


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


SUCCEEDED_GREEN: Final = _rgb(OUTCOME_COLOURS["succeeded"])


@dataclass(frozen=True)
class HeadlessChromium:
    """One Chromium executable; every call starts a fresh browser with its own profile."""

    executable: str

    def _run(self, page: Path, scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
        profile = scratch / f"chromium-profile-{len(list(scratch.glob('chromium-profile-*')))}"
        result = subprocess.run(
            [self.executable, *_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"chromium failed:\n{result.stderr}"
        return result

    def dump_dom(self, page: Path, scratch: Path) -> str:
        """The document after Chromium parsed it, serialised back as HTML."""
        return self._run(page, scratch, "--dump-dom").stdout

    def screenshot(self, page: Path, out: Path, *, width: int, height: int) -> Path:
        """A PNG of the page's first ``width`` x ``height`` pixels, written to ``out``."""
        self._run(page, out.parent, f"--screenshot={out}", f"--window-size={width},{height}")
        assert out.is_file(), f"chromium wrote no screenshot to {out}"
        return out


def headless_chromium() -> HeadlessChromium:
    """The installed Chromium; skips the test without one, or fails it under CI."""
    chosen = os.environ.get("CLAUDECLUSTER_CHROMIUM")
    executable = chosen or next((p for p in map(shutil.which, _NAMES) if p), None)
    if executable is None:
        why = "no headless Chromium: `make test` installs Debian's chromium package as root"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return HeadlessChromium(executable)
