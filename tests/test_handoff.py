"""Hand-off files: new, owner-only, formula-safe CSV of temporary passwords (issue 4)."""

from __future__ import annotations

import csv
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkreset._handoff import COLUMNS, write_handoff
from bulkreset._hashing import generate_password
from bulkreset.errors import InvalidInputError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")

ROWS = [
    ("m1", "ada@example.org", "Kq7fz-aT3Mx-9hRbw-e4NpY"),
    ("m2", "grace@example.org", 'with "quotes", commas'),
    ("m3", "名前@example.org", "ünïcode pässwörd 42"),
]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def test_content_round_trips_with_csv(tmp_path: Path) -> None:
    """A header, then each row exactly as given; the row count is returned."""
    path = tmp_path / "handoff.csv"
    assert 3 == write_handoff(path, ROWS)
    assert [list(COLUMNS), *map(list, ROWS)] == read_csv(path)
    assert path.read_bytes().endswith(b"\r\n")


def test_a_generator_of_generated_passwords_is_written(tmp_path: Path) -> None:
    """Rows may be streamed; 500 generated passwords come back intact."""
    passwords = [generate_password() for _ in range(500)]
    rows = ((f"m{i}", f"user{i}", pw) for i, pw in enumerate(passwords))
    path = tmp_path / "handoff.csv"
    assert 500 == write_handoff(str(path), rows)
    assert passwords == [row[2] for row in read_csv(path)[1:]]


def test_no_rows_writes_only_the_header(tmp_path: Path) -> None:
    """An empty hand-off still has its header; the count is 0."""
    path = tmp_path / "handoff.csv"
    assert 0 == write_handoff(path, [])
    assert [list(COLUMNS)] == read_csv(path)


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_file_is_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Mode 0o600 even under a permissive umask: created so, never chmod-ed later."""
    path = tmp_path / "handoff.csv"
    previous = os.umask(umask)
    try:
        write_handoff(path, ROWS)
    finally:
        os.umask(previous)
    assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)


def test_file_is_created_exclusively_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one os.open call asks for O_CREAT | O_EXCL | O_WRONLY and mode 0o600."""
    calls: list[tuple[Any, ...]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        calls.append((path, flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    write_handoff(tmp_path / "handoff.csv", ROWS)
    path, flags, mode = calls[0]
    assert tmp_path / "handoff.csv" == Path(path)
    wanted = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    assert wanted == flags & wanted
    assert 0o600 == mode


def test_an_existing_file_is_refused_untouched(tmp_path: Path) -> None:
    """An existing path raises InvalidInputError; its content and mode stay as they were."""
    path = tmp_path / "handoff.csv"
    path.write_text("precious\n", encoding="utf-8")
    os.chmod(path, 0o644)
    before = os.stat(path)
    with pytest.raises(InvalidInputError, match="already exists"):
        write_handoff(path, ROWS)
    after = os.stat(path)
    assert "precious\n" == path.read_text(encoding="utf-8")
    assert (before.st_mode, before.st_mtime_ns, before.st_size) == (
        after.st_mode,
        after.st_mtime_ns,
        after.st_size,
    )


@posix_only
def test_a_symbolic_link_is_refused_not_followed(tmp_path: Path) -> None:
    """A link at the path (even dangling) is refused; its target is not created."""
    target = tmp_path / "elsewhere.csv"
    link = tmp_path / "handoff.csv"
    link.symlink_to(target)
    with pytest.raises(InvalidInputError):
        write_handoff(link, ROWS)
    assert not target.exists()


def test_a_directory_or_missing_parent_is_refused(tmp_path: Path) -> None:
    """A directory at the path, or no such directory, raises InvalidInputError."""
    with pytest.raises(InvalidInputError):
        write_handoff(tmp_path, ROWS)
    with pytest.raises(InvalidInputError, match="no directory"):
        write_handoff(tmp_path / "missing" / "handoff.csv", ROWS)


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_like_ids_get_a_quote(tmp_path: Path, cell: str) -> None:
    """Member and login IDs starting with = + - @ tab or CR are prefixed with ' (OWASP)."""
    path = tmp_path / "handoff.csv"
    write_handoff(path, [(cell, cell, "Kq7fz-aT3Mx-9hRbw-e4NpY")])
    assert ["'" + cell, "'" + cell, "Kq7fz-aT3Mx-9hRbw-e4NpY"] == read_csv(path)[1]


@pytest.mark.parametrize("password", ["=HYPERLINK(x)", "+1", "-abc", "@x", "\tx", "\rx", ""])
def test_a_formula_like_password_is_refused_and_nothing_is_left(
    tmp_path: Path, password: str
) -> None:
    """Quoting would change the password, so it is refused, unnamed; no file is left."""
    path = tmp_path / "handoff.csv"
    rows = [ROWS[0], ("m9", "eve@example.org", password)]
    with pytest.raises(InvalidInputError, match="row 2") as caught:
        write_handoff(path, rows)
    assert not password or password not in str(caught.value)
    assert not path.exists()


@pytest.mark.parametrize("row", [("m1", "a"), ("m1", "a", "b", "c"), ("m1", None, "pw-x"), "abc"])
def test_a_malformed_row_is_refused_and_nothing_is_left(tmp_path: Path, row: Any) -> None:
    """A row that is not three strings raises InvalidInputError; the new file is removed."""
    path = tmp_path / "handoff.csv"
    with pytest.raises(InvalidInputError, match="row 1"):
        write_handoff(path, [row])
    assert not path.exists()


def test_a_failing_row_source_leaves_nothing(tmp_path: Path) -> None:
    """An error raised by the rows' generator propagates and the partial file is deleted."""
    path = tmp_path / "handoff.csv"

    def rows() -> Iterator[tuple[str, str, str]]:
        yield ROWS[0]
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError, match="store went away"):
        write_handoff(path, rows())
    assert not path.exists()


def test_data_is_fsynced_before_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The complete file is fsync-ed while still open, then its directory."""
    synced: list[tuple[bool, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        status = os.fstat(fd)
        synced.append((stat.S_ISREG(status.st_mode), status.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "handoff.csv"
    write_handoff(path, ROWS)
    assert (True, path.stat().st_size) == synced[0]
    if sys.platform != "win32":
        assert not synced[1][0]  # the directory
