"""The domain's value objects: members, policies, plans, results, notices.

Everything here is data: frozen attrs classes with no I/O. Secrets
(passwords, tokens, hashes) are ``repr=False`` fields and never reach a
``repr``, ``str`` or HTML table.
"""

from __future__ import annotations

import enum
import html
import operator
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, TypeVar, overload

import attrs

from ._passwords import PasswordRules
from .errors import InvalidInputError, PartialResetError

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
    "PlanEntry",
    "PlanSettings",
    "PlanWarning",
    "ResetMode",
    "ResetPlan",
    "ResetPolicy",
    "ResetResult",
    "ResultSummary",
    "Role",
    "Selection",
    "SignInMethod",
    "WarningKind",
    "fold_login",
]

MAX_ID_LENGTH = 256
# Exactly the Unicode categories Cc (controls) and Cs (surrogates).
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_TEXT_LENGTH = 1024


class _Choice(str, enum.Enum):
    """An enum whose values are the lower-case names used in files and JSON."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class SignInMethod(_Choice):
    """How a member signs in."""

    PASSWORD = "password"
    """With a registered login ID and password."""
    QUICK_LOGIN = "quick_login"
    """With a social or one-tap login and, unless they registered one, no password."""


class MemberStatus(_Choice):
    """Where a member's account stands."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    PENDING = "pending"
    """Invited, but never accepted the invitation."""


class Role(_Choice):
    """A member's administrative role."""

    MEMBER = "member"
    ADMIN = "admin"
    SUPER_ADMIN = "super_admin"

    @property
    def is_admin(self) -> bool:
        """True for roles that may plan a bulk reset."""
        return self is not Role.MEMBER


class ResetMode(_Choice):
    """The two methods of a bulk reset (SPEC §1)."""

    FORCE_CHANGE = "force_change"
    """Everyone gets the same new password now, and must change it at next sign-in."""
    REQUEST_CHANGE = "request_change"
    """Everyone gets a single-use, expiring change request; passwords keep working."""


class ExclusionReason(_Choice):
    """Why a selected member is not a target. Checked in this order; the first applies."""

    UNKNOWN_MEMBER = "unknown_member"
    ACTOR = "actor"
    NOT_PERMITTED = "not_permitted"
    NOT_ACTIVATED = "not_activated"
    SUSPENDED = "suspended"
    NO_PASSWORD = "no_password"


class WarningKind(_Choice):
    """Something the administrator should know about a target before applying."""

    CANNOT_SELF_RECOVER = "cannot_self_recover"
    """No mobile phone number and no personal email: cannot recover a forgotten password (R5)."""


class Outcome(_Choice):
    """What happened to one selected member."""

    RESET = "reset"
    REQUESTED = "requested"
    EXCLUDED = "excluded"
    FAILED = "failed"
    PENDING = "pending"
    """Not applied yet: a staged apply (``apply(..., limit=N)``) stopped before this target."""


class NoticeKind(_Choice):
    """The kinds of message a bulk reset sends."""

    PASSWORD_RESET = "password_reset"
    CHANGE_REQUEST = "change_request"


class _AllType(enum.Enum):
    ALL = "ALL"

    def __repr__(self) -> str:
        return "ALL"


ALL: Literal[_AllType.ALL] = _AllType.ALL
"""Select every member of the directory."""

Selection = Iterable[str] | Literal[_AllType.ALL]

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")


def _to_enum(kind: type[E], value: Any) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise InvalidInputError(
            f"{kind.__name__} must be one of {choices}, not {value!r:.40}"
        ) from None


def _to_sign_in(value: Any) -> SignInMethod:
    return _to_enum(SignInMethod, value)


def _to_status(value: Any) -> MemberStatus:
    return _to_enum(MemberStatus, value)


def _to_role(value: Any) -> Role:
    return _to_enum(Role, value)


def _to_mode(value: Any) -> ResetMode:
    return _to_enum(ResetMode, value)


