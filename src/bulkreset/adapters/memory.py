"""In-memory adapters: dictionaries behind a lock. For tests, notebooks and demos.

Nothing survives the process. They keep the same guarantees as the SQLite
store (each write method is atomic; tokens are stored as digests), so they
are also the smallest complete example of the three ports.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import argon2
import attrs

from .._clock import Clock, read_clock, system_clock
from .._model import AuditEvent, Member, MemberOutcome, Notice, PlanEntry
from .._planning import plan_from_entries
from .._service import ResetService
from ..errors import InvalidInputError, PlanInProgressError, PlanNotFoundError
from ..ports import (
    Credential,
    CredentialWrite,
    EffectBatch,
    Notifier,
    PlanRecord,
    SessionStore,
    Storage,
    TokenRecord,
)

__all__ = ["MemoryNotifier", "MemorySessions", "MemoryStorage", "open_service"]


class MemoryStorage:
    """The :class:`~bulkreset.ports.Storage` port over dictionaries. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._members: dict[str, Member] = {}
        self._logins: dict[str, str] = {}
        self._credentials: dict[str, Credential] = {}
        self._plans: dict[str, PlanRecord] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._progress: dict[str, dict[str, MemberOutcome]] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._audit: list[AuditEvent] = []

    def __repr__(self) -> str:
        return f"<MemoryStorage {len(self._members)} member(s)>"

    # directory ---------------------------------------------------------------

    def add_members(self, members: Iterable[Member]) -> None:
        """Insert or update members by ID.

        Raises:
            InvalidInputError: *members* is not iterable, an item is not a
                :class:`Member`, or two members
                would share a login ID (compared by ``fold_login``). Nothing
                is added then.
        """
        try:
            batch = list(members)
        except TypeError:
            raise InvalidInputError("add_members takes an iterable of Member objects") from None
        with self._lock:
            logins = dict(self._logins)
            for member in batch:
                if not isinstance(member, Member):
                    raise InvalidInputError("add_members takes Member objects")
                for key in [k for k, v in logins.items() if v == member.member_id]:
                    del logins[key]  # the member's previous login, even from this batch
                owner = logins.get(member.login_key)
                if owner is not None and owner != member.member_id:
                    raise InvalidInputError(
                        f"login ID of member {member.member_id!r} is already used by {owner!r}"
                    )
                logins[member.login_key] = member.member_id
            for member in batch:
                self._members[member.member_id] = member
            self._logins = logins

    def get_members(self, member_ids: Collection[str]) -> dict[str, Member]:
        with self._lock:
            return {i: self._members[i] for i in member_ids if i in self._members}

    def iter_members(self, *, page_size: int = 1000) -> Iterator[Sequence[Member]]:
        with self._lock:
            ordered = [self._members[k] for k in sorted(self._members)]
        for start in range(0, len(ordered), page_size):
            yield ordered[start : start + page_size]

    def find_member_by_login(self, login_key: str) -> Member | None:
        with self._lock:
            member_id = self._logins.get(login_key)
            return self._members.get(member_id) if member_id is not None else None

    # credentials -------------------------------------------------------------

    def get_credentials(self, member_ids: Collection[str]) -> dict[str, Credential]:
        with self._lock:
            found = {}
            for member_id in member_ids:
                credential = self._credentials.get(member_id)
                if credential is None:
                    continue
                if credential.shared_plan_id is not None:
                    shared = self._plans[credential.shared_plan_id].password_hash
                    credential = attrs.evolve(credential, password_hash=shared or "")
                found[member_id] = credential
            return found

    def _write(self, write: CredentialWrite) -> None:
        old = self._credentials.get(write.member_id)
        self._credentials[write.member_id] = Credential(
            member_id=write.member_id,
            password_hash=write.password_hash or "",
            must_change=write.must_change,
            generation=(old.generation if old else 0) + 1,
            changed_at=write.at,
            not_before=write.at,
            shared_plan_id=write.shared_plan_id,
            expires_at=write.expires_at,
        )

    def _revoke_tokens(self, member_id: str, at: datetime, keep: str | None = None) -> None:
        for digest, token in self._tokens.items():
            if (
                token.member_id == member_id
                and digest != keep
                and token.used_at is None
                and token.revoked_at is None
            ):
                self._tokens[digest] = attrs.evolve(token, revoked_at=at)

    def write_credential(
        self, write: CredentialWrite, *, expected_generation: int, audit: AuditEvent
    ) -> bool:
        with self._lock:
            old = self._credentials.get(write.member_id)
            if (old.generation if old else 0) != expected_generation:
                return False
            self._write(write)
            self._revoke_tokens(write.member_id, write.at)
            self._audit.append(audit)
            return True

    def rehash_credential(self, member_id: str, generation: int, password_hash: str) -> None:
        with self._lock:
            old = self._credentials.get(member_id)
            if old is not None and old.generation == generation:
                self._credentials[member_id] = attrs.evolve(
                    old, password_hash=password_hash, shared_plan_id=None
                )

    # plans -------------------------------------------------------------------

    @contextmanager
    def write_plan(self, plan_id: str) -> Iterator[_MemoryPlanWriter]:
        writer = _MemoryPlanWriter()
        yield writer
        if writer.finished is None:
            return  # the block ended without finish(): keep nothing
        record, audit = writer.finished
        plan = plan_from_entries(
            writer.entries,
            plan_id=plan_id,
            created_at=record.plan.created_at,
            actor=record.plan.actor,
            settings=record.plan.settings,
            precautions=record.plan.precautions,
            confirmation=record.plan.confirmation,
        )
        with self._lock:
            self._plans[plan_id] = attrs.evolve(record, plan=plan)
            self._audit.append(audit)

    def load_plan(self, plan_id: str) -> PlanRecord | None:
        with self._lock:
            return self._plans.get(plan_id)

    def approve_plan(self, plan_id: str, approver: str, at: datetime, audit: AuditEvent) -> bool:
        with self._lock:
            record = self._plans.get(plan_id)
            if record is None:
                raise PlanNotFoundError(plan_id)
            self._plans[plan_id] = attrs.evolve(record, approved_by=approver, approved_at=at)
            self._audit.append(audit)
            return True

    def claim_plan(self, plan_id: str, owner: str, now: datetime, until: datetime) -> bool:
        with self._lock:
            holder = self._leases.get(plan_id)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            self._leases[plan_id] = (owner, until)
            record = self._plans[plan_id]
            if record.started_at is None:
                self._plans[plan_id] = attrs.evolve(record, started_at=now)
            return True

    def release_plan(
        self, plan_id: str, owner: str, *, finished_at: datetime | None, erase_secrets: bool
    ) -> None:
        with self._lock:
            holder = self._leases.get(plan_id)
            if holder is not None and holder[0] == owner:
                del self._leases[plan_id]
            record = self._plans[plan_id]
            changes: dict[str, Any] = {}
            if finished_at is not None and record.finished_at is None:
                changes["finished_at"] = finished_at  # the first completion counts
            if erase_secrets:
                changes.update(password=None, token_key=None)
            self._plans[plan_id] = attrs.evolve(record, **changes)

    # apply -------------------------------------------------------------------

    def get_progress(
        self, plan_id: str, member_ids: Collection[str] | None = None
    ) -> dict[str, MemberOutcome]:
        with self._lock:
            rows = self._progress.get(plan_id, {})
            if member_ids is None:
                return dict(rows)
            return {i: rows[i] for i in member_ids if i in rows}

    def commit(self, batch: EffectBatch) -> None:
        with self._lock:
            holder = self._leases.get(batch.plan_id, ("",))[0]
            if batch.owner is not None and holder != batch.owner:
                raise PlanInProgressError(f"plan {batch.plan_id} is held by another apply")
            for write in batch.credentials:
                self._write(write)
            for token in batch.tokens:
                at = token.issued_at
                self._revoke_tokens(token.member_id, at, keep=token.digest)
                if token.digest not in self._tokens:
                    credential = self._credentials.get(token.member_id)
                    self._tokens[token.digest] = attrs.evolve(
                        token, generation=credential.generation if credential else 0
                    )
            rows = self._progress.setdefault(batch.plan_id, {})
            for row in batch.progress:
                rows[row.member_id] = row
            self._audit.extend(batch.audit)

    # tokens ------------------------------------------------------------------

    def find_token(self, digest: str) -> TokenRecord | None:
        with self._lock:
            return self._tokens.get(digest)

    def redeem_token(self, digest: str, write: CredentialWrite, audit: AuditEvent) -> bool:
        with self._lock:
            token = self._tokens.get(digest)
            credential = self._credentials.get(write.member_id)
            if (
                token is None
                or token.used_at is not None
                or token.revoked_at is not None
                or token.generation != (credential.generation if credential else 0)
            ):
                return False
            self._tokens[digest] = attrs.evolve(token, used_at=write.at)
            self._write(write)
            self._revoke_tokens(write.member_id, write.at)
            self._audit.append(audit)
            return True

    def list_tokens(
        self, *, member_id: str | None = None, plan_id: str | None = None
    ) -> list[TokenRecord]:
        with self._lock:
            found = [
                t
                for t in self._tokens.values()
                if (member_id is None or t.member_id == member_id)
                and (plan_id is None or t.plan_id == plan_id)
            ]
        return sorted(found, key=lambda t: t.issued_at)

    def cancel_tokens(
        self, digests: Sequence[str], at: datetime, audit: Mapping[str, AuditEvent]
    ) -> list[str]:
        with self._lock:
            done = []
            for digest in dict.fromkeys(digests):
                token = self._tokens.get(digest)
                if token is None or token.used_at is not None or token.revoked_at is not None:
                    continue
                self._tokens[digest] = attrs.evolve(token, revoked_at=at)
                if digest in audit:
                    self._audit.append(audit[digest])
                done.append(digest)
            return done

    # audit -------------------------------------------------------------------

    def audit_events(
        self, *, plan_id: str | None = None, member_id: str | None = None
    ) -> list[AuditEvent]:
        with self._lock:
            return [
                e
                for e in self._audit
                if (plan_id is None or e.plan_id == plan_id)
                and (member_id is None or e.member_id == member_id)
            ]


