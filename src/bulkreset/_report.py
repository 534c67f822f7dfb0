"""Apply reports: one row per selected member, as CSV or JSON. Never a secret.

Columns: ``member_id``, ``login_id``, ``outcome``, ``reason``,
``sessions_revoked``, ``notified``. A CSV cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is prefixed with ``'`` so a
spreadsheet shows it as text instead of running it as a formula (OWASP,
"CSV Injection").
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._model import ResetPlan, ResetResult
from .errors import InvalidInputError

__all__ = [
    "COLUMNS",
    "SUFFIXES",
    "check_report_path",
    "report_csv",
    "report_rows",
    "safe_cell",
    "write_report",
]

COLUMNS = ("member_id", "login_id", "outcome", "reason", "sessions_revoked", "notified")
"""The report's columns, in order."""

SUFFIXES = (".csv", ".json")
"""The file suffixes that choose the report's format."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_NAME_MAX = 255
_PATH_MAX = 4096
"""The longest file name and path (in bytes) common systems allow."""


def safe_cell(value: str) -> str:
    """Neutralize a CSV cell a spreadsheet would run as a formula (OWASP CSV Injection).

    A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return gets a leading single quote; any other cell is returned unchanged.
    """
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def report_rows(
    result: ResetResult,
    *,
    plan: ResetPlan | None = None,
    login_ids: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one row per selected member, in the result's order.

    Args:
        result: What ``apply`` returned.
        plan: The plan, to fill in the login IDs of its targets.
        login_ids: Member ID to login ID, for members neither the result nor
            the plan knows a login ID of (excluded members, typically).

    Yields:
        Dicts with the keys of :data:`COLUMNS`; ``reason`` is ``None`` when
        there is none; the two flags are ``bool``.
    """
    known: dict[str, str] = dict(login_ids or {})
    targets: dict[str, str] | None = None  # read from the plan only if an outcome needs it
    for outcome in result:
        login_id = outcome.login_id or known.get(outcome.member_id, "")
        if not login_id and plan is not None:
            if targets is None:
                targets = {m.member_id: m.login_id for m in plan.targets}
            login_id = targets.get(outcome.member_id, "")
        yield {
            "member_id": outcome.member_id,
            "login_id": login_id,
            "outcome": outcome.outcome.value,
            "reason": outcome.reason,
            "sessions_revoked": outcome.sessions_revoked,
            "notified": outcome.notified,
        }


def check_report_path(path: str | Path) -> Path:
    """Return *path* as a :class:`~pathlib.Path` if a report can be written there.

    Called before applying, so a report that could not be written is found
    out before anything changes.

    Raises:
        InvalidInputError: the suffix is not ``.csv`` or ``.json``, the
            directory does not exist, *path* is itself a directory, or no
            file can have that name (a NUL character, text the file system
            cannot encode, a name longer than the file system allows).
    """
    target = Path(path)
    if target.suffix.lower() not in SUFFIXES:
        raise InvalidInputError(f"the report must end in .csv or .json, not {target.name!r:.80}")
    try:
        encoded = os.fsencode(target)
    except UnicodeEncodeError:
        encoded = b"\0"
    if b"\0" in encoded:
        raise InvalidInputError(f"{str(target)!r:.120} cannot be a file name")
    if len(os.fsencode(target.name)) > _NAME_MAX or len(encoded) >= _PATH_MAX:
        raise InvalidInputError(
            f"the report's path is too long ({_NAME_MAX} bytes a name, {_PATH_MAX} in all)"
        )
    if not target.parent.is_dir():
        raise InvalidInputError(f"no directory {str(target.parent)!r:.120} for the report")
    if target.is_dir():
        raise InvalidInputError(f"{str(target)!r:.120} is a directory, not a report file")
    return target


def _csv_text(rows: Iterator[dict[str, Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        cells = []
        for column in COLUMNS:
            value = row[column]
            if isinstance(value, bool):
                cells.append("true" if value else "false")
            else:
                cells.append(safe_cell(value or ""))
        writer.writerow(cells)
    return buffer.getvalue()


def report_csv(
    result: ResetResult,
    *,
    plan: ResetPlan | None = None,
    login_ids: Mapping[str, str] | None = None,
) -> str:
    """The report as CSV text (what :func:`write_report` writes to a ``.csv`` file), for a
    web download, say: a header row, one row per selected member, formula-safe cells."""
    return _csv_text(report_rows(result, plan=plan, login_ids=login_ids))


def _json_text(result: ResetResult, rows: Iterator[dict[str, Any]]) -> str:
    document = {
        "plan_id": result.plan_id,
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "outcomes": {outcome.value: count for outcome, count in result.counts().items()},
        "rows": list(rows),
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def write_report(
    path: str | Path,
    result: ResetResult,
    *,
    plan: ResetPlan | None = None,
    login_ids: Mapping[str, str] | None = None,
) -> Path:
    """Write an apply report; the suffix (``.csv`` or ``.json``) picks the format.

    CSV: a header row, then one row per selected member (:data:`COLUMNS`),
    UTF-8, flags as ``true``/``false``, formula-like cells quoted
    (:func:`safe_cell`). JSON: one object with ``plan_id``, ``started_at``,
    ``finished_at`` (ISO 8601), ``outcomes`` (outcome value to count, zeros
    included) and ``rows`` (one object per selected member). The file is
    written to a temporary name and renamed, so a reader never sees half a
    report.

    Args:
        path: Where to write; an existing file is replaced.
        result: What ``apply`` returned.
        plan: The plan (for its targets' login IDs).
        login_ids: More member ID to login ID pairs (see :func:`report_rows`).

    Returns:
        The path written.

    Raises:
        InvalidInputError: see :func:`check_report_path`.
        OSError: the file cannot be written.
    """
    target = check_report_path(path)
    rows = report_rows(result, plan=plan, login_ids=login_ids)
    text = _csv_text(rows) if target.suffix.lower() == ".csv" else _json_text(result, rows)
    fd, temporary = tempfile.mkstemp(prefix=".bulkreset-report-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
