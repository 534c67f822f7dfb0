"""Set-based plan and apply for the SQLite store: a chunk is a few ``INSERT … SELECT``.

Private to :mod:`bulkreset.adapters.sqlite`. The rules are the domain's
(:func:`bulkreset._planning.exclusion_reason` and ``classify``), written once
more as SQL so that SQLite sorts and writes a whole chunk without a Python
object per member; ``tests/test_set_based.py`` checks, on generated
directories, that both give the same plans, outcomes, rows and audit events.

Every statement reads the chunk from the temporary table ``bulk_chunk``
(kept in memory: ``temp_store = MEMORY``): the chunk's due targets (no
progress yet), each with the reason it is excluded at apply time (``NULL``
for a member to reset) and, when change requests go out, the token Python
derived for it and its digest in ``bulk_tokens``. The rows, tokens included,
are deleted before the chunk's transaction ends; the outbox row holds the token until delivery,
as for every notice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, overload

from .._clock import to_iso
from .._model import (
    NO_CHANNEL,
    AuditEvent,
    ExclusionReason,
    MemberStatus,
    Notice,
    NoticeKind,
    Outcome,
    PlanSettings,
    ResetMode,
    Role,
    SignInMethod,
    WarningKind,
)
from .._tokens import token_digest
from ..errors import StorageError
from ..ports import ChunkRequest
from ._sqlite_schema import CREDENTIAL_WRITE

__all__ = [
    "ChunkNotices",
    "apply_chunk",
    "classify_into_plan",
]

_R = ExclusionReason

EXCLUSION_CASE = f"""
CASE
    WHEN m.member_id IS NULL THEN '{_R.UNKNOWN_MEMBER.value}'
    WHEN m.member_id = :actor AND NOT :include_actor THEN '{_R.ACTOR.value}'
    WHEN :admin_only AND m.role = '{Role.SUPER_ADMIN.value}' THEN '{_R.NOT_PERMITTED.value}'
    WHEN m.status = '{MemberStatus.PENDING.value}' THEN '{_R.NOT_ACTIVATED.value}'
    WHEN m.status = '{MemberStatus.SUSPENDED.value}' AND NOT :include_suspended
        THEN '{_R.SUSPENDED.value}'
    WHEN :force AND m.sign_in = '{SignInMethod.QUICK_LOGIN.value}'
        AND NOT EXISTS (SELECT 1 FROM credentials AS c WHERE c.member_id = m.member_id)
        THEN '{_R.NO_PASSWORD.value}'
