"""The ``bulkreset`` command (SPEC §8): in-process through ``main([...])``, and end to end.

In-process tests open the SQLite store with cheap Argon2 parameters (the
command itself always uses argon2-cffi's defaults). The end-to-end tests run
``python -m bulkreset`` on the shared invented data and check its counts
against counts computed here, independently, from the CSV files.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import argon2
import pytest

import bulkreset.cli as cli
from bulkreset import MemberOutcome, Outcome, ResetService
from bulkreset.adapters.smtp import message_id
from bulkreset.adapters.sqlite import open_service
from bulkreset.errors import StorageError
from bulkreset.ports import EffectBatch

from .conftest import shared_data_file
from .smtp_server import PASSWORD as SMTP_PASSWORD
from .smtp_server import USER as SMTP_USER
from .smtp_server import Mailbox, smtp_server

PASSWORD = "Harbor 42 lanterns"
OWN = "my own secret passphrase 7"

DIRECTORY = """\
member_id,login_id,name,sign_in,mobile_phone,personal_email,status,role
admin,admin@corp.example,Ada Admin,password,,ada@home.example,active,admin
boss,boss@corp.example,Sam Super,password,+821000000001,,active,super_admin
m1,Mina.Kim@corp.example,Mina Kim,password,,mina@home.example,active,member
m2,jun@corp.example,Jun Park,password,+821000000002,,active,member
m3,norecover@corp.example,No Recovery,password,,,active,member
q1,quick@corp.example,Quick Login,quick_login,,quick@home.example,active,member
p1,pending@corp.example,Pending Person,password,,,pending,member
s1,suspended@corp.example,Sus Pended,password,,sus@home.example,suspended,member
"""

Run = Callable[..., tuple[int, str, str]]


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch, cheap_hasher: argon2.PasswordHasher) -> None:
    """Make the command open its database with cheap Argon2 parameters."""

    def cheap(path: Path) -> ResetService:
        return open_service(path, hasher=cheap_hasher)

    monkeypatch.setattr(cli, "_connect", cheap)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], connect: None) -> Iterator[Run]:
    """Call ``main`` in-process; returns (exit status, stdout, stderr)."""

    def call(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    saved = sys.stdin
    yield call
    sys.stdin = saved


@pytest.fixture
def db(tmp_path: Path, run: Run) -> str:
    """A database holding the small DIRECTORY."""
    source = tmp_path / "directory.csv"
    source.write_text(DIRECTORY, encoding="utf-8")
    path = str(tmp_path / "bulkreset.db")
    assert 0 == run("--db", path, "import", str(source))[0]
    return path


@pytest.fixture
def service(db: str, cheap_hasher: argon2.PasswordHasher) -> Iterator[ResetService]:
    """A second connection to the command's database, to look at what it did."""
    opened = open_service(db, hasher=cheap_hasher)
    yield opened
    opened.store.close()  # type: ignore[attr-defined]


def plan_json(run: Run, db: str, *args: str, stdin: str | None = PASSWORD + "\n") -> Any:
    code, out, err = run("--db", db, "plan", "--actor", "admin", "--json", *args, stdin=stdin)
    assert (0, "") == (code, err)
    return json.loads(out)


def one_line_error(err: str) -> str:
    assert err.startswith("bulkreset: error: ")
    assert err.endswith("\n")
    assert 1 == err.count("\n")
    return err


def plans_made(service: ResetService) -> int:
    return sum(e.action == "plan.created" for e in service.audit_events())


# ---------------------------------------------------------------------- usage


def test_help_exits_zero(run: Run) -> None:
    """--help prints usage and exits 0."""
    code, out, _ = run("--help")
    assert (0, True) == (code, "plan" in out)


def test_version_exits_zero(run: Run) -> None:
    """--version prints the version and exits 0."""
    code, out, _ = run("--version")
    assert (0, True) == (code, out.startswith("bulkreset "))


def test_missing_command_is_a_one_line_usage_error(run: Run) -> None:
    """No subcommand: exit 2 with one line on stderr, no traceback."""
    code, _, err = run()
    assert 2 == code
    one_line_error(err)


def test_there_is_no_password_option(run: Run, db: str) -> None:
    """--password is not an option (passwords never on the command line): exit 2."""
    code, out, err = run(
        "--db", db, "plan", "--mode", "force", "--all", "--actor", "admin", "--password", PASSWORD
    )
    assert (2, "") == (code, out)
    assert "unrecognized arguments: --password" in one_line_error(err)
    assert PASSWORD not in err


def test_db_is_required(run: Run) -> None:
    """Commands other than demo need --db."""
    code, _, err = run("outbox")
    assert (2, True) == (code, "--db" in one_line_error(err))


def test_missing_database_is_not_created(run: Run, tmp_path: Path) -> None:
    """plan on a database that does not exist fails and creates no file."""
    path = tmp_path / "typo.db"
    code, _, err = run("--db", str(path), "plan", "--mode", "request", "--all", "--actor", "a")
    assert (2, False) == (code, path.exists())
    assert "no database" in one_line_error(err)


def test_db_may_follow_the_subcommand(run: Run, db: str) -> None:
    """--db is also accepted after the subcommand's name."""
    assert 0 == run("outbox", "--db", db)[0]


