"""Bad input never corrupts state (issue 3): Hypothesis feeds hostile text everywhere.

Arbitrary Unicode (lone surrogates included), NUL and other control
characters, RTL marks and overrides, full-width forms and 1 MB strings go in
as member IDs, login IDs, names, passwords, tokens, plan IDs, confirmation
codes, actor IDs, CSV cells and file names, both to the service over the
SQLite store and to the command run in-process. The properties:

* the only exceptions that escape the library are ``BulkResetError`` subclasses;
* the command returns 0, 1 or 2 and never raises; 2 comes with exactly one
  line on standard error, starting ``bulkreset: error:``;
* after every rejected call (an exception, or exit status 2) every table of
  the store holds exactly the rows it held before (``SqliteStorage.dump()``);
  read-only calls leave them unchanged whatever they answer.

Every example works on a fresh copy of one template database.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import argon2
import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import bulkreset.cli as cli
from bulkreset import ALL, Member, NoticeKind, ResetPolicy, ResetService, fold_login
from bulkreset._importing import GOOGLE_COLUMNS, NATIVE_COLUMNS, load_members, parse_members
from bulkreset._passwords import normalize_password
from bulkreset.adapters.memory import MemoryStorage
from bulkreset.adapters.sqlite import SqliteStorage, open_service
from bulkreset.errors import BulkResetError, ImportFormatError, InvalidInputError

from .conftest import FakeClock, directory

T = TypeVar("T")

PASSWORD = "Harbor 42 lanterns"
FRESH = "a fresh passphrase 99"
MB = 1 << 20

# ---------------------------------------------------------------------- strategies

SPECIALS = (
    "\x00",
    "\x01",
    "\x1b[31m",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x7f",
    "\x85",
    "\u200e",
    "\u200f",
    "\u202e",
    "\u2066",
    "\u2028",
    "\u3000",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\ud800",
    "\udfff",
    "\udcff",
    "ａｄｍｉｎ",
    "Ｍ１",
    "ß",
    "İ",
    "ﬀ",
    "e\u0301",
    " ",
    ",",
    '"',
    "-",
    "#",
)
"""Characters (and short runs) known to trip text handling."""

HUGE = (
    "x" * MB,
    "\u202e" * MB,
    "\ud800" * MB,
    "ａ" * MB,
    "\x00" * MB,
    " " * MB,
    "é," * (MB // 2),
)
"""A few fixed 1 MB strings: generating them would be slow and shrink badly."""

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

ODD = st.sampled_from([None, 0, 1.5, b"bytes", ("tuple",), ["list"]])
"""Values of the wrong type, for the library's (annotated, but unchecked) API."""


def hostile(*valid: str, surrogates: bool = True) -> st.SearchStrategy[str]:
    """Arbitrary text, special characters, huge strings, and *valid* values dressed up."""
    specials = [s for s in SPECIALS if surrogates or not _LONE_SURROGATE.search(s)]
    huge = [s for s in HUGE if surrogates or not _LONE_SURROGATE.search(s)]
    pieces = [
        st.characters(exclude_categories=[] if surrogates else ["Cs"]),
        st.sampled_from(specials),
    ]
    if surrogates:  # rare among all code points: draw them on purpose too, and the
        # U+DC80-U+DCFF that stand for undecodable bytes in file names and argv (PEP 383)
        for low, high in ((0xD800, 0xDFFF), (0xDC80, 0xDCFF)):
            pieces.append(st.characters(min_codepoint=low, max_codepoint=high, categories=["Cs"]))
    arbitrary = st.lists(st.one_of(*pieces), max_size=12).map("".join)
    options = [arbitrary, st.sampled_from(huge)]
    if valid:
        exact = st.sampled_from(valid)
        options += [exact, st.tuples(arbitrary, exact, arbitrary).map("".join)]
    return st.one_of(*options)


def anything(*valid: str, surrogates: bool = True) -> st.SearchStrategy[Any]:
    """:func:`hostile` text or a value of the wrong type."""
    return st.one_of(hostile(*valid, surrogates=surrogates), ODD)


