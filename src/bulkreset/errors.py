"""Every error bulkreset raises on purpose.

The tree::

    BulkResetError                  never raised itself; catch it to catch them all
    ├── InvalidInputError           (ValueError) bad arguments or data; nothing was written
    │   ├── PasswordPolicyError     a password breaks PasswordRules; .violations names the rules
    │   ├── ImportFormatError       a CSV file cannot be imported; .row is the spreadsheet row
    │   └── PlanNotFoundError       no stored plan has that ID
    ├── AuthorizationError          (PermissionError) the actor may not plan a reset
    │   └── ApprovalRequiredError   the plan needs a second administrator's approval
    ├── ConfirmationError           wrong or missing confirmation code
    ├── StalePlanError              the plan expired before it started
    ├── PlanInProgressError         another apply of the same plan is running
    ├── InvalidTokenError           unknown, expired, used or superseded reset token
    ├── InvalidCredentialsError     wrong current password
    │   └── TemporaryPasswordExpiredError  a force change's temporary password expired
    ├── PartialResetError           raised by ResetResult.raise_for_failures() only
    ├── RetryLaterError             raised by a notifier that is rate-limited
    └── StorageError                a port's backend failed; the cause is chained

Errors never carry secrets: a :class:`PasswordPolicyError` names the rules a
password broke, never the password; an :class:`InvalidTokenError` has one
message whatever went wrong, so a caller cannot probe which tokens exist.
Per-member failures inside a bulk operation are *data* in
:class:`~bulkreset.ResetResult`, not exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ApprovalRequiredError",
    "AuthorizationError",
    "BulkResetError",
    "ConfirmationError",
    "DeliveryError",
    "ImportFormatError",
    "InvalidCredentialsError",
    "InvalidInputError",
    "InvalidTokenError",
    "PartialResetError",
    "PasswordPolicyError",
    "PermanentDeliveryError",
    "PlanInProgressError",
    "PlanNotFoundError",
    "RetryLaterError",
    "StalePlanError",
    "StorageError",
    "TemporaryDeliveryError",
    "TemporaryPasswordExpiredError",
]


class BulkResetError(Exception):
    """Base class of every error bulkreset raises on purpose."""


class InvalidInputError(BulkResetError, ValueError):
    """An argument or a piece of input data is malformed; nothing was written."""


class PasswordPolicyError(InvalidInputError):
    """A password breaks the :class:`~bulkreset.PasswordRules`.

    Attributes:
        violations: The names of the rules broken, in a stable order, for
            example ``("too_short", "common_password")``. Never the password.
    """

    def __init__(self, violations: Iterable[str]) -> None:
        self.violations: tuple[str, ...] = tuple(violations)
        super().__init__("password rejected: " + ", ".join(self.violations))


class ImportFormatError(InvalidInputError):
    """A member file cannot be imported; nothing was imported.

    Attributes:
        row: The row as a spreadsheet numbers it (the header is row 1), or
            ``None`` when the problem is with the file as a whole.
    """

    def __init__(self, message: str, *, row: int | None = None) -> None:
        self.row = row
        super().__init__(f"row {row}: {message}" if row is not None else message)


class PlanNotFoundError(InvalidInputError, KeyError):
    """No plan with that ID is stored."""

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        super().__init__(f"no plan with ID {plan_id!r}")

    def __str__(self) -> str:  # KeyError would quote the message again
        return str(self.args[0])


class AuthorizationError(BulkResetError, PermissionError):
    """The actor may not plan a reset: unknown, not active, or not an administrator."""


class ApprovalRequiredError(AuthorizationError):
    """The plan has more targets than ``ResetService(approval_threshold=...)`` allows
    without a second administrator's approval (``ResetService.approve``), and has none."""


class ConfirmationError(BulkResetError):
    """The confirmation code is missing or does not match the plan's (SPEC R7)."""


class StalePlanError(BulkResetError):
    """The plan's ``plan_ttl`` passed before it was first applied; plan again."""


class PlanInProgressError(BulkResetError):
    """Another process is applying the same plan right now; try again later."""


class InvalidTokenError(BulkResetError):
    """The reset token is unknown, expired, already used, superseded or dead.

    One type and one message for every cause, so that a caller cannot tell a
    guessed token from an expired one (OWASP Forgot Password Cheat Sheet).
    """

    def __init__(self) -> None:
        super().__init__("the reset token is invalid or has expired")


class InvalidCredentialsError(BulkResetError):
    """The current password given to ``change_password`` is wrong."""

    def __init__(self) -> None:
        super().__init__("the current password is not correct")


class TemporaryPasswordExpiredError(InvalidCredentialsError):
    """The temporary password of a force change was never changed and has expired
    (``ResetPolicy.temporary_password_ttl``): the member must use recovery or get a
    new reset (OWASP ASVS 4.0.3 2.3.1)."""

    def __init__(self) -> None:
        BulkResetError.__init__(
            self,
            "the temporary password has expired; use password recovery or ask for a new reset",
        )


class PartialResetError(BulkResetError):
    """Some members of an apply failed or are unfinished; raised only by
    ``ResetResult.raise_for_failures()``.

    Attributes:
        member_ids: The IDs of the members whose reset failed or is unfinished
            (sessions not confirmed revoked, notices not delivered).
    """

    def __init__(self, member_ids: Iterable[str]) -> None:
        self.member_ids: tuple[str, ...] = tuple(member_ids)
        shown = ", ".join(self.member_ids[:10])
        more = f" and {len(self.member_ids) - 10} more" if len(self.member_ids) > 10 else ""
        super().__init__(f"{len(self.member_ids)} member(s) not fully reset: {shown}{more}")


class RetryLaterError(BulkResetError):
    """Raised by a notifier that cannot take more notices now (a rate limit, back-pressure).

    ``apply`` then stops sending for this run: the notices not yet accepted
    stay pending, the result names their members (``notified=False``), and
    applying the plan again later sends only them.

    Attributes:
        retry_after: Seconds to wait before trying again, if the backend said.
    """

    def __init__(self, message: str = "retry later", *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StorageError(BulkResetError):
    """A storage, notification or session backend failed; see ``__cause__``."""


class DeliveryError(BulkResetError):
    """A transport could not deliver one notice (raised by ``bulkreset.adapters.smtp``).

    The outbox treats the two kinds differently: a
    :class:`TemporaryDeliveryError` leaves the notice pending and retries it
    later (exponential backoff); a :class:`PermanentDeliveryError` marks it
    failed for good. The message names the failure (``"SMTP 550"``), never
    the notice's content.

    Attributes:
        code: The server's reply code (for example ``421`` or ``550``), or
            ``None`` when there was none (a dropped connection, a timeout).
        stop_run: The server itself is unusable (unreachable, refused the
            login or TLS): the outbox stops this delivery run instead of
            trying every other notice against it.
    """

    def __init__(self, message: str, *, code: int | None = None, stop_run: bool = False) -> None:
        self.code = code
        self.stop_run = stop_run
        super().__init__(message)


class TemporaryDeliveryError(DeliveryError):
    """Try again later: a 4xx reply (RFC 5321 §4.2.1), a dropped connection, a timeout."""


class PermanentDeliveryError(DeliveryError):
    """Do not try again: a 5xx reply, a refused recipient, or no address to send to."""
