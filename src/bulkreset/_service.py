"""ResetService: the use cases, orchestrating the three ports."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Literal, TextIO

import argon2
import attrs
from argon2.exceptions import InvalidHashError, VerificationError

from . import _planning
from ._applying import LEASE, ApplyRun, chunks
from ._audit_export import AUDIT_FORMATS, select_events, write_audit
from ._clock import Clock, read_clock, system_clock, to_utc
from ._handoff import HandoffFile
from ._model import (
    ALL,
    REQUEST_CANCELLED,
    AuditEvent,
    AuthResult,
    ChangeRequest,
    ChunkResult,
    Member,
    MemberStatus,
    PlanSettings,
    ResetMode,
    ResetPlan,
    ResetPolicy,
    ResetResult,
    Role,
    Selection,
    SignInMethod,
    fold_login,
)
from ._passwords import PasswordRules, normalize_password
from ._tokens import MAX_TOKEN_LENGTH, token_digest, token_is_live
from .errors import (
    ApprovalRequiredError,
    AuthorizationError,
    ConfirmationError,
    InvalidCredentialsError,
    InvalidInputError,
    InvalidTokenError,
    PasswordPolicyError,
    PlanInProgressError,
    PlanNotFoundError,
    StalePlanError,
    TemporaryPasswordExpiredError,
)
from .ports import (
    ApprovalStorage,
    ChangeRequestStorage,
    ChunkedStorage,
    CredentialWrite,
    EffectBatch,
    Notifier,
    PlanRecord,
    PlanWriter,
    SessionStore,
    SetBasedStorage,
    Storage,
    TokenRecord,
)
from .ports import Credential as _Credential

__all__ = ["ProgressCallback", "ResetService"]

log = logging.getLogger("bulkreset")

DEFAULT_CHUNK = 1000
"""Targets per transaction (and members per page) on the port-by-port path."""
SET_BASED_CHUNK = 10_000
"""Targets per transaction when the store applies chunks in SQL: a commit costs
a WAL checkpoint and rewrites every page the chunk touched (the token digests'
index is written all over), so fewer, larger commits are faster; 10,000 keeps a
chunk near a quarter of a second, so progress still moves several times a second."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with counts of targets."""

AuditSink = Callable[[AuditEvent], None]


_MAX_LOGIN_LENGTH = 1024


def _check_filters(**filters: object) -> None:
    for name, value in filters.items():
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string")


def _change_request(record: TokenRecord, generation: int, now: datetime) -> ChangeRequest:
    status: Literal["live", "used", "expired", "revoked", "dead"]
    if record.used_at is not None:
        status = "used"
    elif record.revoked_at is not None:
        status = "revoked"
    elif now >= record.expires_at:
        status = "expired"
    elif record.generation != generation:
        status = "dead"
    else:
        status = "live"
    return ChangeRequest(
        member_id=record.member_id,
        plan_id=record.plan_id,
        issued_at=record.issued_at,
        expires_at=record.expires_at,
        used_at=record.used_at,
        revoked_at=record.revoked_at,
        status=status,
    )


def _expired(credential: _Credential, now: datetime) -> bool:
    """A temporary password (one that must be changed) past its expiry."""
    return (
        credential.must_change
        and credential.expires_at is not None
        and now >= credential.expires_at
    )