def usually(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 4
) -> st.SearchStrategy[Any]:
    """*common* *odds* times in *odds* + 1, else *rare*.

    (``one_of`` would not do: it flattens nested ``one_of`` branches, and
    Hypothesis shuns repeating a small set of values.)
    """
    return st.integers(0, odds).flatmap(lambda pick: rare if pick == 0 else common)


def mostly(*valid: str, odds: int = 4) -> st.SearchStrategy[str]:
    """One of *valid* *odds* times in *odds* + 1, else :func:`hostile` text."""
    return usually(st.sampled_from(valid), hostile(*valid), odds)


def mostly_any(*valid: str, surrogates: bool = True) -> st.SearchStrategy[Any]:
    """One of *valid* four times in five, else :func:`anything`."""
    return usually(st.sampled_from(valid), anything(*valid, surrogates=surrogates))


def now_and_then(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    """*strategy* one time in five, else ``None``."""
    return usually(st.none(), strategy)


def in_context_event(label: str) -> None:
    """Record a Hypothesis event (for --hypothesis-show-statistics) when inside a test."""
    if currently_in_test_context():
        event(label)


MEMBER_IDS = ("m1", "m2", "m3", "q1", "p1", "s1", "boss", "admin", "admin2", "nobody")
LOGINS = ("Mina.Kim@corp.example", "mina.kim@corp.example", "jun@corp.example", "new@corp.example")
EXAMINE = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------- the template


@attrs.frozen
class Template:
    """A database with members, passwords, a live token and a plan not yet applied."""

    path: Path
    plan_id: str
    confirmation: str
    token: str

    def codes(self) -> tuple[str, ...]:
        """The confirmation code as an administrator might type it."""
        code = self.confirmation
        return (code, code.lower(), code.replace("-", ""), " ".join(code), f" {code}\n")


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, cheap_hasher: argon2.PasswordHasher
) -> Template:
    """Build the template database once per module."""
    path = tmp_path_factory.mktemp("bad-input") / "template.db"
    clock = FakeClock()
    service = open_service(path, clock=clock, hasher=cheap_hasher, sleep=clock.sleep)
    try:
        service.store.add_members(directory())
        for member_id in ("admin", "m1", "m2", "m3", "s1"):
            service.set_password(member_id, PASSWORD)
        sent = service.plan(["m2"], ResetPolicy("request_change"), actor="admin")
        service.apply(sent, confirm=sent.confirmation)
        pending = service.notifier.pending()  # type: ignore[attr-defined]
        (token,) = [n.token for n in pending if n.kind is NoticeKind.CHANGE_REQUEST]
        waiting = service.plan(["m1", "m3", "nobody"], ResetPolicy("request_change"), actor="admin")
    finally:
        service.store.close()  # type: ignore[attr-defined]
    return Template(path, waiting.plan_id, waiting.confirmation, token)


@contextmanager
def copy_of(template: Template) -> Iterator[Path]:
    """A fresh copy of the template database, removed afterwards."""
    with tempfile.TemporaryDirectory() as directory_name:
        path = Path(directory_name) / "bulkreset.db"
        shutil.copyfile(template.path, path)
        yield path


@contextmanager
def service_on(template: Template, hasher: argon2.PasswordHasher) -> Iterator[ResetService]:
    """The service over a fresh copy of the template (fake clock, cheap Argon2)."""
    with copy_of(template) as path:
        clock = FakeClock()
        service = open_service(path, clock=clock, hasher=hasher, sleep=clock.sleep)
        try:
            yield service
        finally:
            service.store.close()  # type: ignore[attr-defined]


