"""Conflict markers are recognised only as complete blocks."""

from __future__ import annotations

from claudecluster.workspace.markers import conflict_blocks, has_conflict_markers

_BLOCK = "<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> task\n"


def test_a_block_git_writes_is_found_with_or_without_its_ancestor_section() -> None:
    assert conflict_blocks(_BLOCK) == 1
    diff3 = "<<<<<<< HEAD\nours\n||||||| base\nold\n=======\ntheirs\n>>>>>>> task\n"
    assert conflict_blocks(diff3) == 1
    assert conflict_blocks("a\n" + _BLOCK + "b\n" + _BLOCK) == 2
    assert conflict_blocks(_BLOCK.replace("\n", "\r\n")) == 1


def test_markdown_underlines_quotes_and_partial_markers_are_not_conflicts() -> None:
    assert not has_conflict_markers("Title\n=======\n\ntext\n")
    assert not has_conflict_markers("> quoted\n>>>>>>> deep quote\n")
    assert not has_conflict_markers("<<<<<<< HEAD\nonly an opening\n")
    assert not has_conflict_markers("<<<<<<<< eight\nx\n=======\ny\n>>>>>>> z\n")
    assert not has_conflict_markers("<<<<<<< a\nx\n======= not bare\ny\n>>>>>>> z\n")
    # A divider before any opening does not count either.
    assert not has_conflict_markers("=======\n>>>>>>> x\n")