def check_text(value: object, *, what: str, limit: int, required: bool) -> None:
    """Refuse what cannot be a clean identifier or name.

    Raises:
        InvalidInputError: not a string, empty when required, longer than
            *limit* characters, or holding control characters or surrogates.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise InvalidInputError(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidInputError(f"{what} is longer than {limit} characters")
    if _CONTROL_OR_SURROGATE.search(value):
        raise InvalidInputError(f"{what} contains a control character")


def _optional_contact(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    raise InvalidInputError(f"a contact must be a string or None, not {type(value).__name__}")


_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
DEFAULT_LOCALE = "en"


def _to_locale(value: object) -> str:
    """A BCP 47 language tag (``"ko"``, ``"pt-BR"``; ``_`` read as ``-``); blank is English."""
    if value is None:
        return DEFAULT_LOCALE
    if not isinstance(value, str):
        raise InvalidInputError(f"locale must be a string, not {type(value).__name__}")
    tag = value.strip().replace("_", "-")
    if not tag:
        return DEFAULT_LOCALE
    if len(tag) > 35 or not _LOCALE.fullmatch(tag):
        raise InvalidInputError(
            f"locale must be a language tag such as ko or pt-BR, not {value!r:.40}"
        )
    return tag


def fold_login(login_id: str) -> str:
    """The key login IDs compare by: NFKC, then Unicode case folding.

    ``Rina@x`` and ``rina@x`` share a key; ``rina`` and ``rına`` (dotless i)
    do not, because case folding keeps them apart.
    """
    return unicodedata.normalize("NFKC", login_id).casefold()


@attrs.frozen
class Member:
    """One entry of the member directory.

    Args:
        member_id: The directory's stable ID (1-256 characters).
        login_id: What the member signs in with; compared by :func:`fold_login`.
        name: Display name.
        sign_in: :class:`SignInMethod` (or its value, ``"quick_login"``).
        mobile_phone: E.164 number, or ``None``; blank strings become ``None``.
        personal_email: A personal (non-work) address, or ``None``.
        status: :class:`MemberStatus` (or its value).
        role: :class:`Role` (or its value).
        locale: The member's language, a BCP 47 tag (``"en"``, ``"ko"``,
            ``"ja"``, ``"pt-BR"``); notices are written in it. Blank means ``"en"``.

    Raises:
        InvalidInputError: an ID is empty, too long, or has control characters;
            an enum value is unknown.
    """

    member_id: str
    login_id: str
    name: str = ""
    sign_in: SignInMethod = attrs.field(default=SignInMethod.PASSWORD, converter=_to_sign_in)
    mobile_phone: str | None = attrs.field(default=None, converter=_optional_contact)
    personal_email: str | None = attrs.field(default=None, converter=_optional_contact)
    status: MemberStatus = attrs.field(default=MemberStatus.ACTIVE, converter=_to_status)
    role: Role = attrs.field(default=Role.MEMBER, converter=_to_role)
    locale: str = attrs.field(default=DEFAULT_LOCALE, converter=_to_locale)

    def __attrs_post_init__(self) -> None:
        check_text(self.member_id, what="member_id", limit=MAX_ID_LENGTH, required=True)
        check_text(self.login_id, what="login_id", limit=MAX_ID_LENGTH, required=True)
        check_text(self.name, what="name", limit=MAX_TEXT_LENGTH, required=False)
        for what in ("mobile_phone", "personal_email"):
            contact = getattr(self, what)
            if contact is not None:
                check_text(contact, what=what, limit=MAX_ID_LENGTH, required=False)

    @property
    def can_self_recover(self) -> bool:
        """True when the member has a mobile phone number or a personal email (R5)."""
        return bool(self.mobile_phone or self.personal_email)

    @property
    def login_key(self) -> str:
        """The login ID as compared: NFKC, case-folded (see :func:`fold_login`)."""
        return fold_login(self.login_id)


_SIGN_INS = {m.value: m for m in SignInMethod}
_STATUSES = {m.value: m for m in MemberStatus}
_ROLES = {m.value: m for m in Role}


def member_from_store(
    member_id: str,
    login_id: str,
    name: str,
    sign_in: str,
    mobile_phone: str | None,
    personal_email: str | None,
    status: str,
    role: str,
    locale: str = DEFAULT_LOCALE,
) -> Member:
    """A :class:`Member` read back from a store that only ever held valid members.

    Skips re-validating what was validated when it was stored (a hot path:
    applying a plan reads every target back), but still refuses an enum value
    it does not know, or a field of the wrong type, through the full check.
    """
    try:
        fields = (
            member_id,
            login_id,
            name,
            _SIGN_INS[sign_in],
            mobile_phone or None,
            personal_email or None,
            _STATUSES[status],
            _ROLES[role],
            locale,
        )
    except (KeyError, TypeError):
        fields = None
    if fields is None or not (
        isinstance(member_id, str)
        and isinstance(login_id, str)
        and isinstance(name, str)
        and isinstance(locale, str)
        and _LOCALE.fullmatch(locale)
    ):
        return Member(
            member_id,
            login_id,
            name,
            sign_in=sign_in,
            mobile_phone=mobile_phone,
            personal_email=personal_email,
            status=status,
            role=role,
            locale=locale,
        )
    member = object.__new__(Member)
    for attribute, value in zip(MEMBER_FIELDS, fields, strict=True):
        object.__setattr__(member, attribute, value)
    return member


def _positive(instance: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidInputError(f"{attribute.name} must be a positive timedelta")


MEMBER_FIELDS = tuple(field.name for field in attrs.fields(Member))
"""The :class:`Member` fields, in order (``member_from_store`` takes them so)."""

MAX_SESSION_DEADLINE = timedelta(minutes=5)
DEFAULT_TEMPORARY_PASSWORD_TTL = timedelta(hours=24)
"""How long a force change's temporary password signs in (OWASP ASVS 4.0.3 2.3.1)."""
MAX_TEMPORARY_PASSWORD_TTL = timedelta(days=30)


