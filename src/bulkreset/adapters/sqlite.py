"""The embedded default: every port over one SQLite file.

One file holds members, credentials, the force plans' shared password hashes,
reset-token digests, sessions, plans, the outbox, the audit log and apply
progress. :func:`open_service` builds a :class:`~bulkreset.ResetService` over
it; the three adapters share one connection, guarded by a lock, so they are
safe to use from several threads. Several processes may open the same file:
writes take SQLite's write lock (``BEGIN IMMEDIATE``) and wait for it up to
30 seconds (``busy_timeout``); the file runs in WAL mode so readers never
wait for a writer.

Each :class:`~bulkreset.ports.Storage` write method is one transaction: it
writes all it was given or nothing. The schema is versioned with
``PRAGMA user_version`` and migrated in place when an older file is opened.

Secrets at rest (SPEC §5): tokens are stored as SHA-256 digests only; a
force plan's password is stored once, as one Argon2id hash in the plan's row,
which each target's credential points to (``shared_plan_id``) until the
member sets their own; a plan keeps the plain password only for
``deliver_password`` and its token key only until every notice is out; an
outbox row keeps its token and password only until it is delivered.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import argon2

from .._clock import Clock, from_iso, read_clock, system_clock, to_iso, to_utc
from .._model import (
    AuditEvent,
    Exclusion,
    ExclusionReason,
    Member,
    MemberOutcome,
    Notice,
    NoticeKind,
    Outcome,
    PlanEntry,
    PlanSettings,
    PlanWarning,
    ResetMode,
    WarningKind,
)
from .._service import ResetService
from ..errors import (
    InvalidInputError,
    PasswordPolicyError,
    PlanInProgressError,
    PlanNotFoundError,
    StorageError,
)
from ..ports import (
    ChunkRequest,
    ChunkTally,
    Credential,
    CredentialWrite,
    EffectBatch,
    PlanCounts,
    PlanRecord,
    PlanWriter,
    TokenRecord,
)
from . import _sqlite_bulk as bulk
from . import _sqlite_schema as schema
from ._delivery import DeliveryReport, OutboxDelivery, Transport, outbox_status
from ._wiring import service_over

__all__ = [
    "DeliveryReport",
    "SqliteOutbox",
    "SqliteSessions",
    "SqliteStorage",
    "Transport",
    "open_service",
]

BUSY_TIMEOUT = timedelta(seconds=30)
"""How long a write waits for another connection's write lock."""


def _encodable(text: object) -> bool:
    """True when *text* is a string SQLite can store (no lone surrogates)."""
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_list(ids: Iterable[str]) -> str:
    """A JSON array of the storable IDs, for ``IN (SELECT value FROM json_each(?))``."""
    ids = list(ids)
    if all(type(i) is str for i in ids):  # the usual case: check the whole array at once
        text = json.dumps(ids, ensure_ascii=False)
        if _encodable(text):
            return text
    return json.dumps([i for i in ids if _encodable(i)], ensure_ascii=False)


def _time(value: datetime | None) -> str | None:
    return None if value is None else to_iso(value)


def _parse(value: str | None) -> datetime | None:
    return None if value is None else from_iso(value)


def _fail(exc: BaseException) -> StorageError:
    return StorageError(f"the SQLite store failed ({type(exc).__name__})")


class _Database:
    """One connection to one file, a lock, and the transaction helpers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.lock = threading.RLock()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT.total_seconds(),
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the SQLite database {self.path!r}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT.total_seconds() * 1000):d}")
            schema.check_ownership(conn, self.path)  # before anything writes to the file
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA temp_store = MEMORY")  # set-based apply's chunk table
            schema.migrate(conn)
        except StorageError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(
                f"{self.path!r} is not a bulkreset SQLite database, or cannot be opened"
            ) from exc
        self.conn = conn
        self.closed = False

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

        Raises:
            StorageError: SQLite failed (the cause is chained); other
                exceptions pass through after the rollback.
        """
        with self.lock:
            self._check_open()
            if self.conn.in_transaction:  # inside this thread's own transaction
                with self._savepoint():
                    yield self.conn
                return
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _fail(exc) from exc
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _fail(exc) from exc
                raise

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A nested write: it joins the open transaction and commits or rolls back with it.

        An error undoes only the nested part (``ROLLBACK TO``) and propagates,
        so the outer transaction decides.
        """
        self.conn.execute("SAVEPOINT nested_write")
        try:
            yield
            self.conn.execute("RELEASE nested_write")
        except BaseException as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO nested_write")
                self.conn.execute("RELEASE nested_write")
            if isinstance(exc, sqlite3.Error):
                raise _fail(exc) from exc
            raise

    def select(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Run one query (its own snapshot) and return every row.

        Raises:
            StorageError: SQLite failed.
        """
        with self.lock:
            self._check_open()
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _fail(exc) from exc

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.conn.close()

    def _check_open(self) -> None:
        if self.closed:
            raise StorageError(
                "the SQLite store is closed (a big plan or result reads its members from "
                "the store: use it before closing the store)"
            )


# storage -----------------------------------------------------------------------

_CREDENTIAL_UPSERT = schema.CREDENTIAL_WRITE.format(rows="VALUES (?, ?, ?, ?, 1, ?, ?, ?)")

_REVOKE_TOKENS = """
UPDATE tokens SET revoked_at = ?
WHERE member_id = ? AND digest IS NOT ? AND used_at IS NULL AND revoked_at IS NULL
"""

_INSERT_DIGEST = """
INSERT OR IGNORE INTO tokens
    (digest, member_id, plan_id, issued_at, expires_at, generation, used_at, revoked_at)
VALUES (?, ?, ?, ?, ?, COALESCE((SELECT generation FROM credentials WHERE member_id = ?), 0),
        NULL, NULL)
"""

