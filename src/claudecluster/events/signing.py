"""Signed attempts: proof that an event of an attempt comes from the worker holding it.

Every worker process makes an ed25519 key pair in NATS's nkey format when it starts (the
seed never leaves its memory). Its claim of an attempt (``task.assigned``) carries the
public key (``worker_key``); every later event it records for that attempt carries, in
the envelope's ``signature``, an ed25519 signature over the envelope encoded with an empty
signature. A reader checks it with nothing but the bytes and the key
(:func:`verify_envelope`), so the same pure check runs in the driver's core, in every
projection and in replay.

Why a signature rather than the NATS identity of the publisher: nats-server does not tell a
JetStream consumer who published a message (no publisher header exists for plain
publishes), and the permissions can only say which subjects a role may publish to, not
which worker of the role holds which attempt. The key travels in the log itself, so the
proof survives replays, exports and other tools.

Old logs have no keys: an attempt claimed without one is not checked, so they replay as
before; every attempt a current worker claims is.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

from claudecluster.events.codec import encode
from claudecluster.events.envelope import EventEnvelope

__all__ = ["signed_bytes", "signature_of", "verify_envelope"]

_PUBLIC_KEY_BYTES: Final = 32


def signed_bytes(envelope: EventEnvelope) -> bytes:
    """What a signature covers: the envelope, encoded, with an empty signature."""
    if envelope.signature:
        envelope = msgspec.structs.replace(envelope, signature="")
    return encode(envelope)


def signature_of(signature: bytes) -> str:
    """The envelope's text form of a raw ed25519 signature (URL-safe base64)."""
    return base64.urlsafe_b64encode(signature).decode()


def _verify_key(public_key: str) -> nacl.signing.VerifyKey | None:
    """The ed25519 key of an nkey user public key (``U...``), or None if it is not one."""
    try:
        raw = base64.b32decode(public_key.encode())
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 1 + _PUBLIC_KEY_BYTES + 2 or raw[0] != nkeys.PREFIX_BYTE_USER:
        return None
    body, checksum = raw[:-2], raw[-2:]
    if int.from_bytes(checksum, "little") != nkeys.crc16(bytearray(body)):
        return None
    return nacl.signing.VerifyKey(bytes(body[1:]))


def verify_envelope(envelope: EventEnvelope, public_key: str) -> str | None:
    """Why ``envelope`` is not signed by ``public_key``, or None when it is.

    Pure: the bytes and the key are all it needs.
    """
    if not envelope.signature:
        return "it carries no signature"
    key = _verify_key(public_key)
    if key is None:
        return f"the attempt's key {public_key[:12]}... is not an nkey user public key"
    try:
        signature = base64.urlsafe_b64decode(envelope.signature.encode())
        key.verify(signed_bytes(envelope), signature)
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
        return "its signature does not match the key of the worker holding the attempt"
    return None