def dump(service: ResetService) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows."""
    store = service.store
    assert isinstance(store, SqliteStorage)
    return store.dump()


def attempt(service: ResetService, call: Callable[[], T], *, read_only: bool = False) -> T | None:
    """Make *call*; only a BulkResetError may escape, and a rejected call changes nothing.

    Returns what the call returned, or ``None`` when it was rejected.
    """
    before = dump(service)
    try:
        result = call()
    except BulkResetError as exc:
        in_context_event(f"rejected: {type(exc).__name__}")
        assert dump(service) == before, "a rejected call changed the store"
        return None
    in_context_event("accepted")
    if read_only:
        assert dump(service) == before, "a read-only call changed the store"
    return result


# ---------------------------------------------------------------------- the library


@EXAMINE
@given(
    data=st.data(),
    count=st.integers(min_value=1, max_value=3),
)
def test_members_are_checked_before_they_are_stored(
    template: Template, cheap_hasher: argon2.PasswordHasher, data: st.DataObject, count: int
) -> None:
    """Member(...) refuses bad fields; add_members stores all or, when rejected, nothing."""
    members: list[Member] = []
    for _ in range(count):
        fields = {
            "member_id": data.draw(mostly_any(*MEMBER_IDS, "n1", "n2")),
            "login_id": data.draw(mostly_any(*LOGINS)),
            "name": data.draw(mostly_any("Rina Ito", "")),
            "sign_in": data.draw(mostly_any("password", "quick_login")),
            "mobile_phone": data.draw(now_and_then(mostly_any("+821000000009", ""))),
            "personal_email": data.draw(now_and_then(mostly_any("rina@home.example"))),
            "status": data.draw(mostly_any("active", "suspended", "pending")),
            "role": data.draw(mostly_any("member", "admin", "super_admin")),
        }
        try:
            members.append(Member(**fields))
        except BulkResetError:
            continue
    with service_on(template, cheap_hasher) as service:
        store = service.store
        assert isinstance(store, SqliteStorage)
        if attempt(service, lambda: store.add_members(members)) is None and members:
            return
        stored = store.get_members([m.member_id for m in members])
        assert {m.member_id: m for m in members} == stored  # the last of a repeated ID wins


@EXAMINE
@given(
    selection=st.one_of(
        st.lists(mostly_any(*MEMBER_IDS), max_size=5),
        st.lists(mostly_any(*MEMBER_IDS), max_size=5),
        hostile(*MEMBER_IDS),  # one string, not a list of them
        st.just(ALL),
        ODD,
    ),
    mode=mostly_any("force_change", "request_change"),
    password=mostly_any(PASSWORD, FRESH),
    actor=mostly_any("admin", "boss", "admin2", "m1"),
    then_request=usually(st.just(False), st.just(True)),
    confuse=st.integers(0, 9),
)
def test_plan_rejects_bad_input_without_storing_anything(
    template: Template,
    cheap_hasher: argon2.PasswordHasher,
    selection: Any,
    mode: Any,
    password: Any,
    actor: Any,
    then_request: bool,
    confuse: int,
) -> None:
    """ResetPolicy(...) and plan(...) raise only BulkResetError, and store nothing when they do."""
    if mode == "request_change" and confuse:  # else a password given for request change
        password = None
    with service_on(template, cheap_hasher) as service:

        def make_plan() -> Any:
            policy = ResetPolicy(mode, new_password=password, follow_with_request=then_request)
            return service.plan(selection, policy, actor=actor)

        plan = attempt(service, make_plan)
        if plan is not None:
            assert service.load_plan(plan.plan_id) == plan


@EXAMINE
@given(data=st.data(), real_plan=st.booleans())
def test_apply_rejects_wrong_plans_and_codes_without_effect(
    template: Template, cheap_hasher: argon2.PasswordHasher, data: st.DataObject, real_plan: bool
) -> None:
    """apply(plan_id, confirm=...) with hostile IDs and codes is rejected without effect."""
    plan_id = template.plan_id if real_plan else data.draw(anything(template.plan_id))
    confirm = data.draw(st.one_of(mostly_any(*template.codes()), st.none()))
    with service_on(template, cheap_hasher) as service:
        result = attempt(service, lambda: service.apply(plan_id, confirm=confirm))
        if result is not None:
            assert result.plan_id == template.plan_id


@EXAMINE
@given(
    login=mostly_any("Mina.Kim@corp.example", "ADMIN@corp.example", "nobody@corp.example"),
    # Lone surrogates in passwords are left out here: see
    # test_authenticate_survives_a_lone_surrogate_password (a known bug).
    password=mostly_any(PASSWORD),
)
def test_authenticate_never_raises_and_changes_nothing(
    template: Template, cheap_hasher: argon2.PasswordHasher, login: Any, password: Any
) -> None:
    """authenticate(hostile login, hostile password) answers, and never writes."""
    with service_on(template, cheap_hasher) as service:
        result = attempt(service, lambda: service.authenticate(login, password), read_only=True)
        assert result is not None, "authenticate answers, it does not raise"
        right = (
            isinstance(login, str)
            and fold_login(login) in ("mina.kim@corp.example", "admin@corp.example")
            and isinstance(password, str)
            and normalize_password(password) == PASSWORD
        )
        assert right == result.ok
        in_context_event(f"ok={result.ok}")


@EXAMINE
@given(
    member_id=mostly_any("m1", "m2", "p1", "q1", "nobody"),
    # Lone surrogates left out of the current password: see
    # test_change_password_survives_a_lone_surrogate_password (a known bug).
    current=mostly_any(PASSWORD),
    new=mostly_any(FRESH, PASSWORD),
)
def test_change_password_rejects_bad_input_without_effect(
    template: Template, cheap_hasher: argon2.PasswordHasher, member_id: Any, current: Any, new: Any
) -> None:
    """change_password raises only BulkResetError and changes nothing when it does."""
    with service_on(template, cheap_hasher) as service:
        attempt(service, lambda: service.change_password(member_id, current, new))


@EXAMINE
@given(
    member_id=mostly_any("m1", "q1", "p1", "nobody"),
    password=mostly_any(FRESH),
    must_change=st.booleans(),
)
def test_set_password_rejects_bad_input_without_effect(
    template: Template,
    cheap_hasher: argon2.PasswordHasher,
    member_id: Any,
    password: Any,
    must_change: bool,
) -> None:
    """set_password raises only BulkResetError and changes nothing when it does."""
    with service_on(template, cheap_hasher) as service:
        attempt(service, lambda: service.set_password(member_id, password, must_change=must_change))


@EXAMINE
@given(data=st.data(), real_token=st.booleans())
def test_tokens_reject_bad_input_without_effect(
    template: Template, cheap_hasher: argon2.PasswordHasher, data: st.DataObject, real_token: bool
) -> None:
    """check_token never writes; redeem raises only BulkResetError, without effect."""
    token = template.token if real_token else data.draw(anything(template.token))
    password = data.draw(mostly_any(FRESH, PASSWORD))
    with service_on(template, cheap_hasher) as service:
        checked = attempt(service, lambda: service.check_token(token), read_only=True)
        assert (checked is not None) == (token == template.token)
        redeemed = attempt(service, lambda: service.redeem(token, password))
        if redeemed is not None:
            assert "m2" == redeemed


@EXAMINE
@given(
    plan_id=anything("plan-0000000000000000"),
    member_id=anything(*MEMBER_IDS),
    issued_at=st.one_of(
        st.datetimes(timezones=st.just(timezone.utc)),
        st.datetimes(),  # naive: refused
        ODD,
    ),
)
def test_lookups_never_write(
    template: Template,
    cheap_hasher: argon2.PasswordHasher,
    plan_id: Any,
    member_id: Any,
    issued_at: Any,
) -> None:
    """load_plan and session_is_valid raise only BulkResetError and never change the store."""
    with service_on(template, cheap_hasher) as service:
        assert attempt(service, lambda: service.load_plan(plan_id), read_only=True) is None
        assert attempt(service, lambda: service.load_plan(template.plan_id), read_only=True)
        attempt(service, lambda: service.session_is_valid(member_id, issued_at), read_only=True)


# ---------------------------------------------------------------------- the command


@attrs.frozen
class Ran:
    """What one in-process run of the command did."""

    code: int
    out: str
    err: str


def run_command(argv: list[str], hasher: argon2.PasswordHasher, *, stdin: bytes = b"") -> Ran:
    """Run ``cli.main(argv)`` with cheap Argon2, *stdin*, and captured output.

    Standard output is strict UTF-8 (as on a UTF-8 terminal, where text that
    cannot be encoded raises); standard error escapes what it cannot encode,
    as Python's own does.
    """
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(
        io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    given_stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")

    def cheap(path: Path) -> ResetService:
        return open_service(path, hasher=hasher)

    with (
        mock.patch.object(cli, "_connect", cheap),
        mock.patch.object(sys, "stdout", out),
        mock.patch.object(sys, "stderr", err),
        mock.patch.object(sys, "stdin", given_stdin),
    ):
        code = cli.main(argv)
    return Ran(
        code,
        out.buffer.getvalue().decode("utf-8"),
        err.buffer.getvalue().decode("utf-8"),
    )


def dump_file(path: Path) -> dict[str, list[tuple[Any, ...]]] | None:
    """Every table's rows of the database at *path* (``None`` when there is no file)."""
    if not path.exists():
        return None
    with SqliteStorage(path) as store:
        return store.dump()


