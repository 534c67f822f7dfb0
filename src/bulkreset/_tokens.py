"""Reset tokens: derivation, digests and liveness. No I/O.

A plan that sends change requests holds a random 32-byte key from
:mod:`secrets`; each member's token is ``HMAC-SHA-256(key, plan_id, member_id)``
in URL-safe Base64 (43 characters, 256 bits). Deriving it, rather than drawing
a fresh one per member, lets an apply that resumes after a crash send the
*same* token again, so a notice that may already have gone out never carries
a dead link. The store keeps only ``SHA-256(token)``; the key is erased once
every notice of the plan is out (SPEC §5, OWASP Forgot Password Cheat Sheet).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime

from .ports import TokenRecord

__all__ = [
    "MAX_TOKEN_LENGTH",
    "derive_password",
    "derive_token",
    "token_deriver",
    "token_digest",
    "token_is_live",
]

MAX_TOKEN_LENGTH = 128
"""Longer input cannot be a token and is refused before any work."""


def derive_token(key: bytes, plan_id: str, member_id: str) -> str:
    """The member's token for this plan: 256 bits, URL-safe Base64 without padding."""
    return token_deriver(key, plan_id)(member_id)


def token_deriver(key: bytes, plan_id: str) -> Callable[[str], str]:
    """:func:`derive_token` for one plan, its HMAC key schedule computed once.

    A bulk apply derives one token per member; copying the keyed state costs
    about half of keying HMAC afresh.
    """
    keyed = hmac.new(key, b"bulkreset-token\x00" + plan_id.encode() + b"\x00", hashlib.sha256)

    def derive(member_id: str) -> str:
        mac = keyed.copy()
        mac.update(member_id.encode())
        return base64.urlsafe_b64encode(mac.digest())[:43].decode("ascii")  # 256 bits, unpadded

    return derive


def derive_password(
    key: bytes, plan_id: str, member_id: str, *, length: int = 20, group: int = 5
) -> str:
    """The member's generated temporary password for this plan (per-member passwords).

    Like :func:`derive_token`, derived from the plan's key (HMAC-SHA-256 in
    counter mode, each byte mapped to the 57-symbol alphabet of
    :func:`bulkreset._hashing.generate_password` by rejection sampling, so
    every symbol is uniform): an apply that resumes after a crash delivers
    the same password it may already have set. *length* symbols carry
    ``length * log2(57)`` bits (116.7 for 20).
    """
    from ._hashing import ALPHABET

    symbols: list[str] = []
    limit = 256 - 256 % len(ALPHABET)  # unbiased: drop bytes past a multiple of 57
    counter = 0
    label = b"bulkreset-password\x00" + plan_id.encode() + b"\x00" + member_id.encode()
    while len(symbols) < length:
        block = hmac.new(key, label + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        symbols += [ALPHABET[b % len(ALPHABET)] for b in block if b < limit]
        counter += 1
    text = "".join(symbols[:length])
    if group <= 0:
        return text
    return "-".join(text[i : i + group] for i in range(0, length, group))


def token_digest(token: str) -> str:
    """SHA-256 of the token, hex: what the store keeps and looks tokens up by."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_is_live(record: TokenRecord, *, digest: str, generation: int, now: datetime) -> bool:
    """True when *record* may still be used.

    Dead when used, superseded, expired (``now >= expires_at``), or when the
    member's password changed after issue (*generation* moved on). The
    digests are compared in constant time (:func:`hmac.compare_digest`).
    """
    return (
        hmac.compare_digest(record.digest, digest)
        and record.used_at is None
        and record.revoked_at is None
        and now < record.expires_at
        and record.generation == generation
    )
