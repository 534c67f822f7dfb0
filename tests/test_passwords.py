"""PasswordRules (OWASP ASVS 4.0.3 2.1, NIST SP 800-63B §3.1.1.2)."""

from __future__ import annotations

import pytest

from bulkreset import PasswordRules
from bulkreset._passwords import default_blocklist, normalize_password
from bulkreset.errors import InvalidInputError, PasswordPolicyError

RULES = PasswordRules()


def test_a_long_passphrase_with_spaces_is_accepted_untrimmed() -> None:
    """Spaces at both ends are part of the password; nothing is stripped."""
    assert () == RULES.violations(" Harbor 42 lanterns ")
    assert " Harbor 42 lanterns " == normalize_password(" Harbor 42 lanterns ")


def test_length_counts_runs_of_spaces_once() -> None:
    """ASVS 2.1.1: runs of spaces count once, so padding does not reach 12."""
    assert ("too_short",) == RULES.violations("abc        def")
    assert () == RULES.violations("abcdefghijkm")
    assert ("too_short",) == RULES.violations("abcdefghijk")


def test_length_is_counted_after_nfkc() -> None:
    """Full-width characters normalize (NFKC) before counting and hashing."""
    assert "Harbor" == normalize_password("Ｈａｒｂｏｒ")
    assert () == RULES.violations("Ｈａｒｂｏｒ lanterns 42")


def test_unicode_passwords_are_allowed() -> None:
    """Any printable Unicode is allowed (ASVS 2.1.4)."""
    assert () == RULES.violations("비밀번호는길어야안전합니다")
    assert () == RULES.violations("パスワードを長くしよう🔒")


@pytest.mark.parametrize(
    "password", ["Harbor 42 lanterns\r", "Harbor\x0042 lanterns", "\ud800x" * 7]
)
def test_control_characters_are_rejected_not_stripped(password: str) -> None:
    """A trailing carriage return from a CSV, NUL, or a surrogate is an error."""
    assert "control_character" in RULES.violations(password)


def test_overlong_passwords_are_rejected() -> None:
    """More than max_length characters is refused, also absurdly long input."""
    assert ("too_long",) == RULES.violations("a" * 257 + "bcdefghijklm")
    assert ("too_long",) == RULES.violations("x" * 1_000_000)
    assert RULES.is_oversized("x" * 300)
    assert not RULES.is_oversized("x" * 256)


def test_common_passwords_are_rejected_case_insensitively() -> None:
    """The shipped blocklist refuses common passwords (ASVS 2.1.7)."""
    assert "password1234" in default_blocklist()
    assert ("common_password",) == RULES.violations("PassWord1234")


def test_host_blocklist_entries_are_added() -> None:
    """A host can add its own words (compared after NFKC and case folding)."""
    rules = PasswordRules(blocklist={"ExampleCorp2026!"})
    assert ("common_password",) == rules.violations("examplecorp2026!")
    assert () == PasswordRules(use_default_blocklist=False).violations("password1234")


def test_password_equal_to_a_login_id_is_rejected() -> None:
    """No password equal to the member's login ID."""
    assert ("same_as_login_id",) == RULES.violations(
        "Mina.Kim@corp.example", login_ids=["mina.kim@corp.example"]
    )


def test_check_raises_with_rule_names_never_the_password() -> None:
    """PasswordPolicyError names every rule broken and never echoes the password."""
    with pytest.raises(PasswordPolicyError) as caught:
        RULES.check("short\r")
    assert ("control_character", "too_short") == caught.value.violations
    assert "short" not in str(caught.value).replace("too_short", "")


def test_non_strings_are_refused() -> None:
    """A password must be a string."""
    assert ("not_a_string",) == RULES.violations(b"bytes password")  # type: ignore[arg-type]


def test_rules_themselves_are_checked() -> None:
    """A minimum under 8 or above the maximum is a configuration error."""
    with pytest.raises(InvalidInputError):
        PasswordRules(min_length=4)
    with pytest.raises(InvalidInputError):
        PasswordRules(min_length=20, max_length=16)
    assert 15 == PasswordRules(min_length=15).min_length