def _describe(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 60 == 0:
        return f"{seconds // 60} minute(s)"
    return f"{seconds} second(s)"


class ResetService:
    """Plans and applies bulk password resets, and serves the member-side flows.

    Args:
        store: The :class:`~bulkreset.ports.Storage` port.
        notifier: The :class:`~bulkreset.ports.Notifier` port.
        sessions: The :class:`~bulkreset.ports.SessionStore` port.
        hasher: An :class:`argon2.PasswordHasher`; by default argon2-cffi's
            own defaults (the RFC 9106 low-memory profile: Argon2id, 3
            iterations, 64 MiB, 4 lanes).
        clock: Zero-argument callable returning an aware ``datetime``; any
            UTC offset, normalized to UTC. Naive datetimes are refused
            (``InvalidInputError``). Default: the system clock.
        audit: Optional callable that receives every audit event after the
            store recorded it (to forward to a SIEM, say).
        rules: :class:`~bulkreset.PasswordRules` for passwords members set
            themselves (``change_password``, ``redeem``, ``set_password``).
        chunk_size: Targets written per transaction by ``apply``, and members
            read per page by ``plan``. Default: 10,000 per transaction when the
            store applies whole chunks in SQL (:class:`~bulkreset.ports.SetBasedStorage`,
            such as the SQLite store), else 1,000.
        sleep: Waits between session revocation retries, in seconds
            (default :func:`time.sleep`; tests pass one that moves a fake clock).
        hash_workers: Hashes computed at once for generated per-member
            passwords (default: one per core; see :mod:`bulkreset._hashing`).
        approval_threshold: Two-person approval: a plan with more targets than
            this cannot be applied (nor split for workers) until a second
            administrator approves it with :meth:`approve`; ``0`` makes every
            plan need it; ``None`` (the default) none. It is the host's
            setting, not the planner's, so a planner cannot waive it; it is
            checked when the plan is applied, against the setting then.
        lease: How long an apply's claim on its plan (or a worker's on its
            chunk) lasts unless renewed, as a :class:`~datetime.timedelta`
            (default 2 minutes, at least 1 second). It is renewed after every
            ``chunk_size`` targets, so keep it well above the time one chunk
            takes; a crashed apply's plan (or chunk) is free again after it.

    A service object holds no per-call state: share one across threads if its
    ports allow it.
    """

    def __init__(
        self,
        store: Storage,
        notifier: Notifier,
        sessions: SessionStore,
        *,
        hasher: argon2.PasswordHasher | None = None,
        clock: Clock | None = None,
        audit: AuditSink | None = None,
        rules: PasswordRules | None = None,
        chunk_size: int | None = None,
        sleep: Callable[[float], None] | None = None,
        hash_workers: int | None = None,
        lease: timedelta = LEASE,
        approval_threshold: int | None = None,
    ) -> None:
        if approval_threshold is not None and (
            not isinstance(approval_threshold, int)
            or isinstance(approval_threshold, bool)
            or approval_threshold < 0
        ):
            raise InvalidInputError("approval_threshold must be a whole number, 0 or more")
        self.approval_threshold = approval_threshold
        if not isinstance(lease, timedelta) or lease < timedelta(seconds=1):
            raise InvalidInputError("lease must be a timedelta of at least 1 second")
        if chunk_size is not None and (
            not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
        ):
            raise InvalidInputError("chunk_size must be a whole number of at least 1")
        self.store = store
        self.notifier = notifier
        self.sessions = sessions
        self.hasher = hasher if hasher is not None else argon2.PasswordHasher()
        self.clock: Clock = clock if clock is not None else system_clock
        self.rules = rules if rules is not None else PasswordRules()
        self._audit_sink = audit
        self._chunk_size = chunk_size or DEFAULT_CHUNK
        self._set_based_chunk = chunk_size or SET_BASED_CHUNK
        self._sleep = sleep if sleep is not None else time.sleep
        self.hash_workers = hash_workers
        self._lease = lease
        self._dummy_hash: str | None = None

    def __repr__(self) -> str:
        return (
            f"<ResetService store={type(self.store).__name__} "
            f"notifier={type(self.notifier).__name__} sessions={type(self.sessions).__name__}>"
        )

    # ------------------------------------------------------------------ helpers

    def _now(self) -> datetime:
        return read_clock(self.clock)

    def _hash(self, password: str) -> str:
        return self.hasher.hash(normalize_password(password))

    def _verify(self, password_hash: str, password: str) -> bool:
        # "surrogatepass" lets a lone surrogate through to a hash that cannot
        # match (the rules never let one into a password) at the usual cost.
        secret = normalize_password(password).encode("utf-8", "surrogatepass")
        try:
            return self.hasher.verify(password_hash, secret)
        except (VerificationError, InvalidHashError):
            return False

    def _burn_one_verification(self, password: str) -> None:
        """Spend what a real verification costs, so unknown logins are not faster."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        self._verify(self._dummy_hash, password)

    def _emit(self, events: Sequence[AuditEvent]) -> None:
        if self._audit_sink is not None:
            for event in events:
                self._audit_sink(event)

    def _authorize(self, actor: object) -> Member:
        if not isinstance(actor, str) or not actor or len(actor) > 256:
            raise AuthorizationError("the actor must be a member ID")
        try:
            member = self.store.get_members([actor]).get(actor)
        except UnicodeError:
            member = None
        if member is None:
            raise AuthorizationError("unknown actor: only administrators may reset passwords")
        if not member.role.is_admin or member.status is not MemberStatus.ACTIVE:
            raise AuthorizationError("only active administrators may reset passwords")
        return member

    def _selected_pages(
        self, selected: list[str] | None
    ) -> Iterator[tuple[list[str], dict[str, Member]]]:
        """The selection a page at a time: IDs in order, and the known members among them.

        *selected* is the distinct IDs in order, or ``None`` for every member.
        """
        if selected is None:
            for page in self.store.iter_members(page_size=self._chunk_size):
                yield [m.member_id for m in page], {m.member_id: m for m in page}
            return
        for chunk in chunks(selected, self._chunk_size):
            yield list(chunk), self.store.get_members(chunk)

    def _classify(
        self,
        writer: PlanWriter,
        selected: list[str] | None,
        *,
        actor: Member,
        settings: PlanSettings,
        folded_password: str | None,
    ) -> _planning.PlanTally:
        """Sort the selection into the plan being written: in the store when it can."""
        if isinstance(self.store, SetBasedStorage):
            counts = self.store.classify_into_plan(
                writer, selected, actor=actor, settings=settings, folded_password=folded_password
            )
            if counts is not None:
                return _planning.PlanTally.from_counts(counts)
        tally = _planning.PlanTally()
        for ids, members in self._selected_pages(selected):
            quick = [m for m in members if members[m].sign_in is SignInMethod.QUICK_LOGIN]
            force = settings.mode is ResetMode.FORCE_CHANGE
            with_password = self.store.get_credentials(quick) if force and quick else {}
            entries = []
            for member_id in ids:
                entry = _planning.classify(
                    member_id,
                    members.get(member_id),
                    actor=actor,
                    settings=settings,
                    has_password=member_id in with_password,
                )
                if (
                    folded_password is not None
                    and entry.reason is None
                    and entry.member is not None
                    and entry.member.login_key == folded_password
                ):
                    raise PasswordPolicyError(("same_as_login_id",))
                tally.add(entry)
                entries.append(entry)
            writer.add(entries)
        return tally

    # ------------------------------------------------------------------ plan

    def plan(self, selection: Selection, policy: ResetPolicy, *, actor: str) -> ResetPlan:
        """Make a dry run (R7): who would be reset, who is excluded and why.

        Nothing changes for any member: the plan itself is kept by the store
        (so another process can apply it) with an audit event, and a force
        change's password is hashed once, here (SPEC §5). The selection is
        read and written a page at a time (``chunk_size``), so memory stays
        bounded for any number of members; the plan returned may read its
        members back from the store a page at a time.

        Args:
            selection: An iterable of member IDs (repeats collapse, unknown
                IDs are excluded as ``UNKNOWN_MEMBER``), or :data:`ALL`.
            policy: The :class:`ResetPolicy`.
            actor: Member ID of the administrator making the plan.

        Raises:
            InvalidInputError: *selection* or *policy* is malformed.
            AuthorizationError: *actor* is unknown, inactive or not an administrator.
            PasswordPolicyError: the force-change password breaks ``policy.rules``
                (also when it equals a target's login ID).
        """
        if not isinstance(policy, ResetPolicy):
            raise InvalidInputError("policy must be a ResetPolicy")
        now = self._now()
        actor_member = self._authorize(actor)
        settings = policy.settings()
        if self.approval_threshold is not None:
            # Kept with the plan: any process applying it (the command line, a worker
            # configured without the threshold) still needs the approval.
            given = (self.approval_threshold, settings.approval_threshold)
            settings = attrs.evolve(
                settings, approval_threshold=min(t for t in given if t is not None)
            )
        force = policy.mode is ResetMode.FORCE_CHANGE
        password_hash = password = token_key = None
        folded_password = None
        if force and policy.new_password is not None:  # one shared password
            policy.rules.check(policy.new_password)  # the login-ID rule is checked below
            folded_password = fold_login(policy.new_password)
            password_hash = self._hash(policy.new_password)
            if policy.deliver_password or getattr(self.store, "hashes_each_member", False):
                # kept (SPEC §5) until every notice is out, or every member has their own hash
                password = policy.new_password
        if not force or policy.follow_with_request or policy.generate_passwords:
            token_key = secrets.token_bytes(32)  # derives tokens and generated passwords
        selected = None if selection is ALL else _planning.dedupe_selection(selection)
        plan_id = _planning.new_plan_id()
        with self.store.write_plan(plan_id) as writer:
            tally = self._classify(
                writer,
                selected,
                actor=actor_member,
                settings=settings,
                folded_password=folded_password,
            )
            plan = ResetPlan(
                plan_id=plan_id,
                mode=policy.mode,
                created_at=now,
                actor=actor_member.member_id,
                targets=(),
                excluded=(),
                warnings=(),
                precautions=tally.precautions(settings)
                + self._approval_precaution(tally.targets, settings),
                confirmation=_planning.new_confirmation_code(),
                settings=settings,
            )
            event = AuditEvent(
                at=now,
                action="plan.created",
                actor=actor_member.member_id,
                plan_id=plan_id,
                detail=f"{policy.mode.value}: {tally.targets} target(s), "
                f"{sum(tally.excluded.values())} excluded",
            )
            record = PlanRecord(
                plan, password_hash=password_hash, password=password, token_key=token_key
            )
            writer.finish(record, event)
        self._emit([event])
        log.info("planned %s: %d targets", plan_id, tally.targets)
        return self.load_plan(plan_id)

    def load_plan(self, plan_id: str) -> ResetPlan:
        """The stored plan with this ID, as ``plan`` returned it.

        Raises:
            PlanNotFoundError: no such plan.
        """
        return self._load_record(plan_id).plan

    def _load_record(self, plan_id: object) -> PlanRecord:
        if not isinstance(plan_id, str) or not plan_id or len(plan_id) > 64:
            raise PlanNotFoundError(str(plan_id)[:64])
        try:
            record = self.store.load_plan(plan_id)
        except UnicodeError:
            record = None
        if record is None:
            raise PlanNotFoundError(plan_id)
        return record

    # ------------------------------------------------------------------ apply

    def apply(
        self,
        plan: ResetPlan | str,
        *,
        confirm: str | None,
        progress: ProgressCallback | None = None,
        handoff: str | os.PathLike[str] | None = None,
        limit: int | None = None,
    ) -> ResetResult:
        """Apply a confirmed plan; safe to call again to resume or re-check it.

        Targets are re-checked against the directory as it is now (a member
        deleted, suspended or otherwise changed since planning is reported,
        not blindly reset), then written in chunks, each chunk atomically with
        its progress and audit events. Then, per chunk, sessions are revoked
        (force change) and notices sent. Calling ``apply`` again resumes:
        finished effects are never repeated, and only unfinished members are
        retried.

        Args:
            plan: The :class:`ResetPlan` or its ID.
            confirm: The plan's confirmation code (case, spaces and dashes ignored).
            progress: Called as ``progress(done, total)`` after each chunk.
            handoff: With ``generate_passwords``: a new file to write every
                reset member's temporary password to, as CSV (member ID,
                login ID, password), created owner-only (mode 0600). Needed
                unless the policy delivers the passwords in the notices.
            limit: A staged (canary) apply: work on at most this many targets
                not yet worked on, in plan order, and stop. The others are
                ``Outcome.PENDING`` in the result (``result.remaining``
                counts them); a later ``apply`` (with or without a limit)
                continues where this one stopped. The plan stays open, and
                keeps its secrets, until every target is done.

        Returns:
            A :class:`ResetResult` covering every selected member.

        Raises:
            PlanNotFoundError: the store has no such plan.
            ConfirmationError: *confirm* is missing or wrong (R7).
            StalePlanError: the plan never started and ``plan_ttl`` has passed.
            PlanInProgressError: another apply of this plan is running (it holds
                a lease of 2 minutes, renewed after every chunk, so the lock of a
                crashed apply lapses within 2 minutes).
            AuthorizationError: the plan's actor is no longer an active administrator.
            InvalidInputError: generated passwords with neither
                ``deliver_password`` nor *handoff*, a *handoff* path that
                exists or whose directory does not, or a *limit* below 1.
        """
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise InvalidInputError("limit must be a whole number of at least 1")
        record = self._load_record(plan.plan_id if isinstance(plan, ResetPlan) else plan)
        if not _planning.codes_match(confirm, record.plan.confirmation):
            raise ConfirmationError("the confirmation code does not match the plan")
        self._authorize(record.plan.actor)  # still an active administrator?
        self._check_approved(record)
        self._check_password_kept(record)
        settings = record.plan.settings
        if handoff is not None:
            if not settings.generate_passwords:
                raise InvalidInputError("a hand-off file is for plans that generate passwords")
            if record.token_key is None:
                raise InvalidInputError(
                    "this plan's temporary passwords were handed over and erased; "
                    "make a new plan to reset them again"
                )
        elif settings.generate_passwords and not settings.deliver_password:
            raise InvalidInputError(
                "generated passwords reach members only in the notices (deliver_password) "
                "or a hand-off file: give handoff"
            )
        now = self._now()
        if record.started_at is None and now >= record.plan.expires_at:
            # It can never run now: its secrets (a password to deliver, a key) go too.
            self.store.release_plan(
                record.plan.plan_id, secrets.token_hex(8), finished_at=None, erase_secrets=True
            )
            raise StalePlanError(f"plan {record.plan.plan_id} expired unused; plan again")
        owner = secrets.token_hex(8)
        handoff_file = HandoffFile(handoff) if handoff is not None else None  # before any change
        if not self.store.claim_plan(record.plan.plan_id, owner, now, now + self._lease):
            if handoff_file is not None:
                handoff_file.discard()
            raise PlanInProgressError(
                f"plan {record.plan.plan_id} is being applied elsewhere; if an earlier apply "
                f"was interrupted, its lock lapses within {_describe(self._lease)}"
            )
        record = self._load_record(record.plan.plan_id)  # started_at as the claim set it
        finished: datetime | None = None
        all_notified = False
        try:
            run = ApplyRun(self, record, progress, owner=owner, limit=limit)
            result = run.execute()
            if handoff_file is not None:
                run.write_handoff(handoff_file, result)
                handoff_file = None
            all_notified = run.all_notified and not run.remaining
            finished = result.finished_at if result.ok else None
        finally:
            if handoff_file is not None:  # the apply failed before writing it
                handoff_file.discard()
            self.store.release_plan(
                record.plan.plan_id, owner, finished_at=finished, erase_secrets=all_notified
            )
        return result

    # ------------------------------------------------------------------ approval

    def _needs_approval(self, targets: int, settings: PlanSettings) -> bool:
        """More targets than the service's threshold, or than the plan's own (the stricter)."""
        limits = [
            t for t in (self.approval_threshold, settings.approval_threshold) if t is not None
        ]
        return bool(limits) and targets > min(limits)

    def _approval_precaution(self, targets: int, settings: PlanSettings) -> tuple[str, ...]:
        if not self._needs_approval(targets, settings):
            return ()
        return (
            "This plan needs a second administrator's approval before it can be applied "
            "(two-person approval).",
        )

    def _check_approved(self, record: PlanRecord) -> None:
        """Raise unless the plan is approved, or small enough not to need it."""
        targets = len(record.plan.targets)
        if not self._needs_approval(targets, record.plan.settings):
            return
        if record.approved_by is None:
            raise ApprovalRequiredError(
                f"plan {record.plan.plan_id} has {targets:,} target(s): a second "
                "administrator must approve it first (two-person approval)"
            )
        if not self._approver_is_valid(record.approved_by):
            raise ApprovalRequiredError(
                f"plan {record.plan.plan_id} was approved by {record.approved_by}, who is no "
                "longer an active administrator: another administrator must approve it"
            )

    def _approver_is_valid(self, member_id: str) -> bool:
        member = self.store.get_members([member_id]).get(member_id)
        return member is not None and member.role.is_admin and member.status is MemberStatus.ACTIVE

    def approve(self, plan: ResetPlan | str, *, approver: str) -> None:
        """Approve a plan as the second administrator (two-person approval).

        The approval is recorded with the plan and in the audit log
        (``plan.approved``, naming *approver*). Approving a plan approved
        already changes nothing.

        Args:
            plan: The :class:`ResetPlan` or its ID.
            approver: Member ID of the approving administrator: active, an
                administrator of at least the planner's role, and not the
                planner.

        Raises:
            PlanNotFoundError: the store has no such plan.
            AuthorizationError: *approver* is not an active administrator, is
                the planner, or ranks below the planner.
            StalePlanError: the plan never started and ``plan_ttl`` has passed.
            InvalidInputError: the store cannot record approvals.
        """
        if not isinstance(self.store, ApprovalStorage):
            raise InvalidInputError(
                f"{type(self.store).__name__} cannot record approvals "
                "(it is not a bulkreset.ports.ApprovalStorage)"
            )
        record = self._load_record(plan.plan_id if isinstance(plan, ResetPlan) else plan)
        try:
            admin = self._authorize(approver)
        except AuthorizationError:
            raise AuthorizationError("only an active administrator may approve a plan") from None
        if admin.member_id == record.plan.actor:
            raise AuthorizationError("the administrator who made a plan cannot approve it")
        planner = self.store.get_members([record.plan.actor]).get(record.plan.actor)
        if planner is not None and admin.role is Role.ADMIN and planner.role is Role.SUPER_ADMIN:
            raise AuthorizationError("a super administrator's plan needs a super administrator")
        now = self._now()
        if record.started_at is None and now >= record.plan.expires_at:
            raise StalePlanError(f"plan {record.plan.plan_id} expired unused; plan again")
        event = AuditEvent(
            at=now,
            action="plan.approved",
            actor=admin.member_id,
            plan_id=record.plan.plan_id,
            detail=f"{len(record.plan.targets)} target(s), planned by {record.plan.actor}",
        )
        if record.approved_by is not None and self._approver_is_valid(record.approved_by):
            return  # approved already, by an administrator who still is one
        if self.store.approve_plan(record.plan.plan_id, admin.member_id, now, event):
            self._emit([event])

    # ------------------------------------------------------------------ workers

    def _chunked_store(self) -> ChunkedStorage:
        if not isinstance(self.store, ChunkedStorage):
            raise InvalidInputError(
                f"{type(self.store).__name__} cannot split plans among workers; use a store "
                "that can (bulkreset.adapters.sqlalchemy), or apply() the plan whole"
            )
        return self.store

    def _checked_for_work(self, plan: ResetPlan | str, confirm: str | None) -> PlanRecord:
        """The plan's record, after the checks every apply makes before changing anything."""
        record = self._load_record(plan.plan_id if isinstance(plan, ResetPlan) else plan)
        if not _planning.codes_match(confirm, record.plan.confirmation):
            raise ConfirmationError("the confirmation code does not match the plan")
        self._authorize(record.plan.actor)  # still an active administrator?
        self._check_approved(record)
        settings = record.plan.settings
        if settings.generate_passwords and not settings.deliver_password:
            raise InvalidInputError(
                "a plan that generates passwords hands them over in a file: apply() it whole"
            )
        if record.started_at is None and self._now() >= record.plan.expires_at:
            raise StalePlanError(f"plan {record.plan.plan_id} expired unused; plan again")
        self._check_password_kept(record)
        return record

    def _check_password_kept(self, record: PlanRecord) -> None:
        """A store hashing each member's credential needs the plan's password until done."""
        settings = record.plan.settings
        if (
            settings.mode is ResetMode.FORCE_CHANGE
            and not settings.generate_passwords
            and getattr(self.store, "hashes_each_member", False)
            and record.password is None
            and record.finished_at is None
        ):
            raise InvalidInputError(
                f"plan {record.plan.plan_id} did not keep its password, which this store "
                "hashes once per member (made under another configuration?): plan again"
            )

    def split(
        self, plan: ResetPlan | str, *, confirm: str | None, chunk_size: int | None = None
    ) -> int:
        """Split a confirmed plan into chunks that workers apply with :meth:`apply_chunk`.

        Splitting starts the plan (so it no longer expires) and changes no
        member. Splitting again keeps the chunks already made. A plan split
        into chunks can still be applied whole with :meth:`apply`, which
        waits for no worker: it refuses while a worker holds a chunk, and
        workers get no chunk while it runs.

        Args:
            plan: The :class:`ResetPlan` or its ID.
            confirm: The plan's confirmation code (R7).
            chunk_size: Targets per chunk (default: the service's
                ``chunk_size``, 1,000). A chunk is one task's work: each
                takes a few seconds at the default size.

        Returns:
            How many chunks the plan has.

        Raises:
            InvalidInputError: the store cannot split plans (it is not a
                :class:`~bulkreset.ports.ChunkedStorage`), *chunk_size* is not
                a whole number of at least 1, or the plan generates
                passwords for a hand-off file (apply those whole).
            PlanNotFoundError, ConfirmationError, StalePlanError,
            AuthorizationError: as :meth:`apply`.
        """
        store = self._chunked_store()
        if chunk_size is not None and (
            not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
        ):
            raise InvalidInputError("chunk_size must be a whole number of at least 1")
        record = self._checked_for_work(plan, confirm)
        size = chunk_size or self._chunk_size
        total = len(record.plan.targets)
        bounds = [(start, min(start + size, total)) for start in range(0, total, size)]
        return store.split_plan(record.plan.plan_id, bounds, self._now())

    def apply_chunk(
        self,
        plan: ResetPlan | str,
        *,
        confirm: str | None,
        chunk: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> ChunkResult | None:
        """Apply one chunk of a plan split with :meth:`split`: what a worker's task calls.

        Claims the chunk (*chunk*, or the first free one) with a lease of
        2 minutes renewed as it goes, so many workers on many machines work
        on one plan at once without ever applying a member twice; a chunk
        whose worker crashed is free again once its lease lapses, and the
        next claim takes it over and resumes it exactly as :meth:`apply`
        resumes a plan. The worker that finishes the last chunk then
        finishes the plan itself (the plan's exclusions, its completion
        time, erasing its secrets) and returns the whole :class:`ResetResult`.

        Args:
            plan: The :class:`ResetPlan` or its ID.
            confirm: The plan's confirmation code (R7).
            chunk: The chunk to apply, or ``None`` for the first free one.
            progress: Called as ``progress(done, total)`` within the chunk.

        Returns:
            A :class:`ChunkResult`, or ``None`` when no chunk is free (all
            done, held by other workers, or the plan is being applied whole).

        Raises:
            InvalidInputError: the store cannot split plans.
            PlanInProgressError: the chunk's lease was lost to another worker
                mid-way (this worker stopped; the other carries on).
            PlanNotFoundError, ConfirmationError, StalePlanError,
            AuthorizationError: as :meth:`apply`.
        """
        store = self._chunked_store()
        if chunk is not None and (
            not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0
        ):
            raise InvalidInputError("chunk must be a chunk number (0 or more) or None")
        record = self._checked_for_work(plan, confirm)
        plan_id = record.plan.plan_id
        if store.chunks_left(plan_id)[1] == 0:
            raise InvalidInputError(f"plan {plan_id} was not split: call split() first")
        owner = secrets.token_hex(8)
        now = self._now()
        claim = store.claim_chunk(plan_id, owner, now, now + self._lease, index=chunk)
        if claim is None:
            return None
        run = ApplyRun(self, record, progress, owner=owner, claim=claim)
        summary = run.execute_chunk(claim.start, claim.stop)
        store.finish_chunk(plan_id, claim.index, owner, self._now())
        left, _ = store.chunks_left(plan_id)
        result = None
        if left == 0:
            # Every member has been worked on: this resumes nothing, it finishes. Another
            # worker finishing at the same time may do it instead.
            with contextlib.suppress(PlanInProgressError):
                result = self.apply(plan_id, confirm=confirm)
        return ChunkResult(
            plan_id=plan_id,
            index=claim.index,
            start=claim.start,
            stop=claim.stop,
            counts=summary.counts,
            unfinished=summary.unfinished,
            chunks_left=left,
            result=result,
            taken_over=claim.taken_over,
        )

    def apply_chunks(
        self, plan: ResetPlan | str, *, confirm: str | None, wait: float | None = 1.0
    ) -> ResetResult | None:
        """A worker's loop: :meth:`apply_chunk` until no chunk of the plan is left undone.

        When every remaining chunk is held by other workers, it waits *wait*
        seconds and tries again, so a chunk whose worker crashed is taken
        over once its lease lapses; with ``wait=None`` it returns instead. A
        chunk lost to another worker mid-way (``PlanInProgressError``) is
        left to that worker.

        Args:
            plan: The :class:`ResetPlan` or its ID (split with :meth:`split`).
            confirm: The plan's confirmation code.
            wait: Seconds between looks while other workers hold every
                remaining chunk, or ``None`` to return then.

        Returns:
            The plan's :class:`ResetResult` if this worker finished the
            plan, else ``None``.

        Raises:
            What :meth:`apply_chunk` raises, but ``PlanInProgressError``.
        """
        store = self._chunked_store()
        plan_id = plan.plan_id if isinstance(plan, ResetPlan) else plan
        final: ResetResult | None = None
        while True:
            try:
                done = self.apply_chunk(plan_id, confirm=confirm)
            except PlanInProgressError:
                continue  # that chunk is another worker's now; take the next
            if done is not None:
                final = done.result or final
                continue
            left, _ = store.chunks_left(plan_id)
            if left == 0 or wait is None:
                return final
            self._sleep(wait)

    # ------------------------------------------------------------------ change requests

    def _request_store(self) -> ChangeRequestStorage:
        if not isinstance(self.store, ChangeRequestStorage):
            raise InvalidInputError(
                f"{type(self.store).__name__} cannot list change requests "
                "(it is not a bulkreset.ports.ChangeRequestStorage)"
            )
        return self.store

    def change_requests(
        self, *, member_id: str | None = None, plan_id: str | None = None, live_only: bool = False
    ) -> list[ChangeRequest]:
        """The change requests of a member, of a plan, or (neither given) all, oldest first.

        Each says when it was issued and expires, whether it was used, and
        its status; never its token.

        Args:
            member_id: Only this member's.
            plan_id: Only this plan's.
            live_only: Only those the member can still use.

        Raises:
            InvalidInputError: the store cannot list change requests, or an
                ID is not a string.
        """
        store = self._request_store()
        _check_filters(member_id=member_id, plan_id=plan_id)
        if not isinstance(live_only, bool):
            raise InvalidInputError("live_only is True or False")
        now = self._now()
        records = store.list_tokens(member_id=member_id, plan_id=plan_id)
        generations = {
            i: c.generation
            for i, c in self.store.get_credentials({r.member_id for r in records}).items()
        }
        found = [_change_request(r, generations.get(r.member_id, 0), now) for r in records]
        return [c for c in found if c.live] if live_only else found

    def cancel_change_requests(
        self,
        *,
        actor: str,
        member_id: str | None = None,
        plan_id: str | None = None,
        everyone: bool = False,
    ) -> int:
        """Cancel live change requests: a member's, a plan's, both filters, or everyone's.

        A cancelled token fails in :meth:`redeem` and :meth:`check_token`
        like any dead one, and a notice still waiting in the outbox with its
        link is withdrawn instead of delivered. Each cancellation is an audit
        event ``request.cancelled`` naming *actor*.

        An ``ADMIN`` cancels no ``SUPER_ADMIN``'s request (as it may not reset one).

        Args:
            actor: Member ID of the administrator cancelling.
            member_id: Cancel this member's requests.
            plan_id: Cancel this plan's requests.
            everyone: Cancel every live request (needed when neither filter is given).

        Returns:
            How many requests were cancelled.

        Raises:
            InvalidInputError: no filter and not *everyone*, or the store
                cannot cancel change requests.
            AuthorizationError: *actor* is not an active administrator.
        """
        store = self._request_store()
        _check_filters(member_id=member_id, plan_id=plan_id)
        if not isinstance(everyone, bool):
            raise InvalidInputError("everyone is True or False")
        if plan_id is not None:
            self._load_record(plan_id)  # an unknown plan is an error, not "nothing to cancel"
        if member_id is None and plan_id is None and not everyone:
            raise InvalidInputError("name a member_id or a plan_id, or pass everyone=True")
        admin = self._authorize(actor)
        now = self._now()
        records = store.list_tokens(member_id=member_id, plan_id=plan_id)
        generations = {
            i: c.generation
            for i, c in self.store.get_credentials({r.member_id for r in records}).items()
        }
        live = [r for r in records if _change_request(r, generations.get(r.member_id, 0), now).live]
        if admin.role is Role.ADMIN:  # as with resets: an ADMIN never touches a SUPER_ADMIN's
            owners = self.store.get_members({r.member_id for r in live})
            live = [
                r
                for r in live
                if (m := owners.get(r.member_id)) is None or m.role is not Role.SUPER_ADMIN
            ]
        events = {
            r.digest: AuditEvent(
                at=now,
                action="request.cancelled",
                actor=admin.member_id,
                plan_id=r.plan_id,
                member_id=r.member_id,
            )
            for r in live
        }
        done = store.cancel_tokens([r.digest for r in live], now, events)
        self._emit([events[d] for d in done])
        self._settle_cancelled([r for r in live if r.digest in set(done)])
        return len(done)

    def _settle_cancelled(self, records: Sequence[TokenRecord]) -> None:
        """Mark the progress of cancelled requests whose notice is still due, so no later
        apply of their plan sends the dead link (whatever the notifier)."""
        by_plan: dict[str, list[str]] = {}
        for record in records:
            by_plan.setdefault(record.plan_id, []).append(record.member_id)
        for plan_id, member_ids in by_plan.items():
            rows = self.store.get_progress(plan_id, member_ids)
            due = [
                attrs.evolve(row, reason="; ".join(filter(None, (row.reason, REQUEST_CANCELLED))))
                for row in rows.values()
                if not row.notified and REQUEST_CANCELLED not in (row.reason or "").split("; ")
            ]
            if due:
                self.store.commit(EffectBatch(plan_id, progress=tuple(due)))

    # ------------------------------------------------------------------ member flows

    def authenticate(self, login_id: str, password: str) -> AuthResult:
        """Check a login ID and password (a sign-in).

        Login IDs match by :func:`~bulkreset.fold_login`. An unknown login
        still costs one Argon2 verification (no user enumeration by timing);
        input too long to be a password is refused before any hashing.
        A hash with outdated Argon2 parameters is rehashed on success (RFC 9106).

        Returns:
            :class:`AuthResult`: ``ok=False`` for a wrong password, an unknown
            login, a suspended or pending member, a Quick Login member with
            no password, or a force change's temporary password past its
            ``temporary_password_ttl`` (``reason="temporary_password_expired"``;
            checked after the password, so it reveals nothing to a guesser);
            ``must_change_password`` after a force change.
        """
        if not isinstance(login_id, str) or not isinstance(password, str):
            return AuthResult(False, reason="invalid")
        if len(login_id) > _MAX_LOGIN_LENGTH or self.rules.is_oversized(password):
            return AuthResult(False, reason="too_long")
        try:
            member = self.store.find_member_by_login(fold_login(login_id))
        except UnicodeError:
            member = None
        credential = (
            self.store.get_credentials([member.member_id]).get(member.member_id)
            if member is not None
            else None
        )
        if member is None or credential is None:
            self._burn_one_verification(password)
            return AuthResult(False, reason="invalid")
        if not self._verify(credential.password_hash, password):
            return AuthResult(False, reason="invalid")
        if member.status is not MemberStatus.ACTIVE:
            return AuthResult(False, reason="inactive")
        if _expired(credential, self._now()):
            return AuthResult(False, reason="temporary_password_expired")
        if self.hasher.check_needs_rehash(credential.password_hash):
            self.store.rehash_credential(
                member.member_id, credential.generation, self._hash(password)
            )
        return AuthResult(True, member.member_id, credential.must_change)

    def change_password(self, member_id: str, current_password: str, new_password: str) -> None:
        """Let a member replace their password (the must-change-at-next-sign-in flow).

        Clears ``must_change``, ends the member's sessions issued until now
        (ASVS 4.0.3 3.3.3: the host issues a fresh one) and kills their
        outstanding change requests.

        Raises:
            InvalidCredentialsError: unknown member or wrong *current_password*.
            TemporaryPasswordExpiredError: *current_password* is a force
                change's temporary password past its ``temporary_password_ttl``.
            PasswordPolicyError: *new_password* breaks the rules, or equals the
                current one (violation ``same_as_current``).
        """
        if not isinstance(current_password, str) or self.rules.is_oversized(current_password):
            raise InvalidCredentialsError
        member, credential = self._member_and_credential(member_id)
        if member is None or credential is None:
            self._burn_one_verification(current_password)
            raise InvalidCredentialsError
        if not self._verify(credential.password_hash, current_password):
            raise InvalidCredentialsError
        if _expired(credential, self._now()):
            raise TemporaryPasswordExpiredError
        violations = list(self.rules.violations(new_password, login_ids=[member.login_id]))
        if isinstance(new_password, str) and normalize_password(new_password) == normalize_password(
            current_password
        ):
            violations.append("same_as_current")
        if violations:
            raise PasswordPolicyError(violations)
        self._write_own_password(
            member,
            new_password,
            credential.generation,
            must_change=False,
            action="password.changed",
        )

    def set_password(self, member_id: str, password: str, *, must_change: bool = False) -> None:
        """Set one member's password (seeding, or a single administrative reset).

        Ends the member's sessions issued until now and kills their
        outstanding change requests.

        Raises:
            InvalidInputError: no member has that ID.
            PasswordPolicyError: *password* breaks the rules.
        """
        member, credential = self._member_and_credential(member_id)
        if member is None:
            raise InvalidInputError("no member has that ID")
        self.rules.check(password, login_ids=[member.login_id])
        self._write_own_password(
            member,
            password,
            credential.generation if credential else 0,
            must_change=must_change,
            action="password.set",
        )

    def _member_and_credential(self, member_id: object) -> tuple[Member | None, _Credential | None]:
        if not isinstance(member_id, str) or not member_id or len(member_id) > 256:
            return None, None
        try:
            member = self.store.get_members([member_id]).get(member_id)
        except UnicodeError:
            return None, None
        if member is None:
            return None, None
        return member, self.store.get_credentials([member_id]).get(member_id)

    def _write_own_password(
        self, member: Member, password: str, generation: int, *, must_change: bool, action: str
    ) -> None:
        now = self._now()
        write = CredentialWrite(
            member.member_id, at=now, must_change=must_change, password_hash=self._hash(password)
        )
        event = AuditEvent(at=now, action=action, member_id=member.member_id)
        if not self.store.write_credential(write, expected_generation=generation, audit=event):
            raise InvalidCredentialsError  # changed concurrently: the caller's view is stale
        self._emit([event])
        self._revoke_quietly([member.member_id], now)

    def _revoke_quietly(self, member_ids: Sequence[str], issued_before: datetime) -> bool:
        try:
            self.sessions.revoke(member_ids, issued_before)
        except Exception:  # the not-before time already invalidates them lazily
            log.warning("session revocation failed for %d member(s)", len(member_ids))
            return False
        return True

    def check_token(self, token: str) -> str:
        """Check a reset token without using it (when the link is opened).

        Returns:
            The member ID the token belongs to.

        Raises:
            InvalidTokenError: unknown, expired, used, superseded, or dead
                because the password changed after it was issued.
        """
        return self._live_token(token, self._now())[0]

    def _live_token(self, token: object, now: datetime) -> tuple[str, str, Member]:
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
            raise InvalidTokenError
        digest = token_digest(token)
        record = self.store.find_token(digest)
        if record is None:
            raise InvalidTokenError
        member, credential = self._member_and_credential(record.member_id)
        generation = credential.generation if credential else 0
        if (
            member is None
            or member.status is not MemberStatus.ACTIVE
            or not token_is_live(record, digest=digest, generation=generation, now=now)
        ):
            raise InvalidTokenError
        return record.member_id, digest, member

    def redeem(self, token: str, new_password: str) -> str:
        """Complete a change request: set the member's new password and use the token.

        Also ends the member's sessions (ASVS 4.0.3 3.3.3) and kills their
        other change requests. A password that breaks the rules leaves the
        token usable.

        Returns:
            The member ID.

        Raises:
            InvalidTokenError: the token is not live (see :meth:`check_token`),
                or was used concurrently.
            PasswordPolicyError: *new_password* breaks the rules.
        """
        now = self._now()
        member_id, digest, member = self._live_token(token, now)
        self.rules.check(new_password, login_ids=[member.login_id])
        write = CredentialWrite(
            member_id, at=now, must_change=False, password_hash=self._hash(new_password)
        )
        event = AuditEvent(at=now, action="token.redeemed", member_id=member_id)
        if not self.store.redeem_token(digest, write, event):
            raise InvalidTokenError
        self._emit([event])
        self._revoke_quietly([member_id], now)
        return member_id

    def session_is_valid(self, member_id: str, issued_at: datetime) -> bool:
        """The not-before check, for hosts that validate sessions lazily.

        Args:
            member_id: The session's member.
            issued_at: When the session was issued (aware datetime).

        Returns:
            ``False`` when the member is unknown or not active, or the
            session was issued at or before the member's not-before time
            (a reset or password change); otherwise ``True``.

        Raises:
            InvalidInputError: *issued_at* is naive.
        """
        issued = to_utc(issued_at, what="issued_at")
        member, credential = self._member_and_credential(member_id)
        if member is None or member.status is not MemberStatus.ACTIVE:
            return False
        if credential is None or credential.not_before is None:
            return True
        return issued > credential.not_before

    def audit_events(
        self, *, plan_id: str | None = None, member_id: str | None = None
    ) -> list[AuditEvent]:
        """The audit log, oldest first, optionally of one plan or one member."""
        return self.store.audit_events(plan_id=plan_id, member_id=member_id)

    def export_audit(
        self,
        out: TextIO,
        *,
        plan_id: str | None = None,
        member_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        format: Literal["jsonl", "csv"] = "jsonl",
        ascii_only: bool = False,
    ) -> int:
        """Write the audit log (of a plan, a member, a time span) as JSON Lines or CSV.

        Columns: ``at`` (ISO 8601, UTC), ``action``, ``actor``, ``plan_id``,
        ``member_id``, ``detail``, oldest first. Audit events hold no
        secret; the CSV quotes cells a spreadsheet would run as formulas
        (OWASP, CSV Injection).

        Args:
            out: A writable text stream (an open file with ``newline=""``
                for CSV, an ``io.StringIO``, a web response).
            plan_id: Only this plan's events.
            member_id: Only this member's events.
            since: Only events at or after this aware datetime.
            until: Only events before this aware datetime.
            format: ``"jsonl"`` (one JSON object a line) or ``"csv"``.
            ascii_only: JSON Lines with every non-ASCII character escaped
                (``\\uXXXX``), for a stream that is not UTF-8.

        Returns:
            How many events were written.

        Raises:
            InvalidInputError: a bad *format*, a naive or reversed time span.
            OSError: *out* cannot be written.
        """
        if format not in AUDIT_FORMATS:
            raise InvalidInputError(f"format is one of {', '.join(AUDIT_FORMATS)}, not {format!r}")
        _check_filters(member_id=member_id, plan_id=plan_id)
        if plan_id is not None:
            self._load_record(plan_id)  # an unknown plan is an error, not an empty log
        events = select_events(
            self.store.audit_events(plan_id=plan_id, member_id=member_id),
            since=since,
            until=until,
        )
        return write_audit(events, out, format=format, ascii_only=ascii_only)
