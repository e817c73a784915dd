"""Keep secrets out of everything we write: events, logs, reports.

Two complementary guards:

* by value: every configured secret (API keys, tokens) is replaced wherever it appears,
  because an agent may echo an environment variable into its output, which then becomes a
  ``TaskProgress`` event;
* by key: a log field whose name says it holds a secret is masked whatever its value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "SECRET_KEY_PATTERN", "Redactor", "redact_url"]

REDACTED: Final = "[REDACTED]"

#: Shorter secrets are replaced only where they stand as a whole word (not inside other
#: words): replacing every "a" would destroy the text, yet a short secret must not leak
#: either. Our own secrets have minimum lengths (see settings); this covers the others.
MIN_SECRET_LENGTH: Final = 8
_WORD: Final = r"A-Za-z0-9_\-"

SECRET_KEY_PATTERN: Final = re.compile(
    r"(api[_-]?key|token|secret|password|passwd|authorization|credential|private[_-]?key)",
    re.IGNORECASE,
)


class Redactor:
    """Replaces known secret values in text and bytes, and masks secret-named fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        given = {s for s in secrets if s}
        # Longest first, so a secret that contains another is replaced whole.
        unique = {s for s in given if len(s) >= MIN_SECRET_LENGTH}
        self._secrets: tuple[str, ...] = tuple(sorted(unique, key=len, reverse=True))
        short = sorted(given - unique, key=len, reverse=True)
        words = "|".join(re.escape(s) for s in short)
        self._short: re.Pattern[str] | None = (
            re.compile(f"(?<![{_WORD}])(?:{words})(?![{_WORD}])") if short else None
        )
        # In encoded JSON, not where the secret is a whole string: a key or an enum value
        # ("id", "read") would no longer decode, and the event would be lost.
        esc = "|".join(re.escape(msgspec.json.encode(s)[1:-1].decode()) for s in short)
        either = f'(?<![{_WORD}"])(?:{esc})(?![{_WORD}])|(?<![{_WORD}])(?:{esc})(?![{_WORD}"])'
        self._short_bytes: re.Pattern[bytes] | None = re.compile(either.encode()) if short else None
        # In encoded JSON a secret holding quotes, backslashes or control characters appears
        # escaped, so both its raw and its JSON-escaped form are searched for.
        forms = {s.encode() for s in self._secrets} | {
            msgspec.json.encode(s)[1:-1] for s in self._secrets
        }
        self._secret_bytes: tuple[bytes, ...] = tuple(sorted(forms, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets) or self._short is not None

    def text(self, value: str) -> str:
        """``value`` with every known secret replaced."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if self._short is not None:
            value = self._short.sub(REDACTED, value)
        return value

    def data(self, value: bytes) -> bytes:
        """``value`` (for instance an encoded event) with every known secret replaced.

        The replacement text needs no escaping, so replacing a secret inside encoded JSON,
        in its raw or its escaped form, keeps the JSON valid.
        """
        for secret in self._secret_bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
        if self._short_bytes is not None:
            value = self._short_bytes.sub(REDACTED.encode(), value)
        return value

    def mapping(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a log record with secret-named fields masked and secret values replaced."""
        return {key: self._field(key, value) for key, value in fields.items()}

    def _field(self, key: str, value: Any) -> Any:
        if SECRET_KEY_PATTERN.search(key) and value not in (None, "", False):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return self.mapping(value)
        if isinstance(value, list | tuple):
            return [self._field("", item) for item in value]
        return value


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of URLs) with credentials replaced.

    A password is replaced and the user kept; a user part alone (``nats://TOKEN@host``)
    is a token in NATS, so it is replaced itself.
    """
    parts = []
    for part in url.split(","):
        piece = part.strip()
        split = urlsplit(piece)
        if "@" in split.netloc:
            host = split.netloc.rsplit("@", 1)[1]
            user = f"{split.username}:{REDACTED}" if split.password else REDACTED
            piece = urlunsplit(split._replace(netloc=f"{user}@{host}"))
        parts.append(piece)
    return ",".join(parts)