def check_command(
    argv: list[str], db: Path, hasher: argon2.PasswordHasher, *, stdin: bytes = b""
) -> Ran:
    """Run the command; check its exit status, its one-line errors and, on 2, the store."""
    before = dump_file(db)
    ran = run_command(argv, hasher, stdin=stdin)
    assert ran.code in (0, 1, 2), ran
    in_context_event(f"exit {ran.code}")
    if ran.code == 2:
        assert ran.err.startswith("bulkreset: error: "), ran.err
        assert ran.err.endswith("\n")
        assert 1 == ran.err.count("\n"), ran.err
        assert dump_file(db) == before, "a rejected command changed the store"
    assert "Traceback" not in ran.err
    return ran


def encode(text: str) -> bytes:
    """UTF-8, except that lone surrogates become the (invalid) bytes they would be."""
    return text.encode("utf-8", "surrogatepass")


CSV_CELLS = {
    "member_id": ("n{row}", "n{row}", "m1"),
    "login_id": ("n{row}@corp.example", "N{row}@corp.example", "MINA.KIM@corp.example"),
    "name": ("Rina Ito", ""),
    "sign_in": ("password", "quick_login", ""),
    "mobile_phone": ("+821000000009", ""),
    "personal_email": ("rina@home.example", ""),
    "status": ("active", "suspended", "pending", ""),
    "role": ("member", "admin", ""),
    "First Name [Required]": ("Rina",),
    "Last Name [Required]": ("Ito", ""),
    "Email Address [Required]": ("g{row}@corp.example", "G{row}@corp.example"),
    "Status [READ ONLY]": ("Active", "Suspended"),
    "Employee ID": ("e{row}", ""),
}
"""Good cells by column (``{row}`` makes IDs differ from row to row)."""


