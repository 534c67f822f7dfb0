"""Every port over a database SQLAlchemy 2.x reaches: PostgreSQL, MariaDB/MySQL, SQLite.

Install with ``pip install 'bulkreset[postgresql]'`` (SQLAlchemy and psycopg),
``'bulkreset[mysql]'`` (SQLAlchemy and PyMySQL) or ``'bulkreset[sqlalchemy]'``
(SQLAlchemy alone, with a driver of your choice)::

    import sqlalchemy as sa
    from bulkreset.adapters.sqlalchemy import metadata, open_service

    engine = sa.create_engine("postgresql+psycopg://app@db/app")
    metadata.create_all(engine)  # or list `metadata` in Alembic's target_metadata
    service = open_service(engine)

bulkreset's tables (:data:`metadata`, every name starting ``bulkreset_``)
hold credentials, tokens, plans, progress, the outbox, the audit log and,
if the host wants them, sessions. Members live either in
``bulkreset_members`` or in the host's own users table, mapped column by
column with :class:`UsersTable` (``docs/howto/own-database.md``).

Each :class:`~bulkreset.ports.Storage` write is one transaction at
``READ COMMITTED`` (``BEGIN IMMEDIATE`` on SQLite); compare-and-set writes
are single conditional statements, so they hold under concurrency on every
database. The store also splits a plan into chunks that many workers claim
(:class:`~bulkreset.ports.ChunkedStorage`; ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL and MariaDB), which is how ``ResetService.apply_chunk`` spreads an
apply over processes and machines.

Secrets at rest are treated as in :mod:`bulkreset.adapters.sqlite` (SPEC §5).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import argon2
import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from .._clock import Clock, read_clock, system_clock, to_utc
from .._model import (
    AuditEvent,
    Exclusion,
    ExclusionReason,
    Member,
    MemberOutcome,
    Notice,
    NoticeKind,
    Outcome,
    PlanWarning,
    WarningKind,
    member_from_store,
)
from .._service import ResetService
from ..errors import (
    BulkResetError,
    InvalidInputError,
    PlanInProgressError,
    PlanNotFoundError,
    StorageError,
)
from ..ports import (
    ChunkClaim,
    Credential,
    CredentialWrite,
    EffectBatch,
    PlanRecord,
    TokenRecord,
)
from . import _sqlite_schema as codec
from ._delivery import DeliveryReport, OutboxDelivery, Transport, outbox_status
from ._sqlalchemy_schema import (
    ID,
    KEY,
    SHORT,
    UsersTable,
    chunks,
    credentials,
    library_users,
    metadata,
    outbox,
    plan_entries,
    plans,
    progress,
    sessions,
    tokens,
)
from ._sqlalchemy_schema import (
    audit as audit_log,
)
from ._wiring import service_over

log = logging.getLogger("bulkreset")

__all__ = [
    "DeliveryReport",
    "SqlAlchemyOutbox",
    "SqlAlchemySessions",
    "SqlAlchemyStorage",
    "Transport",
    "UsersTable",
    "metadata",
    "open_service",
]

_IN_BATCH = 1000
"""IDs per ``IN (...)`` list."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _storable(text: object, limit: int = ID) -> bool:
    """True when *text* can be a stored key: a string every database accepts (no NUL,
    no lone surrogate) that fits its column."""
    if not isinstance(text, str) or "\x00" in text or len(text) > limit:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _batches(ids: Iterable[str], limit: int = ID, *, pad: bool = False) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in ids:
        if _storable(item, limit) and not (pad and item.endswith(" ")):
            batch.append(item)
            if len(batch) == _IN_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _digest(login_key: str) -> str:
    return hashlib.sha256(login_key.encode("utf-8", "surrogatepass")).hexdigest()


_MISSING_TABLE = ("does not exist", "no such table", "doesn't exist")
_RETRIES = 6
_T = TypeVar("_T")


def _transient(exc: BaseException | None) -> bool:
    """A deadlock or serialization failure: the same transaction may simply be run again."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # PostgreSQL (psycopg)
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in (1205, 1213)  # MariaDB/MySQL: lock wait, deadlock


def _fail(exc: BaseException) -> StorageError:
    """A :class:`StorageError` for a database error, chained to it with its statement's
    parameters (passwords, hashes, tokens) hidden and dropped."""
    if isinstance(exc, sa.exc.StatementError):
        exc.hide_parameters = True
        exc.params = None
    message = f"the database failed ({type(exc).__name__})"
    if any(text in str(getattr(exc, "orig", "")) for text in _MISSING_TABLE):
        message += (
            "; a table is missing: create bulkreset's with "
            "bulkreset.adapters.sqlalchemy.metadata.create_all(engine) or your migrations"
        )
    return StorageError(message)


def _member(row: Sequence[Any], where: str) -> Member:
    try:
        return member_from_store(*row[:9])
    except BulkResetError as exc:
        raise StorageError(f"{where}: member {row[0]!r} is not valid: {exc}") from None


def _valid_members(rows: Iterable[Sequence[Any]]) -> Iterator[Member]:
    """The members of a users table's rows, leaving out (and logging) the invalid ones.

    A host's table may hold values bulkreset does not know (a status of
    ``"deleted"``, an empty login): such a member cannot be reset or sign in
    through bulkreset, as if absent, and one bad row never stops the others (R8).
    """
    for row in rows:
        try:
            yield member_from_store(*row[:9])
        except BulkResetError as exc:
            log.warning("users table: member %r left out, not valid: %s", str(row[0]), exc)


class _Dialect:
    """The few statements that differ between databases."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sqlite = name == "sqlite"
        self.mysql = name in ("mysql", "mariadb")

    def insert(self, table: sa.Table) -> Any:
        if self.sqlite:
            return sqlite.insert(table)
        if self.mysql:
            return mysql.insert(table)
        return postgresql.insert(table)

    def in_(self, column: Any, values: Sequence[Any]) -> sa.ColumnElement[bool]:
        """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``, one parameter
        however many values (an IN list of 1,000 costs SQLAlchemy and psycopg far more)."""
        if self.name == "postgresql":
            array = sa.bindparam(None, list(values), type_=ARRAY(column.type))
            return column == sa.any_(array)  # type: ignore[no-any-return]
        return column.in_(values)  # type: ignore[no-any-return]

    def statement(
        self, table: sa.Table, conflict: Conflict | None = None, source: Any = None
    ) -> Any:
        """``INSERT INTO table`` (VALUES, or *source*: ``(columns, select)``) with *conflict*:
        ``Update(keys, set_)``: upsert, ``set_(new_row)`` giving the columns to update;
        ``Ignore(key)``: keep the row already there."""
        stmt = self.insert(table)
        if source is not None:
            stmt = stmt.from_select(*source)
        if isinstance(conflict, Update):
            if self.mysql:
                return stmt.on_duplicate_key_update(conflict.set_(stmt.inserted))
            return stmt.on_conflict_do_update(
                index_elements=list(conflict.keys), set_=conflict.set_(stmt.excluded)
            )
        if isinstance(conflict, Ignore):
            if self.mysql:  # not INSERT IGNORE: that would also hide truncation and the like
                return stmt.on_duplicate_key_update({conflict.key: stmt.inserted[conflict.key]})
            return stmt.on_conflict_do_nothing(index_elements=[conflict.key])
        return stmt

    def write(
        self,
        conn: sa.Connection,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        conflict: Conflict | None = None,
    ) -> None:
        """Insert *rows* (dicts with the same keys, in order), handling *conflict*.

        ``executemany``, except on PostgreSQL, where the rows go as one array per
        column and one ``INSERT … SELECT unnest(…)`` a batch: psycopg's
        ``executemany`` sends a statement per row, several times slower.
        """
        if not rows:
            return
        if self.name == "postgresql" and _distinct(rows, conflict):
            names = list(rows[0])
            columns = [
                sa.func.unnest(
                    sa.bindparam(None, [row[n] for row in rows], type_=ARRAY(table.c[n].type))
                )
                for n in names
            ]
            conn.execute(self.statement(table, conflict, (names, sa.select(*columns))))
            return
        conn.execute(self.statement(table, conflict), list(rows))