END
"""
"""The first exclusion reason that applies to member ``m`` (SPEC §3's order), or NULL."""


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else to_iso(value)


def rule_params(settings: PlanSettings, actor_id: str, actor_role: Role) -> dict[str, Any]:
    """The named parameters :data:`EXCLUSION_CASE` reads."""
    return {
        "actor": actor_id,
        "include_actor": int(settings.include_actor),
        "admin_only": int(actor_role is Role.ADMIN),
        "include_suspended": int(settings.include_suspended),
        "force": int(settings.mode is ResetMode.FORCE_CHANGE),
    }


# plan ---------------------------------------------------------------------------

# Every member: the members table itself, in member_id order. A selection: the
# temporary table of its distinct IDs in order, joined to the members it names.
# Both are read a page at a time, after the last position sorted (keyset paging).
_Source = tuple[str, str, str, "str | int"]  # FROM ... WHERE, order, member ID, first key
_ALL_MEMBERS: _Source = (
    "members AS m WHERE m.member_id > :after",
    "m.member_id",
    "m.member_id",
    "",
)
_SELECTED: _Source = (
    "temp.bulk_selection AS sel LEFT JOIN members AS m ON m.member_id = sel.member_id "
    "WHERE sel.pos > :after",
    "sel.pos",
    "sel.member_id",
    0,
)
PAGE = 10_000
"""Members sorted per step: the scratch tables never hold more (bounded memory)."""

_PLAN_TABLES = (
    """
    CREATE TEMP TABLE IF NOT EXISTS bulk_selection (
        pos       INTEGER PRIMARY KEY,
        member_id TEXT NOT NULL
    )
    """,
    # The selection sorted out, in selection order: ``seq`` counts from 1.
    """
    CREATE TEMP TABLE IF NOT EXISTS bulk_sorted (
        seq            INTEGER PRIMARY KEY,
        pos            NOT NULL,  -- no type: no affinity, a member ID stays text
        member_id      TEXT NOT NULL,
        reason         TEXT,
        warning        TEXT,
        login_id       TEXT,
        name           TEXT,
        sign_in        TEXT,
        mobile_phone   TEXT,
        personal_email TEXT,
        status         TEXT,
        role           TEXT,
        locale         TEXT
    )
    """,
    # A section's members in order: ``n`` (from 1) is the rank within the section.
    # Ranking by rowid is several times cheaper than a window function, which
    # buffers every row it numbers.
    "CREATE TEMP TABLE IF NOT EXISTS bulk_targets (n INTEGER PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS bulk_excluded (n INTEGER PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS bulk_warned (n INTEGER PRIMARY KEY, seq INTEGER UNIQUE)",
)

# One flat SELECT, so that the index on the order satisfies ORDER BY (no sort);
# the reason is written twice, once for the warning, which needs it.
_SORT = """
INSERT INTO temp.bulk_sorted
    (pos, member_id, reason, warning, login_id, name, sign_in, mobile_phone, personal_email,
     status, role, locale)
SELECT {order}, {member_id}, {case},
       CASE WHEN ({case}) IS NULL AND :force
                 AND COALESCE(m.mobile_phone, '') = '' AND COALESCE(m.personal_email, '') = ''
            THEN '{warning}' END,
       m.login_id, m.name, m.sign_in, m.mobile_phone, m.personal_email, m.status, m.role,
       m.locale
FROM {source}
ORDER BY {order}
LIMIT :page
"""

_RANK = (
    "INSERT INTO temp.bulk_targets (seq) "
    "SELECT seq FROM temp.bulk_sorted WHERE reason IS NULL ORDER BY seq",
    "INSERT INTO temp.bulk_excluded (seq) "
    "SELECT seq FROM temp.bulk_sorted WHERE reason IS NOT NULL ORDER BY seq",
    "INSERT INTO temp.bulk_warned (seq) "
    "SELECT seq FROM temp.bulk_sorted WHERE warning IS NOT NULL ORDER BY seq",
)

_ENTRIES = """
INSERT INTO plan_entries
    (plan_id, target_index, excluded_index, warning_index, member_id, reason, warning,
     login_id, name, sign_in, mobile_phone, personal_email, status, role, locale)
SELECT :plan_id, {target}, {excluded}, w.n - 1 + :warned, s.member_id, s.reason, s.warning,
       s.login_id, s.name, s.sign_in, s.mobile_phone, s.personal_email, s.status, s.role,
       s.locale
FROM temp.{section} AS r
JOIN temp.bulk_sorted AS s ON s.seq = r.seq
LEFT JOIN temp.bulk_warned AS w ON w.seq = s.seq
ORDER BY r.n
"""

_PLAN_SCRATCH = ("bulk_selection", "bulk_sorted", "bulk_targets", "bulk_excluded", "bulk_warned")


def classify_into_plan(
    conn: sqlite3.Connection,
    plan_id: str,
    selection: Sequence[str] | None,
    params: dict[str, Any],
) -> tuple[int, int, dict[ExclusionReason, int]]:
    """Write the plan's entries for *selection* (``None``: every member); return the counts.

    Runs inside the plan's transaction on *conn*, :data:`PAGE` members at a
    time: sorts them (:data:`EXCLUSION_CASE`), numbers each section by rowid
    after the entries of the pages before, and writes the entries with their
    section indexes (targets, exclusions, warnings).
    """
    for statement in _PLAN_TABLES:
        conn.execute(statement)
    if selection is None:
        source, order, member_id, after = _ALL_MEMBERS
    else:
        conn.executemany(
            "INSERT INTO temp.bulk_selection (member_id) VALUES (?)", ((i,) for i in selection)
        )
        source, order, member_id, after = _SELECTED
    sort = _SORT.format(
        source=source,
        order=order,
        member_id=member_id,
        case=EXCLUSION_CASE,
        warning=WarningKind.CANNOT_SELF_RECOVER.value,
    )
    targets_sql = _ENTRIES.format(
        target="r.n - 1 + :targets", excluded="NULL", section="bulk_targets"
    )
    excluded_sql = _ENTRIES.format(
        target="NULL", excluded="r.n - 1 + :excluded", section="bulk_excluded"
    )
    seen = {"targets": 0, "excluded": 0, "warned": 0}
    reasons: dict[ExclusionReason, int] = {}
    try:
        while True:
            for table in _PLAN_SCRATCH[1:]:
                conn.execute(f"DELETE FROM temp.{table}")
            conn.execute(sort, {**params, "after": after, "page": PAGE})
            last = conn.execute(
                "SELECT pos, seq FROM temp.bulk_sorted ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if last is None:
                break
            for statement in _RANK:
                conn.execute(statement)
            offsets = {"plan_id": plan_id, **seen}
            conn.execute(targets_sql, offsets)
            conn.execute(excluded_sql, offsets)
            for key, table in (
                ("targets", "bulk_targets"),
                ("excluded", "bulk_excluded"),
                ("warned", "bulk_warned"),
            ):
                seen[key] += conn.execute(f"SELECT count(*) FROM temp.{table}").fetchone()[0]
            for reason, count in conn.execute(
                "SELECT reason, count(*) FROM temp.bulk_sorted WHERE reason IS NOT NULL "
                "GROUP BY reason"
            ):
                reasons[ExclusionReason(reason)] = reasons.get(ExclusionReason(reason), 0) + count
            after, sorted_here = last
            if sorted_here < PAGE:
                break
    finally:
        for table in _PLAN_SCRATCH:
            conn.execute(f"DELETE FROM temp.{table}")
    return seen["targets"], seen["warned"], reasons


def target_with_login_key(conn: sqlite3.Connection, plan_id: str, login_key: str) -> bool:
    """Whether a target of the plan being written has this folded login ID."""
    row = conn.execute(
        "SELECT 1 FROM members AS m JOIN plan_entries AS e ON e.member_id = m.member_id "
        "WHERE m.login_key = ? AND e.plan_id = ? AND e.target_index IS NOT NULL",
        (login_key, plan_id),
    ).fetchone()
    return row is not None


# apply --------------------------------------------------------------------------

_HAS_CHANNEL = "(COALESCE(personal_email, '') <> '' OR COALESCE(mobile_phone, '') <> '')"
"""A reset notice can reach the member (signed out of the work account): a personal
email or a mobile phone. Without either, the member gets none (reason ``no_channel``)."""

_CHUNK_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS bulk_chunk (
    target_index   INTEGER PRIMARY KEY,
    member_id      TEXT NOT NULL,
    login_id       TEXT NOT NULL,
    name           TEXT,
    personal_email TEXT,
    mobile_phone   TEXT,
    locale         TEXT,
    reason         TEXT
)
"""

_TOKEN_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS bulk_tokens (
    target_index INTEGER PRIMARY KEY,
    token        TEXT NOT NULL,
    digest       TEXT NOT NULL
)
"""

_PRECHECK = """
SELECT count(*), count(p.member_id),
       COALESCE(max(p.outcome = 'failed'
                    OR (p.outcome = 'reset' AND NOT p.sessions_revoked)
                    OR (p.outcome IN ('reset', 'requested') AND NOT p.notified
                        AND COALESCE(p.reason, '') NOT LIKE '%no_channel%')), 0)
FROM plan_entries AS e
LEFT JOIN progress AS p ON p.plan_id = e.plan_id AND p.member_id = e.member_id
WHERE e.plan_id = :plan_id AND e.target_index >= :start AND e.target_index < :stop
"""
"""The chunk's targets stored as plan entries, how many have progress, and whether
any of those is unfinished."""

_FILL = f"""
INSERT INTO temp.bulk_chunk
    (target_index, member_id, login_id, name, personal_email, mobile_phone, locale, reason)
SELECT target_index, member_id, CASE WHEN reason IS NULL THEN login_id ELSE planned_login END,
       name, personal_email, mobile_phone, locale, reason
FROM (
    SELECT e.target_index, e.member_id, e.login_id AS planned_login, m.login_id, m.name,
           m.personal_email, m.mobile_phone, m.locale, {EXCLUSION_CASE} AS reason
    FROM plan_entries AS e LEFT JOIN members AS m ON m.member_id = e.member_id
    WHERE e.plan_id = :plan_id AND e.target_index >= :start AND e.target_index < :stop
      AND NOT EXISTS (SELECT 1 FROM progress AS p
                      WHERE p.plan_id = e.plan_id AND p.member_id = e.member_id)
)
ORDER BY target_index
"""

_CREDENTIALS = CREDENTIAL_WRITE.format(
    rows="SELECT member_id, NULL, :plan_id, :must_change, 1, :at, :at, :temporary_until\n"
    "FROM temp.bulk_chunk WHERE reason IS NULL ORDER BY target_index"
)

_SUPERSEDE_TOKENS = """
UPDATE tokens SET revoked_at = :at
WHERE member_id IN (SELECT member_id FROM temp.bulk_chunk WHERE reason IS NULL)
  AND used_at IS NULL AND revoked_at IS NULL
  AND digest NOT IN (SELECT digest FROM temp.bulk_tokens)
"""

_TOKENS = """
INSERT OR IGNORE INTO tokens
    (digest, member_id, plan_id, issued_at, expires_at, generation, used_at, revoked_at)
SELECT t.digest, b.member_id, :plan_id, :at, :expires,
       COALESCE((SELECT generation FROM credentials AS c WHERE c.member_id = b.member_id), 0),
       NULL, NULL
FROM temp.bulk_tokens AS t JOIN temp.bulk_chunk AS b ON b.target_index = t.target_index
ORDER BY t.target_index
"""

_PROGRESS = f"""
INSERT INTO progress
    (plan_id, member_id, outcome, reason, sessions_revoked, notified, login_id, at, attempted_at)
SELECT :plan_id, member_id,
       CASE WHEN reason IS NULL THEN :outcome ELSE 'excluded' END,
       CASE WHEN reason IS NOT NULL THEN reason
            WHEN :force AND NOT {_HAS_CHANNEL} THEN '{NO_CHANNEL}' END,
       CASE WHEN reason IS NULL THEN :force ELSE 0 END,
       CASE WHEN reason IS NULL AND NOT (:force AND NOT {_HAS_CHANNEL}) THEN 1 ELSE 0 END,
       login_id,
       :at, NULL
FROM temp.bulk_chunk ORDER BY target_index
"""

_EFFECT_EVENTS = f"""
INSERT INTO audit (at, action, actor, plan_id, member_id, detail)
SELECT :at,
       CASE WHEN reason IS NULL THEN :action ELSE 'member.excluded' END,
       :actor, :plan_id, member_id,
       CASE WHEN reason IS NOT NULL THEN 'at apply: ' || reason
            WHEN :force AND NOT {_HAS_CHANNEL} THEN :detail_no_channel
            ELSE :detail END
FROM temp.bulk_chunk ORDER BY target_index
"""

_NOTICE_COLUMNS = (
    "member_id, kind, token, password, expires_at, idempotency_key, recipient, actor, "
    "issued_at, plan_id, name, locale, phone"
)


_RESET_NOTICES = f"""
SELECT target_index AS ord, 0 AS k, member_id, '{NoticeKind.PASSWORD_RESET.value}' AS kind,
       NULL AS token, :password AS password, NULL AS expires_at,
       :plan_id || ':' || member_id || ':{NoticeKind.PASSWORD_RESET.value}' AS idempotency_key,
       NULLIF(personal_email, '') AS recipient,
       :actor AS actor, :at AS issued_at, :plan_id AS plan_id, name, locale,
       NULLIF(mobile_phone, '') AS phone
FROM temp.bulk_chunk WHERE reason IS NULL AND {_HAS_CHANNEL}
"""

_REQUEST_NOTICES = f"""
SELECT b.target_index AS ord, 1 AS k, b.member_id, '{NoticeKind.CHANGE_REQUEST.value}' AS kind,
       t.token, NULL AS password, :expires AS expires_at,
       :plan_id || ':' || b.member_id || ':{NoticeKind.CHANGE_REQUEST.value}' AS idempotency_key,
       b.login_id AS recipient, :actor AS actor, :at AS issued_at, :plan_id AS plan_id, b.name,
       b.locale, NULLIF(b.mobile_phone, '') AS phone
FROM temp.bulk_tokens AS t JOIN temp.bulk_chunk AS b ON b.target_index = t.target_index
"""


def notices_sql(*, reset: bool, request: bool) -> str:
    """The chunk's notices in plan order, a member's password reset before their request.

    Only the kinds the plan sends are read (a force change alone needs no
    sort: the chunk's rowid order is already plan order).
    """
    parts = [
        sql for sql, wanted in ((_RESET_NOTICES, reset), (_REQUEST_NOTICES, request)) if wanted
    ]
    order = "ORDER BY ord, k" if len(parts) > 1 else "ORDER BY ord"
    return f"SELECT {_NOTICE_COLUMNS} FROM ({' UNION ALL '.join(parts)}) {order}"


_TALLY = """
SELECT p.outcome, count(*) FROM plan_entries AS e
JOIN progress AS p ON p.plan_id = e.plan_id AND p.member_id = e.member_id
WHERE e.plan_id = :plan_id AND e.target_index >= :start AND e.target_index < :stop
GROUP BY p.outcome
"""


class ChunkNotices(Sequence[Notice]):
    """The notices of a chunk being applied, read from the chunk's table when first used.

    What :meth:`SqliteOutbox.send` receives from a set-based apply: the
    outbox of the same database copies them with one ``INSERT … SELECT``;
    any other reader sees ordinary :class:`~bulkreset.Notice` objects. They
    can be read only while the chunk's transaction is open (during ``send``):
    copy them (``list(notices)``) to keep them; reading them later raises
    :class:`~bulkreset.errors.StorageError` rather than give another chunk's.
    """

    def __init__(
        self, conn: sqlite3.Connection, sql: str, params: dict[str, Any], count: int
    ) -> None:
        self.conn = conn
        self._sql = sql
        self._params = params  # holds a delivered password: private, never shown
        self._count = count
        self._notices: list[Notice] | None = None
        self._open = True

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Notice: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Notice]: ...

    def __getitem__(self, index: int | slice) -> Notice | Sequence[Notice]:
        return self._read()[index]

    def __iter__(self) -> Iterator[Notice]:
        return iter(self._read())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._read() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence: compared by content

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (self._read(),))  # pickled or copied, it is a plain list

    def __repr__(self) -> str:
        return f"<{self._count} notice(s) of plan {self._params['plan_id']}>"

    def _read(self) -> list[Notice]:
        if self._notices is None:
            if not self._open:
                raise StorageError(
                    "these notices could be read only during send(); copy them to keep them"
                )
            from .sqlite import notice_from_row  # the outbox's own row codec

            rows = self.conn.execute(self._sql, self._params).fetchall()
            self._notices = [notice_from_row(row) for row in rows]
        return self._notices

    def close(self) -> None:
        """The chunk's transaction ends: unread notices can no longer be read."""
        self._open = False

    def copy_into_outbox(self, conn: sqlite3.Connection, created_at: str) -> None:
        """Queue these notices in the outbox of *conn* (the chunk's own database)."""
        conn.execute(
            "INSERT OR IGNORE INTO outbox "
            f"({_NOTICE_COLUMNS}, created_at) "
            f"SELECT n.*, :created FROM ({self._sql}) AS n",
            {**self._params, "created": created_at},
        )