def test_not_a_database_is_a_one_line_error(run: Run, tmp_path: Path) -> None:
    """A --db file that is not a SQLite database: exit 2, one line."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    code, _, err = run("--db", str(path), "outbox")
    assert 2 == code
    one_line_error(err)


# ---------------------------------------------------------------------- import


def test_import_reports_count(run: Run, tmp_path: Path, service: ResetService) -> None:
    """import stores every member and says how many."""
    code, out, _ = run(
        "--db", str(tmp_path / "bulkreset.db"), "import", str(tmp_path / "directory.csv")
    )
    assert (0, True) == (code, "Imported 8 member(s)" in out)
    assert 8 == sum(len(page) for page in service.store.iter_members())


def test_failed_import_changes_nothing(
    run: Run, db: str, tmp_path: Path, service: ResetService
) -> None:
    """A file with one bad row imports nothing, not even its good rows."""
    bad = tmp_path / "bad.csv"
    bad.write_text(
        DIRECTORY.splitlines()[0]
        + "\nnew1,new1@corp.example,,,,,,\nm1,mina@corp.example,,,,,gone,\n",
        encoding="utf-8",
    )
    before = service.store.get_members(["m1", "new1"])
    code, out, err = run("--db", db, "import", str(bad))
    assert (2, "") == (code, out)
    assert "row 3" in one_line_error(err)
    assert before == service.store.get_members(["m1", "new1"])


def test_failed_import_creates_no_database(run: Run, tmp_path: Path) -> None:
    """An import that fails never creates the database file."""
    bad = tmp_path / "bad.csv"
    bad.write_text("member_id,login_id\nm1,a@x\n", encoding="utf-8")
    target = tmp_path / "new.db"
    assert (2, False) == (run("--db", str(target), "import", str(bad))[0], target.exists())


def test_import_conflicting_with_stored_login_is_refused(
    run: Run, db: str, tmp_path: Path, service: ResetService
) -> None:
    """A new member whose login ID another stored member holds is refused; nothing changes."""
    clash = tmp_path / "clash.csv"
    clash.write_text(
        DIRECTORY.splitlines()[0]
        + "\nnew1,new1@corp.example,,,,,,\nm9,MINA.kim@corp.example,,,,,,\n",
        encoding="utf-8",
    )
    assert 2 == run("--db", db, "import", str(clash))[0]
    assert {} == service.store.get_members(["new1", "m9"])


def test_import_missing_file_is_one_line_error(run: Run, tmp_path: Path) -> None:
    """A file that does not exist: exit 2 naming it."""
    code, _, err = run("--db", str(tmp_path / "x.db"), "import", str(tmp_path / "nope.csv"))
    assert (2, True) == (code, "nope.csv" in one_line_error(err))


def test_google_import_with_admin_can_be_planned(run: Run, tmp_path: Path) -> None:
    """A Google export imported with --admin gives an actor who may plan."""
    export = tmp_path / "google.csv"
    export.write_text(
        "First Name [Required],Last Name [Required],Email Address [Required],Status [READ ONLY]\n"
        "Ada,Lee,ada@corp.example,Active\nBo,Kim,bo@corp.example,Suspended\n"
        "Cy,Park,cy@corp.example,Active\n",
        encoding="utf-8-sig",
    )
    path = str(tmp_path / "g.db")
    code, out, _ = run(
        "--db",
        path,
        "import",
        str(export),
        "--format",
        "google-workspace",
        "--admin",
        "ADA@corp.example",
    )
    assert (0, True) == (code, "1 administrator(s)" in out)
    code, out, _ = run(
        "--db", path, "plan", "--mode", "request", "--all", "--actor", "ada@corp.example", "--json"
    )
    document = json.loads(out)
    assert (0, 1, {"actor": 1, "suspended": 1}) == (code, document["targets"], document["excluded"])


# ---------------------------------------------------------------------- plan


def test_plan_json_shape(run: Run, db: str, service: ResetService) -> None:
    """plan --json prints one object: ID, code, counts by reason and kind, precautions."""
    document = plan_json(run, db, "--mode", "force", "--all", "--password-stdin")
    stored = service.load_plan(document["plan_id"])
    assert stored.confirmation == document["confirmation"]
    expected = {
        "targets": 3,
        "selected": 8,
        "excluded": {
            "actor": 1,
            "not_permitted": 1,
            "not_activated": 1,
            "suspended": 1,
            "no_password": 1,
        },
        "warnings": {"cannot_self_recover": 1},
        "precautions": list(stored.precautions),
    }
    assert expected == {key: document[key] for key in expected}


def test_plan_password_line_terminator_is_removed(run: Run, db: str, service: ResetService) -> None:
    """One trailing newline from --password-stdin is not part of the password."""
    document = plan_json(run, db, "--mode", "force", "--members", "m1", "--password-stdin")
    assert (
        0 == run("--db", db, "apply", document["plan_id"], "--confirm", document["confirmation"])[0]
    )
    auth = service.authenticate("mina.kim@corp.example", PASSWORD)
    assert (True, True) == (auth.ok, auth.must_change_password)


def test_plan_password_with_carriage_return_is_refused(
    run: Run, db: str, service: ResetService
) -> None:
    """A trailing carriage return is a control character: refused, exit 2, no plan stored."""
    code, out, err = run(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\r\n",
    )
    assert (2, "") == (code, out)
    assert "control_character" in one_line_error(err)
    assert 0 == plans_made(service)


def test_plan_only_one_newline_is_removed(run: Run, db: str) -> None:
    """A second trailing newline stays and is refused as a control character."""
    code, _, err = run(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n\n",
    )
    assert (2, True) == (code, "control_character" in err)


def test_plan_reads_binary_stdin(run: Run, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--password-stdin reads the bytes of standard input as UTF-8."""
    stdin = io.TextIOWrapper(io.BytesIO((PASSWORD + "é\n").encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, _ = run(
        "--db", db, "plan", "--mode", "force", "--all", "--actor", "admin", "--password-stdin"
    )
    assert (0, True) == (code, "Confirmation code" in out)


def test_plan_refuses_non_utf8_password(run: Run, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Password bytes that are not UTF-8 are refused."""
    stdin = io.TextIOWrapper(io.BytesIO(b"Harbor \xff lanterns\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, _, err = run(
        "--db", db, "plan", "--mode", "force", "--all", "--actor", "admin", "--password-stdin"
    )
    assert (2, True) == (code, "not UTF-8" in one_line_error(err))


def test_plan_refuses_huge_password_input(run: Run, db: str) -> None:
    """Absurdly long password input is refused as too long, before hashing."""
    code, _, err = run(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        "admin",
        "--password-stdin",
        stdin="x" * (cli.MAX_PASSWORD_BYTES + 10),
    )
    assert (2, True) == (code, "too_long" in one_line_error(err))


def test_plan_weak_password_is_refused(run: Run, db: str, service: ResetService) -> None:
    """A password the rules refuse: exit 2 naming the rule, never the password, no plan."""
    code, _, err = run(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        "admin",
        "--password-stdin",
        stdin="Tiny-pw\n",
    )
    assert (2, True, False) == (code, "too_short" in one_line_error(err), "Tiny-pw" in err)
    assert 0 == plans_made(service)


def test_plan_password_file(run: Run, db: str, tmp_path: Path) -> None:
    """--password-file reads the password from a file, one trailing newline removed."""
    secret = tmp_path / "password.txt"
    secret.write_bytes((PASSWORD + "\n").encode())
    document = plan_json(
        run, db, "--mode", "force", "--all", "--password-file", str(secret), stdin=None
    )
    assert 3 == document["targets"]


def test_plan_password_file_missing(run: Run, db: str, tmp_path: Path) -> None:
    """A missing --password-file: exit 2, one line."""
    code, _, err = run(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        "admin",
        "--password-file",
        str(tmp_path / "nope"),
    )
    assert 2 == code
    one_line_error(err)


def test_plan_prompt_needs_a_terminal(run: Run, db: str, service: ResetService) -> None:
    """Without --password-stdin and without a terminal, a force plan fails (exit 2)."""
    code, _, err = run("--db", db, "plan", "--mode", "force", "--all", "--actor", "admin", stdin="")
    assert (2, True) == (code, "--password-stdin" in one_line_error(err))
    assert 0 == plans_made(service)


def _prompted(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    prompts: list[str] = []
    replies = iter(answers)

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(replies)

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    return prompts


def test_plan_prompts_twice_without_echo(
    run: Run, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal a force plan asks for the password twice through getpass."""
    prompts = _prompted(monkeypatch, PASSWORD, PASSWORD)
    code, out, _ = run("--db", db, "plan", "--mode", "force", "--all", "--actor", "admin")
    assert (0, 2, True) == (code, len(prompts), "Confirmation code:" in out)
    assert PASSWORD not in out


def test_plan_prompt_mismatch_is_refused(
    run: Run, db: str, monkeypatch: pytest.MonkeyPatch, service: ResetService
) -> None:
    """Two different answers to the prompt: exit 2, no plan."""
    _prompted(monkeypatch, PASSWORD, PASSWORD + "!")
    code, _, err = run("--db", db, "plan", "--mode", "force", "--all", "--actor", "admin")
    assert (2, True) == (code, "differ" in one_line_error(err))
    assert 0 == plans_made(service)


def test_interrupt_exits_130(run: Run, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C at the prompt exits 130 without a traceback."""

    def interrupted(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", interrupted)
    code, _, err = run("--db", db, "plan", "--mode", "force", "--all", "--actor", "admin")
    assert (130, "\nbulkreset: interrupted\n") == (code, err)


def test_plan_unauthorized_actor_stores_nothing(run: Run, db: str, service: ResetService) -> None:
    """A plan by a non-administrator: exit 2, one line, no plan stored."""
    code, _, err = run("--db", db, "plan", "--mode", "request", "--all", "--actor", "m1", stdin="")
    assert (2, True) == (code, "administrators" in one_line_error(err))
    assert 0 == plans_made(service)


@pytest.mark.parametrize(
    "extra",
    [["--password-stdin"], ["--then-request"], ["--deliver-password"]],
    ids=["password", "then-request", "deliver-password"],
)
def test_request_plan_refuses_force_options(run: Run, db: str, extra: list[str]) -> None:
    """Force-only options with --mode request: exit 2."""
    code, _, err = run(
        "--db", db, "plan", "--mode", "request", "--all", "--actor", "admin", *extra, stdin="x\n"
    )
    assert 2 == code
    one_line_error(err)


def test_plan_selection_by_members(run: Run, db: str) -> None:
    """--members selects IDs; repeats collapse and unknown IDs are excluded, not fatal."""
    document = plan_json(run, db, "--mode", "request", "--members", "m1, m2,m1,,ghost", stdin=None)
    assert (2, {"unknown_member": 1}, {}) == (
        document["targets"],
        document["excluded"],
        document["warnings"],
    )


def test_plan_selection_by_members_file(run: Run, db: str, tmp_path: Path) -> None:
    """--members-file reads one ID a line, skipping blanks and comments."""
    selection = tmp_path / "ids.txt"
    selection.write_text("\ufeff# chosen\nm1\n\n  q1  \ns1\n", encoding="utf-8")
    document = plan_json(run, db, "--mode", "request", "--members-file", str(selection), stdin=None)
    assert (3, 2, {"suspended": 1}) == (
        document["selected"],
        document["targets"],
        document["excluded"],
    )


def test_plan_members_file_must_be_utf8(run: Run, db: str, tmp_path: Path) -> None:
    """A --members-file that is not UTF-8 is a one-line error, exit 2."""
    selection = tmp_path / "ids.txt"
    selection.write_bytes(b"m1\n\xff\n")
    code, _, err = run(
        "--db", db, "plan", "--actor", "admin", "--mode", "request",
        "--members-file", str(selection),
    )  # fmt: skip
    assert 2 == code
    assert "not UTF-8" in one_line_error(err)


def test_plan_empty_selection_is_refused(run: Run, db: str) -> None:
    """--members naming no ID: exit 2."""
    code, _, err = run(
        "--db", db, "plan", "--mode", "request", "--members", " , ", "--actor", "admin"
    )
    assert (2, True) == (code, "names no member" in one_line_error(err))


def test_plan_needs_a_selection(run: Run, db: str) -> None:
    """One of --all, --members, --members-file is required."""
    assert 2 == run("--db", db, "plan", "--mode", "request", "--actor", "admin")[0]


def test_plan_preview_is_readable(run: Run, db: str) -> None:
    """The human preview shows counts, reasons, warnings, precautions, ID and code."""
    code, out, _ = run(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        "admin",
        "--password-stdin",
        "--then-request",
        "--deliver-password",
        stdin=PASSWORD + "\n",
    )
    assert 0 == code
    for text in (
        "dry run",
        "targets           3",
        "no_password",
        "cannot_self_recover",
        "Precautions:",
        "(OWASP ASVS 2.5.1)",
        "Confirmation code: ",
        "apply plan-",
    ):
        assert text in out
    assert PASSWORD not in out


# ---------------------------------------------------------------------- apply


def _plan(run: Run, db: str, mode: str = "force", *args: str) -> Any:
    extra = ["--password-stdin"] if mode == "force" else []
    return plan_json(
        run, db, "--mode", mode, "--all", *extra, *args, stdin=PASSWORD + "\n" if extra else None
    )


def test_apply_json_and_report(run: Run, db: str, tmp_path: Path) -> None:
    """apply --json prints outcome counts; --report writes one row per selected member."""
    plan = _plan(run, db)
    report = tmp_path / "report.csv"
    code, out, _ = run(
        "--db",
        db,
        "apply",
        plan["plan_id"],
        "--confirm",
        plan["confirmation"].lower(),
        "--report",
        str(report),
        "--json",
    )
    document = json.loads(out)
    assert (0, plan["plan_id"]) == (code, document["plan_id"])
    assert {"reset": 3, "requested": 0, "excluded": 5, "failed": 0} == document["outcomes"]
    with report.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert 8 == len(rows)
    by_id = {r["member_id"]: r for r in rows}
    assert ("suspended@corp.example", "suspended") == (
        by_id["s1"]["login_id"],
        by_id["s1"]["reason"],
    )
    assert ("reset", "true", "true") == (
        by_id["m1"]["outcome"],
        by_id["m1"]["sessions_revoked"],
        by_id["m1"]["notified"],
    )


def test_apply_human_summary_and_json_report(run: Run, db: str, tmp_path: Path) -> None:
    """apply without --json prints a summary naming the report file."""
    plan = _plan(run, db, "request")
    report = tmp_path / "report.json"
    code, out, _ = run(
        "--db",
        db,
        "apply",
        plan["plan_id"],
        "--confirm",
        plan["confirmation"],
        "--report",
        str(report),
    )
    assert (0, True, True) == (code, "requested" in out, str(report) in out)
    assert 4 == json.loads(report.read_text())["outcomes"]["requested"]


def test_a_staged_apply_then_the_rest(run: Run, db: str) -> None:
    """apply --limit 1 applies one target and says how many are left; apply continues."""
    plan = _plan(run, db)
    args = ["--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"]]
    code, out, _ = run(*args, "--limit", "1", "--json")
    document = json.loads(out)
    assert (0, 1, 2, 2) == (
        code,
        document["outcomes"]["reset"],
        document["outcomes"]["pending"],
        document["remaining"],
    )
    code, out, _ = run(*args, "--limit", "1")
    assert (0, True) == (code, "1 target(s) left for later" in out)
    code, out, _ = run(*args, "--json")
    assert (0, 3, 0) == (code, json.loads(out)["outcomes"]["reset"], json.loads(out)["remaining"])
    code, _, err = run(*args, "--limit", "0")
    assert (2, True) == (code, "at least 1" in one_line_error(err))


def test_audit_exports_a_plans_log(run: Run, db: str, tmp_path: Path) -> None:
    """audit PLAN prints JSON Lines; --format csv --output writes a new file; bad input: 2."""
    plan = _plan(run, db)
    run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    code, out, _ = run("--db", db, "audit", plan["plan_id"])
    events = [json.loads(line) for line in out.splitlines()]
    assert (0, "plan.created") == (code, events[0]["action"])
    assert {plan["plan_id"]} == {e["plan_id"] for e in events}
    target = tmp_path / "audit.csv"
    code, _, err = run(
        "--db", db, "audit", plan["plan_id"], "--member", "m1", "--format", "csv",
        "--output", str(target), "--since", "2000-01-01T00:00:00Z",
    )  # fmt: skip
    with target.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert (0, "at", {"m1"}) == (code, rows[0][0], {r[4] for r in rows[1:]})
    assert f"{len(rows) - 1} audit event(s) written" in err
    for bad in (
        ["--output", str(target)],  # exists
        ["--since", "yesterday"],
        ["--since", "2026-01-01T00:00:00"],  # no offset
    ):
        code, _, err = run("--db", db, "audit", plan["plan_id"], *bad)
        assert 2 == code, bad
        assert one_line_error(err)
    code, _, err = run("--db", db, "audit", "plan-nope")
    assert 2 == code


def test_a_plan_needing_approval_is_approved_from_the_command_line(run: Run, db: str) -> None:
    """plan --approval-threshold 0: apply exits 2 until approve --approver another admin."""
    plan = _plan(run, db, "force", "--approval-threshold", "0")
    args = ["--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"]]
    code, _, err = run(*args)
    assert (2, True) == (code, "approve" in one_line_error(err))
    code, _, err = run("--db", db, "approve", plan["plan_id"], "--approver", "admin")
    assert (2, True) == (code, "made a plan" in one_line_error(err))  # the planner
    code, out, _ = run("--db", db, "approve", plan["plan_id"], "--approver", "boss")
    assert (0, True) == (code, "approved by boss" in out)
    assert 0 == run(*args)[0]
    code, _, _ = run("--db", db, "plan", "--mode", "request", "--all", "--actor", "admin",
                     "--approval-threshold", "-1")  # fmt: skip
    assert 2 == code


def test_audit_refuses_a_bad_span_before_making_the_file(run: Run, db: str, tmp_path: Path) -> None:
    """A reversed or out-of-range span exits 2 and leaves no file behind."""
    target = tmp_path / "audit.csv"
    for span in (
        ["--since", "2026-03-01T13:00:00Z", "--until", "2026-03-01T12:00:00Z"],
        ["--since", "0001-01-01T00:00:00+05:00"],
    ):
        code, _, err = run("--db", db, "audit", "--output", str(target), *span)
        assert (2, False) == (code, target.exists()), err


def test_apply_wrong_code_is_refused(run: Run, db: str, service: ResetService) -> None:
    """A wrong confirmation code: exit 2, nothing applied."""
    plan = _plan(run, db)
    code, _, err = run("--db", db, "apply", plan["plan_id"], "--confirm", "AAAA-AAAA")
    assert (2, True) == (code, "confirmation code" in one_line_error(err))
    assert {} == service.store.get_progress(plan["plan_id"])


def test_apply_without_code_and_terminal_is_refused(run: Run, db: str) -> None:
    """No --confirm and no terminal: exit 2."""
    plan = _plan(run, db)
    code, _, err = run("--db", db, "apply", plan["plan_id"], stdin="")
    assert (2, True) == (code, "--confirm" in one_line_error(err))


def test_apply_asks_for_code_on_a_terminal(
    run: Run, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, apply asks for the code and reads it from standard input."""
    plan = _plan(run, db)
    monkeypatch.setattr(sys, "stdin", Terminal(plan["confirmation"] + "\n"))
    code, out, err = run("--db", db, "apply", plan["plan_id"])
    assert (0, True, True) == (code, "confirmation code" in err, "reset" in out)


def test_apply_draws_progress_on_a_terminal(
    run: Run, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When stderr is a terminal, apply draws a progress bar there."""
    plan = _plan(run, db)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert 0 == run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])[0]
    assert terminal.getvalue().endswith("3/3\n")


def test_progress_bar_not_drawn_ends_no_line() -> None:
    """Closing a bar that was never drawn writes nothing."""
    terminal = Terminal()
    cli.ProgressBar(terminal).close()
    assert "" == terminal.getvalue()


def test_command_uses_real_argon2_defaults(tmp_path: Path) -> None:
    """The command's own service hashes with argon2-cffi's default parameters."""
    service = cli._connect(tmp_path / "real.db")
    try:
        default = argon2.PasswordHasher()
        assert (default.memory_cost, default.time_cost) == (
            service.hasher.memory_cost,
            service.hasher.time_cost,
        )
    finally:
        cli._close(service)


def test_request_plan_preview_has_no_warnings(run: Run, db: str) -> None:
    """A request plan's preview shows zero warnings and the R6 precaution."""
    code, out, _ = run("--db", db, "plan", "--mode", "request", "--all", "--actor", "admin")
    assert (0, True, True) == (code, "warnings          0" in out, "force a change first" in out)


def test_progress_bar_with_no_targets() -> None:
    """A plan with no targets draws a full bar."""
    terminal = Terminal()
    bar = cli.ProgressBar(terminal)
    bar(0, 0)
    bar.close()
    assert "[" + "#" * bar.WIDTH + "] 0/0\n" == terminal.getvalue().split("applying ")[1]


@pytest.mark.parametrize("name", ["r.xlsx", "folder.csv"])
def test_apply_bad_report_path_applies_nothing(
    run: Run, db: str, tmp_path: Path, service: ResetService, name: str
) -> None:
    """A report name that is not .csv/.json, or a directory, is refused before anything changes."""
    (tmp_path / "folder.csv").mkdir()
    plan = _plan(run, db)
    code, _, err = run(
        "--db",
        db,
        "apply",
        plan["plan_id"],
        "--confirm",
        plan["confirmation"],
        "--report",
        str(tmp_path / name),
    )
    assert 2 == code
    one_line_error(err)
    assert {} == service.store.get_progress(plan["plan_id"])


def test_apply_report_write_failure(
    run: Run, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report that cannot be written after applying: exit 2 saying the plan was applied."""

    def broken(*args: object, **kwargs: object) -> Path:
        raise OSError(28, "No space left on device")

    plan = _plan(run, db)
    monkeypatch.setattr(cli, "write_report", broken)
    code, _, err = run(
        "--db",
        db,
        "apply",
        plan["plan_id"],
        "--confirm",
        plan["confirmation"],
        "--report",
        str(tmp_path / "r.csv"),
    )
    assert (2, True) == (code, "was applied" in one_line_error(err))


def test_apply_unknown_plan(run: Run, db: str) -> None:
    """An unknown plan ID: exit 2."""
    code, _, err = run("--db", db, "apply", "plan-nope", "--confirm", "X")
    assert (2, True) == (code, "plan-nope" in one_line_error(err))


def test_apply_with_failures_exits_one(
    run: Run, db: str, monkeypatch: pytest.MonkeyPatch, cheap_hasher: argon2.PasswordHasher
) -> None:
    """When some members fail, apply exits 1 and says so."""
    plan = _plan(run, db)

    def failing(path: Path) -> ResetService:
        service = open_service(path, hasher=cheap_hasher)
        commit = service.store.commit

        def commit_but_m2(batch: EffectBatch) -> None:
            if any(w.member_id == "m2" for w in batch.credentials):
                raise StorageError("disk trouble")
            commit(batch)

        def chunk_fails(request: object) -> None:  # so the member-by-member path runs
            raise StorageError("disk trouble")

        monkeypatch.setattr(service.store, "commit", commit_but_m2)
        monkeypatch.setattr(service.store, "apply_chunk", chunk_fails)
        return service

    monkeypatch.setattr(cli, "_connect", failing)
    code, out, _ = run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    assert (1, True) == (code, "1 member(s) failed" in out)


def test_apply_unfinished_members_are_mentioned(
    run: Run, db: str, monkeypatch: pytest.MonkeyPatch, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Members reset whose notice is not confirmed are reported, and the exit status is 1."""
    plan = _plan(run, db)

    def no_mail(path: Path) -> ResetService:
        service = open_service(path, hasher=cheap_hasher)

        def refuse(notices: object) -> None:
            raise StorageError("outbox full")

        monkeypatch.setattr(service.notifier, "send", refuse)
        return service

    monkeypatch.setattr(cli, "_connect", no_mail)
    code, out, _ = run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    assert (1, True) == (code, "not yet confirmed" in out)


def test_result_document_counts_every_outcome() -> None:
    """result_document lists every outcome, zeros included."""
    from datetime import datetime, timezone

    from bulkreset import ResetResult

    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    result = ResetResult("p", {"m": MemberOutcome("m", Outcome.FAILED, "x")}, at, at)
    document = cli.result_document(result)
    assert {"reset": 0, "requested": 0, "excluded": 0, "failed": 1} == document["outcomes"]


# ---------------------------------------------------------------------- outbox


def test_outbox_lists_pending_notices_without_secrets(
    run: Run, db: str, service: ResetService
) -> None:
    """outbox lists pending notices (human and JSON) and never shows a token."""
    plan = _plan(run, db, "request")
    run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    tokens = [n.token for n in service.notifier.pending()]  # type: ignore[attr-defined]
    code, out, _ = run("--db", db, "outbox", "--json")
    document = json.loads(out)
    assert (0, 4, Counter({"change_request": 4})) == (
        code,
        document["pending"],
        Counter(n["kind"] for n in document["notices"]),
    )
    code, human, _ = run("--db", db, "outbox")
    assert (0, True) == (code, "4 notice(s) waiting" in human)
    assert all(token and token not in out + human for token in tokens)


def test_outbox_send_delivers_once(
    run: Run, db: str, service: ResetService, trusting: Callable[[Mailbox], None]
) -> None:
    """--send delivers each pending notice once, through a real SMTP server on loopback;
    each Message-ID derives from the notice's key."""
    plan = _plan(run, db, "force", "--then-request", "--deliver-password")
    run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    pending = service.notifier.pending()  # type: ignore[attr-defined]
    with smtp_server(security="starttls") as box:
        trusting(box)
        code, out, _ = run(
            "--db",
            db,
            "outbox",
            "--send",
            "--smtp",
            f"localhost:{box.port}",
            "--starttls",
            "--from",
            "it@corp.example",
            "--link",
            "https://corp.example/reset?t={token}",
            "--rate",
            "50/s",
        )
        # m1 has a personal email; m2 only a phone (its reset notice is for SMS: it
        # stays pending for that channel); m3 neither (no reset notice: no_channel)
        assert (0, True) == (code, "Delivered 4 notice(s)" in out)
        assert "1 notice(s) still pending" in out
        mailed = [n for n in pending if n.recipient]
        expected_ids = sorted(message_id(n, "it@corp.example") for n in mailed)
        assert expected_ids == sorted(m["Message-ID"] for m in box.messages)
        bodies = [m.get_body(("plain",)).get_content() for m in box.messages]  # type: ignore[union-attr]
        assert 3 == sum("https://corp.example/reset?t=" in b for b in bodies)
        assert 1 == sum(PASSWORD in b for b in bodies)
        code, out, _ = run(
            "--db", db, "outbox", "--send", "--smtp", f"localhost:{box.port}", "--starttls",
            "--json",
        )  # fmt: skip
        assert 0 == code
        assert (0, [], 4) == (
            json.loads(out)["delivered"],
            json.loads(out)["failed"],
            len(box.messages),
        )
    leftover = service.notifier.pending()  # type: ignore[attr-defined]
    assert [("m2", None, "+821000000002")] == [
        (n.member_id, n.recipient, n.phone) for n in leftover
    ]


def test_outbox_send_reports_refused_and_deferred_notices(
    run: Run, db: str, service: ResetService
) -> None:
    """550 fails that notice for good, 421 keeps it pending; the others go; exit status 1."""
    plan = _plan(run, db, "request")
    run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    logins = {n.member_id: n.recipient for n in service.notifier.pending()}  # type: ignore[attr-defined]
    refuse = {logins["m1"]: "550 5.1.1 no such user", logins["m2"]: "451 4.3.0 try later"}
    with smtp_server(refuse=refuse) as box:
        code, out, _ = run("--db", db, "outbox", "--send", "--smtp", f"127.0.0.1:{box.port}")
        assert 1 == code
        assert "failed for good: " in out
        assert "(SMTP 550)" in out
        assert "retried later: " in out
        assert "(SMTP 451)" in out
        assert len(logins) - 2 == len(box.messages)
    assert ["m2"] == [n.member_id for n in service.notifier.pending()]  # type: ignore[attr-defined]


def test_outbox_send_logs_in_over_tls(
    run: Run,
    db: str,
    service: ResetService,
    tmp_path: Path,
    trusting: Callable[[Mailbox], None],
) -> None:
    """--tls --user --password-file: implicit TLS and a login; the password is never an argument."""
    plan = _plan(run, db, "request")
    run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    secret = tmp_path / "smtp-password"
    secret.write_text(SMTP_PASSWORD + "\n", encoding="utf-8")
    with smtp_server(security="tls", login=True) as box:
        trusting(box)
        argv = ["--db", db, "outbox", "--send", "--smtp", f"localhost:{box.port}", "--tls"]
        code, out, _ = run(*argv, "--user", SMTP_USER, "--password-file", str(secret))
        assert (0, 4) == (code, len(box.messages))
    secret.write_text("wrong password\n", encoding="utf-8")
    plan = _plan(run, db, "request")
    run("--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"])
    with smtp_server(security="tls", login=True) as box:
        trusting(box)
        code, out, _ = run(*argv[:5], f"localhost:{box.port}", "--tls", "--user", SMTP_USER,
                           "--password-file", str(secret))  # fmt: skip
        assert (1, True, 0) == (code, "Stopped" in out, len(box.messages))


@pytest.mark.parametrize(
    "args",
    [
        ["--send"],
        ["--smtp", "h:25"],
        ["--tls"],
        ["--send", "--smtp", "nohost"],
        ["--send", "--smtp", "h:99999"],
        ["--send", "--smtp", "h:25", "--starttls", "--tls"],
        ["--send", "--smtp", "h:25", "--user", "u"],
        ["--send", "--smtp", "h:25", "--rate", "0/s"],
        ["--send", "--smtp", "h:25", "--rate", "fast"],
        ["--send", "--smtp", "h:25", "--link", "https://x.example/reset"],
        ["--send", "--smtp", "h:25", "--timezone", "Mars/Olympus"],
        ["--send", "--smtp", "h:25", "--from", "nobody"],
        ["--send", "--smtp", "h:25", "--user", "u", "--password-file", "/nonexistent/file"],
        ["--send", "--smtp", "mail.example:25", "--user", "u", "--password-file", "/dev/null"],
        ["--send", "--smtp", "h:25", "--tls", "--user", "u", "--password-file", "/dev/null"],
        ["--send", "--smtp", "h:\u0662\u0665"],  # Arabic-Indic digits are not a port
        ["--send", "--smtp", "h:25", "--rate", "1e-300/s"],
        ["--send", "--smtp", "h:25", "--link", "javascript:alert({token})"],
        ["--send", "--smtp", "h:25", "--link", "https://x.example/r?t={token}\nBcc: x"],
        ["--send", "--smtp", "h:25", "--from", "a@b.example, evil@x.example"],
        ["--send", "--smtp", "h:25", "--from", "it@x\rBcc: evil@x"],
        ["--link", "https://x.example/r?t={token}"],
        ["--from", "it@corp.example"],
        ["--timezone", "Asia/Seoul"],
    ],
)
def test_outbox_send_usage_errors(run: Run, db: str, args: list[str]) -> None:
    """--send needs a valid --smtp HOST:PORT and sound options; nothing is sent otherwise."""
    code, _, err = run("--db", db, "outbox", *args)
    assert 2 == code
    one_line_error(err)


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Mailbox], None]:
    """Make the command trust a test server's throw-away CA, as an operator would:
    through OpenSSL's ``SSL_CERT_FILE``."""

    def trust(box: Mailbox) -> None:
        assert box.ca_pem is not None
        path = tmp_path / "test-ca.pem"
        path.write_bytes(box.ca_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(path))

    return trust


# ---------------------------------------------------------------------- demo


def test_demo_in_process(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_hasher: argon2.PasswordHasher,
) -> None:
    """demo runs the whole story and exits 0."""
    from bulkreset import _demo

    real = _demo.run_demo
    monkeypatch.setattr(_demo, "run_demo", lambda out: real(out, hasher=cheap_hasher))
    assert 0 == cli.main(["demo"])
    out = capsys.readouterr().out
    for text in ("must_change_password=True", "check_token -> d010", "no_password", "Done"):
        assert text in out


# ---------------------------------------------------------------------- end to end


def _command(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkreset", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        cwd=cwd,
        check=False,
    )


def _shared(name: str) -> Path:
    return shared_data_file(name)


def _expected(rows: list[dict[str, str]], actor: str, force: bool) -> tuple[int, Counter[str], int]:
    """Targets, exclusions by reason and cannot-self-recover warnings, computed from the SPEC."""
    by_id = {r["member_id"]: r for r in rows}
    acting = by_id[actor]
    excluded: Counter[str] = Counter()
    warnings = targets = 0
    for row in rows:
        if row["member_id"] == actor:
            excluded["actor"] += 1
        elif acting["role"] == "admin" and row["role"] == "super_admin":
            excluded["not_permitted"] += 1
        elif row["status"] == "pending":
            excluded["not_activated"] += 1
        elif row["status"] == "suspended":
            excluded["suspended"] += 1
        elif force and row["sign_in"] == "quick_login":
            excluded["no_password"] += 1
        else:
            targets += 1
            if force and not (row["mobile_phone"] or row["personal_email"]):
                warnings += 1
    return targets, excluded, warnings


def _end_to_end(
    tmp_path: Path, source: Path, rows: list[dict[str, str]], actor: str, *import_args: str
) -> None:
    db = str(tmp_path / "e2e.db")
    imported = _command("--db", db, "import", str(source), *import_args)
    assert (0, "") == (imported.returncode, imported.stderr)
    planned = _command(
        "--db",
        db,
        "plan",
        "--mode",
        "force",
        "--all",
        "--actor",
        actor,
        "--password-stdin",
        "--json",
        stdin=PASSWORD + "\n",
    )
    assert (0, "") == (planned.returncode, planned.stderr)
    plan = json.loads(planned.stdout)
    targets, excluded, warnings = _expected(rows, actor, force=True)
    assert (targets, dict(excluded), {"cannot_self_recover": warnings}) == (
        plan["targets"],
        plan["excluded"],
        plan["warnings"],
    )
    report = tmp_path / "report.csv"
    applied = _command(
        "--db",
        db,
        "apply",
        plan["plan_id"],
        "--confirm",
        plan["confirmation"],
        "--report",
        str(report),
        "--json",
    )
    assert (0, "") == (applied.returncode, applied.stderr)
    outcomes = json.loads(applied.stdout)["outcomes"]
    assert {
        "reset": targets,
        "requested": 0,
        "excluded": sum(excluded.values()),
        "failed": 0,
    } == outcomes
    with report.open(encoding="utf-8", newline="") as handle:
        report_rows = list(csv.DictReader(handle))
    logins = {r["member_id"]: r["login_id"] for r in rows}
    assert logins == {r["member_id"]: r["login_id"] for r in report_rows}
    assert Counter(r["reason"] for r in report_rows if r["outcome"] == "excluded") == excluded


def test_end_to_end_native_members(tmp_path: Path) -> None:
    """The command on the 2,000-member directory: counts match the CSV; apply and report agree."""
    source = _shared("members.csv")
    with source.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    actor = next(r["member_id"] for r in rows if r["role"] == "admin" and r["status"] == "active")
    _end_to_end(tmp_path, source, rows, actor)


def test_end_to_end_google_export(tmp_path: Path) -> None:
    """The command on the 600-user Google export, with an --admin actor."""
    source = _shared("google-workspace-users.csv")
    with source.open(encoding="utf-8-sig", newline="") as handle:
        google = list(csv.DictReader(handle))
    rows = [
        {
            "member_id": g["Employee ID"] or g["Email Address [Required]"],
            "login_id": g["Email Address [Required]"],
            "sign_in": "password",
            "status": g["Status [READ ONLY]"].lower(),
            "role": "member",
            "mobile_phone": g["Recovery Phone [MUST BE IN THE E.164 FORMAT]"] or g["Mobile Phone"],
            "personal_email": g["Recovery Email"] or g["Home Secondary Email"],
        }
        for g in google
    ]
    admin = next(r for r in rows if r["status"] == "active")
    admin["role"] = "admin"
    _end_to_end(
        tmp_path,
        source,
        rows,
        admin["member_id"],
        "--format",
        "google-workspace",
        "--admin",
        admin["login_id"].upper(),
    )


def test_end_to_end_demo(tmp_path: Path) -> None:
    """python -m bulkreset demo runs the whole story and exits 0."""
    finished = _command("demo", cwd=tmp_path)
    assert (0, "") == (finished.returncode, finished.stderr)
    assert "must_change_password=True" in finished.stdout


def test_no_secret_reaches_any_output_report_or_listing(
    run: Run, db: str, tmp_path: Path, service: ResetService
) -> None:
    """Passwords and tokens appear in no stdout, stderr, report or outbox listing."""
    outputs: list[str] = []
    code, out, err = run(
        "--db", db, "plan", "--actor", "admin", "--mode", "force", "--all", "--password-stdin",
        "--then-request", "--deliver-password", stdin=PASSWORD + "\n",
    )  # fmt: skip
    outputs += [out, err]
    plan_id = next(w for w in out.split() if w.startswith("plan-")).rstrip(":")
    plan = service.load_plan(plan_id)
    for report in (tmp_path / "r.csv", tmp_path / "r.json"):
        code, out, err = run(
            "--db", db, "apply", plan_id, "--confirm", plan.confirmation, "--report", str(report)
        )
        assert 0 == code
        outputs += [out, err, report.read_text(encoding="utf-8")]
    for args in (["outbox"], ["outbox", "--json"]):
        outputs += list(run("--db", db, *args)[1:])
    pending = service.notifier.pending()  # type: ignore[attr-defined]
    tokens = [n.token for n in pending if n.token]
    assert tokens  # the outbox does hold them, for delivery
    assert [PASSWORD] == list({n.password for n in pending if n.password})
    text = "\n".join(outputs)
    assert [] == [s[:8] for s in [PASSWORD, *tokens] if s in text]


def test_generated_passwords_through_the_command(
    run: Run, db: str, tmp_path: Path, service: ResetService
) -> None:
    """plan --generate-passwords asks for no password; apply --handoff writes them owner-only."""
    code, out, err = run(
        "--db", db, "plan", "--actor", "admin", "--mode", "force", "--all",
        "--generate-passwords", "--json", stdin="",
    )  # fmt: skip
    assert (0, "") == (code, err)
    plan = json.loads(out)
    handoff = tmp_path / "handoff.csv"
    code, out, err = run(
        "--db", db, "apply", plan["plan_id"], "--confirm", plan["confirmation"],
        "--handoff", str(handoff),
    )  # fmt: skip
    assert (0, "") == (code, err)
    assert "owner-only" in out
    assert 0o600 == handoff.stat().st_mode & 0o777
    with handoff.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert plan["targets"] == len(rows)
    assert all(service.authenticate(r["login_id"], r["temporary_password"]).ok for r in rows)
    assert all(r["temporary_password"] not in out for r in rows)


@pytest.mark.parametrize(
    "extra",
    [["--mode", "request", "--generate-passwords"], ["--generate-passwords", "--password-stdin"]],
)
def test_generated_password_options_are_checked(run: Run, db: str, extra: list[str]) -> None:
    """--generate-passwords is force-only and takes no password."""
    args = ["--mode", "force", *extra] if extra[0] != "--mode" else extra
    code, _, err = run("--db", db, "plan", "--actor", "admin", "--all", *args, stdin="x\n")
    assert 2 == code
    one_line_error(err)