class _MemoryPlanWriter:
    """Buffers a new plan until the end of ``MemoryStorage.write_plan``'s block."""

    def __init__(self) -> None:
        self.entries: list[PlanEntry] = []
        self.finished: tuple[PlanRecord, AuditEvent] | None = None

    def add(self, entries: Sequence[PlanEntry]) -> None:
        self.entries.extend(entries)

    def finish(self, record: PlanRecord, audit: AuditEvent) -> None:
        self.finished = (record, audit)


class MemoryNotifier:
    """The :class:`~bulkreset.ports.Notifier` port as a list.

    ``sent`` records every notice of every call, as it comes: no
    de-duplication, so a test sees any duplicate.
    """

    def __init__(self) -> None:
        self.sent: list[Notice] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemoryNotifier {len(self.sent)} sent>"

    def send(self, notices: Sequence[Notice]) -> None:
        """Record *notices*."""
        with self._lock:
            self.sent.extend(notices)


@attrs.define
class _Session:
    member_id: str
    issued_at: datetime
    active: bool = True


class MemorySessions:
    """The :class:`~bulkreset.ports.SessionStore` port, with helpers for tests.

    Args:
        clock: Dates new sessions; defaults to the system clock.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or system_clock
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemorySessions {sum(s.active for s in self._sessions.values())} active>"

    def create(self, member_id: str) -> str:
        """Open a session for *member_id* now; returns its session ID."""
        session_id = secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[session_id] = _Session(member_id, read_clock(self._clock))
        return session_id

    def is_active(self, session_id: str) -> bool:
        """True while the session exists and was not revoked."""
        with self._lock:
            session = self._sessions.get(session_id)
            return session is not None and session.active

    def revoke(self, member_ids: Sequence[str], issued_before: datetime) -> None:
        """End every session of these members issued at or before *issued_before*."""
        wanted = set(member_ids)
        with self._lock:
            for session in self._sessions.values():
                if session.member_id in wanted and session.issued_at <= issued_before:
                    session.active = False


def open_service(
    members: Iterable[Member] = (),
    *,
    clock: Clock | None = None,
    hasher: argon2.PasswordHasher | None = None,
    **options: Any,
) -> ResetService:
    """A :class:`~bulkreset.ResetService` over fresh in-memory adapters.

    Args:
        members: Members to start with.
        clock: See :class:`~bulkreset.ResetService`; also dates sessions.
        hasher: See :class:`~bulkreset.ResetService` (tests pass a cheap one).
        options: Passed on to :class:`~bulkreset.ResetService`.

    Returns:
        The service; its ``.notifier.sent`` lists every notice sent and its
        ``.sessions.create()`` / ``.sessions.is_active()`` open and watch sessions.
    """
    store = MemoryStorage()
    store.add_members(members)
    return ResetService(
        store,
        MemoryNotifier(),
        MemorySessions(clock),
        hasher=hasher,
        clock=clock,
        **options,
    )


if TYPE_CHECKING:  # mypy proves that each adapter satisfies its port

    def _conforms() -> tuple[Storage, Notifier, SessionStore]:
        return MemoryStorage(), MemoryNotifier(), MemorySessions()