@attrs.frozen
class Update:
    """On a key already there, update: ``set_(new_row)`` maps columns to new values."""

    keys: tuple[str, ...]
    set_: Callable[[Any], dict[str, Any]]


@attrs.frozen
class Ignore:
    """On a key already there, keep that row."""

    key: str


Conflict = Update | Ignore


def _distinct(rows: Sequence[dict[str, Any]], conflict: Conflict | None) -> bool:
    """Whether no two rows share the upsert's key (PostgreSQL updates a row once a statement)."""
    if not isinstance(conflict, Update):
        return True
    keys = {tuple(row[k] for k in conflict.keys) for row in rows}
    return len(keys) == len(rows)


def _credential_row(write: CredentialWrite) -> dict[str, Any]:
    return {
        "member_id": write.member_id,
        "password_hash": None if write.shared_plan_id is not None else (write.password_hash or ""),
        "shared_plan_id": write.shared_plan_id,
        "must_change": write.must_change,
        "generation": 1,
        "changed_at": write.at,
        "not_before": write.at,
        "expires_at": write.expires_at,
    }


def _audit_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "action": event.action,
        "actor": event.actor,
        "plan_id": event.plan_id,
        "member_id": event.member_id,
        "detail": event.detail,
    }


def _audit_from_row(row: Any) -> AuditEvent:
    return AuditEvent(
        at=row.at,
        action=row.action,
        actor=row.actor,
        plan_id=row.plan_id,
        member_id=row.member_id,
        detail=row.detail,
    )


def _progress_row(plan_id: str, row: MemberOutcome) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        "member_id": row.member_id,
        "outcome": row.outcome.value,
        "reason": row.reason,
        "sessions_revoked": row.sessions_revoked,
        "notified": row.notified,
        "login_id": row.login_id,
        "at": row.at,
        "attempted_at": row.attempted_at,
    }


def _token_from_row(row: Any) -> TokenRecord:
    return TokenRecord(
        digest=row.digest,
        member_id=row.member_id,
        plan_id=row.plan_id,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        generation=row.generation,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
    )


_PLAN_COLUMNS = codec.ENTRY_COLUMNS.replace(" ", "").split(",")


class _AbandonedError(Exception):
    """Ends a ``write_plan`` block that never called ``finish``: roll back quietly."""


class SqlAlchemyPlanWriter:
    """Writes one plan's entries and record inside ``SqlAlchemyStorage.write_plan``."""

    def __init__(self, plan_id: str, conn: sa.Connection, dialect: _Dialect) -> None:
        self.plan_id = plan_id
        self._dialect = dialect
        self.conn: sa.Connection | None = conn
        self.counts = [0, 0, 0]  # targets, excluded, warnings
        self.finished = False

    def _connection(self) -> sa.Connection:
        if self.conn is None or self.finished:
            raise StorageError("the plan writer is closed")
        return self.conn

    def add(self, entries: Sequence[Any]) -> None:
        """Insert *entries* after those added before (one ``executemany``)."""
        conn = self._connection()
        rows = [
            dict(zip(_PLAN_COLUMNS, values, strict=True))
            for values in codec.entry_rows(self.plan_id, entries, self.counts)
        ]
        if rows:
            self._dialect.write(conn, plan_entries, rows)

    def finish(self, record: PlanRecord, event: AuditEvent) -> None:
        """Insert the plan's row (header, counts, secrets) and its audit event."""
        conn = self._connection()
        counts = (self.counts[0], self.counts[1], self.counts[2])
        conn.execute(
            plans.insert().values(
                plan_id=self.plan_id,
                body=codec.plan_header_to_json(record.plan, counts),
                password_hash=record.password_hash,
                password=record.password,
                token_key=record.token_key,
                started_at=record.started_at,
                finished_at=record.finished_at,
            )
        )
        conn.execute(audit_log.insert().values(_audit_row(event)))
        self.finished = True


