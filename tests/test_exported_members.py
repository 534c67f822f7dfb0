"""The public surface: SPEC §3 names exist, are exported, and errors share one root."""

from __future__ import annotations

import bulkreset
import bulkreset.errors

CONTRACT = {
    "Member", "MemberStatus", "Role", "SignInMethod",
    "ResetMode", "ResetPolicy", "PasswordRules",
    "ResetPlan", "Exclusion", "ExclusionReason", "PlanWarning", "WarningKind",
    "ResetResult", "MemberOutcome", "Outcome",
    "ResetService", "AuthResult", "Notice", "NoticeKind", "ALL",
}  # fmt: skip
ERRORS = {
    "BulkResetError", "PasswordPolicyError", "ConfirmationError", "StalePlanError",
    "InvalidTokenError", "AuthorizationError", "InvalidCredentialsError",
}  # fmt: skip


def test_contract_names_are_exported() -> None:
    """Every SPEC §3 name is importable from bulkreset and listed in __all__."""
    assert CONTRACT <= set(bulkreset.__all__)
    assert sorted(bulkreset.__all__) == bulkreset.__all__
    for name in bulkreset.__all__:
        assert getattr(bulkreset, name) is not None


def test_every_error_descends_from_bulk_reset_error() -> None:
    """One root: catching BulkResetError catches every error the library raises."""
    assert ERRORS <= set(bulkreset.errors.__all__)
    for name in bulkreset.errors.__all__:
        error = getattr(bulkreset.errors, name)
        assert issubclass(error, bulkreset.errors.BulkResetError)


def test_not_found_errors_read_plainly() -> None:
    """A missing plan's message is not double-quoted the way KeyError does it."""
    assert "no plan with ID 'p1'" == str(bulkreset.errors.PlanNotFoundError("p1"))
    assert 7 == bulkreset.errors.ImportFormatError("bad", row=7).row
    assert "bad" == str(bulkreset.errors.ImportFormatError("bad"))
