"""The SQLite store's schema, its migrations, and the row and JSON codecs.

Private to :mod:`bulkreset.adapters.sqlite`. The schema version lives in
``PRAGMA user_version``; :data:`MIGRATIONS` lists the statements that take a
database from one version to the next, in order, so a file made by an older
bulkreset is upgraded in place when it is opened.

Times are stored as text written by :func:`bulkreset._clock.to_iso` (UTC,
microseconds, fixed width), so comparing two stored times as strings
compares the instants.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .._clock import from_iso, to_iso
from .._model import (
    IN_MEMORY_LIMIT,
    MEMBER_FIELDS,
    Exclusion,
    ExclusionReason,
    Member,
    PagedSequence,
    PlanEntry,
    PlanSettings,
    PlanWarning,
    ResetMode,
    ResetPlan,
    WarningKind,
    member_from_store,
)
from ..errors import StorageError

__all__ = [
    "MEMBER_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "entry_rows",
    "member_from_row",
    "member_to_row",
    "migrate",
    "plan_from_header",
    "plan_from_json",
    "plan_to_json",
]

_V1 = (
    """
    CREATE TABLE members (
        member_id      TEXT PRIMARY KEY,
        login_id       TEXT NOT NULL,
        login_key      TEXT NOT NULL UNIQUE,
        name           TEXT NOT NULL,
        sign_in        TEXT NOT NULL,
        mobile_phone   TEXT,
        personal_email TEXT,
        status         TEXT NOT NULL,
        role           TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE plans (
        plan_id       TEXT PRIMARY KEY,
        body          TEXT NOT NULL,
        password_hash TEXT,
        password      TEXT,
        token_key     BLOB,
        started_at    TEXT,
        finished_at   TEXT,
        lease_owner   TEXT,
        lease_until   TEXT
    )
    """,
    """
    CREATE TABLE credentials (
        member_id      TEXT PRIMARY KEY,
        password_hash  TEXT,
        shared_plan_id TEXT REFERENCES plans (plan_id),
        must_change    INTEGER NOT NULL,
        generation     INTEGER NOT NULL,
        changed_at     TEXT NOT NULL,
        not_before     TEXT
    )
    """,
    """
    CREATE TABLE tokens (
        digest     TEXT PRIMARY KEY,
        member_id  TEXT NOT NULL,
        plan_id    TEXT NOT NULL,
        issued_at  TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        generation INTEGER NOT NULL,
        used_at    TEXT,
        revoked_at TEXT
    )
    """,
    """
    CREATE TABLE progress (
        plan_id          TEXT NOT NULL,
        member_id        TEXT NOT NULL,
        outcome          TEXT NOT NULL,
        reason           TEXT,
        sessions_revoked INTEGER NOT NULL,
        notified         INTEGER NOT NULL,
        login_id         TEXT NOT NULL,
        at               TEXT,
        attempted_at     TEXT,
        PRIMARY KEY (plan_id, member_id)
    )
    """,
    """
    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,
        at        TEXT NOT NULL,
        action    TEXT NOT NULL,
        actor     TEXT,
        plan_id   TEXT,
        member_id TEXT,
        detail    TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE outbox (
        seq             INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        member_id       TEXT NOT NULL,
        kind            TEXT NOT NULL,
        token           TEXT,
        password        TEXT,
        expires_at      TEXT,
        recipient       TEXT,
        actor           TEXT,
        issued_at       TEXT,
        plan_id         TEXT,
        name            TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        delivered_at    TEXT,
        last_error      TEXT
    )
    """,
    """
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        member_id  TEXT NOT NULL,
        issued_at  TEXT NOT NULL,
        revoked_at TEXT
    )
    """,
)

_V2 = (
    "CREATE INDEX tokens_live_by_member ON tokens (member_id)"
    " WHERE used_at IS NULL AND revoked_at IS NULL",
    "CREATE INDEX audit_by_plan ON audit (plan_id)",
    "CREATE INDEX audit_by_member ON audit (member_id)",
    "CREATE INDEX sessions_by_member ON sessions (member_id, issued_at)",
    "CREATE INDEX outbox_undelivered ON outbox (seq) WHERE delivered_at IS NULL",
    "ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE outbox ADD COLUMN next_attempt_at TEXT",
)

_V3 = (
    # A pending change request whose token died (superseded by a newer request,
    # used, expired, or the password changed) is withdrawn, never delivered.
    "ALTER TABLE outbox ADD COLUMN withdrawn_at TEXT",
)

_V4 = (
    # A plan's members live in their own rows, read a page at a time, so a
    # plan of a million members is neither one huge JSON value nor held in
    # memory; ``plans.body`` keeps only the plan's header and counts.
    """
    CREATE TABLE plan_entries (
        plan_id        TEXT NOT NULL
                       REFERENCES plans (plan_id) DEFERRABLE INITIALLY DEFERRED,
        target_index   INTEGER,
        excluded_index INTEGER,
        warning_index  INTEGER,
        member_id      TEXT NOT NULL,
        reason         TEXT,
        warning        TEXT,
        login_id       TEXT,
        name           TEXT,
        sign_in        TEXT,
        mobile_phone   TEXT,
        personal_email TEXT,
        status         TEXT,
        role           TEXT
    )
    """,
    "CREATE UNIQUE INDEX plan_targets ON plan_entries (plan_id, target_index)"
    " WHERE target_index IS NOT NULL",
    "CREATE UNIQUE INDEX plan_excluded ON plan_entries (plan_id, excluded_index)"
    " WHERE excluded_index IS NOT NULL",
    "CREATE UNIQUE INDEX plan_warnings ON plan_entries (plan_id, warning_index)"
    " WHERE warning_index IS NOT NULL",
)

_V5 = (
    # Notices in the member's language; a notice that failed for good (a 5xx
    # reply) is kept, marked, and no longer pending.
    "ALTER TABLE members ADD COLUMN locale TEXT NOT NULL DEFAULT 'en'",
    "ALTER TABLE outbox ADD COLUMN locale TEXT NOT NULL DEFAULT 'en'",
    "ALTER TABLE outbox ADD COLUMN failed_at TEXT",
    "DROP INDEX outbox_undelivered",
    "CREATE INDEX outbox_pending ON outbox (seq)"
    " WHERE delivered_at IS NULL AND withdrawn_at IS NULL AND failed_at IS NULL",
)

_V6 = (
    # A plan's snapshot of each member keeps their language too; a notice keeps
    # the member's mobile phone (for SMS), since a reset notice may have no address.
    "ALTER TABLE plan_entries ADD COLUMN locale TEXT",
    "ALTER TABLE outbox ADD COLUMN phone TEXT",
)

_V7 = (
    # A force change's temporary password stops signing in at this instant.
    "ALTER TABLE credentials ADD COLUMN expires_at TEXT",
    # An administrator lists and cancels a plan's change requests.
    "CREATE INDEX tokens_by_plan ON tokens (plan_id)",
)

_V8 = (
    # Two-person approval: who approved a plan, and when.
    "ALTER TABLE plans ADD COLUMN approved_by TEXT",
    "ALTER TABLE plans ADD COLUMN approved_at TEXT",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8)
"""``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The version this code writes and reads."""


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database up to schema version *target*, one migration at a time.

    Each step runs in its own ``BEGIN IMMEDIATE`` transaction and re-reads
    the version inside it, so two processes opening an old file at once
    migrate it once. *conn* must be in autocommit mode (``isolation_level=None``).

    Args:
        conn: The connection.
        target: The version to reach (tests pass ``1`` to build an old file).

    Returns:
        The version the database had when opened.

    Raises:
        StorageError: the file's version is newer than this code knows.
        sqlite3.Error: the file is not a database, or a statement failed.
    """
    found = _version(conn)
    if found > SCHEMA_VERSION:
        raise StorageError(
            f"the database has schema version {found}, newer than this bulkreset "
            f"understands ({SCHEMA_VERSION}); upgrade bulkreset"
        )
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _version(conn) == version:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def check_ownership(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database that holds another application's tables.

    A file with no schema version yet must be empty: bulkreset never adds its
    tables to (or switches the journal mode of) someone else's database.

    Raises:
        StorageError: the file is versionless but already has tables.
        sqlite3.Error: the file is not a database.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StorageError(
            f"{path!r} holds another application's tables; bulkreset needs a file of its own"
        )


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


# members ---------------------------------------------------------------------


MEMBER_COLUMNS = (*MEMBER_FIELDS, "login_key")
"""The fields of :func:`member_to_row`, in order."""


def member_to_row(member: Member) -> tuple[str | None, ...]:
    """The ``members`` row of *member*: ``member_id`` ... ``role``, ``locale``, ``login_key``."""
    return (
        member.member_id,
        member.login_id,
        member.name,
        member.sign_in.value,
        member.mobile_phone,
        member.personal_email,
        member.status.value,
        member.role.value,
        member.locale,
        member.login_key,
    )


def member_from_row(row: Sequence[Any]) -> Member:
    """The :class:`Member` of a row laid out as :func:`member_to_row` writes it
    (``member_id`` ... ``role``, then ``locale`` when the row has it)."""
    return member_from_store(*row[:9])


def _member_json(member: Member) -> dict[str, str | None]:
    return {
        "member_id": member.member_id,
        "login_id": member.login_id,
        "name": member.name,
        "sign_in": member.sign_in.value,
        "mobile_phone": member.mobile_phone,
        "personal_email": member.personal_email,
        "status": member.status.value,
        "role": member.role.value,
    }


# plans -----------------------------------------------------------------------


def plan_to_json(plan: ResetPlan) -> str:
    """Serialize a :class:`ResetPlan` (it holds no secret) as compact JSON."""
    body = {
        "plan_id": plan.plan_id,
        "mode": plan.mode.value,
        "created_at": to_iso(plan.created_at),
        "actor": plan.actor,
        "targets": [_member_json(m) for m in plan.targets],
        "excluded": [[e.member_id, e.reason.value] for e in plan.excluded],
        "warnings": [[w.member_id, w.kind.value] for w in plan.warnings],
        "precautions": list(plan.precautions),
        "confirmation": plan.confirmation,
        "settings": plan.settings.to_json(),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def plan_header_to_json(plan: ResetPlan, counts: tuple[int, int, int]) -> str:
    """A plan's header as JSON: everything but its members, with their counts."""
    body = {
        "plan_id": plan.plan_id,
        "mode": plan.mode.value,
        "created_at": to_iso(plan.created_at),
        "actor": plan.actor,
        "counts": list(counts),
        "precautions": list(plan.precautions),
        "confirmation": plan.confirmation,
        "settings": plan.settings.to_json(),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


CREDENTIAL_WRITE = """
INSERT INTO credentials
    (member_id, password_hash, shared_plan_id, must_change, generation, changed_at, not_before,
     expires_at)
{rows}
ON CONFLICT (member_id) DO UPDATE SET
    password_hash = excluded.password_hash,
    shared_plan_id = excluded.shared_plan_id,
    must_change = excluded.must_change,
    generation = credentials.generation + 1,
    changed_at = excluded.changed_at,
    not_before = excluded.not_before,
    expires_at = excluded.expires_at
"""
"""How every credential is written, one by one or a chunk at a time: a new member's
generation is 1; an existing one's goes up by one (which kills their older tokens)."""

ENTRY_COLUMNS = (
    "plan_id, target_index, excluded_index, warning_index, member_id, reason, warning, "
    "login_id, name, sign_in, mobile_phone, personal_email, status, role, locale"
)


def entry_rows(
    plan_id: str, entries: Sequence[PlanEntry], counts: list[int]
) -> list[tuple[object, ...]]:
    """The ``plan_entries`` rows of *entries*, numbered after *counts* (targets,
    excluded, warnings so far), which it moves on: an entry has an index in each
    section it belongs to (a target with a warning is in two)."""
    rows = []
    for entry in entries:
        indexes: list[int | None] = [None, None, None]
        sections = (entry.reason is None, entry.reason is not None, entry.warning is not None)
        for section, present in enumerate(sections):
            if present:
                indexes[section] = counts[section]
                counts[section] += 1
        rows.append(entry_row(plan_id, entry, (indexes[0], indexes[1], indexes[2])))
    return rows


def entry_row(
    plan_id: str, entry: PlanEntry, indexes: tuple[int | None, int | None, int | None]
) -> tuple[object, ...]:
    """The ``plan_entries`` row of one entry (the member as it was when planned)."""
    member = entry.member
    # login_id ... role, as the members table has them
    snapshot = member_to_row(member)[1:9] if member is not None else (None,) * 8
    return (
        plan_id,
        *indexes,
        entry.member_id,
        entry.reason.value if entry.reason else None,
        entry.warning.value if entry.warning else None,
        *snapshot,
    )


def plan_from_header(body: str, fetch: Callable[[int, int, int], Sequence[Any]]) -> ResetPlan:
    """The plan whose header :func:`plan_header_to_json` wrote, its sections read on demand.

    ``fetch(section, start, stop)`` reads entries ``[start, stop)`` of a
    section (0 targets, 1 exclusions, 2 warnings). Small plans are read
    whole now; big ones become :class:`~bulkreset.PagedSequence`\\ s.
    """
    header = json.loads(body)
    if "targets" in header:  # stored before schema version 4: members inline
        return plan_from_json(body)
    targets, excluded, warnings = header["counts"]
    sections: tuple[Sequence[Member], Sequence[Exclusion], Sequence[PlanWarning]] = (
        PagedSequence(targets, partial(fetch, 0)),
        PagedSequence(excluded, partial(fetch, 1)),
        PagedSequence(warnings, partial(fetch, 2)),
    )
    if targets + excluded <= IN_MEMORY_LIMIT:  # small: read it all now
        sections = (tuple(sections[0]), tuple(sections[1]), tuple(sections[2]))
    return ResetPlan(
        plan_id=header["plan_id"],
        mode=ResetMode(header["mode"]),
        created_at=from_iso(header["created_at"]),
        actor=header["actor"],
        targets=sections[0],
        excluded=sections[1],
        warnings=sections[2],
        precautions=tuple(header["precautions"]),
        confirmation=header["confirmation"],
        settings=PlanSettings.from_json(header["settings"]),
    )


def plan_from_json(text: str) -> ResetPlan:
    """The inverse of :func:`plan_to_json` (plans stored before schema version 4)."""
    body = json.loads(text)
    return ResetPlan(
        plan_id=body["plan_id"],
        mode=ResetMode(body["mode"]),
        created_at=from_iso(body["created_at"]),
        actor=body["actor"],
        targets=tuple(Member(**m) for m in body["targets"]),
        excluded=tuple(Exclusion(i, ExclusionReason(r)) for i, r in body["excluded"]),
        warnings=tuple(PlanWarning(i, WarningKind(k)) for i, k in body["warnings"]),
        precautions=tuple(body["precautions"]),
        confirmation=body["confirmation"],
        settings=PlanSettings.from_json(body["settings"]),
    )
