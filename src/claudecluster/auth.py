"""Bearer-token authentication for every network front door (the gateway, the MCP server).

Tokens are JWTs (PyJWT), signed with a shared secret (HS256) or an RSA key (RS256), with
an issuer, an audience, an expiry and a space-separated ``scope`` claim. Scopes nest:
``admin`` includes ``submit``, which includes ``read``; so a route asks for the least
scope it needs and a stronger token passes.

:func:`authenticate` is the one check every front door makes: it takes the raw
``Authorization`` header value and the scope needed, and returns the :class:`Principal`
or raises :class:`~claudecluster.errors.AuthenticationError` (the caller answers 401) or
:class:`~claudecluster.errors.PermissionDeniedError` (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal, get_args

import jwt

from claudecluster.errors import AuthenticationError, ConfigError, PermissionDeniedError
from claudecluster.settings import GatewaySettings

__all__ = [
    "SCOPES",
    "Principal",
    "Scope",
    "TokenSigner",
    "TokenVerifier",
    "authenticate",
    "holds_scope",
    "scopes_granted",
]

Scope = Literal["read", "submit", "admin"]
#: Every scope, weakest first; each includes the ones before it.
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
_LEEWAY_S: Final = 5.0


def scopes_granted(scope: Scope) -> tuple[Scope, ...]:
    """The scopes a token minted with ``scope`` holds (it and every weaker one)."""
    return SCOPES[: SCOPES.index(scope) + 1]


def holds_scope(scopes: tuple[str, ...], needed: Scope) -> bool:
    """Whether a token with ``scopes`` may do what needs ``needed``: the one place scopes
    nest. A token we mint lists every scope it holds; a token from another issuer may list
    only its strongest (``admin``), which includes the weaker ones all the same."""
    rank = SCOPES.index(needed)
    return any(s in SCOPES and SCOPES.index(s) >= rank for s in scopes)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, as its token says.

    Attributes:
        subject: the token's ``sub`` claim.
        scopes: the scopes the token grants.
    """

    subject: str
    scopes: tuple[str, ...]


def _read_key(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, str(path), f"cannot read the key file: {exc.strerror}") from None


def _configured_key(
    gateway: GatewaySettings, rsa_key: Path | None, rsa_setting: str, purpose: str
) -> tuple[Literal["HS256", "RS256"], str]:
    """The algorithm and key to ``purpose`` tokens with: the RSA key file if one is
    configured, else the shared secret.

    Raises:
        ConfigError: neither is configured, or the key file cannot be read.
    """
    if rsa_key is not None:
        return "RS256", _read_key(rsa_key, rsa_setting)
    if gateway.jwt_secret is not None:
        return "HS256", gateway.jwt_secret.get_secret_value()
    raise ConfigError(
        "gateway.jwt_secret",
        "configuration",
        f"set gateway.jwt_secret (env CLAUDECLUSTER_GATEWAY__JWT_SECRET) or {rsa_setting} "
        f"to {purpose} tokens",
    )


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks tokens: the algorithm, the key that verifies it, issuer and audience."""

    algorithm: Literal["HS256", "RS256"]
    key: str
    issuer: str
    audience: str

    @classmethod
    def from_settings(cls, gateway: GatewaySettings) -> TokenVerifier:
        """The verifier the ``gateway`` section configures (RS256 wins if both are set).

        Raises:
            ConfigError: neither a secret nor a public key is configured, or a key file
                cannot be read.
        """
        algorithm, key = _configured_key(gateway, gateway.jwt_public_key,
                                         "gateway.jwt_public_key", "check")  # fmt: skip
        return cls(algorithm, key, gateway.issuer, gateway.audience)

    def verify(self, token: str) -> Principal:
        """The principal a token names.

        Raises:
            AuthenticationError: the token is malformed, forged, expired, or for another
                issuer or audience.
        """
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid bearer token: {exc}") from None
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise AuthenticationError("invalid bearer token: the scope claim is not a string")
        return Principal(subject=str(claims["sub"]), scopes=tuple(scope.split()))


@dataclass(frozen=True, slots=True)
class TokenSigner:
    """Mints tokens (``claudecluster token create``, tests, benchmarks)."""

    algorithm: Literal["HS256", "RS256"]
    key: str
    issuer: str
    audience: str

    @classmethod
    def from_settings(cls, gateway: GatewaySettings) -> TokenSigner:
        """The signer the ``gateway`` section configures (RS256 wins if both are set).

        Raises:
            ConfigError: neither a secret nor a private key is configured, or a key file
                cannot be read.
        """
        algorithm, key = _configured_key(gateway, gateway.jwt_private_key,
                                         "gateway.jwt_private_key", "mint")  # fmt: skip
        return cls(algorithm, key, gateway.issuer, gateway.audience)

    def mint(self, *, subject: str, scope: Scope, ttl: timedelta, now: datetime) -> str:
        """A signed token for ``subject`` holding ``scope`` (and the weaker scopes).

        Raises:
            ConfigError: the ttl is not positive, or the key cannot sign.
        """
        if ttl <= timedelta(0):
            raise ConfigError("ttl", "token create", "the lifetime must be positive")
        claims = {
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "scope": " ".join(scopes_granted(scope)),
        }
        try:
            return jwt.encode(claims, self.key, algorithm=self.algorithm)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ConfigError("gateway.jwt_private_key", "configuration",
                              f"cannot sign with this key: {exc}") from None  # fmt: skip


def authenticate(authorization: str | None, needed: Scope, verifier: TokenVerifier) -> Principal:
    """Check an ``Authorization`` header value for a bearer token with scope ``needed``.

    Args:
        authorization: the header's value as received (None when absent).
        needed: the least scope the operation needs.
        verifier: how tokens are checked.

    Returns:
        The principal the token names.

    Raises:
        AuthenticationError: no ``Bearer`` token, or an invalid one (answer 401).
        PermissionDeniedError: a valid token without ``needed`` (answer 403).
    """
    if not authorization:
        raise AuthenticationError("this needs a bearer token: send 'Authorization: Bearer TOKEN'")
    kind, _, token = authorization.strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer TOKEN'")
    principal = verifier.verify(token.strip())
    if not holds_scope(principal.scopes, needed):
        raise PermissionDeniedError(needed, principal.scopes)
    return principal
