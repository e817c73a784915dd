"""Join tokens: everything a new worker host needs, as one line to paste.

``claudecluster creds join --url tls://HOST:4222 --ca ca.pem`` prints
``ccjoin1.<base64url of JSON>``: the bus URL, the worker's nkey seed, and the CA
certificate the servers' TLS certificates are signed by, with its SHA-256 fingerprint.
``claudecluster worker --join TOKEN`` writes the seed and the CA to private files
(0600, in a 0700 directory under ``~/.claudecluster/join/``) and connects with them,
as ``--nats URL --creds FILE`` (and ``nats.tls.ca``) would.

The token holds a secret (the seed): treat it like the seed file, paste it only over a
channel you would send the seed over. The fingerprint lets the operator compare what
the new host trusts with what they minted (the worker prints it), and catches a token
damaged on the way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from claudecluster.errors import ConfigError

__all__ = [
    "JOIN_PREFIX",
    "JoinToken",
    "JoinedFiles",
    "ca_fingerprint",
    "decode_join_token",
    "encode_join_token",
    "install_join_token",
]

JOIN_PREFIX: Final = "ccjoin1."
_KEY: Final = "join"


class JoinToken(msgspec.Struct, frozen=True, kw_only=True):
    """What a join token carries.

    Attributes:
        url: the bus (one URL or several, comma-separated).
        seed: the worker identity's nkey seed (``SU...``).
        pool: the pool that identity may serve.
        ca_pem: the CA certificate (PEM) to trust for ``tls://`` URLs; empty: the
            system's trust store.
        ca_sha256: the SHA-256 fingerprint of ``ca_pem``'s DER form, hex with colons.
    """

    url: str
    seed: str
    pool: str = "default"
    ca_pem: str = ""
    ca_sha256: str = ""


@dataclass(frozen=True, slots=True)
class JoinedFiles:
    """Where an installed token's secrets went."""

    seed: Path
    ca: Path | None


def ca_fingerprint(pem: str) -> str:
    """SHA-256 of the first certificate in ``pem`` (DER), as ``AB:CD:...``.

    Raises:
        ConfigError: ``pem`` holds no certificate.
    """
    import ssl

    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(_KEY, "the CA file", f"is not a PEM certificate: {exc}") from None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def encode_join_token(token: JoinToken) -> str:
    """The one-line form of ``token`` (the fingerprint is filled in from the CA)."""
    if token.ca_pem and not token.ca_sha256:
        token = msgspec.structs.replace(token, ca_sha256=ca_fingerprint(token.ca_pem))
    body = base64.urlsafe_b64encode(msgspec.json.encode(token)).rstrip(b"=").decode()
    return JOIN_PREFIX + body


def decode_join_token(text: str) -> JoinToken:
    """Read a pasted token, saying what is wrong with it if anything is.

    Raises:
        ConfigError: not a join token, damaged, or inconsistent.
    """
    source = "flag --join"
    text = text.strip()
    if not text.startswith(JOIN_PREFIX):
        raise ConfigError(_KEY, source, f"a join token starts with {JOIN_PREFIX!r}")
    body = text[len(JOIN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        token = msgspec.json.decode(raw, type=JoinToken)
    except (ValueError, binascii.Error, msgspec.DecodeError) as exc:
        raise ConfigError(_KEY, source, f"the token is damaged (copied whole?): {exc}") from None
    if not token.url.strip():
        raise ConfigError(_KEY, source, "the token names no NATS URL")
    if not token.seed.startswith("SU"):
        raise ConfigError(_KEY, source, "the token's seed is not an nkey user seed")
    if token.ca_pem and ca_fingerprint(token.ca_pem) != token.ca_sha256:
        raise ConfigError(_KEY, source, "the token's CA does not match its fingerprint")
    return token


def install_join_token(token: JoinToken, home: Path | None = None) -> JoinedFiles:
    """Write the token's seed (and CA) to private files; the same token, the same files.

    Raises:
        ConfigError: the files cannot be written.
    """
    base = (home or Path.home()) / ".claudecluster" / "join"
    name = hashlib.sha256(token.seed.encode()).hexdigest()[:16]
    directory = base / name
    try:
        for path in (base.parent, base, directory):
            path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        seed = _write_private(directory / "worker.nk", token.seed.strip() + "\n")
        ca = _write_private(directory / "ca.pem", token.ca_pem) if token.ca_pem else None
    except OSError as exc:
        raise ConfigError(_KEY, "flag --join", f"cannot write its files to {base}: {exc}") from None
    return JoinedFiles(seed=seed, ca=ca)


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path