@st.composite
def csv_files(draw: st.DrawFn, columns: tuple[str, ...]) -> bytes:
    """A member file: mostly well-formed cells, hostile ones, then maybe corrupted bytes."""
    header = draw(
        st.one_of(
            st.just(list(columns)),
            st.just(list(columns)),
            st.permutations(columns).map(list),
            st.lists(mostly(*columns), max_size=len(columns) + 2),
        )
    )
    rows = []
    for row in range(draw(st.integers(1, 3))):
        good = {c: [v.format(row=row) for v in CSV_CELLS.get(c, ("x",))] for c in header}
        rows.append([draw(mostly(*good[column], odds=39)) for column in header])
    if draw(st.integers(0, 3)) == 0:
        rows.append(draw(st.lists(hostile(), max_size=len(header) + 1)))
    buffer = io.StringIO(newline="")
    writer = csv.writer(
        buffer,
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
        lineterminator=draw(st.sampled_from(["\r\n", "\n", "\r"])),
    )
    writer.writerow(header)
    writer.writerows(rows)
    data = encode(buffer.getvalue())
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 4)) == 0:  # invalid UTF-8, or stray bytes, somewhere
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x80\x80"]))
        at = draw(st.integers(0, len(data)))
        data = data[:at] + junk + data[at:]
    return data


