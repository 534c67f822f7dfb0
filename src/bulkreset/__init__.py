"""bulkreset: reset the passwords of many members at once, safely.

The engine behind an admin console's "Bulk reset passwords" button. Make a
plan (a dry run), show its precautions, and apply it with the plan's
confirmation code::

    from bulkreset import ALL, ResetMode, ResetPolicy
    from bulkreset.adapters.sqlite import open_service

    service = open_service("members.db")
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin-1")
    result = service.apply(plan, confirm=plan.confirmation)

The documentation is in ``docs/`` in the source tree.
"""

from ._model import (
    ALL,
    AuditEvent,
    AuthResult,
    ChangeRequest,
    ChunkResult,
    Exclusion,
    ExclusionReason,
    Member,
    MemberOutcome,
    MemberStatus,
    Notice,
    NoticeKind,
    Outcome,
    PagedSequence,
    PlanSettings,
    PlanWarning,
    ResetMode,
    ResetPlan,
    ResetPolicy,
    ResetResult,
    ResultSummary,
    Role,
    SignInMethod,
    WarningKind,
    fold_login,
)
from ._passwords import PasswordRules
from ._service import ResetService

__all__ = [
    "ALL",
    "AuditEvent",
    "AuthResult",
    "ChangeRequest",
    "ChunkResult",
    "Exclusion",
    "ExclusionReason",
    "Member",
    "MemberOutcome",
    "MemberStatus",
    "Notice",
    "NoticeKind",
    "Outcome",
    "PagedSequence",
    "PasswordRules",
    "PlanSettings",
    "PlanWarning",
    "ResetMode",
    "ResetPlan",
    "ResetPolicy",
    "ResetResult",
    "ResetService",
    "ResultSummary",
    "Role",
    "SignInMethod",
    "WarningKind",
    "fold_login",
]
