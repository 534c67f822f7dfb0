"""Eligibility, warnings and precautions: pure functions, no I/O."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ._model import (
    MAX_ID_LENGTH,
    Exclusion,
    ExclusionReason,
    Member,
    MemberStatus,
    PlanEntry,
    PlanSettings,
    PlanWarning,
    ResetMode,
    ResetPlan,
    Role,
    SignInMethod,
    WarningKind,
    check_text,
)
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .ports import PlanCounts

__all__ = [
    "PlanTally",
    "build_plan",
    "classify",
    "codes_match",
    "dedupe_selection",
    "exclusion_reason",
    "new_confirmation_code",
    "new_plan_id",
    "plan_from_entries",
    "precautions",
]

# Unambiguous characters: no 0/O, 1/I/L.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def new_plan_id() -> str:
    """A fresh plan ID: ``plan-`` and 16 hex digits from :mod:`secrets`."""
    return f"plan-{secrets.token_hex(8)}"


def new_confirmation_code() -> str:
    """An 8-character code such as ``K7QM-4ZRD`` the administrator types to confirm (R7)."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def _canonical_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper()


def codes_match(given: object, expected: str) -> bool:
    """Compare a typed confirmation code with the plan's, ignoring case, spaces and dashes.

    Constant-time (:func:`hmac.compare_digest`) on the canonical forms.
    """
    if not isinstance(given, str) or len(given) > 64:
        return False
    return hmac.compare_digest(
        _canonical_code(given).encode("utf-8", "replace"), _canonical_code(expected).encode()
    )


def dedupe_selection(selection: Iterable[object]) -> list[str]:
    """Check the shape of a selection of member IDs and drop repeats, keeping order.

    Raises:
        InvalidInputError: *selection* is a bare string (a common slip: it
            would select its characters), or an item is not a well-formed ID
            (not a string, blank, over 256 characters, control characters).
    """
    if isinstance(selection, (str, bytes)):
        raise InvalidInputError("selection must be an iterable of member IDs, not one string")
    try:
        items = iter(selection)
    except TypeError:
        raise InvalidInputError(
            f"selection must be an iterable of member IDs or ALL, not {type(selection).__name__}"
        ) from None
    seen: dict[str, None] = {}
    for item in items:
        check_text(item, what="a selected member ID", limit=MAX_ID_LENGTH, required=True)
        seen.setdefault(item, None)  # type: ignore[call-overload]
    return list(seen)


def exclusion_reason(
    member: Member | None,
    *,
    actor: Member,
    settings: PlanSettings,
    has_password: bool,
) -> ExclusionReason | None:
    """Why *member* cannot be a target, or ``None`` when they can.

    The first reason that applies, in this order (SPEC §3): unknown member,
    the actor themself (unless ``include_actor``), not permitted (an
    ``ADMIN`` may not reset a ``SUPER_ADMIN``), pending invitation,
    suspended (unless ``include_suspended``), and for force change a Quick
    Login member with no password (R2).
    """
    if member is None:
        return ExclusionReason.UNKNOWN_MEMBER
    if member.member_id == actor.member_id and not settings.include_actor:
        return ExclusionReason.ACTOR
    if actor.role is Role.ADMIN and member.role is Role.SUPER_ADMIN:
        return ExclusionReason.NOT_PERMITTED
    if member.status is MemberStatus.PENDING:
        return ExclusionReason.NOT_ACTIVATED
    if member.status is MemberStatus.SUSPENDED and not settings.include_suspended:
        return ExclusionReason.SUSPENDED
    if (
        settings.mode is ResetMode.FORCE_CHANGE
        and member.sign_in is SignInMethod.QUICK_LOGIN
        and not has_password
    ):
        return ExclusionReason.NO_PASSWORD
    return None