@settings(EXAMINE, max_examples=100)
@given(
    data=st.data(),
    google=st.booleans(),
    admins=usually(
        st.just([]), st.lists(mostly("n0", "N0@corp.example", "g0@corp.example", "e0"), max_size=2)
    ),
    raw=usually(st.none(), st.binary(max_size=200), odds=9),
)
def test_command_import_rejects_bad_files_without_effect(
    template: Template,
    cheap_hasher: argon2.PasswordHasher,
    data: st.DataObject,
    google: bool,
    admins: list[str],
    raw: bytes | None,
) -> None:
    """import of generated CSV files exits 0 or 2, and 2 leaves the store as it was."""
    columns = (*GOOGLE_COLUMNS, "Employee ID") if google else NATIVE_COLUMNS
    content = raw if raw is not None else data.draw(csv_files(columns))
    with copy_of(template) as db:
        source = db.with_name("members.csv")
        source.write_bytes(content)
        argv = ["--db", str(db), "import", str(source)]
        argv += ["--format", "google-workspace" if google else "native"]
        for admin in admins:
            argv += ["--admin", admin]
        ran = check_command(argv, db, cheap_hasher)
        assert ran.code in (0, 2)
        if ran.code == 0:
            assert ran.out.startswith("Imported ")


@st.composite
def members_files(draw: st.DrawFn) -> bytes:
    """A --members-file: lines of (mostly) member IDs, comments, or raw bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=100))
    lines = draw(st.lists(st.one_of(mostly(*MEMBER_IDS), st.just("# a comment")), max_size=5))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return encode(ending.join(lines))


@st.composite
def password_inputs(draw: st.DrawFn) -> bytes:
    """What --password-stdin reads: a password and maybe a line end, or raw bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=100))
    password = draw(mostly(PASSWORD, FRESH))
    return encode(password + draw(st.sampled_from(["", "\n", "\r\n", "\n\n"])))


@settings(EXAMINE, max_examples=100)
@given(
    data=st.data(),
    mode=st.sampled_from(["force", "request"]),
    who=st.sampled_from(["--members", "--members-file", "--all"]),
    actor=st.one_of(mostly("admin", "boss"), st.just("m1")),
    as_json=st.booleans(),
)
def test_command_plan_rejects_bad_input_without_effect(
    template: Template,
    cheap_hasher: argon2.PasswordHasher,
    data: st.DataObject,
    mode: str,
    who: str,
    actor: str,
    as_json: bool,
) -> None:
    """plan with hostile --members, --members-file, --actor and passwords exits 0 or 2 cleanly."""
    with copy_of(template) as db:
        argv = ["--db", str(db), "plan", "--mode", mode, f"--actor={actor}"]
        if who == "--members":
            ids = data.draw(st.lists(mostly(*MEMBER_IDS), min_size=1, max_size=4))
            argv.append(f"--members={','.join(ids)}")
        elif who == "--members-file":
            listing = db.with_name("members.txt")
            listing.write_bytes(data.draw(members_files()))
            argv += ["--members-file", str(listing)]
        else:
            argv.append("--all")
        stdin = b""
        if mode == "force":
            argv.append("--password-stdin")
            stdin = data.draw(password_inputs())
        if as_json:
            argv.append("--json")
        ran = check_command(argv, db, cheap_hasher, stdin=stdin)
        assert ran.code in (0, 2)
        if ran.code == 0 and as_json:
            plan_id = json.loads(ran.out)["plan_id"]
            with SqliteStorage(db) as store:
                assert store.load_plan(plan_id) is not None


def report_names() -> st.SearchStrategy[str]:
    """--report names: hostile stems (half the time), (mostly) a right suffix."""
    stray = st.text(
        st.one_of(
            st.characters(codec="ascii", categories=["L", "N"]),
            st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, categories=["Cs"]),
        ),
        min_size=1,
        max_size=8,
    )  # a name with bytes that are not UTF-8, as Python decodes it (PEP 383)
    stem = usually(st.sampled_from(["report", "Report"]), st.one_of(hostile("report"), stray), 1)
    return st.tuples(stem, mostly(".csv", ".json", ".CSV")).map("".join)


