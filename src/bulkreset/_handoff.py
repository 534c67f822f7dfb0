"""Hand-off files: per-member temporary passwords for an administrator to pass on.

A hand-off file **holds secrets in clear text**: every listed member's
temporary password. It exists so that an administrator can hand each member
their password out of band (in person, on paper, through a channel the
organization trusts) when no notifier delivers it. Treat it like the
passwords themselves:

* it is created new, readable and writable by its owner only (mode
  ``0o600`` on POSIX), and never replaces an existing file;
* keep it off shared drives, mail and chat, and out of backups and version
  control;
* delete it (securely where the storage allows) as soon as the passwords
  are handed over; the members must change them at first sign-in anyway
  (``FORCE_CHANGE``).

OWASP ASVS 4.0.3 2.5.1 warns against sending passwords in clear text; this
file is the deliberate, documented exception, and it is never written unless
asked for.

Format: UTF-8 CSV, ``\\r\\n`` line ends, a header row :data:`COLUMNS`, then
one row per member. Member and login IDs starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return get a leading ``'`` so a spreadsheet shows
them as text (OWASP "CSV Injection", :func:`bulkreset._report.safe_cell`).
A password cannot be quoted that way without changing it, so a password
starting with one of those characters is refused instead
(:func:`~bulkreset._hashing.generate_password` never makes one).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from ._report import safe_cell
from .errors import InvalidInputError

__all__ = ["COLUMNS", "HandoffFile", "write_handoff"]

COLUMNS = ("member_id", "login_id", "temporary_password")
"""The hand-off file's columns, in order."""

_MODE = 0o600
"""Owner read and write, nobody else (the process's umask can only narrow it)."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)


class HandoffFile:
    """A new hand-off file, created owner-only before anything else happens.

    ``ResetService.apply`` creates it first, so a file that cannot be created
    (a taken name, a missing or read-only directory, a name too long) is
    refused before any member is reset; it writes the rows once the apply is
    done, or deletes the empty file if the apply fails.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path, fd = _create(path)
        self._fd: int | None = fd

    def write(self, rows: Iterable[tuple[str, str, str]]) -> int:
        """Write the header and *rows*, fsync, close; return the number of rows.

        Raises:
            InvalidInputError: a row is malformed (see :func:`write_handoff`);
                the file is deleted.
            OSError: writing failed; the file is deleted.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            raise InvalidInputError("the hand-off file was already written or discarded")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\r\n")
                writer.writerow(COLUMNS)
                count = 0
                for count, row in enumerate(rows, start=1):
                    writer.writerow(_cells(count, row))
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        _fsync_directory(self.path.parent)
        return count

    def discard(self) -> None:
        """Close and delete the file if it was not written."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            self.path.unlink(missing_ok=True)


def _create(path: str | os.PathLike[str]) -> tuple[Path, int]:
    try:
        target = Path(path)
        fd = os.open(target, _FLAGS, _MODE)
    except FileExistsError:
        raise InvalidInputError(
            f"{str(path)!r:.120} already exists; a hand-off file is always new"
        ) from None
    except FileNotFoundError:
        raise InvalidInputError(
            f"no directory {str(Path(path).parent)!r:.120} for the hand-off file"
        ) from None
    except (TypeError, ValueError):
        raise InvalidInputError("the hand-off file name is not usable") from None
    except OSError as exc:
        raise InvalidInputError(
            f"cannot create the hand-off file {str(path)!r:.120}: {exc.strerror or exc}"
        ) from None
    return target, fd


def write_handoff(path: str | os.PathLike[str], rows: Iterable[tuple[str, str, str]]) -> int:
    """Write a new hand-off file of ``(member_id, login_id, temporary password)`` rows.

    The file is created and opened in one step with
    ``os.open(path, O_CREAT | O_EXCL | O_WRONLY, 0o600)``: it never exists
    with wider permissions, not even for an instant (no create-then-chmod),
    an existing file is never overwritten or truncated, and a symbolic link
    at *path* is refused rather than followed. Rows are written as *rows* is
    iterated (it may be a generator); the data is flushed and ``fsync``-ed
    before the file is closed, and the directory entry is ``fsync``-ed
    after, so a hand-off reported written survives a power cut. If anything
    fails after the file was created, the file is deleted: nothing partial
    is left behind.

    The file holds secrets and must be deleted once the passwords are handed
    over (see the module's notes).

    Args:
        path: Where to write; must not exist yet, and its directory must.
        rows: ``(member_id, login_id, temporary_password)`` per member, in
            the order wanted in the file. IDs are made formula-safe; the
            password is written exactly as given.

    Returns:
        The number of member rows written (the header not counted).

    Raises:
        InvalidInputError: *path* exists (also a directory or a link), its
            directory does not, or it cannot be created (a name too long, a
            NUL, a read-only place); a row is not three strings; a password
            is empty or starts with a formula character (``=``, ``+``, ``-``,
            ``@``, tab, carriage return). The message names the row, never
            the password. The existing file, if any, is left untouched.
        OSError: the file cannot be written (disk full); nothing is left behind.
    """
    return HandoffFile(path).write(rows)


def _cells(number: int, row: tuple[str, str, str]) -> tuple[str, str, str]:
    if not isinstance(row, (tuple, list)) or len(row) != 3 or not all(map(_is_str, row)):
        raise InvalidInputError(
            f"hand-off row {number} must be (member_id, login_id, password) strings"
        )
    member_id, login_id, password = row
    if not password or password.startswith(_FORMULA_STARTS):
        raise InvalidInputError(
            f"hand-off row {number} (member {member_id!r:.80}): the password is empty or "
            "starts with a character a spreadsheet would run as a formula"
        )
    return safe_cell(member_id), safe_cell(login_id), password


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)
