"""Secrets: HS256 keys long enough, every configured secret redacted whatever its length,
and scopes that nest for tokens from any issuer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import msgspec
import pytest

from claudecluster.auth import TokenVerifier, authenticate, holds_scope
from claudecluster.errors import AuthenticationError, ConfigError, PermissionDeniedError
from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import wrap_event
from claudecluster.events.model import TaskProgress
from claudecluster.observability.redaction import REDACTED, Redactor
from claudecluster.settings import load_settings

LONG = "a-long-enough-hs256-secret-0123456789abcdef"


@pytest.mark.parametrize("secret", ["x", "short", "a" * 31])
def test_an_hs256_secret_under_32_bytes_is_a_config_error_naming_it(
    tmp_path: Path, secret: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path,
                      environ={"CLAUDECLUSTER_GATEWAY__JWT_SECRET": secret})  # fmt: skip
    assert caught.value.key == "gateway.jwt_secret"
    assert "at least 32 bytes" in caught.value.problem
    assert secret not in str(caught.value)


def test_a_32_byte_secret_is_accepted(tmp_path: Path) -> None:
    loaded = load_settings(project_dir=tmp_path,
                           environ={"CLAUDECLUSTER_GATEWAY__JWT_SECRET": "b" * 32})  # fmt: skip
    assert loaded.settings.gateway.jwt_secret is not None


def test_a_short_secret_is_redacted_where_it_stands_alone_not_inside_words() -> None:
    redactor = Redactor(["pw", "a"])
    assert redactor.text("nats://u:pw@host a password apple") == (
        f"nats://u:{REDACTED}@host {REDACTED} password apple"
    )


def test_a_short_secret_in_an_event_is_redacted_and_the_event_still_decodes() -> None:
    # "read" and "id" are also JSON keys and enum values of events: those stay intact.
    redactor = Redactor(["id", "pw"])
    event = TaskProgress(run_id="r1", task_id="t1", attempt=1,
                         kind="text", text="my id is pw, see nats://u:pw@h")  # fmt: skip
    data = redactor.data(encode(wrap_event(event, event_id="e1", now=datetime.now(UTC))))
    decoded = decode_event(data).payload
    assert isinstance(decoded, TaskProgress)
    assert decoded.text == f"my {REDACTED} is {REDACTED}, see nats://u:{REDACTED}@h"
    assert msgspec.json.decode(data)["payload"]["task_id"] == "t1"


def test_a_foreign_token_with_only_admin_may_read_and_submit() -> None:
    verifier = TokenVerifier("HS256", LONG, "other-idp", "claudecluster-gateway")
    now = datetime.now(UTC)
    claims = {"sub": "ops", "iss": "other-idp", "aud": "claudecluster-gateway",
              "exp": int((now + timedelta(hours=1)).timestamp()), "scope": "admin"}  # fmt: skip
    header = f"Bearer {jwt.encode(claims, LONG, algorithm='HS256')}"
    for needed in ("read", "submit", "admin"):
        assert authenticate(header, needed, verifier).subject == "ops"
    reader = {**claims, "scope": "read"}
    with pytest.raises(PermissionDeniedError):
        authenticate(f"Bearer {jwt.encode(reader, LONG, algorithm='HS256')}", "submit", verifier)


def test_unknown_scopes_grant_nothing() -> None:
    assert not holds_scope(("superuser", "write"), "read")
    assert holds_scope(("submit",), "read")
    assert not holds_scope(("submit",), "admin")


def _claims(**changes: object) -> dict[str, object]:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": "a", "iss": "claudecluster", "aud": "claudecluster-gateway",
        "exp": int((now + timedelta(hours=1)).timestamp()), "scope": "read",
    }  # fmt: skip
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("claims", "algorithm", "named"),
    [
        (_claims(), "none", "alg value is not allowed"),
        (_claims(exp=None), "HS256", "exp"),
        (_claims(iss="someone-else"), "HS256", "issuer"),
        (_claims(nbf=int((datetime.now(UTC) + timedelta(hours=1)).timestamp())), "HS256",
         "not yet valid"),
    ],
)  # fmt: skip
def test_tokens_the_audit_found_refused_stay_refused(
    claims: dict[str, object], algorithm: str, named: str
) -> None:
    verifier = TokenVerifier("HS256", LONG, "claudecluster", "claudecluster-gateway")
    key = "" if algorithm == "none" else LONG  # PyJWT takes an empty key for "none"
    token = jwt.encode(claims, key, algorithm=algorithm)
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token)
    assert named in str(caught.value)