def _plural(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def _span(span: timedelta) -> str:
    """A duration in words: ``24 hours``, ``90 minutes``, ``3 days``."""
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def precautions(
    settings: PlanSettings,
    *,
    targets: int,
    cannot_self_recover: int,
    excluded: Mapping[ExclusionReason, int],
) -> tuple[str, ...]:
    """The sentences an administrator reads before confirming a plan (R3-R6)."""
    who = _plural(targets, "member", "members")
    lines: list[str] = []
    if settings.mode is ResetMode.FORCE_CHANGE:
        change = (
            " and must change it at their next sign-in"
            if settings.require_change_at_next_login
            else ""
        )
        minutes = int(settings.session_deadline.total_seconds() // 60) or 1
        if settings.generate_passwords:
            got = f"{who} will each get their own random temporary password{change}."
            hand_over = (
                "Hand each member their temporary password directly (from the hand-off "
                "file: apply --handoff), or tell them how to reset it: they cannot read mail "
                "sent to the work account once signed out."
            )
        else:
            got = f"{who} will get the same new password{change}."
            hand_over = (
                "Deliver the new password to them directly, or tell them how to find it and "
                "reset it: they cannot read mail sent to the work account once signed out."
            )
        lines.append(got)
        if settings.require_change_at_next_login and settings.temporary_password_ttl:
            lines.append(
                f"The temporary password stops working {_span(settings.temporary_password_ttl)} "
                "after the reset: members who have not changed it by then must use password "
                "recovery or get a new reset (OWASP ASVS 2.3.1)."
            )
        lines += [
            f"They will be signed out of every session within {minutes} minute(s).",
            hand_over,
            f"{_plural(cannot_self_recover, 'target has', 'targets have')} no mobile phone "
            "number and no personal email and cannot recover a forgotten password themselves.",
        ]
        quick = excluded.get(ExclusionReason.NO_PASSWORD, 0)
        if quick:
            lines.append(
                f"{_plural(quick, 'Quick Login member', 'Quick Login members')} without a "
                "password will not be changed (excluded)."
            )
        if settings.deliver_password:
            what = (
                "Each member's temporary password"
                if settings.generate_passwords
                else "The new password"
            )
            lines.append(
                f"{what} will be sent in the notices. Sending passwords is discouraged "
                "(OWASP ASVS 2.5.1): prefer handing it over directly."
            )
        if settings.follow_with_request:
            lines.append(
                "Each target then also gets a change request to set a password of their own."
            )
    else:
        hours = settings.request_ttl.total_seconds() / 3600
        lines += [
            f"{who} will get a password change request valid for {hours:g} hour(s); "
            "their current password keeps working until they set a new one.",
            "A change request alone does not stop a possibly compromised password from "
            "working. If members must change their password, force a change first, then "
            "send a change request again.",
        ]
    return tuple(lines)


def classify(
    member_id: str,
    member: Member | None,
    *,
    actor: Member,
    settings: PlanSettings,
    has_password: bool,
) -> PlanEntry:
    """Sort one selected member: a target (with its warning, if any) or an exclusion."""
    reason = exclusion_reason(member, actor=actor, settings=settings, has_password=has_password)
    if reason is not None or member is None:
        return PlanEntry(member_id, member, reason or ExclusionReason.UNKNOWN_MEMBER)
    warning = (
        WarningKind.CANNOT_SELF_RECOVER
        if settings.mode is ResetMode.FORCE_CHANGE and not member.can_self_recover
        else None
    )
    return PlanEntry(member_id, member, None, warning)


class PlanTally:
    """Counts a plan's entries as they stream by, for its precautions and summary."""

    def __init__(self) -> None:
        self.targets = 0
        self.warnings = 0
        self.excluded: dict[ExclusionReason, int] = {}

    @classmethod
    def from_counts(cls, counts: PlanCounts) -> PlanTally:
        """A tally of counts a store made itself (``SetBasedStorage.classify_into_plan``)."""
        tally = cls()
        tally.targets = counts.targets
        tally.warnings = counts.warnings
        tally.excluded = dict(counts.excluded)
        return tally

    def add(self, entry: PlanEntry) -> None:
        """Count one entry."""
        if entry.reason is not None:
            self.excluded[entry.reason] = self.excluded.get(entry.reason, 0) + 1
            return
        self.targets += 1
        self.warnings += entry.warning is not None

    def precautions(self, settings: PlanSettings) -> tuple[str, ...]:
        """The plan's precautions for these counts (see :func:`precautions`)."""
        return precautions(
            settings,
            targets=self.targets,
            cannot_self_recover=self.warnings,
            excluded=self.excluded,
        )


def build_plan(
    *,
    plan_id: str,
    created_at: datetime,
    actor: Member,
    settings: PlanSettings,
    selected: Iterable[str],
    members: Mapping[str, Member],
    with_password: Collection[str],
    confirmation: str,
) -> ResetPlan:
    """Sort a selection into targets and exclusions, with warnings and precautions.

    The in-memory form of what ``ResetService.plan`` streams through a store.

    Args:
        selected: Distinct member IDs in selection order.
        members: The known members among them, by ID.
        with_password: IDs of members that have a stored password credential.
    """
    tally = PlanTally()
    entries = []
    for member_id in selected:
        entry = classify(
            member_id,
            members.get(member_id),
            actor=actor,
            settings=settings,
            has_password=member_id in with_password,
        )
        tally.add(entry)
        entries.append(entry)
    return plan_from_entries(
        entries,
        plan_id=plan_id,
        created_at=created_at,
        actor=actor.member_id,
        settings=settings,
        precautions=tally.precautions(settings),
        confirmation=confirmation,
    )


def plan_from_entries(
    entries: Iterable[PlanEntry],
    *,
    plan_id: str,
    created_at: datetime,
    actor: str,
    settings: PlanSettings,
    precautions: tuple[str, ...],
    confirmation: str,
) -> ResetPlan:
    """A :class:`ResetPlan` holding *entries* in memory (tuples)."""
    targets: list[Member] = []
    excluded: list[Exclusion] = []
    warnings: list[PlanWarning] = []
    for entry in entries:
        if entry.reason is not None:
            excluded.append(Exclusion(entry.member_id, entry.reason))
            continue
        assert entry.member is not None  # a target is a known member
        targets.append(entry.member)
        if entry.warning is not None:
            warnings.append(PlanWarning(entry.member_id, entry.warning))
    return ResetPlan(
        plan_id=plan_id,
        mode=settings.mode,
        created_at=created_at,
        actor=actor,
        targets=targets,
        excluded=excluded,
        warnings=warnings,
        precautions=precautions,
        confirmation=confirmation,
        settings=settings,
    )
