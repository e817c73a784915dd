"""Every decode path turns whatever a byte string makes it raise into EventDecodeError.

A reader catches that one error, quarantines the message and goes on; anything else
escaping a decoder would stop the reader at that message on every start, for good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from claudecluster.errors import EventDecodeError
from claudecluster.events.codec import decode_command, decode_event, decode_stored_event
from claudecluster.events.work import decode_work_item

_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "event": decode_event,
    "command": decode_command,
    "stored event": decode_stored_event,
    "work item": decode_work_item,
}

_HOSTILE: dict[str, bytes] = {
    "nested arrays": b"[" * 5_000,
    "nested objects": b'{"a":' * 5_000,
    "nested payload": b'{"schema_version":1,"payload":' * 3_000,
    "nested under a valid head": b'{"seq":1,"subject":"s","envelope":' + b"[" * 5_000,
    "not UTF-8": b'{"id":"\xff\xfe"}',
    "a lone surrogate": b'{"id":"\\ud800"}',
    "empty": b"",
    "a huge number": b'{"schema_version":' + b"9" * 5_000 + b"}",
}


@pytest.mark.parametrize("decoder", sorted(_DECODERS))
@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_hostile_bytes_raise_only_the_decode_error_naming_the_problem(
    decoder: str, case: str
) -> None:
    with pytest.raises(EventDecodeError) as caught:
        _DECODERS[decoder](_HOSTILE[case])
    assert caught.value.problem


@pytest.mark.parametrize("decoder", sorted(_DECODERS))
def test_deep_nesting_is_named_as_such(decoder: str) -> None:
    with pytest.raises(EventDecodeError, match="nested too deeply"):
        _DECODERS[decoder](b'{"a":' * 5_000)