def _threshold(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidInputError(f"{attribute.name} must be a whole number, 0 or more, or None")


def _ttl(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidInputError(f"{attribute.name} must be a positive timedelta or None")
    if value > MAX_TEMPORARY_PASSWORD_TTL:
        raise InvalidInputError(f"{attribute.name} may be at most 30 days (a temporary password)")


@attrs.frozen
class ResetPolicy:
    """What a bulk reset does.

    Args:
        mode: :attr:`ResetMode.FORCE_CHANGE` or :attr:`ResetMode.REQUEST_CHANGE`.
        new_password: The shared new password (R1): required for force change
            (unless ``generate_passwords``), forbidden for request change.
            Checked against ``rules`` by ``plan``. Never shown by ``repr``.
        generate_passwords: Force change: instead of one shared password, give
            each target its own random temporary password (20 symbols, 116.7
            bits, from the plan's secret key, so a resumed apply sends the
            same one). Each is hashed on its own (one Argon2id hash a member,
            spread over every core). They reach members only through the
            notices (with ``deliver_password``) or a hand-off file
            (``apply(..., handoff=path)``, created owner-only).
        require_change_at_next_login: Force change: the member must change the
            password at their next sign-in (default ``True``).
        temporary_password_ttl: Force change with ``require_change_at_next_login``:
            how long the temporary password signs in, as a
            :class:`~datetime.timedelta` (default 24 hours, at most 30 days).
            After it, a temporary password never changed no longer signs in
            (``authenticate`` says ``temporary_password_expired``); the member
            uses recovery or gets a new reset. OWASP ASVS 4.0.3 2.3.1 / ASVS
            5.0 6.4.1: initial secrets expire after a short period and never
            become the long-term password. ``None`` never expires them.
        follow_with_request: Force change: also send each target a change
            request (R6: force first, then request, when members *must* change).
        deliver_password: Force change: put the password in the
            ``PASSWORD_RESET`` notice. Off by default: OWASP ASVS 4.0.3 2.5.1
            warns against sending passwords; the precautions say so.
        session_deadline: Force change: every target's sessions end within
            this time (R3); at most 5 minutes.
        request_ttl: How long a change request stays valid (default 24 hours).
        include_actor: Let the acting administrator be a target (default: excluded).
        include_suspended: Let suspended members be targets.
        plan_ttl: How long a plan may wait for its first apply (default 1 hour).
        approval_threshold: Two-person approval for this plan: when it has
            more targets than this, a second administrator must approve it
            (``ResetService.approve``) before it is applied. ``None`` (the
            default) leaves it to the service's own ``approval_threshold``,
            which a host sets and a planner cannot lower; the stricter wins.
        rules: :class:`PasswordRules` for ``new_password``.

    Raises:
        InvalidInputError: a password given for request change or missing for
            force change; an option that belongs to the other mode; a
            non-positive duration; a ``session_deadline`` over 5 minutes.
    """

    mode: ResetMode = attrs.field(converter=_to_mode)
    new_password: str | None = attrs.field(default=None, kw_only=True, repr=False)
    generate_passwords: bool = attrs.field(default=False, kw_only=True)
    require_change_at_next_login: bool = attrs.field(default=True, kw_only=True)
    temporary_password_ttl: timedelta | None = attrs.field(
        default=DEFAULT_TEMPORARY_PASSWORD_TTL, kw_only=True, validator=_ttl
    )
    follow_with_request: bool = attrs.field(default=False, kw_only=True)
    deliver_password: bool = attrs.field(default=False, kw_only=True)
    session_deadline: timedelta = attrs.field(
        default=timedelta(minutes=5), kw_only=True, validator=_positive
    )
    request_ttl: timedelta = attrs.field(
        default=timedelta(hours=24), kw_only=True, validator=_positive
    )
    include_actor: bool = attrs.field(default=False, kw_only=True)
    include_suspended: bool = attrs.field(default=False, kw_only=True)
    plan_ttl: timedelta = attrs.field(default=timedelta(hours=1), kw_only=True, validator=_positive)
    approval_threshold: int | None = attrs.field(default=None, kw_only=True, validator=_threshold)
    rules: PasswordRules = attrs.field(factory=PasswordRules, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.mode is ResetMode.FORCE_CHANGE:
            if self.generate_passwords and self.new_password is not None:
                raise InvalidInputError("generate_passwords takes no new_password")
            if not self.generate_passwords and self.new_password is None:
                raise InvalidInputError("force change needs new_password or generate_passwords")
        else:
            if self.new_password is not None:
                raise InvalidInputError("request change takes no new_password")
            if self.follow_with_request or self.deliver_password or self.generate_passwords:
                raise InvalidInputError(
                    "follow_with_request, deliver_password and generate_passwords "
                    "belong to force change"
                )
        if self.session_deadline > MAX_SESSION_DEADLINE:
            raise InvalidInputError("session_deadline may be at most 5 minutes (R3)")
        if not isinstance(self.rules, PasswordRules):
            raise InvalidInputError("rules must be a PasswordRules")

    def settings(self) -> PlanSettings:
        """The policy without its password: what a stored plan keeps."""
        return PlanSettings(
            **{field.name: getattr(self, field.name) for field in attrs.fields(PlanSettings)}
        )


@attrs.frozen
class PlanSettings:
    """A :class:`ResetPolicy` as a plan keeps it: every option but the password."""

    mode: ResetMode
    generate_passwords: bool = False
    require_change_at_next_login: bool = True
    temporary_password_ttl: timedelta | None = None
    follow_with_request: bool = False
    deliver_password: bool = False
    session_deadline: timedelta = timedelta(minutes=5)
    request_ttl: timedelta = timedelta(hours=24)
    include_actor: bool = False
    include_suspended: bool = False
    plan_ttl: timedelta = timedelta(hours=1)
    approval_threshold: int | None = None

    def temporary_password_expiry(self, at: datetime) -> datetime | None:
        """When a temporary password set at *at* by this plan stops signing in, or ``None``.

        Only a force change's password that must be changed at next sign-in is
        temporary; it expires ``temporary_password_ttl`` after it was set.
        """
        if (
            self.mode is not ResetMode.FORCE_CHANGE
            or not self.require_change_at_next_login
            or self.temporary_password_ttl is None
        ):
            return None
        return at + self.temporary_password_ttl

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; durations in seconds."""
        return {
            "mode": self.mode.value,
            "generate_passwords": self.generate_passwords,
            "require_change_at_next_login": self.require_change_at_next_login,
            "temporary_password_ttl": (
                None
                if self.temporary_password_ttl is None
                else self.temporary_password_ttl.total_seconds()
            ),
            "follow_with_request": self.follow_with_request,
            "deliver_password": self.deliver_password,
            "session_deadline": self.session_deadline.total_seconds(),
            "request_ttl": self.request_ttl.total_seconds(),
            "include_actor": self.include_actor,
            "include_suspended": self.include_suspended,
            "plan_ttl": self.plan_ttl.total_seconds(),
            "approval_threshold": self.approval_threshold,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanSettings:
        """The inverse of :meth:`to_json`."""
        durations = ("session_deadline", "request_ttl", "plan_ttl", "temporary_password_ttl")
        values: dict[str, Any] = {
            k: timedelta(seconds=v) if k in durations and v is not None else v
            for k, v in data.items()
        }
        values["mode"] = ResetMode(values["mode"])
        return cls(**values)


@attrs.frozen
class Exclusion:
    """A selected member who is not a target, and why (R2, R8)."""

    member_id: str
    reason: ExclusionReason


@attrs.frozen
class PlanWarning:
    """A target the administrator should know about (R5)."""

    member_id: str
    kind: WarningKind


@attrs.frozen
class PlanEntry:
    """One selected member of a plan, as a store keeps it.

    Attributes:
        member_id: The selected ID.
        member: The directory entry when the plan was made (``None`` for an
            unknown ID).
        reason: Why the member is excluded, or ``None`` for a target.
        warning: A warning about the target, if any.
    """

    member_id: str
    member: Member | None = None
    reason: ExclusionReason | None = None
    warning: WarningKind | None = None


def _table(headers: tuple[str, ...], rows: Iterable[tuple[object, ...]], limit: int = 50) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        if index == limit:
            body.append(f'<tr><td colspan="{len(headers)}">…</td></tr>')
            break
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class PagedSequence(Sequence[T]):
    """A read-only sequence kept elsewhere (a store) and read a page at a time.

    Big plans and results stay in the store: their members are fetched when
    indexed, sliced or iterated, a page at a time, so memory stays bounded
    however many members a plan has. Compares equal to any sequence with
    the same items.

    Args:
        length: How many items there are.
        fetch: ``fetch(start, stop)`` returns the items in ``[start, stop)``.
        page_size: Items fetched per page while iterating.
    """

    __hash__ = None  # type: ignore[assignment]  # equal to tuples, so not hashable

    def __init__(
        self, length: int, fetch: Callable[[int, int], Sequence[T]], *, page_size: int = 1000
    ) -> None:
        self._length = length
        self._fetch = fetch
        self._page_size = page_size

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            positions = range(*index.indices(self._length))
            if not positions:
                return ()
            low, high = min(positions), max(positions) + 1
            block = self._fetch(low, high)
            if positions.step == 1:
                return tuple(block)
            return tuple(block[i - low] for i in positions)
        index = operator.index(index)  # a TypeError for what a tuple refuses too
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError("index out of range")
        return self._fetch(position, position + 1)[0]

    def __iter__(self) -> Iterator[T]:
        for start in range(0, self._length, self._page_size):
            yield from self._fetch(start, min(start + self._page_size, self._length))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        return f"<{len(self):,} item(s), read from the store>"


IN_MEMORY_LIMIT = 10_000
"""Plans and results of at most this many members are held in memory; larger
ones stay in the store and are read a page at a time (:class:`PagedSequence`)."""


def _frozen_sequence(items: Iterable[Any]) -> Sequence[Any]:
    return items if isinstance(items, PagedSequence) else tuple(items)


@attrs.frozen
class ResetPlan:
    """A dry run: who would be reset, who is excluded and why, and what to heed.

    Made by ``ResetService.plan``, kept by the store, applied by
    ``ResetService.apply(plan, confirm=plan.confirmation)``.

    Attributes:
        plan_id: Unique ID.
        mode: The :class:`ResetMode`.
        created_at: Aware UTC instant the plan was made.
        actor: Member ID of the administrator who made it.
        targets: Members who will be reset, in selection order (a tuple, or
            for a plan read back from a store, a :class:`PagedSequence`
            that reads the members a page at a time).
        excluded: Selected members who will not, with a reason each.
        warnings: Per-target warnings (R5).
        precautions: Sentences the administrator must read before confirming.
        confirmation: The code ``apply`` asks for (R7). Not a secret: it
            proves the administrator saw this plan.
        settings: The policy's options, without the password.
    """

    plan_id: str
    mode: ResetMode
    created_at: datetime
    actor: str
    targets: Sequence[Member] = attrs.field(converter=_frozen_sequence)
    excluded: Sequence[Exclusion] = attrs.field(converter=_frozen_sequence)
    warnings: Sequence[PlanWarning] = attrs.field(converter=_frozen_sequence)
    precautions: tuple[str, ...]
    confirmation: str
    settings: PlanSettings

    @property
    def expires_at(self) -> datetime:
        """When the plan can no longer be started (``created_at + plan_ttl``)."""
        return self.created_at + self.settings.plan_ttl

    @property
    def selected(self) -> int:
        """How many distinct members were selected: targets plus exclusions."""
        return len(self.targets) + len(self.excluded)

    def exclusion_counts(self) -> dict[ExclusionReason, int]:
        """Excluded members counted by reason."""
        return dict(Counter(e.reason for e in self.excluded))

    def warning_counts(self) -> dict[WarningKind, int]:
        """Warnings counted by kind."""
        return dict(Counter(w.kind for w in self.warnings))

    def __repr__(self) -> str:
        return (
            f"<ResetPlan {self.plan_id} {self.mode.value}: {len(self.targets)} target(s), "
            f"{len(self.excluded)} excluded, {len(self.warnings)} warning(s), "
            f"confirmation {self.confirmation}>"
        )

    def _repr_html_(self) -> str:
        summary = _table(
            ("plan", "mode", "targets", "excluded", "warnings", "confirmation"),
            [
                (
                    self.plan_id,
                    self.mode.value,
                    len(self.targets),
                    len(self.excluded),
                    len(self.warnings),
                    self.confirmation,
                )
            ],
        )
        precautions = "".join(f"<li>{html.escape(p)}</li>" for p in self.precautions)
        return (
            f"<div><strong>Reset plan</strong>{summary}<p>Precautions</p><ul>{precautions}</ul>"
            f"<p>Excluded</p>{_table(('member', 'reason'), ((e.member_id, e.reason.value) for e in self.excluded))}"  # noqa: E501
            f"<p>Warnings</p>{_table(('member', 'warning'), ((w.member_id, w.kind.value) for w in self.warnings))}"  # noqa: E501
            "</div>"
        )


@attrs.frozen
class MemberOutcome:
    """What happened to one selected member.

    Attributes:
        member_id: The member.
        outcome: :class:`Outcome`.
        reason: For ``EXCLUDED``, the :class:`ExclusionReason` value; for
            ``FAILED``, what failed; otherwise ``None`` or a note such as
            why a notice is not yet delivered. Never a secret.
        sessions_revoked: Force change: the session port confirmed the
            member's sessions ended.
        notified: Every notice for the member was handed to the notifier.
        login_id: The member's login ID, for reports (empty if unknown).
        at: When the member's effect was stored (aware UTC), if it was.
        attempted_at: When a failed session revocation was last tried.
    """

    member_id: str
    outcome: Outcome
    reason: str | None = None
    sessions_revoked: bool = False
    notified: bool = False
    login_id: str = ""
    at: datetime | None = attrs.field(default=None, eq=False)
    attempted_at: datetime | None = attrs.field(default=None, eq=False)


def _read_only(outcomes: Mapping[str, MemberOutcome]) -> Mapping[str, MemberOutcome]:
    if isinstance(outcomes, (dict, MappingProxyType)):
        return MappingProxyType(dict(outcomes))
    return outcomes  # a read-only view over a store, read a page at a time


NO_CHANNEL = "no_channel"
"""The reason of a target who could get no notice: a password-reset notice goes to a
personal email or a mobile phone (the member is signed out of the work account), and
they have neither. The plan's precautions counted them (``CANNOT_SELF_RECOVER``)."""


REQUEST_CANCELLED = "request_cancelled"
"""The reason of a target whose change request an administrator cancelled before its
notice went out: it is never sent (``ResetService.cancel_change_requests``)."""


def notice_settled(outcome: MemberOutcome) -> bool:
    """Whether nothing is left to send a target: notified, no channel for the notice
    (:data:`NO_CHANNEL`), or a change request that was cancelled (:data:`REQUEST_CANCELLED`)."""
    parts = (outcome.reason or "").split("; ")
    return (
        outcome.notified
        or NO_CHANNEL in parts
        or (outcome.outcome is Outcome.REQUESTED and REQUEST_CANCELLED in parts)
    )


def is_unfinished(outcome: MemberOutcome) -> bool:
    """True for a target whose reset failed, or whose sign-out or notice is unconfirmed.

    A target with no channel for their notice (:data:`NO_CHANNEL`) is finished:
    trying again cannot reach them; the administrator hands the news over. So
    is one whose change request was cancelled (:data:`REQUEST_CANCELLED`).
    """
    unnotified = not notice_settled(outcome)
    return (
        outcome.outcome is Outcome.FAILED
        or (outcome.outcome is Outcome.RESET and (not outcome.sessions_revoked or unnotified))
        or (outcome.outcome is Outcome.REQUESTED and unnotified)
    )


@attrs.frozen
class ResultSummary:
    """Counts and unfinished members of a result, gathered while applying.

    Attributes:
        counts: Members per :class:`Outcome` (outcomes with none may be absent).
        unfinished: IDs of unfinished targets (see :func:`is_unfinished`), in order.
    """

    counts: Mapping[Outcome, int]
    unfinished: tuple[str, ...] = ()

    @classmethod
    def of(cls, outcomes: Iterable[MemberOutcome]) -> ResultSummary:
        """Count *outcomes*."""
        counts: Counter[Outcome] = Counter()
        unfinished = []
        for outcome in outcomes:
            counts[outcome.outcome] += 1
            if is_unfinished(outcome):
                unfinished.append(outcome.member_id)
        return cls(dict(counts), tuple(unfinished))


@attrs.frozen
class ChangeRequest:
    """One change request as an administrator sees it: never its token.

    Attributes:
        member_id: The member it lets set a password.
        plan_id: The plan that issued it.
        issued_at: When it was issued (aware UTC).
        expires_at: When it stops working (aware UTC).
        used_at: When the member used it, or ``None``.
        revoked_at: When it was superseded by a newer request or cancelled, or ``None``.
        status: ``"live"`` (usable now), ``"used"``, ``"expired"``, ``"revoked"``
            (superseded or cancelled), or ``"dead"`` (the password changed
            after it was issued).
    """

    member_id: str
    plan_id: str
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None
    status: Literal["live", "used", "expired", "revoked", "dead"]

    @property
    def live(self) -> bool:
        """Whether the member can still use it."""
        return self.status == "live"


@attrs.frozen
class ChunkResult:
    """What one ``ResetService.apply_chunk`` call did: one chunk of a plan's targets.

    Attributes:
        plan_id: The plan.
        index: The chunk's number (0-based).
        start: First target index of the chunk (plan order).
        stop: One past its last target index.
        counts: The chunk's targets per :class:`Outcome` (none absent when zero).
        unfinished: IDs of the chunk's unfinished targets (see :func:`is_unfinished`).
        chunks_left: Chunks of the plan not yet done after this one.
        result: The whole plan's :class:`ResetResult` when this call finished
            the plan's last chunk and then the plan; otherwise ``None``.
        taken_over: The chunk had been claimed before by a worker that did
            not finish it (a crash, or a lease that ran out).
    """

    plan_id: str
    index: int
    start: int
    stop: int
    counts: Mapping[Outcome, int]
    unfinished: tuple[str, ...] = ()
    chunks_left: int = 0
    result: ResetResult | None = None
    taken_over: bool = False

    def count(self, outcome: Outcome) -> int:
        """How many of the chunk's targets ended with *outcome*."""
        return self.counts.get(outcome, 0)


@attrs.frozen
class ResetResult:
    """What an apply did, one :class:`MemberOutcome` per selected member.

    Attributes:
        plan_id: The plan applied.
        outcomes: Member ID to :class:`MemberOutcome`: the plan's targets in
            selection order, then its exclusions.
        started_at: When this plan's first apply started (aware UTC).
        finished_at: When this apply finished (aware UTC).
        summary: Counts gathered while applying, so that counting a result of
            a million members does not read it all again (computed from
            ``outcomes`` when not given).
    """

    plan_id: str
    outcomes: Mapping[str, MemberOutcome] = attrs.field(converter=_read_only)
    started_at: datetime
    finished_at: datetime
    summary: ResultSummary | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)

    def _summary(self) -> ResultSummary:
        if self.summary is None:
            return ResultSummary.of(self.outcomes.values())
        return self.summary

    def count(self, outcome: Outcome) -> int:
        """How many selected members ended with *outcome*."""
        return self._summary().counts.get(outcome, 0)

    def counts(self) -> dict[Outcome, int]:
        """Every outcome with its count (zeros included; ``PENDING`` only in a staged result)."""
        return {
            outcome: self.count(outcome)
            for outcome in Outcome
            if outcome is not Outcome.PENDING or self.count(outcome)
        }

    @property
    def remaining(self) -> int:
        """Targets a staged apply (``limit=N``) left for a later apply (``PENDING``)."""
        return self.count(Outcome.PENDING)

    def __iter__(self) -> Iterator[MemberOutcome]:
        return iter(self.outcomes.values())

    @property
    def unfinished(self) -> tuple[str, ...]:
        """Targets whose reset failed, or whose sessions or notices are unconfirmed."""
        return self._summary().unfinished

    @property
    def ok(self) -> bool:
        """True when every target is fully done: no failure, no unconfirmed sign-out or
        notice, none left for later."""
        return not self.unfinished and not self.remaining

    def raise_for_failures(self) -> None:
        """Raise if any target failed or is not fully done; never raises on its own.

        Raises:
            PartialResetError: listing the IDs of members whose reset failed,
                whose sessions are not confirmed revoked, or whose notices are
                not delivered to the notifier (see :attr:`unfinished`).
        """
        if self.unfinished:
            raise PartialResetError(self.unfinished)

    def __repr__(self) -> str:
        counts = ", ".join(f"{o.value}={n}" for o, n in self.counts().items())
        return f"<ResetResult {self.plan_id}: {counts}>"

    def _repr_html_(self) -> str:
        summary = _table(
            ("plan", *(o.value for o in self.counts())),
            [(self.plan_id, *self.counts().values())],
        )
        rows = (
            (
                o.member_id,
                o.login_id,
                o.outcome.value,
                o.reason or "",
                o.sessions_revoked,
                o.notified,
            )
            for o in self.outcomes.values()
        )
        headers = ("member", "login", "outcome", "reason", "sessions revoked", "notified")
        return f"<div><strong>Reset result</strong>{summary}{_table(headers, rows)}</div>"


@attrs.frozen
class AuthResult:
    """The answer of ``ResetService.authenticate``.

    Attributes:
        ok: The login ID and password are right and the member may sign in.
        member_id: The member, when ``ok``; ``None`` otherwise.
        must_change_password: The member must change the password now.
        reason: Why not ``ok`` (``"invalid"``, ``"too_long"``), for logs;
            do not show it to the person signing in.
    """

    ok: bool
    member_id: str | None = None
    must_change_password: bool = False
    reason: str | None = None


@attrs.frozen
class Notice:
    """One message to one member, handed to the notifier.

    Attributes:
        member_id: The member.
        kind: :class:`NoticeKind`.
        token: The change request's reset token (``CHANGE_REQUEST`` only).
            Secret: never in ``repr``.
        password: The new password, only when the policy sets
            ``deliver_password``. Secret: never in ``repr``.
        expires_at: When the token expires (aware UTC), for ``CHANGE_REQUEST``.
        idempotency_key: ``plan:member:kind``; a notifier drops a key it
            already delivered.
        recipient: The mail address to use: the login address for a change
            request (the member is still signed in), the personal email for a
            password reset (they were signed out of the work account), or
            ``None`` when they have none (then ``phone`` is set).
        actor: Member ID of the administrator who reset the password.
        issued_at: When the effect was stored.
        plan_id: The plan.
        name: The member's display name.
        locale: The member's language, a BCP 47 tag (``"en"``, ``"ko"``,
            ``"ja"``): the language of the message.
        phone: The member's mobile phone number, for a host that sends by SMS.
    """

    member_id: str
    kind: NoticeKind
    token: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    expires_at: datetime | None = None
    idempotency_key: str = ""
    recipient: str | None = None
    actor: str | None = None
    issued_at: datetime | None = None
    plan_id: str | None = None
    name: str = ""
    locale: str = "en"
    phone: str | None = None

    def without_secrets(self) -> Notice:
        """A copy with the token and password erased."""
        return attrs.evolve(self, token=None, password=None)


@attrs.frozen
class AuditEvent:
    """One line of the audit log. Never holds a secret.

    Attributes:
        at: Aware UTC instant.
        action: What happened, for example ``"plan.created"``,
            ``"member.reset"``, ``"member.requested"``, ``"sessions.revoked"``,
            ``"notice.sent"``, ``"token.redeemed"``, ``"password.changed"``.
        actor: Who did it (member ID), or ``None`` for the member themself.
        plan_id: The plan, if any.
        member_id: The member affected, if any.
        detail: A short, secret-free note.

    A member's reset records three steps: the effect (``member.reset`` or
    ``member.requested``), the sign-out (``sessions.revoked``) and the
    notices (``notice.sent``). When they commit separately, each has its own
    event; when the store applies them in one transaction (the SQLite store's
    set-based apply), the effect's event records all of them and its
    ``detail`` says so (``"sessions revoked; notice sent: password_reset"``).
    :attr:`steps` reads either form.
    """

    at: datetime
    action: str
    actor: str | None = None
    plan_id: str | None = None
    member_id: str | None = None
    detail: str = ""

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps this event records: its ``action``, then any committed with it.

        ``AuditEvent(at, "member.reset", detail="sessions revoked; notice sent:
        password_reset").steps == ("member.reset", "sessions.revoked", "notice.sent")``.
        """
        steps = [self.action]
        if self.action in _EFFECT_ACTIONS:
            for part in self.detail.split("; "):
                if part == _SESSIONS_REVOKED:
                    steps.append("sessions.revoked")
                elif part.startswith(f"{_NOTICE_SENT}: "):
                    steps.append("notice.sent")
        return tuple(steps)

    @staticmethod
    def folded_detail(*, sessions_revoked: bool, notices: Sequence[str]) -> str:
        """The ``detail`` of an effect whose sign-out and notices committed with it.

        Args:
            sessions_revoked: The member's sessions were ended in the same transaction.
            notices: The notice kinds (``NoticeKind`` values) queued in it.
        """
        parts = [_SESSIONS_REVOKED] if sessions_revoked else []
        if notices:
            parts.append(f"{_NOTICE_SENT}: {', '.join(notices)}")
        return "; ".join(parts)


_EFFECT_ACTIONS = frozenset({"member.reset", "member.requested"})
_SESSIONS_REVOKED = "sessions revoked"
_NOTICE_SENT = "notice sent"