_PROGRESS_UPSERT = """
INSERT INTO progress
    (plan_id, member_id, outcome, reason, sessions_revoked, notified, login_id, at, attempted_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (plan_id, member_id) DO UPDATE SET
    outcome = excluded.outcome,
    reason = excluded.reason,
    sessions_revoked = excluded.sessions_revoked,
    notified = excluded.notified,
    login_id = excluded.login_id,
    at = excluded.at,
    attempted_at = excluded.attempted_at
"""

_INSERT_AUDIT = """
INSERT INTO audit (at, action, actor, plan_id, member_id, detail) VALUES (?, ?, ?, ?, ?, ?)
"""

_MEMBER_UPSERT = """
INSERT INTO members
    (member_id, login_id, name, sign_in, mobile_phone, personal_email, status, role, locale,
     login_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (member_id) DO UPDATE SET
    locale = excluded.locale,
    login_id = excluded.login_id,
    name = excluded.name,
    sign_in = excluded.sign_in,
    mobile_phone = excluded.mobile_phone,
    personal_email = excluded.personal_email,
    status = excluded.status,
    role = excluded.role,
    login_key = excluded.login_key
"""

_MEMBER_SELECT = (
    "SELECT member_id, login_id, name, sign_in, mobile_phone, personal_email, status, role, "
    "locale FROM members "
)

_CREDENTIAL_SELECT = """
SELECT c.member_id,
       CASE WHEN c.shared_plan_id IS NULL THEN COALESCE(c.password_hash, '')
            ELSE COALESCE(p.password_hash, '') END,
       c.must_change, c.generation, c.changed_at, c.not_before, c.shared_plan_id, c.expires_at
FROM credentials AS c LEFT JOIN plans AS p ON p.plan_id = c.shared_plan_id
WHERE c.member_id IN (SELECT value FROM json_each(?))
"""


_AUDIT_SELECT = "SELECT at, action, actor, plan_id, member_id, detail FROM audit"

_REQUEST_COLUMNS = (
    "digest, member_id, plan_id, issued_at, expires_at, generation, used_at, revoked_at"
)
"""The ``tokens`` columns, in the order ``_token_from_row`` reads them."""


def _audit_from_row(row: Sequence[Any]) -> AuditEvent:
    return AuditEvent(
        at=from_iso(row[0]),
        action=row[1],
        actor=row[2],
        plan_id=row[3],
        member_id=row[4],
        detail=row[5],
    )


def _credential_params(write: CredentialWrite) -> tuple[object, ...]:
    at = to_iso(write.at)
    hashed = None if write.shared_plan_id is not None else (write.password_hash or "")
    return (
        write.member_id,
        hashed,
        write.shared_plan_id,
        int(write.must_change),
        at,
        at,
        _time(write.expires_at),
    )


def _audit_params(event: AuditEvent) -> tuple[object, ...]:
    return (
        to_iso(event.at),
        event.action,
        event.actor,
        event.plan_id,
        event.member_id,
        event.detail,
    )


def _progress_params(plan_id: str, row: MemberOutcome) -> tuple[object, ...]:
    return (
        plan_id,
        row.member_id,
        row.outcome.value,
        row.reason,
        int(row.sessions_revoked),
        int(row.notified),
        row.login_id,
        _time(row.at),
        _time(row.attempted_at),
    )


def _token_from_row(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        digest=row[0],
        member_id=row[1],
        plan_id=row[2],
        issued_at=from_iso(row[3]),
        expires_at=from_iso(row[4]),
        generation=row[5],
        used_at=_parse(row[6]),
        revoked_at=_parse(row[7]),
    )


class _AbandonedError(Exception):
    """Ends a ``write_plan`` block that never called ``finish``: roll back quietly."""


class SqlitePlanWriter:
    """Writes one plan's entries and record inside ``SqliteStorage.write_plan``."""

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        self.conn: sqlite3.Connection | None = None
        self.counts = [0, 0, 0]  # targets, excluded, warnings
        self.finished = False

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None or self.finished:
            raise StorageError("the plan writer is closed")
        return self.conn

    def add(self, entries: Sequence[PlanEntry]) -> None:
        """Insert *entries* after those added before (one ``executemany``)."""
        conn = self._connection()
        rows = schema.entry_rows(self.plan_id, entries, self.counts)
        conn.executemany(
            f"INSERT INTO plan_entries ({schema.ENTRY_COLUMNS}) "  # noqa: S608 (fixed names)
            f"VALUES ({', '.join('?' * 15)})",
            rows,
        )

    def finish(self, record: PlanRecord, audit: AuditEvent) -> None:
        """Insert the plan's row (header, counts, secrets) and its audit event."""
        conn = self._connection()
        counts = (self.counts[0], self.counts[1], self.counts[2])
        conn.execute(
            "INSERT INTO plans (plan_id, body, password_hash, password, token_key, started_at, "
            "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.plan_id,
                schema.plan_header_to_json(record.plan, counts),
                record.password_hash,
                record.password,
                record.token_key,
                _time(record.started_at),
                _time(record.finished_at),
            ),
        )
        conn.execute(_INSERT_AUDIT, _audit_params(audit))
        self.finished = True