@settings(EXAMINE, max_examples=100)
@given(
    data=st.data(),
    real_plan=usually(st.just(True), st.just(False), 2),
    report=st.one_of(st.none(), report_names()),
    as_json=st.booleans(),
)
def test_command_apply_rejects_bad_input_without_effect(
    template: Template,
    cheap_hasher: argon2.PasswordHasher,
    data: st.DataObject,
    real_plan: bool,
    report: str | None,
    as_json: bool,
) -> None:
    """apply with hostile plan IDs, codes and --report names exits 0 or 2; 2 changes nothing."""
    plan_id = template.plan_id if real_plan else data.draw(hostile(template.plan_id))
    code = data.draw(mostly(*template.codes()))
    with copy_of(template) as db:
        argv = ["--db", str(db), "apply", "--confirm", code]
        target = None
        if report is not None:
            # Stay inside the temporary directory whatever the name says.
            target = f"{db.parent}/{report.replace('..', '._')}"
            argv.append(f"--report={target}")
        if as_json:
            argv.append("--json")
        argv += ["--", plan_id]
        ran = check_command(argv, db, cheap_hasher)
        assert ran.code in (0, 2)
        if ran.code == 0 and target is not None:
            assert Path(target).is_file()


# ---------------------------------------------------------------------- regressions


