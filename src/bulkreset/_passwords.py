"""Password rules: what a new password must satisfy before it is hashed.

Sources:

* OWASP ASVS 4.0.3 2.1.1 (at least 12 characters, runs of spaces may be
  counted once), 2.1.2 (at least 64 allowed, here 256), 2.1.4 (any printable
  Unicode), 2.1.7 (refuse breached/common passwords).
* NIST SP 800-63B rev. 4 §3.1.1.2: normalize Unicode (NFKC) before hashing,
  refuse passwords from a blocklist, never truncate; 15 characters where the
  password is the only factor.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import cache
from importlib import resources

import attrs

from .errors import InvalidInputError, PasswordPolicyError

__all__ = ["PasswordRules", "default_blocklist", "normalize_password"]

_SPACE_RUNS = re.compile(" {2,}")
# Control characters (Cc) break terminals and CSV files and are never typed on
# purpose; surrogates (Cs) cannot be encoded. A trailing "\r" pasted from a
# CSV file is therefore an error, never silently stripped.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs"})


def normalize_password(password: str) -> str:
    """Return the NFKC form of *password*, the form that is hashed (NIST SP 800-63B)."""
    return unicodedata.normalize("NFKC", password)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@cache
def default_blocklist() -> frozenset[str]:
    """The shipped list of common passwords, NFKC-normalized and case-folded.

    It holds the entries of 12 characters or more from the list Django ships
    (``django/contrib/auth/common-passwords.txt.gz``, BSD-3-Clause, itself
    Royce Williams' 2017 list of the 20,000 most common passwords), plus a
    short hand-made list of common long passwords (``password1234``,
    ``welcome12345``...). Shorter entries are left out: the length rule
    already refuses them. Read once, on first use.
    """
    text = resources.files("bulkreset").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(_fold(line) for line in text.splitlines() if line)


def _check_blocklist(value: Iterable[str]) -> frozenset[str]:
    return frozenset(_fold(item) for item in value)


@attrs.frozen
class PasswordRules:
    """The rules a new password must satisfy.

    Args:
        min_length: Fewest characters, counted after NFKC normalization with
            each run of spaces counted once (OWASP ASVS 4.0.3 2.1.1). Default
            12; NIST SP 800-63B rev. 4 asks for 15 where the password is the
            only authentication factor: a host without MFA should raise it.
        max_length: Most characters, counted the same way (ASVS 2.1.2 asks
            that at least 64 be allowed). Longer input is refused before any
            hashing, so it cannot be used to make the server hash megabytes.
        blocklist: Extra passwords to refuse (compared after NFKC and case
            folding), for example the organization's name.
        use_default_blocklist: Also refuse the shipped list of common
            passwords (:func:`default_blocklist`).

    Raises:
        InvalidInputError: ``min_length`` is below 8 or above ``max_length``.
    """

    min_length: int = 12
    max_length: int = 256
    blocklist: frozenset[str] = attrs.field(
        default=frozenset(), converter=_check_blocklist, repr=False
    )
    use_default_blocklist: bool = True

    def __attrs_post_init__(self) -> None:
        if not 8 <= self.min_length <= self.max_length:
            raise InvalidInputError(
                f"PasswordRules needs 8 <= min_length <= max_length, got "
                f"{self.min_length} and {self.max_length}"
            )

    def violations(self, password: str, *, login_ids: Iterable[str] = ()) -> tuple[str, ...]:
        """Return the names of the rules *password* breaks (empty when none).

        Args:
            password: The password exactly as typed: it is never stripped.
            login_ids: Login IDs the password must not equal (compared after
                NFKC and case folding): those of every member it will be set for.

        Rule names: ``not_a_string``, ``too_long``, ``too_short``,
        ``control_character``, ``common_password``, ``same_as_login_id``.
        """
        if not isinstance(password, str):
            return ("not_a_string",)
        # Refuse absurd input before normalizing it: NFKC can grow a string
        # up to 18-fold, and the rules must stay cheap on hostile input.
        if len(password) > self.max_length * 4:
            return ("too_long",)
        found: list[str] = []
        if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in password):
            found.append("control_character")
        normalized = normalize_password(password)
        length = len(_SPACE_RUNS.sub(" ", normalized))
        if length > self.max_length:
            found.append("too_long")
        elif length < self.min_length:
            found.append("too_short")
        folded = normalized.casefold()
        if (self.use_default_blocklist and folded in default_blocklist()) or (
            folded in self.blocklist
        ):
            found.append("common_password")
        if any(folded == _fold(login_id) for login_id in login_ids):
            found.append("same_as_login_id")
        return tuple(found)

    def check(self, password: str, *, login_ids: Iterable[str] = ()) -> None:
        """Raise if *password* breaks any rule.

        Raises:
            PasswordPolicyError: with ``.violations`` naming every rule broken
                (see :meth:`violations`); the password is never in the error.
        """
        found = self.violations(password, login_ids=login_ids)
        if found:
            raise PasswordPolicyError(found)

    def is_oversized(self, password: str) -> bool:
        """True when *password* is too long to be worth hashing (cheap check)."""
        return (
            len(password) > self.max_length * 4
            or len(_SPACE_RUNS.sub(" ", normalize_password(password))) > self.max_length
        )
