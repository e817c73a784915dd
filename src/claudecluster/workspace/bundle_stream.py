"""Indexing a bundle while it downloads: a cache's first segment, without a bundle file.

A bundle is a short text header (its refs and prerequisites) followed by a pack. ``git
fetch`` from a bundle needs the whole file first, then indexes its pack (``git
index-pack``) and walks the new objects again for connectivity. For a bundle without
prerequisites (a chain's first segment: the whole history of the first base, most of
what a fresh host receives) :class:`BundleSink` instead starts ``git index-pack`` as soon
as the header has arrived and pipes the pack to it chunk by chunk, so the download and
the indexing overlap and no copy of the bundle is written. ``index-pack
--check-self-contained-and-connected`` dies on a pack with a broken link, the check the
fetch's walk made. The pack is indexed into a directory of its own beside the cache and
moved into ``objects/pack`` only once the caller has verified the bundle's checksum, so
no reader of the cache (workspaces borrow its objects) ever sees an unverified pack.

A bundle with prerequisites (a later, incremental segment: small) is written to a file
for ``git fetch`` as before, since its pack is thin and its connectivity needs the cache.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from claudecluster.errors import WorkspaceError

__all__ = ["BundleHeader", "BundleSink", "parse_bundle_header"]

#: A header longer than this is not a bundle's (a few refs and prerequisites).
_MAX_HEADER: Final = 1 << 20
_SIGNATURES: Final = (b"# v2 git bundle\n", b"# v3 git bundle\n")
_OID: Final = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_WAIT_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """What a bundle's header says.

    Attributes:
        refs: ``(object id, ref name)`` of each ref it carries.
        prerequisites: object ids the receiver must have already.
        capabilities: a v3 bundle's ``@`` lines (``object-format=sha1``, ``filter=...``).
    """

    refs: tuple[tuple[str, str], ...]
    prerequisites: tuple[str, ...]
    capabilities: tuple[str, ...]


def parse_bundle_header(header: bytes) -> BundleHeader:
    """Parse a bundle header (its bytes up to, not including, the blank line).

    Raises:
        WorkspaceError: it is not a v2 or v3 git bundle header.
    """
    if not any(header.startswith(signature) for signature in _SIGNATURES):
        raise WorkspaceError("the segment is not a git bundle (no v2 or v3 signature)")
    refs: list[tuple[str, str]] = []
    prerequisites: list[str] = []
    capabilities: list[str] = []
    for line in header.decode("utf-8", errors="replace").splitlines()[1:]:
        if line.startswith("@"):
            capabilities.append(line[1:])
            continue
        if line.startswith("-"):
            oid = line[1:].split(" ", 1)[0]
            if not _OID.match(oid):
                raise WorkspaceError(f"the segment's bundle header names a bad object {oid!r}")
            prerequisites.append(oid)
            continue
        oid, _, name = line.partition(" ")
        if not _OID.match(oid) or not name:
            raise WorkspaceError(f"the segment's bundle header has a bad line {line[:100]!r}")
        refs.append((oid, name))
    return BundleHeader(tuple(refs), tuple(prerequisites), tuple(capabilities))


class BundleSink:
    """Takes a bundle's bytes in order (from a worker thread) and indexes or spills them.

    Args:
        repo: the bare repository (the cache) the pack is for.
        spill: where a bundle that cannot be indexed on the fly is written, for ``git
            fetch``.

    Call :meth:`feed` with each chunk, then :meth:`finish` (once every byte was fed and
    verified), and :meth:`close` on every path (it ends the index-pack process and removes
    what was not moved into place).
    """

    def __init__(self, repo: Path, spill: Path) -> None:
        self._repo = repo
        self.spill = spill
        self._head = bytearray()
        self.header: BundleHeader | None = None
        self._draft = repo.parent / f".{repo.name}.{uuid.uuid4().hex[:8]}.incoming"
        self._process: subprocess.Popen[bytes] | None = None
        self._file: IO[bytes] | None = None

    @property
    def indexing(self) -> bool:
        """Whether the pack goes straight to ``git index-pack`` (not to the spill file)."""
        return self._process is not None

    def feed(self, data: bytes) -> None:
        """Take the next chunk (blocks while index-pack is slower than the download).

        Raises:
            WorkspaceError: not a bundle, or index-pack stopped reading (a corrupt pack).
        """
        if self._process is not None:
            self._to_index_pack(data)
        elif self._file is not None:
            self._file.write(data)
        else:
            self._head += data
            end = self._head.find(b"\n\n")
            if end < 0:
                if len(self._head) > _MAX_HEADER:
                    raise WorkspaceError("the segment is not a git bundle (no header end)")
                return
            self.header = parse_bundle_header(bytes(self._head[: end + 1]))
            if self.header.prerequisites or self.header.capabilities != _plain(self.header):
                self._file = self.spill.open("wb")
                self._file.write(self._head)
            else:
                self._start_index_pack()
                self._to_index_pack(bytes(self._head[end + 2 :]))
            self._head = bytearray()

    def finish(self) -> tuple[tuple[str, str], ...] | None:
        """End the input. Returns the refs to set when the pack was indexed (and is now in
        the cache's ``objects/pack``), or None when the bundle is in the spill file.

        Raises:
            WorkspaceError: the input was not a whole bundle, or index-pack failed.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
            return None
        process = self._process
        if process is None or self.header is None:
            raise WorkspaceError("the segment ended before its bundle header did")
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        code = process.wait(timeout=_WAIT_S)
        if code != 0:
            raise WorkspaceError(f"git index-pack failed on the segment: {self._said()}")
        name = (self._draft / "out").read_text(encoding="utf-8").split()
        if not name or not _OID.match(name[-1]):
            raise WorkspaceError(f"git index-pack named no pack: {self._said()}")
        packs = self._repo / "objects" / "pack"
        for suffix in (".pack", ".rev", ".idx"):  # the .idx last: it is what git looks for
            drafted = self._draft / f"incoming{suffix}"
            if drafted.exists():
                drafted.replace(packs / f"pack-{name[-1]}{suffix}")
        return self.header.refs

    def close(self) -> None:
        """End index-pack if it still runs, and remove what was not moved into place."""
        if self._file is not None:
            self._file.close()
            self._file = None
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            self._process = None
        shutil.rmtree(self._draft, ignore_errors=True)

    def _start_index_pack(self) -> None:
        self._draft.mkdir(parents=True)
        with (
            (self._draft / "out").open("wb") as out,
            (self._draft / "err").open("wb") as err,
        ):
            self._process = subprocess.Popen(
                ["git", "-C", str(self._repo), "index-pack", "--stdin", "--fix-thin",
                 "--check-self-contained-and-connected", str(self._draft / "incoming.pack")],
                stdin=subprocess.PIPE, stdout=out, stderr=err,
            )  # fmt: skip

    def _to_index_pack(self, data: bytes) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(data)
        except BrokenPipeError:
            self._process.wait(timeout=_WAIT_S)
            raise WorkspaceError(
                f"git index-pack stopped reading the segment: {self._said()}"
            ) from None

    def _said(self) -> str:
        try:
            lines = (self._draft / "err").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return " | ".join(lines[-3:]) or "no message"


def _plain(header: BundleHeader) -> tuple[str, ...]:
    """The capabilities index-pack handles alone: none, or the default object format."""
    return tuple(c for c in header.capabilities if c == "object-format=sha1")
