"""Read member files (CSV) into :class:`~bulkreset.Member` objects. No database I/O.

Two formats:

* ``native``: the header ``member_id,login_id,name,sign_in,mobile_phone,
  personal_email,status,role`` (every column present; blank optional cells
  take the :class:`~bulkreset.Member` defaults), and optionally ``locale``
  (the member's language, ``ko`` or ``pt-BR``; blank is English).
* ``google-workspace``: a Google Workspace admin-console user export, read
  as it comes (its own header names, ``[Required]`` suffixes and all).

Rules for both (SPEC §8): UTF-8 with or without a byte order mark; every
cell (and header name) trimmed of surrounding whitespace; login IDs compared
by :func:`~bulkreset.fold_login` (NFKC, then Unicode case folding). Errors
name rows as a spreadsheet numbers them: the header is row 1, and a record
whose quoted cell spans several lines is still one row. Everything is
checked before anything is returned, so a caller that imports the result in
one ``store.add_members`` call imports all rows or none.
"""

from __future__ import annotations

import csv
import enum
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import attrs

from ._model import MEMBER_FIELDS, Member, MemberStatus, Role, SignInMethod, fold_login
from .errors import ImportFormatError, InvalidInputError

__all__ = [
    "FORMATS",
    "GOOGLE_COLUMNS",
    "NATIVE_COLUMNS",
    "load_members",
    "parse_members",
]

NATIVE_COLUMNS = tuple(field for field in MEMBER_FIELDS if field != "locale")
"""The native header, in the order ``shared/data/members.csv`` writes it (``locale``
is an optional extra column)."""

GOOGLE_EMAIL = "Email Address [Required]"
GOOGLE_FIRST = "First Name [Required]"
GOOGLE_LAST = "Last Name [Required]"
GOOGLE_STATUS = "Status [READ ONLY]"
GOOGLE_RECOVERY_EMAIL = "Recovery Email"
GOOGLE_HOME_EMAIL = "Home Secondary Email"
GOOGLE_RECOVERY_PHONE = "Recovery Phone [MUST BE IN THE E.164 FORMAT]"
GOOGLE_MOBILE = "Mobile Phone"
GOOGLE_EMPLOYEE_ID = "Employee ID"

GOOGLE_COLUMNS = (GOOGLE_FIRST, GOOGLE_LAST, GOOGLE_EMAIL, GOOGLE_STATUS)
"""The Google Workspace export columns an import needs; the others are optional."""

_GOOGLE_STATUS = {"Active": MemberStatus.ACTIVE, "Suspended": MemberStatus.SUSPENDED}

Row = Mapping[str, str]


def _choice(value: str, kind: type[enum.Enum], column: str) -> str:
    """Check an enum cell of the native format; blank means the default."""
    allowed = [m.value for m in kind]
    if value and value not in allowed:
        raise InvalidInputError(f"{column} must be one of {', '.join(allowed)}, not {value!r:.40}")
    return value


def _native_member(row: Row) -> Member:
    options: dict[str, str] = {}
    for column, kind in (("sign_in", SignInMethod), ("status", MemberStatus), ("role", Role)):
        value = _choice(row[column], kind, column)
        if value:
            options[column] = value
    return Member(
        member_id=row["member_id"],
        login_id=row["login_id"],
        name=row["name"],
        mobile_phone=row["mobile_phone"] or None,
        personal_email=row["personal_email"] or None,
        locale=row.get("locale") or None,
        **options,
    )


def _google_member(row: Row) -> Member:
    email = row[GOOGLE_EMAIL]
    status = _GOOGLE_STATUS.get(row[GOOGLE_STATUS])
    if status is None:
        choices = ", ".join(_GOOGLE_STATUS)
        raise InvalidInputError(
            f"{GOOGLE_STATUS} must be one of {choices}, not {row[GOOGLE_STATUS]!r:.40}"
        )
    name = " ".join(part for part in (row[GOOGLE_FIRST], row[GOOGLE_LAST]) if part)
    return Member(
        member_id=row.get(GOOGLE_EMPLOYEE_ID) or email,
        login_id=email,
        name=name,
        sign_in=SignInMethod.PASSWORD,
        mobile_phone=row.get(GOOGLE_RECOVERY_PHONE) or row.get(GOOGLE_MOBILE) or None,
        personal_email=row.get(GOOGLE_RECOVERY_EMAIL) or row.get(GOOGLE_HOME_EMAIL) or None,
        status=status,
        role=Role.MEMBER,
    )


@attrs.frozen
class _Format:
    columns: tuple[str, ...]
    required_cells: tuple[str, ...]
    build: Callable[[Row], Member]


