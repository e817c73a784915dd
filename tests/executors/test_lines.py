"""Splitting agent output into lines: linear work, bounded memory, every line intact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from claudecluster.executors.lines import LineSplitter

MiB = 2**20


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_a_long_line_read_in_small_chunks_costs_work_linear_in_its_size() -> None:
    # One 4 MiB JSON line in 64-byte chunks, as a pipe delivers a big tool result. Splitting
    # the whole buffer again on each chunk handled about 65,536 x 2 MiB characters here.
    line = '{"type": "user", "content": "' + "x" * (4 * MiB) + '"}'
    splitter = LineSplitter()
    lines: list[str] = []
    for chunk in chunks(line + "\n", 64):
        lines += splitter.feed(chunk)
    assert lines == [line]
    total = len(line) + 1
    assert splitter.chars_handled <= 2 * total  # scanned once, joined once


def test_many_lines_in_tiny_chunks_cost_work_linear_in_their_size() -> None:
    # Two rounds of every line length from 0 to 499 characters (about 270 kB): a splitter
    # that rescans what it holds on each chunk handles a line's length squared, so one-
    # character chunks break the bound from lines of a few characters on; more rounds of
    # the same lengths only repeat the check (20,000 lines cost 16 s of CPU under coverage).
    text = "".join(f'{{"n": {n}, "text": "{"y" * (n % 500)}"}}\n' for n in range(1_000))
    for size in (1, 7, 4096):
        splitter = LineSplitter()
        lines = [line for chunk in chunks(text, size) for line in splitter.feed(chunk)]
        assert lines == text.splitlines()
        assert splitter.chars_handled <= 2 * len(text)


def test_a_line_longer_than_the_bound_is_dropped_and_counted_never_held() -> None:
    splitter = LineSplitter(max_line_chars=1000)
    got: list[str] = []
    most_held = 0
    stream = "before\n" + "z" * 50_000 + "\nafter\n" + "q" * 5000
    for chunk in chunks(stream, 300):
        got += splitter.feed(chunk)
        most_held = max(most_held, splitter.held_chars)
    assert splitter.end() is None  # the unfinished tail was over the bound too
    assert got == ["before", "after"]
    assert splitter.overlong_lines == 2
    assert most_held <= 1000


@given(st.text(alphabet="ab\n", max_size=300), st.integers(min_value=1, max_value=40))
def test_any_chunking_gives_the_lines_split_would(text: str, size: int) -> None:
    splitter = LineSplitter()
    lines = [line for chunk in chunks(text, size) for line in splitter.feed(chunk)]
    last = splitter.end()
    expected = text.split("\n")
    tail = expected.pop()
    assert lines == expected
    assert last == (tail or None)