class SqliteStorage:
    """The :class:`~bulkreset.ports.Storage` port over one SQLite file.

    Opens (creating or migrating) the file; every write method is one
    ``BEGIN IMMEDIATE`` transaction. Thread-safe: one connection behind a
    re-entrant lock, shared with the :class:`SqliteOutbox` and
    :class:`SqliteSessions` built on this store. Usable as a context manager
    that closes the connection.

    Args:
        path: The database file (created if missing), or ``":memory:"``.

    Raises:
        StorageError: the file is not an SQLite database, its schema is newer
            than this bulkreset knows, or it cannot be opened (cause chained).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = _Database(path)
        self.set_based = True
        """Plan and apply whole chunks in SQL (:class:`~bulkreset.ports.SetBasedStorage`);
        ``False`` sends every chunk through the port-by-port path (tests compare the two)."""
        # The last plan body parsed, and its plan: ``apply`` loads a plan twice,
        # and parsing 100,000 targets costs far more than comparing the text.

    def __repr__(self) -> str:
        return f"<SqliteStorage {self._db.path!r}>"

    def __enter__(self) -> SqliteStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> str:
        """The database file's path."""
        return self._db.path

    def close(self) -> None:
        """Close the connection (also the outbox's and sessions'). Further calls fail."""
        self._db.close()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows, sorted: for tests comparing a store before and after a call.

        Returns:
            Table name to its rows (tuples of column values, secrets included:
            never log this).
        """
        names = [
            row[0]
            for row in self._db.select(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        tables = {}
        for name in names:  # names come from sqlite_master, not from a caller
            rows = self._db.select(f'SELECT * FROM "{name}"')  # noqa: S608
            tables[name] = sorted((tuple(r) for r in rows), key=repr)
        return tables

    # directory ---------------------------------------------------------------

    def add_members(self, members: Iterable[Member]) -> None:
        """Insert or update members by ID, in one transaction.

        Args:
            members: :class:`~bulkreset.Member` objects, applied in order.

        Raises:
            InvalidInputError: *members* is not iterable, an item is not a
                :class:`~bulkreset.Member`, or
                two members would share a login ID (compared by
                :func:`~bulkreset.fold_login`). Nothing is written then.
            StorageError: SQLite failed; nothing is written.
        """
        try:
            batch = list(members)
        except TypeError:
            raise InvalidInputError("add_members takes an iterable of Member objects") from None
        if not all(isinstance(m, Member) for m in batch):
            raise InvalidInputError("add_members takes Member objects")
        rows = [schema.member_to_row(m) for m in batch]
        with self._db.write() as conn:
            try:
                conn.executemany(_MEMBER_UPSERT, rows)
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                raise self._login_conflict(conn, batch) from None

    @staticmethod
    def _login_conflict(conn: sqlite3.Connection, batch: Sequence[Member]) -> InvalidInputError:
        """Replay *batch* one member at a time to name the member whose login ID is taken."""
        for member in batch:
            try:
                conn.execute(_MEMBER_UPSERT, schema.member_to_row(member))
            except sqlite3.IntegrityError:
                (owner,) = conn.execute(
                    "SELECT member_id FROM members WHERE login_key = ?", (member.login_key,)
                ).fetchone()
                return InvalidInputError(
                    f"login ID of member {member.member_id!r} is already used by {owner!r}"
                )
        return InvalidInputError("a login ID is already used by another member")  # pragma: no cover

    def get_members(self, member_ids: Collection[str]) -> dict[str, Member]:
        """The members with these IDs; unknown (or unstorable) IDs are simply absent.

        Raises:
            StorageError: SQLite failed.
        """
        rows = self._db.select(
            _MEMBER_SELECT + "WHERE member_id IN (SELECT value FROM json_each(?))",  # noqa: S608
            (_id_list(member_ids),),
        )
        return {row[0]: schema.member_from_row(row) for row in rows}

    def iter_members(self, *, page_size: int = 1000) -> Iterator[Sequence[Member]]:
        """Every member, in pages of at most *page_size*, ordered by ``member_id``.

        Pages are read one query each (keyset pagination), so memory stays
        bounded by the page size.

        Raises:
            InvalidInputError: *page_size* is below 1.
            StorageError: SQLite failed.
        """
        if page_size < 1:
            raise InvalidInputError("page_size must be at least 1")
        return self._pages(page_size)

    def _pages(self, page_size: int) -> Iterator[Sequence[Member]]:
        after = ""
        while True:
            rows = self._db.select(
                _MEMBER_SELECT + "WHERE member_id > ? ORDER BY member_id LIMIT ?",
                (after, page_size),
            )
            if not rows:
                return
            yield [schema.member_from_row(row) for row in rows]
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def find_member_by_login(self, login_key: str) -> Member | None:
        """The member whose folded login ID is *login_key*, or ``None``.

        Raises:
            StorageError: SQLite failed.
        """
        if not _encodable(login_key):
            return None
        rows = self._db.select(_MEMBER_SELECT + "WHERE login_key = ?", (login_key,))
        return schema.member_from_row(rows[0]) if rows else None

    # credentials -------------------------------------------------------------

    def get_credentials(self, member_ids: Collection[str]) -> dict[str, Credential]:
        """The stored credentials of these members; a shared one carries its plan's hash.

        Raises:
            StorageError: SQLite failed.
        """
        rows = self._db.select(
            _CREDENTIAL_SELECT,
            (_id_list(member_ids),),
        )
        return {
            row[0]: Credential(
                member_id=row[0],
                password_hash=row[1],
                must_change=bool(row[2]),
                generation=row[3],
                changed_at=from_iso(row[4]),
                not_before=_parse(row[5]),
                shared_plan_id=row[6],
                expires_at=_parse(row[7]),
            )
            for row in rows
        }

    @staticmethod
    def _generation(conn: sqlite3.Connection, member_id: str) -> int:
        row = conn.execute(
            "SELECT generation FROM credentials WHERE member_id = ?", (member_id,)
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def write_credential(
        self, write: CredentialWrite, *, expected_generation: int, audit: AuditEvent
    ) -> bool:
        """Store a new credential if the member's generation is still *expected_generation*.

        Also revokes the member's live tokens and appends *audit*, in the
        same transaction.

        Returns:
            ``False`` (nothing written) when the generation moved on.

        Raises:
            StorageError: SQLite failed; nothing is written.
        """
        with self._db.write() as conn:
            if self._generation(conn, write.member_id) != expected_generation:
                return False
            conn.execute(_CREDENTIAL_UPSERT, _credential_params(write))
            conn.execute(_REVOKE_TOKENS, (to_iso(write.at), write.member_id, None))
            conn.execute(_INSERT_AUDIT, _audit_params(audit))
            return True

    def rehash_credential(self, member_id: str, generation: int, password_hash: str) -> None:
        """Give the member their own credential with *password_hash*, if still at *generation*.

        Raises:
            StorageError: SQLite failed.
        """
        with self._db.write() as conn:
            conn.execute(
                "UPDATE credentials SET password_hash = ?, shared_plan_id = NULL "
                "WHERE member_id = ? AND generation = ?",
                (password_hash, member_id, generation),
            )

    # plans -------------------------------------------------------------------

    @contextmanager
    def write_plan(self, plan_id: str) -> Iterator[SqlitePlanWriter]:
        """Write a new plan in one transaction (see :meth:`ports.Storage.write_plan`).

        Entries go to the ``plan_entries`` table as they are added (nothing
        is held in memory); the plan row with its header, secrets and audit
        event is written by ``finish``. The transaction, and so the store's
        write lock, is held for the whole block.

        Raises:
            StorageError: SQLite failed; nothing is written.
        """
        writer = SqlitePlanWriter(plan_id)
        try:
            with self._db.write() as conn:
                writer.conn = conn
                yield writer
                if not writer.finished:
                    raise _AbandonedError
        except _AbandonedError:
            pass
        finally:
            writer.conn = None

    def load_plan(self, plan_id: str) -> PlanRecord | None:
        """The stored plan, or ``None``; its members are read a page at a time.

        Raises:
            StorageError: SQLite failed.
        """
        if not _encodable(plan_id):
            return None
        rows = self._db.select(
            "SELECT body, password_hash, password, token_key, started_at, finished_at, "
            "approved_by, approved_at FROM plans WHERE plan_id = ?",
            (plan_id,),
        )
        if not rows:
            return None
        body, password_hash, password, token_key, started_at, finished_at, by, at = rows[0]
        return PlanRecord(
            schema.plan_from_header(body, partial(self._plan_section, plan_id)),
            password_hash=password_hash,
            password=password,
            token_key=None if token_key is None else bytes(token_key),
            started_at=_parse(started_at),
            finished_at=_parse(finished_at),
            approved_by=by,
            approved_at=_parse(at),
        )

    def approve_plan(self, plan_id: str, approver: str, at: datetime, audit: AuditEvent) -> bool:
        """Record the plan's approval (replacing an earlier one) and append *audit*.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: SQLite failed; nothing is written.
        """
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE plans SET approved_by = ?, approved_at = ? WHERE plan_id = ?",
                (approver, to_iso(at), plan_id),
            )
            if cursor.rowcount != 1:
                raise PlanNotFoundError(plan_id)
            conn.execute(_INSERT_AUDIT, _audit_params(audit))
            return True

    def _plan_section(self, plan_id: str, section: int, start: int, stop: int) -> list[Any]:
        fetch = (self._plan_targets, self._plan_excluded, self._plan_warnings)[section]
        return fetch(plan_id, start, stop)

    def _plan_rows(
        self, columns: str, index: str, plan_id: str, start: int, stop: int
    ) -> list[Any]:
        return self._db.select(
            f"SELECT {columns} FROM plan_entries WHERE plan_id = ? "  # noqa: S608 (fixed names)
            f"AND {index} >= ? AND {index} < ? ORDER BY {index}",
            (plan_id, start, stop),
        )

    def _plan_targets(self, plan_id: str, start: int, stop: int) -> list[Member]:
        columns = (
            "member_id, login_id, name, sign_in, mobile_phone, personal_email, status, role, "
            "COALESCE(locale, 'en')"
        )
        rows = self._plan_rows(columns, "target_index", plan_id, start, stop)
        return [schema.member_from_row(row) for row in rows]

    def _plan_excluded(self, plan_id: str, start: int, stop: int) -> list[Exclusion]:
        rows = self._plan_rows("member_id, reason", "excluded_index", plan_id, start, stop)
        return [Exclusion(row[0], ExclusionReason(row[1])) for row in rows]

    def _plan_warnings(self, plan_id: str, start: int, stop: int) -> list[PlanWarning]:
        rows = self._plan_rows("member_id, warning", "warning_index", plan_id, start, stop)
        return [PlanWarning(row[0], WarningKind(row[1])) for row in rows]

    def claim_plan(self, plan_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the plan's apply lease for *owner* until *until*, atomically across processes.

        Succeeds when the lease is free, expired, or already *owner*'s, and
        sets ``started_at = now`` the first time.

        Returns:
            ``False`` while someone else holds the lease.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: SQLite failed.
        """
        stamp = to_iso(now)
        with self._db.write() as conn:
            cursor = conn.execute(
                """
                UPDATE plans SET lease_owner = ?, lease_until = ?,
                                 started_at = COALESCE(started_at, ?)
                WHERE plan_id = ?
                  AND (lease_owner IS NULL OR lease_owner = ? OR lease_until <= ?)
                """,
                (owner, to_iso(until), stamp, plan_id, owner, stamp),
            )
            if cursor.rowcount == 1:
                return True
            if conn.execute("SELECT 1 FROM plans WHERE plan_id = ?", (plan_id,)).fetchone():
                return False
            raise PlanNotFoundError(plan_id)

    def release_plan(
        self, plan_id: str, owner: str, *, finished_at: datetime | None, erase_secrets: bool
    ) -> None:
        """Give up *owner*'s lease; record completion; erase the plain password and token key.

        The plan's password hash stays: members' credentials point to it.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: SQLite failed.
        """
        with self._db.write() as conn:
            cursor = conn.execute(
                """
                UPDATE plans SET
                    lease_owner = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_owner END,
                    lease_until = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_until END,
                    finished_at = COALESCE(finished_at, :finished),
                    password = CASE WHEN :erase THEN NULL ELSE password END,
                    token_key = CASE WHEN :erase THEN NULL ELSE token_key END
                WHERE plan_id = :plan
                """,
                {
                    "owner": owner,
                    "finished": _time(finished_at),
                    "erase": int(erase_secrets),
                    "plan": plan_id,
                },
            )
            if cursor.rowcount != 1:
                raise PlanNotFoundError(plan_id)

    # apply -------------------------------------------------------------------

    def get_progress(
        self, plan_id: str, member_ids: Collection[str] | None = None
    ) -> dict[str, MemberOutcome]:
        """The recorded per-member progress of a plan (only of *member_ids* if given).

        Raises:
            StorageError: SQLite failed.
        """
        if not _encodable(plan_id):
            return {}
        columns = (
            "SELECT member_id, outcome, reason, sessions_revoked, notified, login_id, at, "
            "attempted_at FROM progress WHERE plan_id = ?"
        )
        if member_ids is None:
            rows = self._db.select(columns, (plan_id,))
        else:
            rows = self._db.select(
                columns + " AND member_id IN (SELECT value FROM json_each(?))",  # noqa: S608
                (plan_id, _id_list(member_ids)),
            )
        return {
            row[0]: MemberOutcome(
                row[0],
                Outcome(row[1]),
                row[2],
                sessions_revoked=bool(row[3]),
                notified=bool(row[4]),
                login_id=row[5],
                at=_parse(row[6]),
                attempted_at=_parse(row[7]),
            )
            for row in rows
        }

    def commit(self, batch: EffectBatch) -> None:
        """Write an :class:`~bulkreset.ports.EffectBatch` in one transaction.

        Credentials first; then each token supersedes its member's other live
        tokens and is inserted (unless its digest is already stored) with the
        member's generation as it now stands; then progress rows and audit
        events. Statements run with ``executemany``, so a chunk costs a few
        round trips, not a few per member.

        Raises:
            PlanInProgressError: ``batch.owner`` no longer holds the plan's lease.
            StorageError: SQLite failed; nothing is written.
        """
        tokens = batch.tokens
        with self._db.write() as conn:
            if batch.owner is not None:
                holder = conn.execute(
                    "SELECT lease_owner FROM plans WHERE plan_id = ?", (batch.plan_id,)
                ).fetchone()
                if holder is None or holder[0] != batch.owner:
                    raise PlanInProgressError(f"plan {batch.plan_id} is held by another apply")
            conn.executemany(_CREDENTIAL_UPSERT, map(_credential_params, batch.credentials))
            if len({t.member_id for t in tokens}) == len(tokens):
                conn.executemany(
                    _REVOKE_TOKENS, ((to_iso(t.issued_at), t.member_id, t.digest) for t in tokens)
                )
                conn.executemany(_INSERT_DIGEST, map(self._token_params, tokens))
            else:  # a member twice: a later token supersedes the earlier one
                for token in tokens:
                    conn.execute(
                        _REVOKE_TOKENS, (to_iso(token.issued_at), token.member_id, token.digest)
                    )
                    conn.execute(_INSERT_DIGEST, self._token_params(token))
            conn.executemany(
                _PROGRESS_UPSERT, (_progress_params(batch.plan_id, r) for r in batch.progress)
            )
            conn.executemany(_INSERT_AUDIT, map(_audit_params, batch.audit))

    # set-based plan and apply (ports.SetBasedStorage) ------------------------------

    def classify_into_plan(
        self,
        writer: PlanWriter,
        selection: Sequence[str] | None,
        *,
        actor: Member,
        settings: PlanSettings,
        folded_password: str | None,
    ) -> PlanCounts | None:
        """Sort a selection into the plan being written, in SQL.

        See :meth:`bulkreset.ports.SetBasedStorage.classify_into_plan`; the
        rules are those of :func:`bulkreset._planning.classify`.

        Returns ``None`` when *writer* is not this store's or already holds entries.

        Raises:
            PasswordPolicyError: a target's folded login ID equals
                *folded_password* (``same_as_login_id``).
            StorageError: SQLite failed.
        """
        if not self.set_based or not isinstance(writer, SqlitePlanWriter) or any(writer.counts):
            return None
        conn = writer._connection()
        params = bulk.rule_params(settings, actor.member_id, actor.role)
        try:
            targets, warnings, excluded = bulk.classify_into_plan(
                conn, writer.plan_id, selection, params
            )
            same = folded_password is not None and bulk.target_with_login_key(
                conn, writer.plan_id, folded_password
            )
        except sqlite3.Error as exc:
            raise _fail(exc) from exc
        if same:
            raise PasswordPolicyError(("same_as_login_id",))
        writer.counts = [targets, sum(excluded.values()), warnings]
        return PlanCounts(targets=targets, warnings=warnings, excluded=excluded)

    def apply_chunk(self, request: ChunkRequest) -> ChunkTally | None:
        """Apply one chunk of targets in one transaction.

        See :meth:`bulkreset.ports.SetBasedStorage.apply_chunk`.

        Handles the chunk when the notices go to this store's own
        :class:`SqliteOutbox` and (for a force change) the sessions are this
        store's own :class:`SqliteSessions`, neither wrapped, and the plan
        does not generate passwords; returns ``None`` otherwise.
        ``request.notifier.send`` and ``request.sessions.revoke`` are still
        called, inside the chunk's transaction: effects, progress, audit
        events, revocations and outbox rows commit together or not at all.

        Raises:
            PlanInProgressError: ``request.owner`` no longer holds the plan's lease.
            StorageError: SQLite failed; nothing is written.
            Exception: whatever a port raised; nothing is written.
        """
        force = request.settings.mode is ResetMode.FORCE_CHANGE
        if (
            not self.set_based
            or request.settings.generate_passwords
            or not self._owns(request.notifier, SqliteOutbox, "send")
            or (force and not self._owns(request.sessions, SqliteSessions, "revoke"))
        ):
            return None
        with self._db.write() as conn:
            renewed = conn.execute(
                "UPDATE plans SET lease_until = ? WHERE plan_id = ? AND lease_owner = ?",
                (to_iso(request.lease_until), request.plan_id, request.owner),
            )
            if renewed.rowcount != 1:
                raise PlanInProgressError(
                    f"plan {request.plan_id} was taken over by another apply; this one stopped"
                )
            found = bulk.apply_chunk(conn, request)
            if found is None:
                return None
            counts, before = found
            events: tuple[AuditEvent, ...] = ()
            if request.want_events:
                events = tuple(
                    _audit_from_row(row)
                    for row in conn.execute(
                        f"{_AUDIT_SELECT} WHERE seq > ? ORDER BY seq",
                        (before,),
                    )
                )
        return ChunkTally(counts=counts, events=events)

    def _owns(self, port: object, kind: type, method: str) -> bool:
        """Whether *port* is exactly this store's own outbox or sessions, unwrapped.

        A subclass, or a wrapper set on the instance (``notifier.send = ...``),
        may do anything, so its chunk goes port by port: the wrapper then sees
        plain lists of notices, outside any transaction.
        """
        return (
            type(port) is kind
            and getattr(port, "_db", None) is self._db
            and method not in vars(port)
        )

    @staticmethod
    def _token_params(token: TokenRecord) -> tuple[object, ...]:
        return (
            token.digest,
            token.member_id,
            token.plan_id,
            to_iso(token.issued_at),
            to_iso(token.expires_at),
            token.member_id,
        )

    # tokens ------------------------------------------------------------------

    def find_token(self, digest: str) -> TokenRecord | None:
        """The token record with this digest, or ``None``.

        Raises:
            StorageError: SQLite failed.
        """
        if not _encodable(digest):
            return None
        rows = self._db.select(
            f"SELECT {_REQUEST_COLUMNS} FROM tokens WHERE digest = ?",  # noqa: S608 (fixed names)
            (digest,),
        )
        return _token_from_row(rows[0]) if rows else None

    def redeem_token(self, digest: str, write: CredentialWrite, audit: AuditEvent) -> bool:
        """Use a token, write the credential, revoke other tokens, append *audit*: atomically.

        Returns:
            ``False`` (nothing written) when the token is unknown, used,
            revoked, or its generation is no longer current.

        Raises:
            StorageError: SQLite failed; nothing is written.
        """
        if not _encodable(digest):
            return False
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT generation FROM tokens "
                "WHERE digest = ? AND used_at IS NULL AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
            if row is None or row[0] != self._generation(conn, write.member_id):
                return False
            conn.execute(
                "UPDATE tokens SET used_at = ? WHERE digest = ?", (to_iso(write.at), digest)
            )
            conn.execute(_CREDENTIAL_UPSERT, _credential_params(write))
            conn.execute(_REVOKE_TOKENS, (to_iso(write.at), write.member_id, digest))
            conn.execute(_INSERT_AUDIT, _audit_params(audit))
            return True

    def list_tokens(
        self, *, member_id: str | None = None, plan_id: str | None = None
    ) -> list[TokenRecord]:
        """The stored change requests of a member and/or a plan, oldest first.

        Raises:
            StorageError: SQLite failed.
        """
        if not all(v is None or _encodable(v) for v in (plan_id, member_id)):
            return []
        clauses, params = ["1"], []
        for column, value in (("member_id", member_id), ("plan_id", plan_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = " AND ".join(clauses)  # fixed column names; the values are parameters
        sql = f"SELECT {_REQUEST_COLUMNS} FROM tokens WHERE {where} ORDER BY issued_at, rowid"  # noqa: S608
        rows = self._db.select(sql, params)
        return [_token_from_row(r) for r in rows]

    def cancel_tokens(
        self, digests: Sequence[str], at: datetime, audit: Mapping[str, AuditEvent]
    ) -> list[str]:
        """Revoke these tokens if still unused and unrevoked; append their audit events.

        Raises:
            StorageError: SQLite failed; nothing is written.
        """
        done = []
        with self._db.write() as conn:
            for digest in dict.fromkeys(d for d in digests if _encodable(d)):
                cursor = conn.execute(
                    "UPDATE tokens SET revoked_at = ? "
                    "WHERE digest = ? AND used_at IS NULL AND revoked_at IS NULL",
                    (to_iso(at), digest),
                )
                if cursor.rowcount == 1:
                    done.append(digest)
                    if digest in audit:
                        conn.execute(_INSERT_AUDIT, _audit_params(audit[digest]))
        return done

    # audit -------------------------------------------------------------------

    def audit_events(
        self, *, plan_id: str | None = None, member_id: str | None = None
    ) -> list[AuditEvent]:
        """Audit events, oldest first, optionally only those of one plan or member.

        Raises:
            StorageError: SQLite failed.
        """
        if not all(v is None or _encodable(v) for v in (plan_id, member_id)):
            return []
        clauses: list[str] = []
        params: list[str] = []
        if plan_id is not None:
            clauses.append("plan_id = ?")
            params.append(plan_id)
        if member_id is not None:
            clauses.append("member_id = ?")
            params.append(member_id)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        rows = self._db.select(f"{_AUDIT_SELECT} {where}ORDER BY seq", params)
        return [_audit_from_row(r) for r in rows]


# outbox ------------------------------------------------------------------------


_NOTICE_SELECT = (
    "SELECT member_id, kind, token, password, expires_at, idempotency_key, recipient, actor,"
    " issued_at, plan_id, name, locale, phone FROM outbox "
)

_PENDING = "delivered_at IS NULL AND withdrawn_at IS NULL AND failed_at IS NULL"

_OUTBOX_INSERT = """
INSERT OR IGNORE INTO outbox
    (member_id, kind, token, password, expires_at, idempotency_key, recipient, actor,
     issued_at, plan_id, name, locale, phone, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def notice_from_row(row: Sequence[Any]) -> Notice:
    return Notice(
        member_id=row[0],
        kind=NoticeKind(row[1]),
        token=row[2],
        password=row[3],
        expires_at=_parse(row[4]),
        idempotency_key=row[5],
        recipient=row[6],
        actor=row[7],
        issued_at=_parse(row[8]),
        plan_id=row[9],
        name=row[10],
        locale=row[11] if len(row) > 11 else "en",
        phone=row[12] if len(row) > 12 else None,
    )


class SqliteOutbox(OutboxDelivery):
    """The :class:`~bulkreset.ports.Notifier` port as an outbox table in the store's file.

    :meth:`send` only records notices (a transactional outbox); :meth:`deliver`
    hands them to a transport (SMTP, SMS, a host's queue) and then erases
    their token and password (SPEC §5). A notice whose idempotency key the
    outbox already holds is ignored, so a resumed apply never queues a
    notice twice, and a delivered key is never delivered again.
    Thread-safe; shares the store's connection.

    Args:
        store: The :class:`SqliteStorage` whose file holds the outbox.
        clock: Dates rows and deliveries; defaults to the system clock.
    """

    def __init__(self, store: SqliteStorage, *, clock: Clock | None = None) -> None:
        self._db = store._db
        self._store = store
        self._clock = clock or system_clock

    def __repr__(self) -> str:
        return f"<SqliteOutbox {self.pending_count()} pending>"

    def pending_count(self) -> int:
        """How many notices are not yet delivered, failed or withdrawn (one query).

        Raises:
            StorageError: SQLite failed.
        """
        rows = self._db.select(f"SELECT count(*) FROM outbox WHERE {_PENDING}")  # noqa: S608
        return int(rows[0][0])

    def send(self, notices: Sequence[Notice]) -> None:
        """Queue *notices*, in one transaction; a key already held is ignored.

        A notice with an empty ``idempotency_key`` gets a random one.

        Raises:
            StorageError: SQLite failed; nothing is queued.
        """
        now = to_iso(read_clock(self._clock))
        if isinstance(notices, bulk.ChunkNotices) and notices.conn is self._db.conn:
            with self._db.write() as conn:  # inside the chunk's own transaction
                notices.copy_into_outbox(conn, now)
            return
        rows = [
            (
                n.member_id,
                n.kind.value,
                n.token,
                n.password,
                _time(n.expires_at),
                n.idempotency_key or f"auto:{secrets.token_hex(16)}",
                n.recipient,
                n.actor,
                _time(n.issued_at),
                n.plan_id,
                n.name,
                n.locale,
                n.phone,
                now,
            )
            for n in notices
        ]
        with self._db.write() as conn:
            conn.executemany(
                _OUTBOX_INSERT,
                rows,
            )

    def pending(self) -> list[Notice]:
        """Notices not yet delivered, oldest first, with their token or password.

        A change request whose token is no longer live (superseded by a newer
        request, used, expired, or the password changed since) is left out:
        it will be withdrawn, never delivered, so every pending link works.

        Raises:
            StorageError: SQLite failed.
        """
        rows = self._db.select(_NOTICE_SELECT + f"WHERE {_PENDING} ORDER BY seq")
        now = read_clock(self._clock)
        notices = [notice_from_row(r) for r in rows]
        return [n for n in notices if self._link_is_live(n, now)]

    def delivered(self) -> list[Notice]:
        """Delivered notices, oldest first; their token and password are erased.

        Raises:
            StorageError: SQLite failed.
        """
        rows = self._db.select(_NOTICE_SELECT + "WHERE delivered_at IS NOT NULL ORDER BY seq")
        return [notice_from_row(r) for r in rows]

    def listing(self) -> list[dict[str, Any]]:
        """Every outbox row without its secrets, oldest first (for the command line).

        Returns:
            One dict per notice: ``key``, ``member_id``, ``kind``,
            ``recipient``, ``created_at`` and ``delivered_at`` (aware
            datetimes, or ``None``), ``attempts``, ``last_error`` (a reply
            code such as ``"SMTP 421"`` or an exception type name, or
            ``None``), ``retry_at`` (when a deferred notice is due again) and
            ``status``: ``"pending"``, ``"deferred"`` (pending, after a failed
            attempt), ``"failed"`` (for good: a 5xx reply), ``"delivered"``,
            or ``"withdrawn"`` (a change request whose token died first).

        Raises:
            StorageError: SQLite failed.
        """
        rows = self._db.select(
            "SELECT idempotency_key, member_id, kind, recipient, created_at, delivered_at, "
            "attempts, last_error, withdrawn_at, failed_at, next_attempt_at "
            "FROM outbox ORDER BY seq"
        )
        return [
            {
                "key": r[0],
                "member_id": r[1],
                "kind": r[2],
                "recipient": r[3],
                "created_at": from_iso(r[4]),
                "delivered_at": _parse(r[5]),
                "attempts": r[6],
                "last_error": r[7],
                "retry_at": _parse(r[10]) if r[6] and r[5] is None else None,
                "status": outbox_status(r[5], r[8], r[9], r[6]),
            }
            for r in rows
        ]

    # the rows the shared delivery loop (OutboxDelivery.deliver) works on

    def _due(self, now: datetime, limit: int | None) -> list[tuple[int, int, Notice]]:
        rows = self._db.select(
            _NOTICE_SELECT.replace("SELECT ", "SELECT seq, attempts, ", 1)
            + f"WHERE {_PENDING} AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
            "ORDER BY seq LIMIT ?",
            (to_iso(now), -1 if limit is None else limit),
        )
        return [(row[0], row[1], notice_from_row(row[2:])) for row in rows]

    def _claim(self, ref: int, now: datetime, until: datetime) -> bool:
        with self._db.write() as conn:
            cursor = conn.execute(
                f"UPDATE outbox SET next_attempt_at = ? WHERE seq = ? AND {_PENDING} "  # noqa: S608
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
                (to_iso(until), ref, to_iso(now)),
            )
            return cursor.rowcount == 1

    def _mark_delivered(self, ref: int, at: datetime) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET delivered_at = ?, token = NULL, password = NULL, "
                "next_attempt_at = NULL, last_error = NULL "
                "WHERE seq = ? AND delivered_at IS NULL",
                (to_iso(at), ref),
            )

    def _fail(self, ref: int, reason: str, at: datetime) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET failed_at = ?, last_error = ?, attempts = attempts + 1, "
                "token = NULL, password = NULL, next_attempt_at = NULL "
                "WHERE seq = ? AND delivered_at IS NULL",
                (to_iso(at), reason, ref),
            )

    def _defer(self, ref: int, reason: str, retry_at: datetime) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = ? WHERE seq = ? AND delivered_at IS NULL",
                (reason, to_iso(retry_at), ref),
            )

    def _release(self, ref: int) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE outbox SET next_attempt_at = NULL WHERE seq = ?", (ref,))

    def _withdraw(self, ref: int, at: datetime) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET withdrawn_at = ?, token = NULL, password = NULL, "
                "next_attempt_at = NULL WHERE seq = ?",
                (to_iso(at), ref),
            )


# sessions ----------------------------------------------------------------------


class SqliteSessions:
    """The :class:`~bulkreset.ports.SessionStore` port as a sessions table.

    Also opens sessions (:meth:`create`) and answers :meth:`is_active`, so a
    host without its own session store (or a test) can use it whole.
    Thread-safe; shares the store's connection.

    Args:
        store: The :class:`SqliteStorage` whose file holds the sessions.
        clock: Dates new sessions and revocations; defaults to the system clock.
    """

    def __init__(self, store: SqliteStorage, *, clock: Clock | None = None) -> None:
        self._db = store._db
        self._clock = clock or system_clock

    def __repr__(self) -> str:
        rows = self._db.select("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
        return f"<SqliteSessions {rows[0][0]} active>"

    def create(self, member_id: str) -> str:
        """Open a session for *member_id*, issued now.

        Returns:
            The session ID (128 random bits from :mod:`secrets`, URL-safe).

        Raises:
            StorageError: SQLite failed.
        """
        session_id = secrets.token_urlsafe(16)
        issued = to_iso(read_clock(self._clock))
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO sessions (session_id, member_id, issued_at) VALUES (?, ?, ?)",
                (session_id, member_id, issued),
            )
        return session_id

    def is_active(self, session_id: str) -> bool:
        """True while the session exists and was not revoked.

        Raises:
            StorageError: SQLite failed.
        """
        if not _encodable(session_id):
            return False
        rows = self._db.select(
            "SELECT 1 FROM sessions WHERE session_id = ? AND revoked_at IS NULL", (session_id,)
        )
        return bool(rows)

    def revoke(self, member_ids: Sequence[str], issued_before: datetime) -> None:
        """End every session of these members issued at or before *issued_before*.

        Raises:
            InvalidInputError: *issued_before* is naive.
            StorageError: SQLite failed; nothing is revoked.
        """
        cutoff = to_iso(to_utc(issued_before, what="issued_before"))
        now = to_iso(read_clock(self._clock))
        with self._db.write() as conn:
            conn.execute(
                "UPDATE sessions SET revoked_at = ? WHERE revoked_at IS NULL "
                "AND member_id IN (SELECT value FROM json_each(?)) AND issued_at <= ?",
                (now, _id_list(member_ids), cutoff),
            )


def open_service(
    path: str | os.PathLike[str],
    *,
    clock: Clock | None = None,
    hasher: argon2.PasswordHasher | None = None,
    **options: Any,
) -> ResetService:
    """A :class:`~bulkreset.ResetService` over one SQLite file (created or migrated).

    Args:
        path: The database file.
        clock: See :class:`~bulkreset.ResetService`; also dates sessions and
            outbox rows.
        hasher: See :class:`~bulkreset.ResetService`.
        options: Passed on to :class:`~bulkreset.ResetService`.

    Returns:
        The service: ``.store`` is a :class:`SqliteStorage` (with
        ``add_members``), ``.notifier`` a :class:`SqliteOutbox` (``pending()``,
        ``deliver(transport)``), ``.sessions`` a :class:`SqliteSessions`
        (``create()``, ``is_active()``). Close it with ``service.store.close()``.

    Raises:
        StorageError: the file cannot be opened as a bulkreset database.
        InvalidInputError: bad *options*.
    """
    store = SqliteStorage(path)
    return service_over(
        store,
        SqliteOutbox(store, clock=clock),
        SqliteSessions(store, clock=clock),
        close=store.close,
        hasher=hasher,
        clock=clock,
        **options,
    )


if TYPE_CHECKING:
    from ..ports import Notifier, SessionStore, Storage

    def _conforms(store: SqliteStorage) -> tuple[Storage, Notifier, SessionStore]:
        return store, SqliteOutbox(store), SqliteSessions(store)