def test_report_name_that_cannot_be_a_file_is_refused_before_applying(
    template: Template, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A --report name with NUL, a lone surrogate or 300 bytes is refused before applying."""
    with copy_of(template) as db:
        for name in ("r\x00.csv", "r\ud800.csv", "r" * 300 + ".csv", "d\x00/r.json"):
            argv = ["--db", str(db), "apply", template.plan_id, "--confirm", template.confirmation]
            ran = check_command([*argv, "--report", f"{db.parent}/{name}"], db, cheap_hasher)
            assert 2 == ran.code
        with SqliteStorage(db) as store:
            record = store.load_plan(template.plan_id)
            assert record is not None
            assert record.started_at is None


def test_output_that_the_terminal_cannot_encode_is_escaped(
    template: Template, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A report name holding a stray byte (surrogate-escaped) is written and printed escaped."""
    with copy_of(template) as db:
        target = f"{db.parent}/r\udcff.csv"
        argv = ["--db", str(db), "apply", template.plan_id, "--confirm", template.confirmation]
        ran = check_command([*argv, "--report", target], db, cheap_hasher)
        assert (0, "") == (ran.code, ran.err)
        assert f"Report written to {db.parent}/r\\udcff.csv." in ran.out
        assert Path(target).is_file()


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
@pytest.mark.parametrize("option", ["--db", "import", "--members-file", "--password-file"])
def test_file_arguments_that_cannot_be_names_are_refused(
    template: Template, cheap_hasher: argon2.PasswordHasher, option: str, bad: str
) -> None:
    """--db, the import file, --members-file and --password-file refuse NUL and lone surrogates."""
    with copy_of(template) as db:
        source = db.with_name("members.csv")
        source.write_text(",".join(NATIVE_COLUMNS) + "\nn1,n1@corp.example,,,,,,\n")
        wrong = f"{db.parent}/x{bad}"
        plan = ["plan", "--mode", "force", "--actor", "admin"]
        argv = {
            "--db": ["--db", wrong, "import", str(source)],
            "import": ["--db", str(db), "import", wrong],
            "--members-file": ["--db", str(db), *plan, "--members-file", wrong],
            "--password-file": ["--db", str(db), *plan, "--all", "--password-file", wrong],
        }[option]
        ran = check_command(argv, db, cheap_hasher)
        assert 2 == ran.code
        assert "cannot be a file name" in ran.err


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_load_members_refuses_a_path_that_cannot_be_a_name(bad: str) -> None:
    """load_members raises ImportFormatError, not ValueError, for a NUL or lone surrogate path."""
    with pytest.raises(ImportFormatError, match="cannot be a file name"):
        load_members(f"members{bad}.csv")


def test_huge_header_with_repeats_is_refused_quickly() -> None:
    """A 1 MB header (100,000 columns, one repeated) is refused in linear, not quadratic, time."""
    header = [*NATIVE_COLUMNS, *(f"c{i}" for i in range(100_000)), "x", "x"]
    started = time.perf_counter()
    with pytest.raises(ImportFormatError, match=r"repeated column\(s\): x$"):
        parse_members(",".join(header) + "\n")
    assert time.perf_counter() - started < 5


def test_repeated_blank_columns_are_named() -> None:
    """Repeated blank header cells are named '(blank)', not an empty list."""
    with pytest.raises(ImportFormatError, match=r"repeated column\(s\): \(blank\)"):
        parse_members(",".join(NATIVE_COLUMNS) + ",,\n")


def test_huge_password_input_cut_inside_a_character_is_too_long(
    template: Template, cheap_hasher: argon2.PasswordHasher
) -> None:
    """--password-stdin over 64 KiB is 'too_long' even when the cut splits a character."""
    with copy_of(template) as db:
        argv = ["--db", str(db), "plan", "--mode", "force", "--all", "--actor", "admin"]
        ran = check_command([*argv, "--password-stdin"], db, cheap_hasher, stdin=encode("é" * MB))
        assert 2 == ran.code
        assert "too_long" in ran.err


@pytest.mark.parametrize("host", ["\ud800", "bad\udcff", "x" * 300, "x\u202e" * 70])
def test_smtp_host_that_cannot_be_looked_up_is_a_usage_error(
    template: Template, cheap_hasher: argon2.PasswordHasher, host: str
) -> None:
    """outbox --send --smtp with a host no resolver takes exits 2 with one line."""
    with copy_of(template) as db:
        argv = ["--db", str(db), "outbox", "--send", "--smtp", f"{host}:25"]
        ran = check_command(argv, db, cheap_hasher)
        assert 2 == ran.code
        assert "--smtp takes HOST:PORT" in ran.err


@pytest.mark.parametrize("members", [None, 0, 1.5])
def test_add_members_refuses_what_is_not_iterable(
    template: Template, cheap_hasher: argon2.PasswordHasher, members: Any
) -> None:
    """SqliteStorage.add_members(None) raises InvalidInputError, not TypeError."""
    with service_on(template, cheap_hasher) as service:
        store = service.store
        assert isinstance(store, SqliteStorage)
        before = store.dump()
        with pytest.raises(InvalidInputError):
            store.add_members(members)
        assert store.dump() == before


# ---------------------------------------------------------------------- regressions


@pytest.mark.parametrize("login", ["Mina.Kim@corp.example", "nobody@corp.example"])
def test_authenticate_survives_a_lone_surrogate_password(
    template: Template, cheap_hasher: argon2.PasswordHasher, login: str
) -> None:
    """authenticate(login, 'pass\\ud800word') answers ok=False instead of raising."""
    with service_on(template, cheap_hasher) as service:
        assert not service.authenticate(login, "pass\ud800word").ok


@pytest.mark.parametrize("member_id", ["m1", "nobody"])
def test_change_password_survives_a_lone_surrogate_password(
    template: Template, cheap_hasher: argon2.PasswordHasher, member_id: str
) -> None:
    """change_password(id, 'pass\\ud800word', new) raises InvalidCredentialsError."""
    with service_on(template, cheap_hasher) as service, pytest.raises(BulkResetError):
        service.change_password(member_id, "pass\ud800word", FRESH)


def test_memory_add_members_refuses_what_is_not_iterable() -> None:
    """MemoryStorage.add_members(None) raises InvalidInputError, not TypeError."""
    with pytest.raises(InvalidInputError):
        MemoryStorage().add_members(None)  # type: ignore[arg-type]


def test_strategies_reach_accepted_calls(
    template: Template, cheap_hasher: argon2.PasswordHasher
) -> None:
    """The valid values the strategies dress up do work, so the properties see both outcomes."""
    with service_on(template, cheap_hasher) as service:
        assert service.authenticate("Mina.Kim@corp.example", PASSWORD).ok
        assert "m2" == service.check_token(template.token)
        result = service.apply(template.plan_id, confirm=template.codes()[3])
        assert template.plan_id == result.plan_id
        expires = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc) + timedelta(days=1)
        assert service.session_is_valid("m1", expires)
