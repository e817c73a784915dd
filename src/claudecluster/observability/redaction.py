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

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "SECRET_KEY_PATTERN", "Redactor"]

REDACTED: Final = "[REDACTED]"

#: Shorter values are not treated as secrets: redacting "a" everywhere would destroy logs,
#: and no real key or token is that short.
MIN_SECRET_LENGTH: Final = 8

SECRET_KEY_PATTERN: Final = re.compile(
    r"(api[_-]?key|token|secret|password|passwd|authorization|credential|private[_-]?key)",
    re.IGNORECASE,
)


class Redactor:
    """Replaces known secret values in text and bytes, and masks secret-named fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        unique = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self._secrets: tuple[str, ...] = tuple(sorted(unique, key=len, reverse=True))
        self._secret_bytes: tuple[bytes, ...] = tuple(s.encode() for s in self._secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, value: str) -> str:
        """``value`` with every known secret replaced."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def data(self, value: bytes) -> bytes:
        """``value`` (for instance an encoded event) with every known secret replaced.

        Secrets are printable tokens that JSON does not escape, so replacing them inside
        encoded JSON keeps it valid.
        """
        for secret in self._secret_bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
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
