"""Audit log export: JSON Lines or CSV, filtered by time and member. Never a secret.

Columns (and JSON keys): ``at`` (ISO 8601, UTC), ``action``, ``actor``,
``plan_id``, ``member_id``, ``detail``. Audit events hold no secret (SPEC §5),
and the CSV neutralizes cells a spreadsheet would run as formulas
(:func:`bulkreset._report.safe_cell`, OWASP "CSV Injection").
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Literal, TextIO

from ._clock import to_utc
from ._model import AuditEvent
from ._report import safe_cell
from .errors import InvalidInputError

__all__ = ["AUDIT_COLUMNS", "AUDIT_FORMATS", "select_events", "write_audit"]

AUDIT_COLUMNS = ("at", "action", "actor", "plan_id", "member_id", "detail")
"""The export's columns, in order."""

AUDIT_FORMATS = ("jsonl", "csv")

AuditFormat = Literal["jsonl", "csv"]


def select_events(
    events: Iterable[AuditEvent],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterable[AuditEvent]:
    """The events at or after *since* and before *until* (aware datetimes).

    Raises:
        InvalidInputError: a bound is naive or not a datetime, or *until* is
            not after *since*.
    """
    try:
        low = None if since is None else to_utc(_datetime(since, "since"), what="since")
        high = None if until is None else to_utc(_datetime(until, "until"), what="until")
    except OverflowError:
        raise InvalidInputError("since and until must be times in UTC's range") from None
    if low is not None and high is not None and high <= low:
        raise InvalidInputError("until must be after since")
    return (e for e in events if (low is None or e.at >= low) and (high is None or e.at < high))


def _datetime(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be an aware datetime")
    return value


def write_audit(
    events: Iterable[AuditEvent], out: TextIO, *, format: AuditFormat, ascii_only: bool = False
) -> int:
    """Write *events* to the text stream *out*; returns how many.

    ``jsonl``: one JSON object a line (UTF-8 text; with *ascii_only*, every
    non-ASCII character as a ``\\uXXXX`` escape, for a stream that is not UTF-8).
    ``csv``: a header row, then one row an event, ``\\r\\n`` line ends (open
    files with ``newline=""``), formula-like cells quoted.

    Raises:
        InvalidInputError: *format* is neither ``"jsonl"`` nor ``"csv"``.
        OSError: *out* cannot be written.
    """
    if format not in AUDIT_FORMATS:
        raise InvalidInputError(f"format is one of {', '.join(AUDIT_FORMATS)}, not {format!r}")
    count = 0
    if format == "csv":
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(AUDIT_COLUMNS)
        for event in events:
            writer.writerow([safe_cell(value or "") for value in _values(event)])
            count += 1
        return count
    for event in events:
        row = dict(zip(AUDIT_COLUMNS, _values(event), strict=True))
        out.write(json.dumps(row, ensure_ascii=ascii_only))
        out.write("\n")
        count += 1
    return count


def _values(event: AuditEvent) -> tuple[str | None, ...]:
    return (
        event.at.isoformat(),
        event.action,
        event.actor,
        event.plan_id,
        event.member_id,
        event.detail,
    )
