"""A bundle indexed while it arrives: its pack lands whole and verified, or not at all."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from claudecluster.errors import WorkspaceError
from claudecluster.workspace.bundle_stream import BundleSink, parse_bundle_header
from tests.support import commit_all, git_output, make_repo

_REF = "refs/claudecluster/cache/tip"


def _bundle(repo: Path, out: Path, *revs: str) -> bytes:
    git_output(repo, "update-ref", _REF, "HEAD")
    git_output(repo, "bundle", "create", "--quiet", str(out), _REF, *revs)
    return out.read_bytes()


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True)
    return path


def _feed(sink: BundleSink, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        sink.feed(data[start : start + chunk])


def _take(sink: BundleSink, data: bytes, chunk: int) -> tuple[tuple[str, str], ...] | None:
    """Feed ``data`` and finish, closing the sink on every path (as the cache does)."""
    try:
        _feed(sink, data, chunk)
        return sink.finish()
    finally:
        sink.close()


def _packs(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "objects" / "pack").iterdir())


def _leftovers(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.parent.iterdir() if p.name.startswith(f".{repo.name}"))


def test_a_bundle_without_prerequisites_is_indexed_as_it_arrives(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    (source / "big.bin").write_bytes(os.urandom(300_000))
    commit_all(source, "big")
    head = git_output(source, "rev-parse", "HEAD").strip()
    data = _bundle(source, tmp_path / "b.bundle")
    cache = _bare(tmp_path / "cache.git")
    sink = BundleSink(cache, tmp_path / "spill.bundle")
    try:
        _feed(sink, data, 1000)  # chunks that split the header too
        assert sink.indexing
        refs = sink.finish()
    finally:
        sink.close()
    assert refs == ((head, _REF),)
    assert not (tmp_path / "spill.bundle").exists()
    assert [name.rsplit(".", 1)[1] for name in _packs(cache)] == ["idx", "pack"]
    assert git_output(cache, "cat-file", "-t", head).strip() == "commit"
    assert git_output(cache, "fsck", "--connectivity-only", head) == ""
    assert _leftovers(cache) == []


def test_a_bundle_with_prerequisites_is_spilled_for_git_fetch(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    first = git_output(source, "rev-parse", "HEAD").strip()
    (source / "b.txt").write_text("b\n")
    commit_all(source, "second")
    data = _bundle(source, tmp_path / "b.bundle", f"^{first}")
    assert parse_bundle_header(data[: data.index(b"\n\n") + 1]).prerequisites == (first,)
    cache = _bare(tmp_path / "cache.git")
    sink = BundleSink(cache, tmp_path / "spill.bundle")
    try:
        _feed(sink, data, 7)
        assert not sink.indexing
        assert sink.finish() is None
    finally:
        sink.close()
    assert (tmp_path / "spill.bundle").read_bytes() == data  # the whole bundle, header too
    assert _packs(cache) == []


def test_a_corrupt_pack_is_refused_and_nothing_of_it_is_kept(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    (source / "big.bin").write_bytes(os.urandom(200_000))
    commit_all(source, "big")
    data = bytearray(_bundle(source, tmp_path / "b.bundle"))
    middle = len(data) // 2
    data[middle : middle + 64] = b"\0" * 64
    cache = _bare(tmp_path / "cache.git")
    sink = BundleSink(cache, tmp_path / "spill.bundle")
    with pytest.raises(WorkspaceError, match="index-pack"):
        _take(sink, bytes(data), 4096)
    assert _packs(cache) == []
    assert _leftovers(cache) == []


def test_what_is_not_a_bundle_is_named_so(tmp_path: Path) -> None:
    cache = _bare(tmp_path / "cache.git")
    with pytest.raises(WorkspaceError, match="not a git bundle"):
        _take(BundleSink(cache, tmp_path / "spill"), b"<html>an error page</html>\n\n", 5)
    with pytest.raises(WorkspaceError, match="ended before its bundle header"):
        _take(BundleSink(cache, tmp_path / "spill"), b"# v2 git bundle\n", 5)