class SqlAlchemyStorage:
    """The :class:`~bulkreset.ports.Storage` port over a SQLAlchemy :class:`~sqlalchemy.Engine`.

    Thread-safe (each call checks a connection out of the engine's pool);
    several processes and machines may share one database. Usable as a
    context manager that disposes of an engine it created itself.

    Args:
        engine: A :class:`sqlalchemy.Engine`, or a database URL (the store
            then creates the engine, and :meth:`close` disposes of it).
            ``engine.execution_options(schema_translate_map={None: "auth"})``
            puts bulkreset's tables in schema ``auth``.
        users: Where members live: ``None`` for ``bulkreset_members``, or
            the host's users table as a :class:`UsersTable`.
        create_tables: Create bulkreset's tables that do not exist yet
            (hosts with migrations leave it ``False`` and include
            :data:`metadata` in them).

    Raises:
        InvalidInputError: *engine* is neither an engine nor a URL string,
            or *users* is not a :class:`UsersTable`.
        StorageError: *create_tables* failed (cause chained).
    """

    def __init__(
        self,
        engine: sa.Engine | str,
        *,
        users: UsersTable | None = None,
        create_tables: bool = False,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        if isinstance(engine, str):
            try:
                engine = sa.create_engine(engine)
            except (sa.exc.ArgumentError, ImportError) as exc:
                raise InvalidInputError(f"cannot use that database URL ({exc})") from None
        if not isinstance(engine, sa.Engine):
            raise InvalidInputError("SqlAlchemyStorage takes a sqlalchemy Engine or a URL")
        if users is not None and not isinstance(users, UsersTable):
            raise InvalidInputError("users must be a UsersTable")
        self._dialect = _Dialect(engine.dialect.name)
        # MariaDB/MySQL compare strings with PAD SPACE: "m1 " equals "m1" there. Keys that
        # end in a space are refused on the way in, and looked up as absent.
        self._pad = self._dialect.mysql
        if not self._dialect.sqlite:
            engine = engine.execution_options(isolation_level="READ COMMITTED")
        self.engine: sa.Engine = engine
        self.users = users if users is not None else library_users()
        self._host_users = users is not None
        if create_tables:
            try:
                with self._write() as conn:
                    metadata.create_all(conn)
            except StorageError:
                self.close()
                raise

    def _ok(self, value: object, limit: int = ID) -> bool:
        """Whether *value* can be a key this database stores and compares exactly."""
        return _storable(value, limit) and not (self._pad and str(value).endswith(" "))

    @property
    def hashes_each_member(self) -> bool:
        """True when a force change must hash its password once per member (SPEC §5):
        the host keeps hashes in its users table and chose ``shared_password="per_member"``."""
        return self.users.password_hash is not None and self.users.shared_password == "per_member"

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"<SqlAlchemyStorage {url}>"

    def __enter__(self) -> SqlAlchemyStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Dispose of the engine's connections if the store created the engine."""
        if self._owns_engine:
            self.engine.dispose()

    # transactions ----------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One write transaction; any database error becomes :class:`StorageError`."""
        try:
            with self.engine.begin() as conn:
                if self._dialect.sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys = ON")  # off by default
                    conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not later
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise _fail(exc) from exc

    def _retrying(self, work: Callable[[sa.Connection], _T]) -> _T:
        """Run *work* in its own write transaction, again when the database chose it as a
        deadlock victim or could not serialize it (MariaDB does, with several deliverers
        updating neighbouring outbox rows). For short, repeatable transactions only."""
        for attempt in range(_RETRIES):
            try:
                with self._write() as conn:
                    return work(conn)
            except StorageError as exc:
                if attempt + 1 == _RETRIES or not _transient(exc.__cause__):
                    raise
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, stmt: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt))
        except sa.exc.SQLAlchemyError as exc:
            raise _fail(exc) from exc

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every bulkreset table's rows, sorted (secrets included: never log this)."""
        return {
            table.name: sorted((tuple(r) for r in self._read(sa.select(table))), key=repr)
            for table in metadata.sorted_tables
        }

    # directory ----------------------------------------------------------------------

    def add_members(self, members: Iterable[Member]) -> None:
        """Insert or update members by ID, in one transaction.

        With a :class:`UsersTable`, the mapped columns of the host's table are
        written (its other columns need defaults for new rows).

        Raises:
            InvalidInputError: *members* is not iterable of :class:`~bulkreset.Member`,
                or two members would share a login ID (by :func:`~bulkreset.fold_login`).
                Nothing is written then.
            StorageError: the database failed; nothing is written.
        """
        try:
            batch = list(members)
        except TypeError:
            raise InvalidInputError("add_members takes an iterable of Member objects") from None
        if not all(isinstance(m, Member) for m in batch):
            raise InvalidInputError("add_members takes Member objects")
        if self._pad:
            for member in batch:
                if member.member_id.endswith(" ") or member.login_id.endswith(" "):
                    raise InvalidInputError(
                        f"member {member.member_id!r}: MariaDB/MySQL ignore a trailing space "
                        "when comparing, so IDs and login IDs may not end in one"
                    )
        latest = {m.member_id: m for m in batch}  # a member twice: the later one wins
        with self._write() as conn:
            self._check_logins(conn, list(latest.values()))
            rows = [self._member_row(m) for m in latest.values()]
            if rows:
                try:
                    self._upsert_members(conn, rows)
                except sa.exc.IntegrityError:
                    raise InvalidInputError(
                        "the users table refused a member (a unique column, such as the "
                        "login ID or a phone number, is already used by another member)"
                    ) from None

    def _upsert_members(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """Insert new members, update existing ones, matched by member ID only.

        Not MariaDB/MySQL's ``ON DUPLICATE KEY UPDATE``: that fires on *any*
        unique key, so a new member whose phone number or login is another
        member's unique value would overwrite that other member's row.
        """
        key = self.users.member_id
        if not self._dialect.mysql:
            update = Update((key,), lambda new: {c: new[c] for c in rows[0] if c != key})
            self._dialect.write(conn, self.users.table, rows, update)
            return
        column = self.users.table.c[key]
        existing: set[Any] = set()
        for start in range(0, len(rows), _IN_BATCH):
            part = [r[key] for r in rows[start : start + _IN_BATCH]]
            found = conn.execute(sa.select(column).where(column.in_(part)).with_for_update())
            existing.update(row[0] for row in found)
        new = [r for r in rows if r[key] not in existing]
        old = [r for r in rows if r[key] in existing]
        if old:
            names = [c for c in rows[0] if c != key]
            conn.execute(
                self.users.table.update()
                .where(column == sa.bindparam("_key"))
                .values({c: sa.bindparam(f"_{c}") for c in names}),
                [{"_key": r[key], **{f"_{c}": r[c] for c in names}} for r in old],
            )
        if new:
            self._dialect.write(conn, self.users.table, new)

    def _member_row(self, member: Member) -> dict[str, Any]:
        values = dict(zip(codec.MEMBER_COLUMNS, codec.member_to_row(member), strict=True))
        row: dict[str, Any] = {}
        for field in codec.MEMBER_COLUMNS:
            column = getattr(self.users, field)
            if column is not None:
                row[column] = values[field]
        if not self._host_users:
            row["login_digest"] = _digest(member.login_key)
        return row

    def _check_logins(self, conn: sa.Connection, batch: Sequence[Member]) -> None:
        """Refuse a batch that would leave two members with one folded login ID, or a
        login ID sign-in could not find (non-ASCII, in a users table without login_key)."""
        if self._host_users and self.users.login_key is None:
            for member in batch:
                if not member.login_id.isascii():
                    raise InvalidInputError(
                        f"member {member.member_id!r} has a login ID beyond ASCII: map a "
                        "login_key column (UsersTable(login_key=...)) so sign-in can find it"
                    )
        owners: dict[str, str] = {}
        for member in batch:
            other = owners.setdefault(member.login_key, member.member_id)
            if other != member.member_id:
                raise InvalidInputError(
                    f"login ID of member {member.member_id!r} is already used by {other!r}"
                )
        moving = {m.member_id for m in batch}
        for part in range(0, len(batch), _IN_BATCH):
            wanted = {m.login_key: m for m in batch[part : part + _IN_BATCH]}
            for found in self._members_by_login(conn, list(wanted)):
                member = wanted[found.login_key]
                if found.member_id != member.member_id and found.member_id not in moving:
                    raise InvalidInputError(
                        f"login ID of member {member.member_id!r} is already used by "
                        f"{found.member_id!r}"
                    )

    def _members_by_login(self, conn: sa.Connection, login_keys: Sequence[str]) -> list[Member]:
        users = self.users
        keys = [k for k in login_keys if self._ok(k, 10 * ID)]
        if not keys:
            return []
        if not self._host_users:
            where = self._dialect.in_(users.table.c.login_digest, [_digest(k) for k in keys])
        elif users.login_key is not None:
            where = self._dialect.in_(users.table.c[users.login_key], keys)
        else:  # candidates by lower(); the folded forms decide
            where = sa.func.lower(users.table.c[users.login_id]).in_([k.lower() for k in keys])
        rows = conn.execute(sa.select(*users.member_columns()).where(where))
        wanted = set(keys)
        found = list(_valid_members(rows))
        return [m for m in found if m.login_key in wanted]

    def get_members(self, member_ids: Collection[str]) -> dict[str, Member]:
        """The members with these IDs; unknown (or unstorable) IDs are simply absent.

        Raises:
            StorageError: the database failed, or the users table holds an invalid member.
        """
        out: dict[str, Member] = {}
        for batch in _batches(member_ids, pad=self._pad):
            stmt = sa.select(*self.users.member_columns()).where(
                self._dialect.in_(self.users.key, batch)
            )
            for member in _valid_members(self._read(stmt)):
                out[member.member_id] = member
        return out

    def iter_members(self, *, page_size: int = 1000) -> Iterator[Sequence[Member]]:
        """Every member, in pages of at most *page_size*, by ``member_id`` (keyset pages).

        Raises:
            InvalidInputError: *page_size* is below 1.
            StorageError: the database failed.
        """
        if page_size < 1:
            raise InvalidInputError("page_size must be at least 1")
        return self._pages(page_size)

    def _pages(self, page_size: int) -> Iterator[Sequence[Member]]:
        key = self.users.key
        after: str | None = None
        while True:
            stmt = sa.select(*self.users.member_columns()).order_by(key).limit(page_size)
            if after is not None:
                stmt = stmt.where(key > after)
            rows = self._read(stmt)
            if not rows:
                return
            yield list(_valid_members(rows))
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def find_member_by_login(self, login_key: str) -> Member | None:
        """The member whose folded login ID is *login_key*, or ``None``.

        Raises:
            StorageError: the database failed.
        """
        try:
            with self.engine.connect() as conn:
                found = self._members_by_login(conn, [login_key])
        except sa.exc.SQLAlchemyError as exc:
            raise _fail(exc) from exc
        return found[0] if found else None

    # credentials ----------------------------------------------------------------------

    def _host_hash(self) -> sa.ColumnElement[Any] | None:
        return self.users.column("password_hash")

    def get_credentials(self, member_ids: Collection[str]) -> dict[str, Credential]:
        """The stored credentials of these members; a shared one carries its plan's hash.

        With a host ``password_hash`` column, the hash is read from it, and a
        member with a hash there but no bulkreset row yet has a credential
        of generation 0.

        Raises:
            StorageError: the database failed.
        """
        c, p = credentials, plans
        host = self._host_hash()
        hashed: sa.ColumnElement[Any]
        if host is None:
            hashed = sa.case(
                (c.c.shared_plan_id.is_not(None), sa.func.coalesce(p.c.password_hash, "")),
                else_=sa.func.coalesce(c.c.password_hash, ""),
            )
        else:  # the host's column is the truth: a hash it writes or clears counts at once
            hashed = sa.func.coalesce(host, "")
        columns = (
            c.c.member_id,
            hashed.label("password_hash"),
            c.c.must_change,
            c.c.generation,
            c.c.changed_at,
            c.c.not_before,
            c.c.shared_plan_id,
            c.c.expires_at,
        )
        out: dict[str, Credential] = {}
        for batch in _batches(member_ids, pad=self._pad):
            where: sa.ColumnElement[bool]
            if host is None:
                source = c.outerjoin(p, p.c.plan_id == c.c.shared_plan_id)
                where = self._dialect.in_(c.c.member_id, batch)
                stmt = sa.select(*columns).select_from(source).where(where)
            else:
                source = self.users.table.outerjoin(c, c.c.member_id == self.users.key).outerjoin(
                    p, p.c.plan_id == c.c.shared_plan_id
                )
                where = sa.and_(
                    self._dialect.in_(self.users.key, batch),
                    sa.or_(c.c.member_id.is_not(None), host.is_not(None)),
                )
                stmt = (
                    sa.select(self.users.key.label("member_id"), *columns[1:])
                    .select_from(source)
                    .where(where)
                )
            for row in self._read(stmt):
                out[row[0]] = Credential(
                    member_id=row[0],
                    password_hash=row[1],
                    must_change=bool(row[2]),
                    generation=row[3] or 0,
                    changed_at=row[4] or _EPOCH,
                    not_before=row[5],
                    shared_plan_id=row[6],
                    expires_at=row[7],
                )
        return out

    def _write_credentials(self, conn: sa.Connection, writes: Sequence[CredentialWrite]) -> None:
        """Upsert credentials: a new member's generation is 1, an existing one's goes up by one."""
        if not writes:
            return
        c = credentials
        update = Update(
            ("member_id",),
            lambda new: {
                "password_hash": new.password_hash,
                "shared_plan_id": new.shared_plan_id,
                "must_change": new.must_change,
                # a literal: PyMySQL's executemany cannot take a parameter in this clause
                "generation": c.c.generation + sa.literal_column("1"),
                "changed_at": new.changed_at,
                "not_before": new.not_before,
                "expires_at": new.expires_at,
            },
        )
        rows = [_credential_row(w) for w in writes]
        if self.users.password_hash is not None:  # the hash goes to the host's column
            for row in rows:
                row["password_hash"] = None
        self._dialect.write(conn, c, rows, update)
        self._write_host_hashes(conn, writes)

    def _write_host_hashes(self, conn: sa.Connection, writes: Sequence[CredentialWrite]) -> None:
        host = self.users.password_hash
        if host is None:
            return
        table, key = self.users.table, self.users.key
        own = [w for w in writes if w.shared_plan_id is None]
        if own:
            conn.execute(
                table.update().where(key == sa.bindparam("m")).values({host: sa.bindparam("h")}),
                [{"m": w.member_id, "h": w.password_hash or ""} for w in own],
            )
        shared: dict[str, list[str]] = {}
        for w in writes:
            if w.shared_plan_id is not None:
                shared.setdefault(w.shared_plan_id, []).append(w.member_id)
        for plan_id, ids in shared.items():  # the documented copy of the plan's one hash
            plan_hash = (
                sa.select(plans.c.password_hash).where(plans.c.plan_id == plan_id).scalar_subquery()
            )
            for batch in _batches(ids, pad=self._pad):
                conn.execute(
                    table.update().where(self._dialect.in_(key, batch)).values({host: plan_hash})
                )

    def _revoke_tokens(
        self, conn: sa.Connection, member_id: str, at: datetime, keep: str | None
    ) -> None:
        t = tokens
        stmt = t.update().where(
            t.c.member_id == member_id, t.c.used_at.is_(None), t.c.revoked_at.is_(None)
        )
        if keep is not None:
            stmt = stmt.where(t.c.digest != keep)
        conn.execute(stmt.values(revoked_at=at))

    def _cas_credential(
        self, conn: sa.Connection, write: CredentialWrite, expected_generation: int
    ) -> bool:
        """Write *write* only if the generation is still *expected_generation*: one statement."""
        row = _credential_row(write)
        if expected_generation == 0:
            if self.users.password_hash is not None:
                row["password_hash"] = None
            try:
                with conn.begin_nested():  # a savepoint: a lost race leaves the rest intact
                    conn.execute(credentials.insert().values(row))
            except sa.exc.IntegrityError:
                return False  # another writer gave the member a first credential meanwhile
        else:
            c = credentials
            updated = conn.execute(
                c.update()
                .where(c.c.member_id == write.member_id, c.c.generation == expected_generation)
                .values(
                    password_hash=None if self.users.password_hash else row["password_hash"],
                    shared_plan_id=row["shared_plan_id"],
                    must_change=row["must_change"],
                    generation=c.c.generation + 1,
                    changed_at=row["changed_at"],
                    not_before=row["not_before"],
                    expires_at=row["expires_at"],
                )
            )
            if updated.rowcount != 1:
                return False
        self._write_host_hashes(conn, [write])
        return True

    def write_credential(
        self, write: CredentialWrite, *, expected_generation: int, audit: AuditEvent
    ) -> bool:
        """Store a new credential if the member's generation is still *expected_generation*.

        Also revokes the member's live tokens and appends *audit*, in the
        same transaction.

        Returns:
            ``False`` (nothing written) when the generation moved on.

        Raises:
            StorageError: the database failed; nothing is written.
        """
        with self._write() as conn:
            if not self._cas_credential(conn, write, expected_generation):
                return False
            self._revoke_tokens(conn, write.member_id, write.at, None)
            conn.execute(audit_log.insert().values(_audit_row(audit)))
            return True

    def rehash_credential(self, member_id: str, generation: int, password_hash: str) -> None:
        """Give the member their own credential with *password_hash*, if still at *generation*.

        Raises:
            StorageError: the database failed.
        """
        c = credentials
        host = self.users.password_hash
        with self._write() as conn:
            updated = conn.execute(
                c.update()
                .where(c.c.member_id == member_id, c.c.generation == generation)
                .values(password_hash=None if host else password_hash, shared_plan_id=None)
            )
            if updated.rowcount == 1 and host is not None:
                conn.execute(
                    self.users.table.update()
                    .where(self.users.key == member_id)
                    .values({host: password_hash})
                )

    # plans -------------------------------------------------------------------------------

    @contextmanager
    def write_plan(self, plan_id: str) -> Iterator[SqlAlchemyPlanWriter]:
        """Write a new plan in one transaction (see :meth:`ports.Storage.write_plan`).

        Raises:
            StorageError: the database failed; nothing is written.
        """
        writer: SqlAlchemyPlanWriter | None = None
        try:
            with self._write() as conn:
                writer = SqlAlchemyPlanWriter(plan_id, conn, self._dialect)
                yield writer
                if not writer.finished:
                    raise _AbandonedError
        except _AbandonedError:
            pass
        finally:
            if writer is not None:
                writer.conn = None

    def load_plan(self, plan_id: str) -> PlanRecord | None:
        """The stored plan, or ``None``; its members are read a page at a time.

        Raises:
            StorageError: the database failed.
        """
        if not self._ok(plan_id, SHORT):
            return None
        p = plans
        rows = self._read(
            sa.select(
                p.c.body,
                p.c.password_hash,
                p.c.password,
                p.c.token_key,
                p.c.started_at,
                p.c.finished_at,
                p.c.approved_by,
                p.c.approved_at,
            ).where(p.c.plan_id == plan_id)
        )
        if not rows:
            return None
        body, password_hash, password, token_key, started_at, finished_at, by, at = rows[0]
        return PlanRecord(
            codec.plan_from_header(body, partial(self._plan_section, plan_id)),
            password_hash=password_hash,
            password=password,
            token_key=None if token_key is None else bytes(token_key),
            started_at=started_at,
            finished_at=finished_at,
            approved_by=by,
            approved_at=at,
        )

    def approve_plan(self, plan_id: str, approver: str, at: datetime, audit: AuditEvent) -> bool:
        """Record the plan's approval (replacing an earlier one) and append *audit*.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: the database failed; nothing is written.
        """
        p = plans
        with self._write() as conn:
            updated = conn.execute(
                p.update()
                .where(p.c.plan_id == plan_id)
                .values(approved_by=approver, approved_at=at)
            )
            if updated.rowcount != 1:
                raise PlanNotFoundError(plan_id)
            conn.execute(audit_log.insert().values(_audit_row(audit)))
            return True

    def _plan_section(self, plan_id: str, section: int, start: int, stop: int) -> list[Any]:
        e = plan_entries
        index = (e.c.target_index, e.c.excluded_index, e.c.warning_index)[section]
        if section == 0:
            columns: list[Any] = [
                e.c.member_id,
                e.c.login_id,
                e.c.name,
                e.c.sign_in,
                e.c.mobile_phone,
                e.c.personal_email,
                e.c.status,
                e.c.role,
                sa.func.coalesce(e.c.locale, "en"),
            ]
        else:
            columns = [e.c.member_id, (e.c.reason, e.c.warning)[section - 1]]
        rows = self._read(
            sa.select(*columns)
            .where(e.c.plan_id == plan_id, index >= start, index < stop)
            .order_by(index)
        )
        if section == 0:
            return [_member(row, "plan") for row in rows]
        if section == 1:
            return [Exclusion(row[0], ExclusionReason(row[1])) for row in rows]
        return [PlanWarning(row[0], WarningKind(row[1])) for row in rows]

    def _live_chunk_lease(self, conn: sa.Connection, plan_id: str, now: datetime) -> bool:
        k = chunks
        found = conn.execute(
            sa.select(sa.literal(1))
            .where(
                k.c.plan_id == plan_id,
                k.c.done_at.is_(None),
                k.c.lease_owner.is_not(None),
                k.c.lease_until > now,
            )
            .limit(1)
        ).first()
        return found is not None

    def claim_plan(self, plan_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the plan's apply lease for *owner* until *until*, atomically across processes.

        Fails while another owner's lease, or a worker's chunk lease, is live.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: the database failed.
        """
        p = plans
        with self._write() as conn:
            # The plan's row, locked first: a worker claiming a chunk locks it too, so the
            # two never both see the other's lease free.
            locked = conn.execute(
                sa.select(p.c.plan_id).where(p.c.plan_id == plan_id).with_for_update()
            ).first()
            if locked is None:
                raise PlanNotFoundError(plan_id)
            if self._live_chunk_lease(conn, plan_id, now):
                return False
            updated = conn.execute(
                p.update()
                .where(
                    p.c.plan_id == plan_id,
                    sa.or_(
                        p.c.lease_owner.is_(None), p.c.lease_owner == owner, p.c.lease_until <= now
                    ),
                )
                .values(
                    lease_owner=owner,
                    lease_until=until,
                    started_at=sa.func.coalesce(p.c.started_at, now),
                )
            )
            if updated.rowcount == 1:
                return True
            if conn.execute(sa.select(p.c.plan_id).where(p.c.plan_id == plan_id)).first():
                return False
            raise PlanNotFoundError(plan_id)

    def release_plan(
        self, plan_id: str, owner: str, *, finished_at: datetime | None, erase_secrets: bool
    ) -> None:
        """Give up *owner*'s lease; record completion; erase the plain password and token key.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: the database failed.
        """
        p = plans
        mine = p.c.lease_owner == owner
        values: dict[str, Any] = {
            "lease_owner": sa.case((mine, None), else_=p.c.lease_owner),
            "lease_until": sa.case((mine, None), else_=p.c.lease_until),
            "finished_at": sa.func.coalesce(p.c.finished_at, finished_at),
        }
        if erase_secrets:
            values.update(password=None, token_key=None)
        with self._write() as conn:
            found = conn.execute(sa.select(p.c.plan_id).where(p.c.plan_id == plan_id)).first()
            if found is None:
                raise PlanNotFoundError(plan_id)
            conn.execute(p.update().where(p.c.plan_id == plan_id).values(values))

    # chunks (ports.ChunkedStorage) -----------------------------------------------------

    def split_plan(self, plan_id: str, bounds: Sequence[tuple[int, int]], now: datetime) -> int:
        """Store the plan's chunks (``[start, stop)`` target ranges) unless it has some.

        Marks the plan started. Returns the number of chunks the plan has.

        Raises:
            PlanNotFoundError: no such plan.
            StorageError: the database failed.
        """
        k, p = chunks, plans
        with self._write() as conn:
            found = conn.execute(
                sa.select(p.c.plan_id).where(p.c.plan_id == plan_id).with_for_update()
            ).first()
            if found is None:
                raise PlanNotFoundError(plan_id)
            count = conn.execute(
                sa.select(sa.func.count()).select_from(k).where(k.c.plan_id == plan_id)
            ).scalar_one()
            if count:
                return int(count)
            if bounds:
                conn.execute(
                    k.insert(),
                    [
                        {"plan_id": plan_id, "chunk_index": i, "start": a, "stop": b, "claims": 0}
                        for i, (a, b) in enumerate(bounds)
                    ],
                )
            conn.execute(
                p.update()
                .where(p.c.plan_id == plan_id)
                .values(started_at=sa.func.coalesce(p.c.started_at, now))
            )
            return len(bounds)

    def claim_chunk(
        self,
        plan_id: str,
        owner: str,
        now: datetime,
        until: datetime,
        *,
        index: int | None = None,
    ) -> ChunkClaim | None:
        """Take a chunk's lease: chunk *index*, or the first one free.

        A chunk is free when it is not done and its lease is unset or
        expired (a crashed worker's); *owner*'s own lease can be renewed.
        Workers skip chunks another transaction is claiming (``FOR UPDATE
        SKIP LOCKED``), so many claim at once without waiting. No chunk is
        handed out while a whole-plan apply holds the plan's lease.

        Returns:
            The chunk, or ``None`` when none is free.

        Raises:
            StorageError: the database failed.
        """
        k, p = chunks, plans
        with self._write() as conn:
            plan = conn.execute(  # locked: see claim_plan
                sa.select(p.c.lease_owner, p.c.lease_until)
                .where(p.c.plan_id == plan_id)
                .with_for_update()
            ).first()
            if plan is None or (plan.lease_owner is not None and plan.lease_until > now):
                return None
            free = sa.or_(
                k.c.lease_owner.is_(None), k.c.lease_owner == owner, k.c.lease_until <= now
            )
            stmt = (
                sa.select(k.c.chunk_index, k.c.start, k.c.stop, k.c.claims)
                .where(k.c.plan_id == plan_id, k.c.done_at.is_(None), free)
                .order_by(k.c.chunk_index)
                .limit(1)
            )
            if index is not None:
                stmt = stmt.where(k.c.chunk_index == index)
            if index is not None:  # this chunk (a renewal, say): wait for it, never skip it
                stmt = stmt.with_for_update()
            elif not self._dialect.sqlite:  # SQLite: BEGIN IMMEDIATE already serializes claims
                stmt = stmt.with_for_update(skip_locked=True)
            row = conn.execute(stmt).first()
            if row is None:
                return None
            conn.execute(
                k.update()
                .where(k.c.plan_id == plan_id, k.c.chunk_index == row.chunk_index)
                .values(lease_owner=owner, lease_until=until, claims=k.c.claims + 1)
            )
            return ChunkClaim(
                plan_id=plan_id,
                index=row.chunk_index,
                start=row.start,
                stop=row.stop,
                owner=owner,
                taken_over=row.claims > 0,
            )

    def finish_chunk(self, plan_id: str, index: int, owner: str, at: datetime) -> bool:
        """Mark chunk *index* done and drop *owner*'s lease.

        Returns:
            ``False`` when *owner* no longer holds it (taken over), or it was done.

        Raises:
            StorageError: the database failed.
        """
        k = chunks
        with self._write() as conn:
            updated = conn.execute(
                k.update()
                .where(
                    k.c.plan_id == plan_id,
                    k.c.chunk_index == index,
                    k.c.lease_owner == owner,
                    k.c.done_at.is_(None),
                )
                .values(done_at=at, lease_owner=None, lease_until=None)
            )
            return bool(updated.rowcount == 1)

    def chunks_left(self, plan_id: str) -> tuple[int, int]:
        """``(chunks not yet done, all chunks)`` of the plan; ``(0, 0)`` if never split.

        Raises:
            StorageError: the database failed.
        """
        if not self._ok(plan_id, SHORT):
            return 0, 0
        k = chunks
        rows = self._read(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.case((k.c.done_at.is_(None), 1), else_=0)), 0),
            ).where(k.c.plan_id == plan_id)
        )
        total, left = rows[0]
        return int(left), int(total)

    # apply -----------------------------------------------------------------------------

    def get_progress(
        self, plan_id: str, member_ids: Collection[str] | None = None
    ) -> dict[str, MemberOutcome]:
        """The recorded per-member progress of a plan (only of *member_ids* if given).

        Raises:
            StorageError: the database failed.
        """
        if not self._ok(plan_id, SHORT):
            return {}
        g = progress
        base = sa.select(
            g.c.member_id,
            g.c.outcome,
            g.c.reason,
            g.c.sessions_revoked,
            g.c.notified,
            g.c.login_id,
            g.c.at,
            g.c.attempted_at,
        ).where(g.c.plan_id == plan_id)
        if member_ids is None:
            statements = [base]
        else:
            statements = [
                base.where(self._dialect.in_(g.c.member_id, b))
                for b in _batches(member_ids, pad=self._pad)
            ]
        out: dict[str, MemberOutcome] = {}
        for stmt in statements:
            for row in self._read(stmt):
                out[row[0]] = MemberOutcome(
                    row[0],
                    Outcome(row[1]),
                    row[2],
                    sessions_revoked=bool(row[3]),
                    notified=bool(row[4]),
                    login_id=row[5],
                    at=row[6],
                    attempted_at=row[7],
                )
        return out

    def _check_fence(self, conn: sa.Connection, plan_id: str, owner: str) -> None:
        """Raise unless *owner* holds the plan's lease or one of its chunks' (locking that row)."""
        k, p = chunks, plans
        chunk = conn.execute(
            sa.select(k.c.chunk_index)
            .where(k.c.plan_id == plan_id, k.c.lease_owner == owner)
            .with_for_update()
        ).first()
        if chunk is not None:
            return
        holder = conn.execute(
            sa.select(p.c.lease_owner).where(p.c.plan_id == plan_id).with_for_update()
        ).first()
        if holder is None or holder[0] != owner:
            raise PlanInProgressError(f"plan {plan_id} is held by another apply")

    def commit(self, batch: EffectBatch) -> None:
        """Write an :class:`~bulkreset.ports.EffectBatch` in one transaction.

        Credentials first; then each token supersedes its member's other live
        tokens and is inserted (unless its digest is already stored) with the
        member's generation as it now stands; then progress rows and audit
        events, each an ``executemany``.

        Raises:
            PlanInProgressError: ``batch.owner`` no longer holds the plan's
                lease (nor a chunk's).
            StorageError: the database failed; nothing is written.
        """
        with self._write() as conn:
            if batch.owner is not None:
                self._check_fence(conn, batch.plan_id, batch.owner)
            self._write_credentials(conn, batch.credentials)
            if batch.tokens:
                self._write_tokens(conn, batch.tokens)
            if batch.progress:
                g = progress
                update = Update(
                    ("plan_id", "member_id"),
                    lambda new: {
                        name: new[name]
                        for name in (
                            "outcome",
                            "reason",
                            "sessions_revoked",
                            "notified",
                            "login_id",
                            "at",
                            "attempted_at",
                        )
                    },
                )
                rows = [_progress_row(batch.plan_id, r) for r in batch.progress]
                self._dialect.write(conn, g, rows, update)
            if batch.audit:
                self._dialect.write(conn, audit_log, [_audit_row(e) for e in batch.audit])

    def _write_tokens(self, conn: sa.Connection, records: Sequence[TokenRecord]) -> None:
        t = tokens
        ids = list({r.member_id for r in records})
        generations: dict[str, int] = {}
        c = credentials
        for b in _batches(ids, pad=self._pad):
            rows = conn.execute(
                sa.select(c.c.member_id, c.c.generation).where(self._dialect.in_(c.c.member_id, b))
            )
            generations.update((row[0], row[1]) for row in rows)
        revoke = (
            t.update()
            .where(
                t.c.member_id == sa.bindparam("m"),
                t.c.digest != sa.bindparam("d"),
                t.c.used_at.is_(None),
                t.c.revoked_at.is_(None),
            )
            .values(revoked_at=sa.bindparam("at"))
        )
        if len(ids) == len(records):  # each member's other live tokens die: one UPDATE a batch
            by_time: dict[datetime, list[TokenRecord]] = {}
            for record in records:
                by_time.setdefault(record.issued_at, []).append(record)
            for at, group in by_time.items():
                for start in range(0, len(group), _IN_BATCH):
                    part = group[start : start + _IN_BATCH]
                    conn.execute(
                        t.update()
                        .where(
                            self._dialect.in_(t.c.member_id, [r.member_id for r in part]),
                            sa.not_(self._dialect.in_(t.c.digest, [r.digest for r in part])),
                            t.c.used_at.is_(None),
                            t.c.revoked_at.is_(None),
                        )
                        .values(revoked_at=at)
                    )
            new = [self._token_row(r, generations) for r in records]
            self._dialect.write(conn, t, new, Ignore("digest"))
            return
        for record in records:  # a member twice: a later token supersedes the earlier one
            conn.execute(
                revoke, {"m": record.member_id, "d": record.digest, "at": record.issued_at}
            )
            self._dialect.write(conn, t, [self._token_row(record, generations)], Ignore("digest"))

    @staticmethod
    def _token_row(record: TokenRecord, generations: dict[str, int]) -> dict[str, Any]:
        return {
            "digest": record.digest,
            "member_id": record.member_id,
            "plan_id": record.plan_id,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
            "generation": generations.get(record.member_id, 0),
            "used_at": None,
            "revoked_at": None,
        }

    # tokens ------------------------------------------------------------------------------

    def find_token(self, digest: str) -> TokenRecord | None:
        """The token record with this digest, or ``None``.

        Raises:
            StorageError: the database failed.
        """
        if not self._ok(digest, SHORT):
            return None
        rows = self._read(sa.select(tokens).where(tokens.c.digest == digest))
        return _token_from_row(rows[0]) if rows else None

    def redeem_token(self, digest: str, write: CredentialWrite, audit: AuditEvent) -> bool:
        """Use a token, write the credential, revoke other tokens, append *audit*: atomically.

        Returns:
            ``False`` (nothing written) when the token is unknown, used,
            revoked, or its generation is no longer current.

        Raises:
            StorageError: the database failed; nothing is written.
        """
        if not self._ok(digest, SHORT):
            return False
        t = tokens
        with self._write() as conn:
            row = conn.execute(
                sa.select(t.c.generation).where(
                    t.c.digest == digest, t.c.used_at.is_(None), t.c.revoked_at.is_(None)
                )
            ).first()
            if row is None:
                return False
            used = conn.execute(
                t.update()
                .where(t.c.digest == digest, t.c.used_at.is_(None), t.c.revoked_at.is_(None))
                .values(used_at=write.at)
            )
            if used.rowcount != 1 or not self._cas_credential(conn, write, row[0]):
                conn.rollback()
                return False
            self._revoke_tokens(conn, write.member_id, write.at, digest)
            conn.execute(audit_log.insert().values(_audit_row(audit)))
            return True

    def list_tokens(
        self, *, member_id: str | None = None, plan_id: str | None = None
    ) -> list[TokenRecord]:
        """The stored change requests of a member and/or a plan, oldest first.

        Raises:
            StorageError: the database failed.
        """
        if not self._ok(member_id or "") or not self._ok(plan_id or "", SHORT):
            return []
        stmt = sa.select(tokens).order_by(tokens.c.issued_at, tokens.c.digest)
        if member_id is not None:
            stmt = stmt.where(tokens.c.member_id == member_id)
        if plan_id is not None:
            stmt = stmt.where(tokens.c.plan_id == plan_id)
        return [_token_from_row(r) for r in self._read(stmt)]

    def cancel_tokens(
        self, digests: Sequence[str], at: datetime, audit: Mapping[str, AuditEvent]
    ) -> list[str]:
        """Revoke these tokens if still unused and unrevoked; append their audit events.

        Raises:
            StorageError: the database failed; nothing is written.
        """
        t = tokens
        done = []
        with self._write() as conn:
            for digest in dict.fromkeys(d for d in digests if self._ok(d, SHORT)):
                revoked = conn.execute(
                    t.update()
                    .where(t.c.digest == digest, t.c.used_at.is_(None), t.c.revoked_at.is_(None))
                    .values(revoked_at=at)
                )
                if revoked.rowcount == 1:
                    done.append(digest)
                    if digest in audit:
                        conn.execute(audit_log.insert().values(_audit_row(audit[digest])))
        return done

    # audit ---------------------------------------------------------------------------------

    def audit_events(
        self, *, plan_id: str | None = None, member_id: str | None = None
    ) -> list[AuditEvent]:
        """Audit events, oldest first, optionally only those of one plan or member.

        Raises:
            StorageError: the database failed.
        """
        if not all(v is None or self._ok(v) for v in (plan_id, member_id)):
            return []
        stmt = sa.select(audit_log).order_by(audit_log.c.seq)
        if plan_id is not None:
            stmt = stmt.where(audit_log.c.plan_id == plan_id)
        if member_id is not None:
            stmt = stmt.where(audit_log.c.member_id == member_id)
        return [_audit_from_row(r) for r in self._read(stmt)]


# outbox ----------------------------------------------------------------------------------

_NOTICE_COLUMNS = (
    outbox.c.member_id,
    outbox.c.kind,
    outbox.c.token,
    outbox.c.password,
    outbox.c.expires_at,
    outbox.c.idempotency_key,
    outbox.c.recipient,
    outbox.c.actor,
    outbox.c.issued_at,
    outbox.c.plan_id,
    outbox.c.name,
    outbox.c.locale,
    outbox.c.phone,
)

_PENDING = sa.and_(
    outbox.c.delivered_at.is_(None), outbox.c.withdrawn_at.is_(None), outbox.c.failed_at.is_(None)
)


def _notice(row: Any) -> Notice:
    return Notice(
        member_id=row.member_id,
        kind=NoticeKind(row.kind),
        token=row.token,
        password=row.password,
        expires_at=row.expires_at,
        idempotency_key=row.idempotency_key,
        recipient=row.recipient,
        actor=row.actor,
        issued_at=row.issued_at,
        plan_id=row.plan_id,
        name=row.name,
        locale=row.locale,
        phone=row.phone,
    )


class SqlAlchemyOutbox(OutboxDelivery):
    """The :class:`~bulkreset.ports.Notifier` port as the ``bulkreset_outbox`` table.

    :meth:`send` records notices (a transactional outbox); :meth:`deliver`
    hands them to a transport and erases their secrets, exactly as
    :class:`~bulkreset.adapters.sqlite.SqliteOutbox` does. Several processes
    may deliver one outbox at once: each notice is claimed before it is sent.

    Args:
        store: The :class:`SqlAlchemyStorage` whose database holds the outbox.
        clock: Dates rows and deliveries; defaults to the system clock.
    """

    def __init__(self, store: SqlAlchemyStorage, *, clock: Clock | None = None) -> None:
        self._store = self._sa = store
        self._clock = clock or system_clock

    def __repr__(self) -> str:  # no query: a repr must work while the database is down
        return f"<SqlAlchemyOutbox on {self._sa.engine.url.render_as_string(hide_password=True)}>"

    def pending_count(self) -> int:
        """How many notices are not yet delivered, failed or withdrawn.

        Raises:
            StorageError: the database failed.
        """
        rows = self._sa._read(sa.select(sa.func.count()).select_from(outbox).where(_PENDING))
        return int(rows[0][0])

    def send(self, notices: Sequence[Notice]) -> None:
        """Queue *notices*, in one transaction; a key already held is ignored.

        A notice with an empty ``idempotency_key`` gets a random one.

        Raises:
            InvalidInputError: a notice's key is longer than 700 characters.
            StorageError: the database failed; nothing is queued.
        """
        now = read_clock(self._clock)
        rows = []
        for n in notices:
            key = n.idempotency_key or f"auto:{secrets.token_hex(16)}"
            if len(key) > KEY:
                raise InvalidInputError("an idempotency key is longer than 700 characters")
            rows.append(
                {
                    "member_id": n.member_id,
                    "kind": n.kind.value,
                    "token": n.token,
                    "password": n.password,
                    "expires_at": n.expires_at,
                    "idempotency_key": key,
                    "recipient": n.recipient,
                    "actor": n.actor,
                    "issued_at": n.issued_at,
                    "plan_id": n.plan_id,
                    "name": n.name,
                    "locale": n.locale,
                    "phone": n.phone,
                    "created_at": now,
                    "attempts": 0,
                }
            )
        if not rows:
            return
        with self._sa._write() as conn:
            dialect = self._sa._dialect
            dialect.write(conn, outbox, rows, Ignore("idempotency_key"))

    def pending(self) -> list[Notice]:
        """Notices not yet delivered, oldest first, with their token or password.

        A change request whose token is no longer live is left out: it will
        be withdrawn, never delivered.

        Raises:
            StorageError: the database failed.
        """
        rows = self._sa._read(sa.select(*_NOTICE_COLUMNS).where(_PENDING).order_by(outbox.c.seq))
        now = read_clock(self._clock)
        return [n for n in map(_notice, rows) if self._link_is_live(n, now)]

    def delivered(self) -> list[Notice]:
        """Delivered notices, oldest first; their token and password are erased.

        Raises:
            StorageError: the database failed.
        """
        rows = self._sa._read(
            sa.select(*_NOTICE_COLUMNS)
            .where(outbox.c.delivered_at.is_not(None))
            .order_by(outbox.c.seq)
        )
        return [_notice(r) for r in rows]

    def listing(self) -> list[dict[str, Any]]:
        """Every outbox row without its secrets, oldest first.

        Returns:
            One dict per notice, as :meth:`SqliteOutbox.listing
            <bulkreset.adapters.sqlite.SqliteOutbox.listing>` gives it.

        Raises:
            StorageError: the database failed.
        """
        o = outbox
        rows = self._sa._read(sa.select(o).order_by(o.c.seq))
        return [
            {
                "key": r.idempotency_key,
                "member_id": r.member_id,
                "kind": r.kind,
                "recipient": r.recipient,
                "created_at": r.created_at,
                "delivered_at": r.delivered_at,
                "attempts": r.attempts,
                "last_error": r.last_error,
                "retry_at": r.next_attempt_at if r.attempts and r.delivered_at is None else None,
                "status": outbox_status(r.delivered_at, r.withdrawn_at, r.failed_at, r.attempts),
            }
            for r in rows
        ]

    # the rows the shared delivery loop (OutboxDelivery.deliver) works on

    def _due(self, now: datetime, limit: int | None) -> list[tuple[int, int, Notice]]:
        o = outbox
        stmt = (
            sa.select(o.c.seq, o.c.attempts, *_NOTICE_COLUMNS)
            .where(_PENDING, sa.or_(o.c.next_attempt_at.is_(None), o.c.next_attempt_at <= now))
            .order_by(o.c.seq)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        return [(r.seq, r.attempts, _notice(r)) for r in self._sa._read(stmt)]

    def _update(self, ref: int, *where: Any, **values: Any) -> int:
        stmt = outbox.update().where(outbox.c.seq == ref, *where).values(**values)
        return self._sa._retrying(lambda conn: int(conn.execute(stmt).rowcount))

    def _claim(self, ref: int, now: datetime, until: datetime) -> bool:
        o = outbox
        due = sa.or_(o.c.next_attempt_at.is_(None), o.c.next_attempt_at <= now)
        return self._update(ref, _PENDING, due, next_attempt_at=until) == 1

    def _mark_delivered(self, ref: int, at: datetime) -> None:
        self._update(
            ref,
            outbox.c.delivered_at.is_(None),
            delivered_at=at,
            token=None,
            password=None,
            next_attempt_at=None,
            last_error=None,
        )

    def _fail(self, ref: int, reason: str, at: datetime) -> None:
        self._update(
            ref,
            outbox.c.delivered_at.is_(None),
            failed_at=at,
            last_error=reason,
            attempts=outbox.c.attempts + 1,
            token=None,
            password=None,
            next_attempt_at=None,
        )

    def _defer(self, ref: int, reason: str, retry_at: datetime) -> None:
        self._update(
            ref,
            outbox.c.delivered_at.is_(None),
            attempts=outbox.c.attempts + 1,
            last_error=reason,
            next_attempt_at=retry_at,
        )

    def _release(self, ref: int) -> None:
        self._update(ref, next_attempt_at=None)

    def _withdraw(self, ref: int, at: datetime) -> None:
        self._update(ref, withdrawn_at=at, token=None, password=None, next_attempt_at=None)


# sessions --------------------------------------------------------------------------------


class SqlAlchemySessions:
    """The :class:`~bulkreset.ports.SessionStore` port as the ``bulkreset_sessions`` table.

    Also opens sessions (:meth:`create`) and answers :meth:`is_active`, for a
    host without a session store of its own (or a test). A host with its own
    sessions passes its own :class:`~bulkreset.ports.SessionStore` instead.

    Args:
        store: The :class:`SqlAlchemyStorage` whose database holds the sessions.
        clock: Dates new sessions and revocations; defaults to the system clock.
    """

    def __init__(self, store: SqlAlchemyStorage, *, clock: Clock | None = None) -> None:
        self._sa = store
        self._clock = clock or system_clock

    def __repr__(self) -> str:  # no query: a repr must work while the database is down
        url = self._sa.engine.url.render_as_string(hide_password=True)
        return f"<SqlAlchemySessions on {url}>"

    def create(self, member_id: str) -> str:
        """Open a session for *member_id*, issued now.

        Returns:
            The session ID (128 random bits from :mod:`secrets`, URL-safe).

        Raises:
            InvalidInputError: *member_id* is not a member ID (empty, too long, NUL...).
            StorageError: the database failed.
        """
        if not self._sa._ok(member_id) or not member_id:
            raise InvalidInputError("create takes a member ID")
        session_id = secrets.token_urlsafe(16)
        with self._sa._write() as conn:
            conn.execute(
                sessions.insert().values(
                    session_id=session_id, member_id=member_id, issued_at=read_clock(self._clock)
                )
            )
        return session_id

    def is_active(self, session_id: str) -> bool:
        """True while the session exists and was not revoked.

        Raises:
            StorageError: the database failed.
        """
        if not self._sa._ok(session_id, SHORT):
            return False
        s = sessions
        rows = self._sa._read(
            sa.select(s.c.session_id).where(s.c.session_id == session_id, s.c.revoked_at.is_(None))
        )
        return bool(rows)

    def revoke(self, member_ids: Sequence[str], issued_before: datetime) -> None:
        """End every session of these members issued at or before *issued_before*.

        Raises:
            InvalidInputError: *issued_before* is naive.
            StorageError: the database failed; nothing is revoked.
        """
        cutoff = to_utc(issued_before, what="issued_before")
        now = read_clock(self._clock)
        s = sessions
        with self._sa._write() as conn:
            for batch in _batches(member_ids, pad=self._sa._pad):
                conn.execute(
                    s.update()
                    .where(
                        s.c.revoked_at.is_(None),
                        self._sa._dialect.in_(s.c.member_id, batch),
                        s.c.issued_at <= cutoff,
                    )
                    .values(revoked_at=now)
                )


def open_service(
    engine: sa.Engine | str,
    *,
    users: UsersTable | None = None,
    create_tables: bool = False,
    clock: Clock | None = None,
    hasher: argon2.PasswordHasher | None = None,
    **options: Any,
) -> ResetService:
    """A :class:`~bulkreset.ResetService` over a SQLAlchemy engine (or database URL).

    Args:
        engine: See :class:`SqlAlchemyStorage`.
        users: See :class:`SqlAlchemyStorage`.
        create_tables: See :class:`SqlAlchemyStorage`.
        clock: See :class:`~bulkreset.ResetService`; also dates sessions and outbox rows.
        hasher: See :class:`~bulkreset.ResetService`.
        options: Passed on to :class:`~bulkreset.ResetService`.

    Returns:
        The service: ``.store`` is a :class:`SqlAlchemyStorage` (with
        ``add_members``), ``.notifier`` a :class:`SqlAlchemyOutbox`
        (``pending()``, ``deliver(transport)``), ``.sessions`` a
        :class:`SqlAlchemySessions` (``create()``, ``is_active()``).

    Raises:
        InvalidInputError: bad *engine*, *users* or *options*.
        StorageError: *create_tables* failed.
    """
    store = SqlAlchemyStorage(engine, users=users, create_tables=create_tables)
    return service_over(
        store,
        SqlAlchemyOutbox(store, clock=clock),
        SqlAlchemySessions(store, clock=clock),
        close=store.close,
        hasher=hasher,
        clock=clock,
        **options,
    )


if TYPE_CHECKING:
    from ..ports import ChunkedStorage, Notifier, SessionStore, Storage

    def _conforms(
        store: SqlAlchemyStorage,
    ) -> tuple[Storage, ChunkedStorage, Notifier, SessionStore]:
        return store, store, SqlAlchemyOutbox(store), SqlAlchemySessions(store)
