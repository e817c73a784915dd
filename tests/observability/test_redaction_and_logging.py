"""Secrets are replaced by value and masked by key, in text, bytes, log records and events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO

import pytest
import structlog

from claudecluster.events.codec import decode_event, encode
from claudecluster.events.model import TaskProgress
from claudecluster.observability.logging import configure_logging, get_logger
from claudecluster.observability.redaction import (
    MIN_SECRET_LENGTH,
    REDACTED,
    Redactor,
    redact_url,
)
from claudecluster.transport.base import read_all
from claudecluster.transport.memory import MemoryEventLog
from tests.support import EnvelopeFactory

SECRET = "sk-ant-api03-abcdefghijklmnop"


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """structlog's configuration is process-global: put the defaults back after the test."""
    yield
    structlog.reset_defaults()


def json_records(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def reject(key: str) -> None:
    raise ValueError(f"rejected {key}")


# -- Redactor -------------------------------------------------------------------------------


def test_every_known_secret_in_text_is_replaced() -> None:
    redactor = Redactor([SECRET, "another-secret-value"])

    text = redactor.text(f"key={SECRET} and again {SECRET}; also another-secret-value.")

    assert text == f"key={REDACTED} and again {REDACTED}; also {REDACTED}."


def test_every_known_secret_in_bytes_is_replaced() -> None:
    redactor = Redactor([SECRET])

    data = redactor.data(b'{"text":"echo ' + SECRET.encode() + b'"}')

    assert data == b'{"text":"echo ' + REDACTED.encode() + b'"}'
    assert json.loads(data) == {"text": f"echo {REDACTED}"}


def test_a_secret_containing_another_is_replaced_whole() -> None:
    short = "password1234"
    long = short + "-with-suffix"
    # Given short first, a naive redactor would leave "-with-suffix" behind.
    redactor = Redactor([short, long])

    assert redactor.text(f"a {long} b {short} c") == f"a {REDACTED} b {REDACTED} c"
    assert redactor.data(f"[{long}]".encode()) == f"[{REDACTED}]".encode()


def test_values_shorter_than_the_minimum_length_are_redacted_as_whole_words_only() -> None:
    too_short = "x" * (MIN_SECRET_LENGTH - 1)
    just_long_enough = "y" * MIN_SECRET_LENGTH
    redactor = Redactor([too_short, just_long_enough, ""])

    assert redactor.text(f"{too_short} {just_long_enough} {too_short}z") == (
        f"{REDACTED} {REDACTED} {too_short}z"
    )


def test_a_redactor_without_secrets_is_falsy_and_changes_nothing() -> None:
    redactor = Redactor([""])

    assert not redactor
    assert bool(Redactor([SECRET]))
    assert bool(Redactor(["short"]))
    assert redactor.text("short and sweet") == "short and sweet"
    assert redactor.data(b"short") == b"short"
    assert Redactor(["short"]).text("short and shortly") == f"{REDACTED} and shortly"


def test_secret_named_fields_are_masked_recursively_whatever_their_value() -> None:
    redactor = Redactor([SECRET])
    record = {
        "event": f"calling with {SECRET}",
        "api_key": "not-a-known-secret",
        "Authorization": "Bearer xyz",
        "count": 3,
        "empty_token": "",
        "nested": {
            "password": "pw",
            "private-key": "-----BEGIN-----",
            "note": f"the key is {SECRET}",
            "deeper": {"client_secret": "s"},
        },
        "items": [f"{SECRET}!", {"token": "t"}, 7],
        "pair": ("plain", SECRET),
    }

    masked = redactor.mapping(record)

    assert masked == {
        "event": f"calling with {REDACTED}",
        "api_key": REDACTED,
        "Authorization": REDACTED,
        "count": 3,
        "empty_token": "",
        "nested": {
            "password": REDACTED,
            "private-key": REDACTED,
            "note": f"the key is {REDACTED}",
            "deeper": {"client_secret": REDACTED},
        },
        "items": [f"{REDACTED}!", {"token": REDACTED}, 7],
        "pair": ["plain", REDACTED],
    }
    # The record itself is left as it was: the redactor works on a copy.
    assert record["api_key"] == "not-a-known-secret"


# -- logging --------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_structlog")
def test_json_log_lines_never_contain_a_secret() -> None:
    stream = StringIO()
    configure_logging(json=True, stream=stream, redactor=Redactor([SECRET]))

    get_logger("x").info("msg", api_key=SECRET, note=f"value {SECRET}")

    output = stream.getvalue()
    assert SECRET not in output
    [record] = json_records(output)
    assert record["event"] == "msg"
    assert record["component"] == "x"
    assert record["level"] == "info"
    assert record["api_key"] == REDACTED
    assert record["note"] == f"value {REDACTED}"


@pytest.mark.usefixtures("restore_structlog")
def test_a_secret_in_the_message_or_a_traceback_is_redacted_too() -> None:
    stream = StringIO()
    configure_logging(json=True, stream=stream, redactor=Redactor([SECRET]))
    log = get_logger("x")

    log.warning(f"connecting with {SECRET}")
    try:
        reject(SECRET)
    except ValueError:
        log.exception("failed")

    output = stream.getvalue()
    assert SECRET not in output
    first, second = json_records(output)
    assert first["event"] == f"connecting with {REDACTED}"
    assert f"ValueError: rejected {REDACTED}" in str(second["exception"])


@pytest.mark.usefixtures("restore_structlog")
def test_console_log_lines_never_contain_a_secret() -> None:
    stream = StringIO()
    configure_logging(json=False, stream=stream, redactor=Redactor([SECRET]))

    get_logger("x").info("msg", api_key=SECRET, note=f"value {SECRET}")

    output = stream.getvalue()
    assert SECRET not in output
    assert "msg" in output
    assert f"api_key={REDACTED}" in output
    assert f"value {REDACTED}" in output
    # Console mode is for people: not JSON.
    with pytest.raises(json.JSONDecodeError):
        json.loads(output)


@pytest.mark.usefixtures("restore_structlog")
def test_records_below_the_configured_level_are_dropped() -> None:
    stream = StringIO()
    configure_logging(level="warning", json=True, stream=stream)
    log = get_logger("x")

    log.info("quiet")
    log.warning("loud")

    assert [record["event"] for record in json_records(stream.getvalue())] == ["loud"]


@pytest.mark.usefixtures("restore_structlog")
def test_without_a_json_choice_the_format_follows_whether_the_stream_is_a_terminal() -> None:
    stream = StringIO()  # not a terminal
    configure_logging(stream=stream)

    get_logger("x").info("auto")

    [record] = json_records(stream.getvalue())
    assert record["event"] == "auto"


@pytest.mark.usefixtures("restore_structlog")
def test_secret_named_fields_are_masked_even_without_known_secrets() -> None:
    stream = StringIO()
    configure_logging(json=True, stream=stream)

    get_logger("x").info("login", password="pw-not-configured-anywhere")

    [record] = json_records(stream.getvalue())
    assert record["password"] == REDACTED


# -- events ---------------------------------------------------------------------------------


async def test_a_secret_in_task_progress_never_reaches_the_memory_log() -> None:
    log = MemoryEventLog(redactor=Redactor([SECRET]))
    envelope = EnvelopeFactory()(
        TaskProgress(
            run_id="r1",
            task_id="t1",
            attempt=1,
            kind="text",
            text=f"$ echo $ANTHROPIC_API_KEY\n{SECRET}\n",
        )
    )
    assert SECRET.encode() in encode(envelope)  # the event as produced does hold it

    result = await log.append(envelope)

    [stored] = await read_all(log)
    assert stored.seq == result.seq
    assert isinstance(stored.envelope.payload, TaskProgress)
    assert stored.envelope.payload.text == f"$ echo $ANTHROPIC_API_KEY\n{REDACTED}\n"
    assert SECRET.encode() not in encode(stored.envelope)
    [(_subject, raw)] = log._messages
    assert SECRET.encode() not in raw
    assert REDACTED.encode() in raw


def test_a_secret_with_characters_json_escapes_is_redacted_inside_encoded_events() -> None:
    secret = 'pa"ss\\word\t99'
    envelope = EnvelopeFactory()(
        TaskProgress(run_id="r1", task_id="t1", attempt=1, kind="text", text=f"key={secret}!")
    )
    data = Redactor([secret]).data(encode(envelope))
    decoded = decode_event(data)
    assert isinstance(decoded.payload, TaskProgress)
    assert decoded.payload.text == f"key={REDACTED}!"


def test_a_password_in_a_url_is_redacted_and_the_rest_kept() -> None:
    assert redact_url("nats://user:pw-secret@host:4222,nats://other:4223") == (
        f"nats://user:{REDACTED}@host:4222,nats://other:4223"
    )
    assert redact_url("nats://host:4222") == "nats://host:4222"


def test_a_token_in_the_user_part_of_a_url_is_redacted() -> None:
    assert redact_url("nats://tok-123456789@host:4222") == f"nats://{REDACTED}@host:4222"


def test_logging_follows_stderr_when_it_is_replaced_and_the_old_one_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = StringIO(), StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging(level="INFO", json=True)
    get_logger("t").info("before")
    monkeypatch.setattr("sys.stderr", second)
    first.close()  # as pytest's capture closes the stream it swapped in
    try:
        get_logger("t").info("after")
    finally:
        structlog.reset_defaults()
    assert json.loads(second.getvalue())["event"] == "after"
