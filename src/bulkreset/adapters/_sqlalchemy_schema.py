"""bulkreset's own tables as SQLAlchemy Core, and the mapping onto a host's users table.

Private to :mod:`bulkreset.adapters.sqlalchemy`, which re-exports
:data:`metadata` and :class:`UsersTable`. Every table name starts with
``bulkreset_``, so they sit beside a host's tables without a clash; include
:data:`metadata` in Alembic's ``target_metadata`` to migrate them with the
host's own.

Times are stored as naive UTC (``TIMESTAMP`` / ``DATETIME(6)``) and read back
aware; strings are ``utf8mb4`` with binary collation on MariaDB/MySQL, so IDs
compare exactly there too (the default collation would make ``"M1"`` equal
``"m1"``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

from .._clock import to_utc
from .._model import MEMBER_FIELDS
from ..errors import InvalidInputError

__all__ = ["MEMBER_FIELDS", "UsersTable", "UtcDateTime", "metadata"]

ID = 256
"""Member IDs and login IDs are at most 256 characters (:class:`~bulkreset.Member`)."""
KEY = 700
"""Idempotency keys: a plan ID, a member ID and a kind (700 × 4 bytes fits InnoDB's index)."""
SHORT = 64
"""Plan IDs, lease owners, digests, session IDs."""


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC :class:`~datetime.datetime`, stored naive with microseconds."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return to_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            return value.astimezone(timezone.utc)
        return value.replace(tzinfo=timezone.utc)


_LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER is the rowid

metadata = sa.MetaData()
"""bulkreset's tables. ``metadata.create_all(engine)`` makes them; a host that
migrates with Alembic lists it in ``target_metadata`` instead."""

_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_bin",
}


def _table(name: str, *items: sa.schema.SchemaItem) -> sa.Table:
    return sa.Table(f"bulkreset_{name}", metadata, *items, **_TABLE_OPTIONS)