def apply_chunk(
    conn: sqlite3.Connection, request: ChunkRequest
) -> tuple[dict[Outcome, int], int] | None:
    """Apply the chunk inside the caller's open transaction on *conn*.

    Returns the chunk's outcome counts and the audit ``seq`` before the
    chunk's first event, or ``None`` (nothing written) when an earlier apply
    left a member of the chunk unfinished: the port-by-port path finishes it.
    """
    settings = request.settings
    force = settings.mode is ResetMode.FORCE_CHANGE
    sends_request = not force or settings.follow_with_request
    at = to_iso(request.at)
    span = {"plan_id": request.plan_id, "start": request.start, "stop": request.stop}
    entries, finished, unfinished = conn.execute(_PRECHECK, span).fetchone()
    if entries != request.stop - request.start or unfinished:
        return None  # a plan stored before schema version 4, or work left half done
    (before,) = conn.execute("SELECT COALESCE(max(seq), 0) FROM audit").fetchone()
    conn.execute(_CHUNK_TABLE)
    conn.execute(_TOKEN_TABLE)
    conn.execute("DELETE FROM temp.bulk_chunk")
    conn.execute("DELETE FROM temp.bulk_tokens")
    params = {
        **span,
        **rule_params(settings, request.actor.member_id, request.actor.role),
        "at": at,
        "must_change": int(settings.require_change_at_next_login),
        "temporary_until": _iso_or_none(settings.temporary_password_expiry(request.at)),
        "expires": to_iso(request.at + settings.request_ttl),
    }
    try:
        conn.execute(_FILL, params)
        rows = conn.execute(
            f"SELECT target_index, member_id, {_HAS_CHANNEL} FROM temp.bulk_chunk "
            "WHERE reason IS NULL ORDER BY target_index"
        ).fetchall()
        due = [(index, member_id) for index, member_id, _ in rows]
        reachable = sum(1 for *_, channel in rows if channel)
        if sends_request and due:
            derive = request.token
            assert derive is not None
            conn.executemany(
                "INSERT INTO temp.bulk_tokens (target_index, token, digest) VALUES (?, ?, ?)",
                [
                    (index, token, token_digest(token))
                    for index, token in ((i, derive(member_id)) for i, member_id in due)
                ],
            )
        if force:
            conn.execute(_CREDENTIALS, params)
        if sends_request and due:
            conn.execute(_SUPERSEDE_TOKENS, params)
            conn.execute(_TOKENS, params)
        conn.execute(
            _PROGRESS,
            {
                **params,
                "outcome": (Outcome.RESET if force else Outcome.REQUESTED).value,
                "force": int(force),
            },
        )
        kinds = ([NoticeKind.PASSWORD_RESET.value] if force else []) + (
            [NoticeKind.CHANGE_REQUEST.value] if sends_request else []
        )
        if due:
            if force:
                request.sessions.revoke([member_id for _, member_id in due], request.at)
            notices = ChunkNotices(
                conn,
                notices_sql(reset=force, request=sends_request),
                {
                    "plan_id": request.plan_id,
                    "password": request.password if force else None,
                    "actor": request.actor.member_id,
                    "at": at,
                    "expires": params["expires"],
                },
                (reachable if force else 0) + (len(due) if sends_request else 0),
            )
            try:
                request.notifier.send(notices)
            finally:
                notices.close()
        conn.execute(
            _EFFECT_EVENTS,
            {
                "at": at,
                "actor": request.actor.member_id,
                "plan_id": request.plan_id,
                "action": "member.reset" if force else "member.requested",
                "detail": AuditEvent.folded_detail(sessions_revoked=force, notices=kinds),
                "detail_no_channel": AuditEvent.folded_detail(
                    sessions_revoked=force, notices=kinds[1:]
                ),
                "force": int(force),
            },
        )
        if not finished:  # the usual case: all new here
            filled = request.stop - request.start
            counts = {
                outcome: n
                for outcome, n in (
                    (Outcome.RESET if force else Outcome.REQUESTED, len(due)),
                    (Outcome.EXCLUDED, filled - len(due)),
                )
                if n
            }
        else:  # resumed: some finished in an earlier apply
            counts = {Outcome(o): n for o, n in conn.execute(_TALLY, span)}
    finally:
        conn.execute("DELETE FROM temp.bulk_chunk")
        conn.execute("DELETE FROM temp.bulk_tokens")  # the tokens go now
    return counts, before