FORMATS: dict[str, _Format] = {
    "native": _Format(NATIVE_COLUMNS, ("member_id", "login_id"), _native_member),
    "google-workspace": _Format(GOOGLE_COLUMNS, (GOOGLE_EMAIL, GOOGLE_STATUS), _google_member),
}
"""The formats :func:`parse_members` reads, by the name ``--format`` takes."""


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFormatError(
            f"the file is not UTF-8 text (invalid byte at line {line}, offset {exc.start})"
        ) from None


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(spreadsheet_row, trimmed_cells)`` for every record, blank ones skipped.

    A spreadsheet numbers records, not physical lines: a quoted cell holding
    line breaks still makes one row. Blank records still take a row number.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    row = 0
    while True:
        row += 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFormatError(f"malformed CSV ({exc})", row=row) from None
        cells = [cell.strip() for cell in cells]
        if any(cells):
            yield row, cells
        elif row == 1:
            raise ImportFormatError("the header row is blank", row=1)


def parse_members(
    data: bytes | str,
    *,
    format: str = "native",
    admins: Iterable[str] = (),
) -> list[Member]:
    """Read a member file and return its members, checking every row first.

    Args:
        data: The file's content: UTF-8 bytes (a byte order mark is
            allowed) or already decoded text.
        format: ``"native"`` or ``"google-workspace"`` (see the module docs).
        admins: Login IDs or member IDs of imported members to make
            ``ADMIN`` (a Google Workspace export has no roles, and planning
            needs an administrator). Login IDs match by
            :func:`~bulkreset.fold_login`; a ``SUPER_ADMIN`` stays one.

    Returns:
        The members, in file order.

    Raises:
        ImportFormatError: the file is not UTF-8, has no header or misses a
            column (``row=None``); or a row has an empty required cell, an
            unknown ``sign_in``/``status``/``role``, more cells than the
            header, a value :class:`~bulkreset.Member` refuses, or a login
            ID (by ``fold_login``) or member ID already used by an earlier
            row (``row`` is the spreadsheet row); or an ``admins`` entry
            matches no imported member.
    """
    spec = FORMATS.get(format)
    if spec is None:
        raise ImportFormatError(f"unknown format {format!r:.40}; use one of {', '.join(FORMATS)}")
    text = _decode(data) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    if "\x00" in text:
        raise ImportFormatError("the file holds NUL characters: not a CSV text file")
    records = _records(text)
    first = next(records, None)
    if first is None:
        raise ImportFormatError("the file is empty: expected a header row")
    _, header = first
    missing = [column for column in spec.columns if column not in header]
    if missing:
        hint = ""
        for other, other_spec in FORMATS.items():
            if other != format and all(column in header for column in other_spec.columns):
                hint = f" (it looks like a {other} file: use --format {other})"
        raise ImportFormatError(f"missing column(s): {', '.join(missing)}{hint}")
    repeated = sorted(c or "(blank)" for c, n in Counter(header).items() if n > 1)
    if repeated:  # counted once each: a huge header must not take quadratic time
        raise ImportFormatError(f"repeated column(s): {', '.join(repeated)}", row=1)
    members: list[Member] = []
    ids: dict[str, int] = {}
    logins: dict[str, int] = {}
    for row_number, cells in records:
        if len(cells) > len(header):
            raise ImportFormatError(
                f"{len(cells)} cells but the header has {len(header)}", row=row_number
            )
        row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        for column in spec.required_cells:
            if not row[column]:
                raise ImportFormatError(f"{column} is empty", row=row_number)
        try:
            member = spec.build(row)
        except InvalidInputError as exc:
            raise ImportFormatError(str(exc), row=row_number) from None
        if member.member_id in ids:
            raise ImportFormatError(
                f"member ID {member.member_id!r} is already used in row {ids[member.member_id]}",
                row=row_number,
            )
        if member.login_key in logins:
            raise ImportFormatError(
                f"login ID {member.login_id!r} is already used in row "
                f"{logins[member.login_key]} (login IDs ignore case)",
                row=row_number,
            )
        ids[member.member_id] = row_number
        logins[member.login_key] = row_number
        members.append(member)
    return _promote(members, admins)


def _promote(members: list[Member], admins: Iterable[str]) -> list[Member]:
    wanted = [a.strip() for a in admins]
    if not wanted:
        return members
    by_id = {m.member_id: i for i, m in enumerate(members)}
    by_login = {m.login_key: i for i, m in enumerate(members)}
    for admin in wanted:
        index = by_id.get(admin, by_login.get(fold_login(admin)))
        if index is None:
            raise ImportFormatError(f"--admin {admin!r:.60} matches no imported member")
        member = members[index]
        if member.role is Role.MEMBER:
            members[index] = attrs.evolve(member, role=Role.ADMIN)
    return members


def load_members(
    path: str | Path,
    *,
    format: str = "native",
    admins: Iterable[str] = (),
) -> list[Member]:
    """Read the member file at *path*; see :func:`parse_members`.

    Raises:
        ImportFormatError: see :func:`parse_members`; or *path* cannot be a
            file name (a NUL character, or text the file system cannot encode).
        OSError: the file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except ValueError:  # UnicodeEncodeError or "embedded null byte": no file has that name
        raise ImportFormatError(f"{str(path)!r:.120} cannot be a file name") from None
    return parse_members(data, format=format, admins=admins)
