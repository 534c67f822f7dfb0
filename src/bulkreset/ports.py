"""The three ports a host backs with its own systems, and the records they exchange.

A :class:`~bulkreset.ResetService` talks to the world only through these:

* :class:`Storage` — the member directory, credentials, reset tokens, plans,
  apply progress and the audit log;
* :class:`Notifier` — delivers :class:`~bulkreset.Notice`\\ s (mail, SMS, an outbox);
* :class:`SessionStore` — ends members' sessions.

They are :class:`typing.Protocol`\\ s: an adapter satisfies them by having the
methods, no base class needed. The shipped adapters live in
:mod:`bulkreset.adapters`; ``docs/howto/write-an-adapter.md`` says what each
method must guarantee. Adapters raise :class:`~bulkreset.errors.StorageError`
(or any exception) on failure; the service turns a failure into a per-member
outcome where it can.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from ._model import (
    AuditEvent,
    ExclusionReason,
    Member,
    MemberOutcome,
    Notice,
    Outcome,
    PlanEntry,
    PlanSettings,
    ResetPlan,
)

__all__ = [
    "ApprovalStorage",
    "ChangeRequestStorage",
    "ChunkClaim",
    "ChunkRequest",
    "ChunkTally",
    "ChunkedStorage",
    "Credential",
    "CredentialWrite",
    "EffectBatch",
    "Notifier",
    "PlanCounts",
    "PlanEntry",
    "PlanRecord",
    "PlanWriter",
    "SessionStore",
    "SetBasedStorage",
    "Storage",
    "TokenRecord",
]


@attrs.frozen
class Credential:
    """A member's stored password credential.

    Attributes:
        member_id: The member.
        password_hash: Argon2id PHC string (their own, or their plan's shared
            one). Secret: never in ``repr``.
        must_change: The member must change the password at next sign-in.
        generation: Counts the member's password changes; a reset token is
            live only while the generation it was issued at is current, so a
            password change kills older tokens even within one clock tick.
        changed_at: When the password was last set (aware UTC).
        not_before: Sessions issued at or before this instant are invalid.
        shared_plan_id: Set while the credential points to a force plan's
            shared password credential (SPEC §5).
        expires_at: A temporary password (``must_change``) no longer signs in
            from this instant (``ResetPolicy.temporary_password_ttl``), or ``None``.
    """

    member_id: str
    password_hash: str = attrs.field(repr=False)
    must_change: bool
    generation: int
    changed_at: datetime
    not_before: datetime | None = None
    shared_plan_id: str | None = None
    expires_at: datetime | None = None


@attrs.frozen
class CredentialWrite:
    """A new password for one member.

    Exactly one of ``password_hash`` (the member's own credential) and
    ``shared_plan_id`` (point to that plan's shared credential) is set. The
    store raises the member's generation by one, and sets ``changed_at`` and
    ``not_before`` to ``at``. ``expires_at`` is when a temporary password
    stops signing in (``None``: never).
    """

    member_id: str
    at: datetime
    must_change: bool
    password_hash: str | None = attrs.field(default=None, repr=False)
    shared_plan_id: str | None = None
    expires_at: datetime | None = None


@attrs.frozen
class TokenRecord:
    """A stored change request. The token itself is never stored, only its digest.

    Attributes:
        digest: SHA-256 of the token, hex. Secret-derived: never in ``repr``.
        member_id: The member it lets set a password.
        plan_id: The plan that issued it.
        issued_at: Aware UTC.
        expires_at: Aware UTC.
        generation: The member's credential generation when it was issued
            (filled in by the store when the token is written).
        used_at: When it was redeemed, or ``None``.
        revoked_at: When a newer request superseded it, or ``None``.
    """

    digest: str = attrs.field(repr=False)
    member_id: str
    plan_id: str
    issued_at: datetime
    expires_at: datetime
    generation: int = 0
    used_at: datetime | None = None
    revoked_at: datetime | None = None


@attrs.frozen
class PlanRecord:
    """A plan as the store keeps it, with the secrets ``apply`` needs.

    Attributes:
        plan: The :class:`~bulkreset.ResetPlan`.
        password_hash: Force change: the shared credential's PHC string.
        password: Force change with ``deliver_password`` only: the plain
            password, erased once its notices are out (SPEC §5).
        token_key: Request change: 32 random bytes from which each member's
            token is derived (HMAC-SHA-256), so a resumed apply re-sends the
            same token; erased once every notice is out.
        started_at: When the first apply started, or ``None``.
        finished_at: When an apply last completed every member, or ``None``.
        approved_by: The administrator who approved the plan (two-person
            approval), or ``None``.
        approved_at: When, or ``None``.
    """

    plan: ResetPlan
    password_hash: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    token_key: bytes | None = attrs.field(default=None, repr=False)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None


@attrs.frozen
class EffectBatch:
    """Writes the store makes atomically: all of them, or none.

    Attributes:
        plan_id: The plan being applied.
        credentials: New credentials, written first.
        tokens: New change requests; each supersedes the member's other live
            tokens. Their ``generation`` is taken from the credential as it
            stands after ``credentials`` are written.
        progress: Per-member progress rows to upsert.
        audit: Audit events to append.
        owner: The apply lease this batch is written under. When set, the
            store writes nothing and raises
            :class:`~bulkreset.errors.PlanInProgressError` unless that lease
            still holds the plan (a fencing token: an apply that lost its
            lease to another cannot write over its work).
    """

    plan_id: str
    credentials: tuple[CredentialWrite, ...] = ()
    tokens: tuple[TokenRecord, ...] = ()
    progress: tuple[MemberOutcome, ...] = ()
    audit: tuple[AuditEvent, ...] = ()
    owner: str | None = None


@attrs.frozen
class PlanCounts:
    """How a selection sorted out, as :meth:`SetBasedStorage.classify_into_plan` reports it.

    Attributes:
        targets: How many targets.
        warnings: How many targets carry a warning (``CANNOT_SELF_RECOVER``).
        excluded: How many exclusions, by reason.
    """

    targets: int
    warnings: int
    excluded: Mapping[ExclusionReason, int]


@attrs.frozen(repr=False)
class ChunkRequest:
    """One chunk of a plan's targets for :meth:`SetBasedStorage.apply_chunk`.

    Attributes:
        plan_id: The plan.
        owner: The apply lease the chunk is written under (a fencing token).
        start: First target index of the chunk (0-based, plan order).
        stop: One past the last target index.
        at: When the effects happen (aware UTC).
        lease_until: The lease's new end, renewed in the chunk's transaction.
        settings: The plan's settings.
        actor: The acting administrator as the directory has them now.
        password: The plain password to carry in password-reset notices
            (``deliver_password``), else ``None``. Secret.
        token: Derives a member's change-request token from their ID, when
            the plan sends change requests; else ``None``. Secret.
        notifier: The port every notice goes through.
        sessions: The port that ends sessions.
        want_events: Return the audit events written (a host audit sink is set).
    """

    plan_id: str
    owner: str
    start: int
    stop: int
    at: datetime
    lease_until: datetime
    settings: PlanSettings
    actor: Member
    password: str | None
    token: Callable[[str], str] | None
    notifier: Notifier
    sessions: SessionStore
    want_events: bool = False

    def __repr__(self) -> str:
        return f"<ChunkRequest {self.plan_id} targets [{self.start}, {self.stop})>"


@attrs.frozen
class ChunkTally:
    """What :meth:`SetBasedStorage.apply_chunk` left in the chunk's progress.

    Attributes:
        counts: Outcomes of the chunk's targets (all of them finished).
        events: The audit events written, when asked for.
    """

    counts: Mapping[Outcome, int]
    events: tuple[AuditEvent, ...] = ()


@attrs.frozen
class ChunkClaim:
    """One chunk of a plan's targets, leased to one worker by :meth:`ChunkedStorage.claim_chunk`.

    Attributes:
        plan_id: The plan.
        index: The chunk's number (0-based).
        start: First target index of the chunk (0-based, plan order).
        stop: One past the last target index.
        owner: The worker's lease (a fencing token for :class:`EffectBatch`).
        taken_over: An earlier worker claimed it before (and crashed or
            was too slow): its effects may be partly written.
    """

    plan_id: str
    index: int
    start: int
    stop: int
    owner: str
    taken_over: bool = False


class PlanWriter(Protocol):
    """Writes one new plan: its entries, a page at a time, then its record."""

    def add(self, entries: Sequence[PlanEntry]) -> None:
        """Keep these entries, in selection order, after those added before."""

    def finish(self, record: PlanRecord, audit: AuditEvent) -> None:
        """Keep the plan's record and secrets, and append *audit*.

        ``record.plan``'s ``targets``, ``excluded`` and ``warnings`` are
        ignored: the plan's sections are the entries added (targets: entries
        without a reason; excluded: with one; warnings: with a warning).
        """


@runtime_checkable
class Storage(Protocol):
    """Where members, credentials, tokens, plans, progress and audit events live.

    Every method that writes is atomic: it writes all it was given or nothing.
    """

    def add_members(self, members: Iterable[Member]) -> None:
        """Insert or update members (matched by ``member_id``)."""

    def get_members(self, member_ids: Collection[str]) -> dict[str, Member]:
        """The members with these IDs; unknown IDs are simply absent."""

    def iter_members(self, *, page_size: int = 1000) -> Iterator[Sequence[Member]]:
        """Every member, in pages of at most *page_size*, ordered by ``member_id``."""

    def find_member_by_login(self, login_key: str) -> Member | None:
        """The member whose ``fold_login(login_id)`` equals *login_key*, if any."""

    def get_credentials(self, member_ids: Collection[str]) -> dict[str, Credential]:
        """The stored credentials of these members; those without one are absent."""

    def write_credential(
        self, write: CredentialWrite, *, expected_generation: int, audit: AuditEvent
    ) -> bool:
        """Store a new credential if the member's generation is still *expected_generation*.

        ``0`` means "no credential yet". Returns ``False`` (and writes
        nothing) when it moved on; otherwise writes the credential, revokes
        the member's live tokens, appends *audit*, and returns ``True``.
        """

    def write_plan(self, plan_id: str) -> AbstractContextManager[PlanWriter]:
        """Write a new plan atomically: ``with store.write_plan(plan_id) as writer: ...``.

        Everything added, and the record given to ``finish``, is stored when
        the block ends after ``finish``; nothing at all when the block raises
        (for example a password rule found broken half-way through a million
        members) or ends without ``finish``.
        """

    def load_plan(self, plan_id: str) -> PlanRecord | None:
        """The stored plan, or ``None``.

        Its sections may be :class:`~bulkreset.PagedSequence`\\ s that read the
        store a page at a time, so a plan of a million members stays small.
        """

    def claim_plan(self, plan_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the plan's apply lease for *owner* until *until*.

        Succeeds when the lease is free, expired, or already *owner*'s; marks
        the plan started (``started_at = now``) the first time. Returns
        ``False`` while someone else holds it.
        """

    def release_plan(
        self, plan_id: str, owner: str, *, finished_at: datetime | None, erase_secrets: bool
    ) -> None:
        """Give up *owner*'s lease; record completion; erase the plan's secrets if asked."""

    def get_progress(
        self, plan_id: str, member_ids: Collection[str] | None = None
    ) -> dict[str, MemberOutcome]:
        """The recorded per-member progress of a plan, by member ID.

        Only of *member_ids* when given (the apply reads a chunk at a time);
        members without progress are absent.
        """

    def commit(self, batch: EffectBatch) -> None:
        """Write an :class:`EffectBatch` atomically.

        Raises:
            PlanInProgressError: ``batch.owner`` no longer holds the plan's lease.
        """

    def find_token(self, digest: str) -> TokenRecord | None:
        """The token record with this digest, or ``None``."""

    def rehash_credential(self, member_id: str, generation: int, password_hash: str) -> None:
        """Give the member their own credential with *password_hash* (same password).

        Used when a hash's Argon2 parameters are outdated. Keeps generation,
        ``must_change``, ``changed_at`` and ``not_before``; does nothing when
        the generation moved on.
        """

    def redeem_token(self, digest: str, write: CredentialWrite, audit: AuditEvent) -> bool:
        """Use a token: atomically check it is unused, unrevoked and its generation current.

        Then mark it used, write the credential (see :meth:`write_credential`),
        revoke the member's other live tokens and append *audit*. Returns
        ``False`` (writing nothing) when the check fails.
        """

    def audit_events(
        self, *, plan_id: str | None = None, member_id: str | None = None
    ) -> list[AuditEvent]:
        """Audit events, oldest first, optionally only those of one plan or member."""


@runtime_checkable
class Notifier(Protocol):
    """Delivers notices to members: mail, SMS, a host's outbox.

    ``send`` may be called again with a notice it already delivered (after a
    crash, the service cannot know); a notifier should drop a notice whose
    ``idempotency_key`` it already holds.
    """

    def send(self, notices: Sequence[Notice]) -> None:
        """Deliver *notices*. Raising means the batch may be partly delivered."""


@runtime_checkable
class SessionStore(Protocol):
    """Ends members' sessions (session revocation)."""

    def revoke(self, member_ids: Sequence[str], issued_before: datetime) -> None:
        """End every session of these members issued at or before *issued_before*.

        Raising means some sessions may still be active; the service retries.
        """


@runtime_checkable
class SetBasedStorage(Protocol):
    """Optional: a store that plans and applies whole chunks inside its own database.

    A :class:`Storage` may also offer these; the service then uses them, and
    falls back to the port-by-port path whenever they return ``None``. The
    results must be exactly those of the port-by-port path: the same plan
    entries, progress rows, credentials, tokens, outbox rows and audit events
    (``tests/test_set_based.py`` compares the two). The SQLite store offers
    them; they make a bulk reset a handful of ``INSERT … SELECT`` statements
    per chunk instead of a few Python objects and rows per member.
    """

    def classify_into_plan(
        self,
        writer: PlanWriter,
        selection: Sequence[str] | None,
        *,
        actor: Member,
        settings: PlanSettings,
        folded_password: str | None,
    ) -> PlanCounts | None:
        """Sort *selection* (distinct IDs in order, or ``None`` for every member) into
        *writer*'s plan, as :func:`bulkreset._planning.classify` would.

        Raises:
            PasswordPolicyError: a target's folded login ID equals *folded_password*
                (violation ``same_as_login_id``); nothing is written.
        """

    def apply_chunk(self, request: ChunkRequest) -> ChunkTally | None:
        """Apply targets ``[request.start, request.stop)`` in one transaction.

        Re-checks each member, writes effects, progress and audit events,
        calls ``request.sessions.revoke`` and ``request.notifier.send``, all
        inside that transaction. Returns ``None``, writing nothing, when it
        cannot do the chunk that way (other ports, or progress left
        unfinished by an earlier apply).

        Raises:
            PlanInProgressError: ``request.owner`` no longer holds the lease.
            Exception: anything a port raised; nothing is written.
        """


@runtime_checkable
class ChunkedStorage(Protocol):
    """Optional: a store that splits plans into chunks many workers apply at once.

    ``ResetService.split`` and ``ResetService.apply_chunk`` need it. A chunk
    lease fences writes like the plan's lease: :meth:`Storage.commit`
    accepts a batch whose ``owner`` holds the plan's lease *or* a lease on one
    of its chunks. While any chunk lease is live, :meth:`Storage.claim_plan`
    fails; while the plan's lease is live, :meth:`claim_chunk` returns
    ``None``: a whole-plan apply and chunk workers never run at once.
    """

    def split_plan(self, plan_id: str, bounds: Sequence[tuple[int, int]], now: datetime) -> int:
        """Store the plan's chunks (``[start, stop)`` target ranges, in order) unless it
        has some; mark the plan started. Returns how many chunks the plan has.

        Raises:
            PlanNotFoundError: no such plan.
        """

    def claim_chunk(
        self,
        plan_id: str,
        owner: str,
        now: datetime,
        until: datetime,
        *,
        index: int | None = None,
    ) -> ChunkClaim | None:
        """Lease chunk *index* (or the first free one) to *owner* until *until*.

        Free: not done, and its lease unset, expired, or *owner*'s already.
        Two workers never hold one chunk at once. ``None`` when no chunk is free.
        """

    def finish_chunk(self, plan_id: str, index: int, owner: str, at: datetime) -> bool:
        """Mark the chunk done and drop the lease; ``False`` if *owner* lost it first."""

    def chunks_left(self, plan_id: str) -> tuple[int, int]:
        """``(chunks not yet done, all chunks)``; ``(0, 0)`` for a plan never split."""


@runtime_checkable
class ChangeRequestStorage(Protocol):
    """Optional: a store that lists and cancels change requests (every shipped store does).

    ``ResetService.change_requests`` and ``cancel_change_requests`` need it.
    """

    def list_tokens(
        self, *, member_id: str | None = None, plan_id: str | None = None
    ) -> list[TokenRecord]:
        """The stored change requests of a member and/or a plan (every one without
        filters), oldest first."""

    def cancel_tokens(
        self, digests: Sequence[str], at: datetime, audit: Mapping[str, AuditEvent]
    ) -> list[str]:
        """Revoke the tokens with these digests that are still unused and unrevoked, at *at*,
        and append ``audit[digest]`` for each one revoked, atomically.

        Returns:
            The digests revoked.
        """


@runtime_checkable
class ApprovalStorage(Protocol):
    """Optional: a store that records a second administrator's approval of a plan
    (every shipped store does). ``ResetService(approval_threshold=...)`` needs it."""

    def approve_plan(self, plan_id: str, approver: str, at: datetime, audit: AuditEvent) -> bool:
        """Record *approver*'s approval (replacing an earlier one: the service asks
        again only when the earlier approver is no longer an administrator) and
        append *audit*, atomically. Returns ``True``.

        Raises:
            PlanNotFoundError: no such plan.
        """