members = _table(
    "members",
    sa.Column("member_id", sa.String(ID), primary_key=True),
    sa.Column("login_id", sa.String(ID), nullable=False),
    sa.Column("login_key", sa.Text, nullable=False),
    # SHA-256 of login_key: a unique index of fixed width, whatever the key's length
    sa.Column("login_digest", sa.String(SHORT), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("sign_in", sa.String(16), nullable=False),
    sa.Column("mobile_phone", sa.String(ID)),
    sa.Column("personal_email", sa.String(ID)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("locale", sa.String(SHORT), nullable=False, server_default="en"),
)

plans = _table(
    "plans",
    sa.Column("plan_id", sa.String(SHORT), primary_key=True),
    sa.Column("body", _LONG_TEXT, nullable=False),
    sa.Column("password_hash", sa.Text),
    sa.Column("password", sa.Text),
    sa.Column("token_key", sa.LargeBinary(64)),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("lease_owner", sa.String(SHORT)),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("approved_by", sa.String(ID)),
    sa.Column("approved_at", UtcDateTime),
)

plan_entries = _table(
    "plan_entries",
    sa.Column("plan_id", sa.String(SHORT), nullable=False),
    sa.Column("target_index", sa.Integer),
    sa.Column("excluded_index", sa.Integer),
    sa.Column("warning_index", sa.Integer),
    sa.Column("member_id", sa.String(ID), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("warning", sa.String(32)),
    sa.Column("login_id", sa.String(ID)),
    sa.Column("name", sa.Text),
    sa.Column("sign_in", sa.String(16)),
    sa.Column("mobile_phone", sa.String(ID)),
    sa.Column("personal_email", sa.String(ID)),
    sa.Column("status", sa.String(16)),
    sa.Column("role", sa.String(16)),
    sa.Column("locale", sa.String(SHORT)),
    sa.Index("bulkreset_plan_targets", "plan_id", "target_index", unique=True),
    sa.Index("bulkreset_plan_excluded", "plan_id", "excluded_index", unique=True),
    sa.Index("bulkreset_plan_warnings", "plan_id", "warning_index", unique=True),
)

credentials = _table(
    "credentials",
    sa.Column("member_id", sa.String(ID), primary_key=True),
    sa.Column("password_hash", sa.Text),
    sa.Column("shared_plan_id", sa.String(SHORT), sa.ForeignKey(plans.c.plan_id)),
    sa.Column("must_change", sa.Boolean, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("changed_at", UtcDateTime, nullable=False),
    sa.Column("not_before", UtcDateTime),
    sa.Column("expires_at", UtcDateTime),
)

tokens = _table(
    "tokens",
    sa.Column("digest", sa.String(SHORT), primary_key=True),
    sa.Column("member_id", sa.String(ID), nullable=False, index=True),
    sa.Column("plan_id", sa.String(SHORT), nullable=False, index=True),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("used_at", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
)

progress = _table(
    "progress",
    sa.Column("plan_id", sa.String(SHORT), primary_key=True),
    sa.Column("member_id", sa.String(ID), primary_key=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("sessions_revoked", sa.Boolean, nullable=False),
    sa.Column("notified", sa.Boolean, nullable=False),
    sa.Column("login_id", sa.String(ID), nullable=False),
    sa.Column("at", UtcDateTime),
    sa.Column("attempted_at", UtcDateTime),
)

chunks = _table(
    "chunks",
    sa.Column("plan_id", sa.String(SHORT), primary_key=True),
    sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("start", sa.Integer, nullable=False),
    sa.Column("stop", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.String(SHORT)),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("claims", sa.Integer, nullable=False, server_default="0"),
    sa.Column("done_at", UtcDateTime),
)

audit = _table(
    "audit",
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("action", sa.String(SHORT), nullable=False),
    sa.Column("actor", sa.String(ID)),
    sa.Column("plan_id", sa.String(SHORT), index=True),
    sa.Column("member_id", sa.String(ID), index=True),
    sa.Column("detail", sa.Text, nullable=False),
)

outbox = _table(
    "outbox",
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(KEY), nullable=False, unique=True),
    sa.Column("member_id", sa.String(ID), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("token", sa.Text),
    sa.Column("password", sa.Text),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("recipient", sa.String(ID)),
    sa.Column("phone", sa.String(ID)),
    sa.Column("actor", sa.String(ID)),
    sa.Column("issued_at", UtcDateTime),
    sa.Column("plan_id", sa.String(SHORT)),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("locale", sa.String(SHORT), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    sa.Column("withdrawn_at", UtcDateTime),
    sa.Column("failed_at", UtcDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Index("bulkreset_outbox_state", "delivered_at", "withdrawn_at", "failed_at"),
)

sessions = _table(
    "sessions",
    sa.Column("session_id", sa.String(SHORT), primary_key=True),
    sa.Column("member_id", sa.String(ID), nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Index("bulkreset_sessions_by_member", "member_id", "issued_at"),
)


_DEFAULTS: dict[str, str | None] = {
    "name": "",
    "sign_in": "password",
    "mobile_phone": None,
    "personal_email": None,
    "status": "active",
    "role": "member",
    "locale": "en",
}


@attrs.frozen
class UsersTable:
    """Where a host keeps its members: its own users table, mapped column by column.

    bulkreset then reads members from (and :meth:`add_members` writes them
    to) *table*, and keeps only what it owns in its own tables (credential
    generations and flags, plans, tokens, progress, the outbox, the audit
    log). Each field names a column of *table*; a field left ``None`` takes
    the :class:`~bulkreset.Member` default for every member (a users table
    without ``role`` has no administrators, so nobody could plan: map it).
    Columns hold bulkreset's values (``sign_in``: ``password`` or
    ``quick_login``; ``status``: ``active``, ``suspended``, ``pending``;
    ``role``: ``member``, ``admin``, ``super_admin``); a host that stores
    others maps a view or computed columns.

    Args:
        table: The host's users :class:`sqlalchemy.Table`.
        member_id: Its primary key column (text; the member ID).
        login_id: The sign-in name (usually the work address).
        name, sign_in, mobile_phone, personal_email, status, role, locale:
            Columns for the other :class:`~bulkreset.Member` fields, or ``None``.
        login_key: A text column bulkreset may fill with the folded login ID
            (:func:`~bulkreset.fold_login`: NFKC and case folding), for exact
            look-ups at sign-in; without it, sign-in looks up
            ``lower(login_id)`` and compares the folded forms in Python.
        password_hash: A text column for the Argon2id hash, when the host
            insists on one in its users table; ``None`` keeps hashes in
            ``bulkreset_credentials`` (the recommended way).
        shared_password: How a force change fills *password_hash*
            (SPEC §5, NIST SP 800-63B §5.1.1.2: one salt per credential):
            ``"per_member"`` hashes the shared password once per member,
            each with its own salt (the plain password is kept, encrypted
            only by your database's protection, until the apply finishes;
            hashing uses every core but costs ~0.1 s of CPU a member);
            ``"copy"`` writes the plan's one hash into every member's row
            (one bulk write; members share one salt until each sets their
            own password; the documented trade-off).

    Raises:
        InvalidInputError: a named column is not in *table*, or
            *shared_password* is neither ``"per_member"`` nor ``"copy"``.
    """

    table: sa.Table
    member_id: str
    login_id: str
    name: str | None = None
    sign_in: str | None = None
    mobile_phone: str | None = None
    personal_email: str | None = None
    status: str | None = None
    role: str | None = None
    locale: str | None = None
    login_key: str | None = None
    password_hash: str | None = None
    shared_password: Literal["per_member", "copy"] = "per_member"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.table, sa.Table):
            raise InvalidInputError("UsersTable takes a sqlalchemy Table")
        for field in (*MEMBER_FIELDS, "login_key", "password_hash"):
            name = getattr(self, field)
            if name is not None and name not in self.table.c:
                raise InvalidInputError(
                    f"UsersTable.{field}: {self.table.name!r} has no column {name!r}"
                )
        if self.shared_password not in ("per_member", "copy"):
            raise InvalidInputError('shared_password is "per_member" or "copy"')
        for field in ("member_id", "login_id", "login_key", "password_hash"):
            name = getattr(self, field)
            if name is not None and not isinstance(self.table.c[name].type, sa.String):
                raise InvalidInputError(
                    f"UsersTable.{field}: column {name!r} must hold text (member IDs are "
                    "strings); map a view or a computed text column over an integer key"
                )

    def column(self, field: str) -> sa.ColumnElement[Any] | None:
        """The column mapped to *field*, or ``None``."""
        name = getattr(self, field)
        return None if name is None else self.table.c[name]

    def member_columns(self) -> list[sa.ColumnElement[Any]]:
        """The select list of a member, in :data:`MEMBER_FIELDS` order (defaults as literals)."""
        out: list[sa.ColumnElement[Any]] = []
        for field in MEMBER_FIELDS:
            column = self.column(field)
            if column is None:
                out.append(sa.literal(_DEFAULTS[field], sa.String).label(field))
            else:
                out.append(column.label(field))
        return out

    @property
    def key(self) -> sa.ColumnElement[Any]:
        """The member ID column."""
        return self.table.c[self.member_id]


def library_users() -> UsersTable:
    """The mapping of bulkreset's own ``bulkreset_members`` table."""
    return UsersTable(
        members,
        member_id="member_id",
        login_id="login_id",
        name="name",
        sign_in="sign_in",
        mobile_phone="mobile_phone",
        personal_email="personal_email",
        status="status",
        role="role",
        locale="locale",
        login_key="login_key",
    )
