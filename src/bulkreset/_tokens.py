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
from datetime import datetime

from .ports import TokenRecord

__all__ = ["MAX_TOKEN_LENGTH", "derive_token", "token_digest", "token_is_live"]

MAX_TOKEN_LENGTH = 128
"""Longer input cannot be a token and is refused before any work."""


def derive_token(key: bytes, plan_id: str, member_id: str) -> str:
    """The member's token for this plan: 256 bits, URL-safe Base64 without padding."""
    message = b"bulkreset-token\x00" + plan_id.encode() + b"\x00" + member_id.encode()
    raw = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


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
