"""Bearer tokens: minting and checking, HS256 and RS256, scopes that nest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from claudecluster.auth import TokenSigner, TokenVerifier, authenticate, scopes_granted
from claudecluster.errors import AuthenticationError, ConfigError, PermissionDeniedError
from claudecluster.settings import GatewaySettings, load_settings

SECRET = "auth-test-secret-0123456789abcdef-0123456789"
NOW = datetime.now(UTC)
HOUR = timedelta(hours=1)


def _rsa_pair(tmp_path: Path) -> GatewaySettings:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "private.pem"
    public = tmp_path / "public.pem"
    private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ))  # fmt: skip
    return GatewaySettings(jwt_private_key=private, jwt_public_key=public)


def test_scopes_nest_admin_over_submit_over_read() -> None:
    assert scopes_granted("read") == ("read",)
    assert scopes_granted("submit") == ("read", "submit")
    assert scopes_granted("admin") == ("read", "submit", "admin")


def test_an_hs256_token_carries_its_subject_and_scopes() -> None:
    settings = GatewaySettings(jwt_secret=SECRET)
    minted = TokenSigner.from_settings(settings).mint(
        subject="ci", scope="submit", ttl=HOUR, now=NOW
    )
    verifier = TokenVerifier.from_settings(settings)
    principal = authenticate(f"Bearer {minted}", "submit", verifier)
    assert (principal.subject, principal.scopes) == ("ci", ("read", "submit"))
    with pytest.raises(PermissionDeniedError, match="'admin'"):
        authenticate(f"Bearer {minted}", "admin", verifier)


def test_an_rs256_token_is_checked_with_the_public_key_alone(tmp_path: Path) -> None:
    settings = _rsa_pair(tmp_path)
    minted = TokenSigner.from_settings(settings).mint(
        subject="ops", scope="admin", ttl=HOUR, now=NOW
    )
    verifier = TokenVerifier.from_settings(GatewaySettings(jwt_public_key=settings.jwt_public_key))
    assert verifier.algorithm == "RS256"
    assert authenticate(f"bearer {minted}", "admin", verifier).subject == "ops"
    # An HS256 token made with the public key as its secret must not pass (alg confusion).
    with pytest.raises(AuthenticationError):
        authenticate(f"Bearer {_forged(verifier.key)}", "read", verifier)


def _forged(public_pem: str) -> str:
    import jwt

    claims = {"sub": "x", "iss": "claudecluster", "aud": "claudecluster-gateway",
              "exp": int((NOW + HOUR).timestamp()), "scope": "admin"}  # fmt: skip
    try:
        return jwt.encode(claims, public_pem, algorithm="HS256")
    except jwt.InvalidKeyError:
        return "forged.token.value"  # PyJWT itself refuses to sign so: that is the point


@pytest.mark.parametrize(
    ("header", "message"),
    [(None, "needs a bearer token"), ("", "needs a bearer token"),
     ("Basic dXNlcjpwdw==", "must be 'Bearer TOKEN'"), ("Bearer ", "must be 'Bearer TOKEN'"),
     ("Bearer not-a-jwt", "invalid bearer token")],
)  # fmt: skip
def test_a_missing_or_malformed_header_is_an_authentication_error(
    header: str | None, message: str
) -> None:
    verifier = TokenVerifier("HS256", SECRET, "claudecluster", "claudecluster-gateway")
    with pytest.raises(AuthenticationError, match=message):
        authenticate(header, "read", verifier)


def test_expired_tokens_and_tokens_for_another_audience_or_secret_are_refused() -> None:
    signer = TokenSigner("HS256", SECRET, "claudecluster", "claudecluster-gateway")
    verifier = TokenVerifier("HS256", SECRET, "claudecluster", "claudecluster-gateway")
    old = signer.mint(subject="a", scope="read", ttl=timedelta(seconds=1), now=NOW - HOUR)
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(old)
    other = TokenSigner("HS256", SECRET, "claudecluster", "someone-else")
    with pytest.raises(AuthenticationError, match="Audience"):
        verifier.verify(other.mint(subject="a", scope="read", ttl=HOUR, now=NOW))
    stranger = TokenSigner("HS256", SECRET + "x", "claudecluster", "claudecluster-gateway")
    with pytest.raises(AuthenticationError, match="Signature"):
        verifier.verify(stranger.mint(subject="a", scope="read", ttl=HOUR, now=NOW))


def test_without_a_secret_or_key_the_configuration_error_names_the_setting(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="CLAUDECLUSTER_GATEWAY__JWT_SECRET"):
        TokenVerifier.from_settings(GatewaySettings())
    with pytest.raises(ConfigError, match=r"gateway\.jwt_secret"):
        TokenSigner.from_settings(GatewaySettings())
    with pytest.raises(ConfigError, match="cannot read the key file"):
        TokenVerifier.from_settings(GatewaySettings(jwt_public_key=tmp_path / "absent.pem"))
    signer = TokenSigner("HS256", SECRET, "i", "a")
    with pytest.raises(ConfigError, match="positive"):
        signer.mint(subject="a", scope="read", ttl=timedelta(0), now=NOW)


def test_the_jwt_secret_from_the_environment_is_a_secret_value_and_never_shown(
    tmp_path: Path,
) -> None:
    loaded = load_settings(
        project_dir=tmp_path, environ={"CLAUDECLUSTER_GATEWAY__JWT_SECRET": SECRET}
    )
    gateway = loaded.settings.gateway
    assert gateway.jwt_secret is not None
    assert gateway.jwt_secret.get_secret_value() == SECRET
    assert loaded.source_of("gateway.jwt_secret") == "env CLAUDECLUSTER_GATEWAY__JWT_SECRET"
    assert SECRET in loaded.settings.secret_values()
    assert SECRET not in repr(loaded.settings)


def _claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "a", "scope": "read", "iss": "claudecluster", "aud": "claudecluster-gateway",
        "iat": int(NOW.timestamp()), "exp": int((NOW + HOUR).timestamp()),
    }  # fmt: skip
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


@pytest.mark.parametrize(
    ("claims", "algorithm", "message"),
    [
        (_claims(), "none", "alg value is not allowed"),
        (_claims(exp=None), "HS256", '"exp"'),
        (_claims(iss="someone-else"), "HS256", "issuer"),
        (_claims(nbf=int((NOW + HOUR).timestamp())), "HS256", "not yet valid"),
    ],
    ids=["alg-none", "no-exp", "wrong-iss", "future-nbf"],
)
def test_unsigned_unbounded_foreign_or_premature_tokens_are_refused(
    claims: dict[str, object], algorithm: str, message: str
) -> None:
    """The audit found these right; each has a test so it stays so."""
    key = "" if algorithm == "none" else SECRET  # "none": no key, no signature
    token = jwt.encode(claims, key, algorithm=algorithm)
    verifier = TokenVerifier("HS256", SECRET, "claudecluster", "claudecluster-gateway")
    with pytest.raises(AuthenticationError, match=message):
        verifier.verify(token)
    # The same claims, properly signed and bounded, pass: the refusal is for that flaw.
    fixed = {**_claims(), **{k: v for k, v in claims.items() if k == "sub"}}
    assert verifier.verify(jwt.encode(fixed, SECRET, algorithm="HS256")).subject == "a"
