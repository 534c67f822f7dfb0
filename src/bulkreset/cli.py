"""The ``bulkreset`` command (also ``python -m bulkreset``) over the SQLite store.

Subcommands (SPEC §8)::

    bulkreset --db PATH import FILE.csv [--format native|google-workspace] [--admin LOGIN_OR_ID]
    bulkreset --db PATH plan --mode force|request (--all | --members ID,ID | --members-file FILE)
                             --actor ID [--password-stdin | --password-file FILE]
                             [--then-request] [--deliver-password] [--generate-passwords]
                             [--json]
    bulkreset --db PATH apply PLAN_ID [--confirm CODE] [--report FILE.csv|FILE.json]
                                      [--handoff FILE] [--limit N] [--json]
    bulkreset --db PATH outbox [--json] [--send --smtp HOST:PORT [--starttls | --tls]
                               [--user NAME --password-file FILE] [--rate N/s]
                               [--from ADDRESS] [--link URL] [--timezone ZONE]]
    bulkreset --db PATH approve PLAN_ID --approver ID
    bulkreset --db PATH audit [PLAN_ID] [--member ID] [--since TIME] [--until TIME]
                              [--format jsonl|csv] [--output FILE]
    bulkreset demo

A password is never taken as an argument (process lists, shell history): it
is prompted for twice without echo, or read from standard input or a file,
where one trailing line feed is removed and nothing else (a trailing carriage
return is a control character, and the password rules refuse it).

Exit status: 0 on success, 1 when some members failed (or are unfinished:
not yet signed out or notified), 2 for bad usage or
bad input (one line on standard error, no traceback), 130 when interrupted.
A rejected command (status 2) writes nothing; ``outbox --send`` records each
delivery attempt it makes, failed ones included.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sqlite3
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ._audit_export import select_events
from ._importing import FORMATS, load_members
from ._model import (
    ALL,
    ExclusionReason,
    Notice,
    Outcome,
    ResetMode,
    ResetPlan,
    ResetPolicy,
    ResetResult,
    Selection,
    WarningKind,
)
from ._report import check_report_path, write_report
from ._service import ResetService
from .adapters.smtp import SmtpTransport, is_link_template, is_loopback
from .errors import BulkResetError, InvalidInputError, PasswordPolicyError

__all__ = ["main"]

PROG = "bulkreset"

MAX_PASSWORD_BYTES = 64 * 1024
"""Most bytes read for a password from standard input or a file."""

_MODES = {"force": ResetMode.FORCE_CHANGE, "request": ResetMode.REQUEST_CHANGE}


class UsageError(Exception):
    """Bad command-line usage: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, printed by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------- parser


def _db_option(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=default,
        help="the SQLite database file (created by 'import')",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="Reset the passwords of many members at once, safely: "
        "import a directory, plan (a dry run), then apply with the plan's confirmation code.",
        epilog="Exit status: 0 success, 1 some members failed, 2 bad usage or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _db_option(parser, default=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    importing = commands.add_parser(
        "import",
        allow_abbrev=False,
        help="import members from a CSV file (insert or update)",
        description="Import members from a CSV file: all rows or, when any row is bad, none. "
        "Every cell is trimmed; login IDs compare by NFKC and Unicode case folding; "
        "errors name rows as a spreadsheet does (the header is row 1).",
    )
    _db_option(importing, default=argparse.SUPPRESS)
    importing.add_argument("file", metavar="FILE.csv", help="UTF-8 CSV file (a BOM is fine)")
    importing.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="native",
        help="native: the columns member_id,login_id,name,sign_in,mobile_phone,"
        "personal_email,status,role (default); google-workspace: a Google Workspace "
        "admin-console user export, as it comes",
    )
    importing.add_argument(
        "--admin",
        metavar="LOGIN_OR_ID",
        action="append",
        default=[],
        help="make this imported member an administrator (repeatable); a Google "
        "Workspace export has no roles, and only administrators may plan",
    )

    plan = commands.add_parser(
        "plan",
        allow_abbrev=False,
        help="make a plan (a dry run) and show its preview and confirmation code",
        description="Make a plan: who would be reset, who is excluded and why, warnings "
        "and precautions. Nothing changes for any member; the plan is kept in the "
        "database for 'apply'. A force plan asks for the new password twice, without "
        "echo, unless --password-stdin or --password-file is given.",
    )
    _db_option(plan, default=argparse.SUPPRESS)
    plan.add_argument(
        "--mode",
        choices=sorted(_MODES),
        required=True,
        help="force: one new password for every target now; request: a change request each",
    )
    who = plan.add_mutually_exclusive_group(required=True)
    who.add_argument("--all", action="store_true", help="select every member")
    who.add_argument("--members", metavar="ID,ID", help="select these member IDs")
    who.add_argument(
        "--members-file",
        metavar="FILE",
        help="select the member IDs in FILE, one a line (blank lines and # comments skipped)",
    )
    plan.add_argument("--actor", metavar="ID", required=True, help="your member ID (an admin)")
    source = plan.add_mutually_exclusive_group()
    source.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new password from standard input (one trailing newline is removed)",
    )
    source.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the new password from FILE (one trailing newline is removed)",
    )
    plan.add_argument(
        "--then-request",
        action="store_true",
        help="force mode: also send each target a change request (force first, then request)",
    )
    plan.add_argument(
        "--deliver-password",
        action="store_true",
        help="force mode: put the new password in the notices (discouraged, OWASP ASVS 2.5.1)",
    )
    plan.add_argument(
        "--generate-passwords",
        action="store_true",
        help="force mode: give each target its own random temporary password instead of one "
        "shared password (handed over in the notices with --deliver-password, or in a "
        "hand-off file: apply --handoff FILE)",
    )
    plan.add_argument(
        "--approval-threshold",
        metavar="N",
        type=_at_least_zero,
        help="two-person approval: above N targets, a second administrator must approve "
        "the plan (bulkreset approve) before it can be applied",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object")

    approve = commands.add_parser(
        "approve",
        allow_abbrev=False,
        help="approve a plan as the second administrator (two-person approval)",
        description="Record your approval of a plan another administrator made.",
    )
    _db_option(approve, default=argparse.SUPPRESS)
    approve.add_argument("plan_id", metavar="PLAN_ID")
    approve.add_argument("--approver", metavar="ID", required=True, help="your member ID")

    apply = commands.add_parser(
        "apply",
        allow_abbrev=False,
        help="apply a plan (asks for its confirmation code)",
        description="Apply a stored plan. Applying it again is safe: it resumes unfinished "
        "work and never repeats a finished effect.",
    )
    _db_option(apply, default=argparse.SUPPRESS)
    apply.add_argument("plan_id", metavar="PLAN_ID")
    apply.add_argument(
        "--confirm",
        metavar="CODE",
        help="the plan's confirmation code (asked for when missing and a terminal is attached)",
    )
    apply.add_argument(
        "--report",
        metavar="FILE.csv|FILE.json",
        help="write one row per selected member (no secrets); the suffix picks the format",
    )
    apply.add_argument(
        "--handoff",
        metavar="FILE",
        help="plans with generated passwords: write every reset member's temporary password "
        "to this new file, readable by its owner only (delete it once handed over)",
    )
    apply.add_argument(
        "--limit",
        metavar="N",
        type=_at_least_one,
        help="a staged (canary) apply: only the first N targets not yet applied; "
        "apply again to continue",
    )
    apply.add_argument("--json", action="store_true", help="print one JSON object")

    outbox = commands.add_parser(
        "outbox",
        allow_abbrev=False,
        help="list (or deliver) the notices waiting in the outbox",
        description="List the notices not yet delivered (never their tokens or passwords).",
    )
    _db_option(outbox, default=argparse.SUPPRESS)
    outbox.add_argument("--json", action="store_true", help="print one JSON object")
    outbox.add_argument("--send", action="store_true", help="deliver them through --smtp")
    outbox.add_argument("--smtp", metavar="HOST:PORT", help="the SMTP server for --send")
    security = outbox.add_mutually_exclusive_group()
    security.add_argument("--starttls", action="store_true", help="upgrade with STARTTLS")
    security.add_argument("--tls", action="store_true", help="implicit TLS (port 465)")
    outbox.add_argument("--user", metavar="NAME", help="log in to the SMTP server as NAME")
    outbox.add_argument(
        "--password-file",
        metavar="FILE",
        help="the SMTP login password, the first line of FILE (never an argument)",
    )
    outbox.add_argument(
        "--rate", metavar="N/s", help="send at most N messages a second (for example 10/s)"
    )
    outbox.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        default="bulkreset@localhost",
        help="the From address (default: %(default)s)",
    )
    outbox.add_argument(
        "--link",
        metavar="URL",
        help="the change-request link, {token} where the token goes "
        "(for example https://accounts.example.com/reset?token={token})",
    )
    outbox.add_argument(
        "--timezone",
        metavar="ZONE",
        default="UTC",
        help="show times in this IANA time zone, for example Asia/Seoul (default: UTC)",
    )

    audit = commands.add_parser(
        "audit",
        allow_abbrev=False,
        help="export the audit log (of a plan) as JSON Lines or CSV",
        description="Write the audit log, oldest first, to standard output or --output: "
        "every event, or a plan's, a member's, a time span's. No secrets are in it.",
    )
    _db_option(audit, default=argparse.SUPPRESS)
    audit.add_argument("plan_id", metavar="PLAN_ID", nargs="?", help="only this plan's events")
    audit.add_argument("--member", metavar="ID", help="only this member's events")
    audit.add_argument(
        "--since", metavar="TIME", type=_moment, help="from this ISO 8601 time (with its offset)"
    )
    audit.add_argument(
        "--until", metavar="TIME", type=_moment, help="before this ISO 8601 time (with its offset)"
    )
    audit.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="default: %(default)s"
    )
    audit.add_argument("--output", metavar="FILE", help="write to this new file, not stdout")

    commands.add_parser(
        "demo",
        allow_abbrev=False,
        help="run the whole story on an invented directory in a temporary database",
        description="Import a bundled invented directory into a temporary database, force a "
        "change, sign in, change the password, send change requests and redeem one.",
    )
    return parser


def _version() -> str:
    try:
        return metadata.version("bulkreset")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# ---------------------------------------------------------------------- helpers


def _connect(path: Path) -> ResetService:
    """Open the SQLite-backed service (the real Argon2 defaults; nothing weakens them)."""
    from .adapters.sqlite import open_service

    return open_service(path)


def _close(service: ResetService) -> None:
    for port in (service.store, service.notifier, service.sessions):
        close = getattr(port, "close", None)
        if callable(close):
            close()


def _file_name(value: str, option: str) -> Path:
    """*value* as a path; refused when no file can have that name (NUL, unencodable text)."""
    try:
        encoded = os.fsencode(value)
    except UnicodeEncodeError:
        encoded = b"\0"
    if b"\0" in encoded:
        raise InvalidInputError(f"{option} {value!r:.120} cannot be a file name")
    return Path(value)


def _database(args: argparse.Namespace, *, must_exist: bool = True) -> Path:
    if args.db is None:
        raise UsageError(f"the {args.command} command needs --db PATH")
    path = _file_name(args.db, "--db")
    if must_exist and not path.is_file():
        raise InvalidInputError(
            f"no database at {args.db!r:.200}; create it with '{PROG} --db PATH import FILE.csv'"
        )
    return path


def _write(stream: TextIO, text: str) -> None:
    """Write *text*; what the stream cannot encode (a file name's stray bytes) is escaped."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _out(text: str = "") -> None:
    _write(sys.stdout, text + "\n")


def _json(document: Any) -> None:
    _out(json.dumps(document, ensure_ascii=False, indent=2))


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()) or "failed"


def _read_limited(stream: Any) -> str:
    """Read a password from a text or binary stream; refuse what is not UTF-8 or is huge."""
    data = stream.read(MAX_PASSWORD_BYTES + 1)
    if len(data) > MAX_PASSWORD_BYTES:  # before decoding: the cut may split a character
        raise PasswordPolicyError(("too_long",))
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError("the password input is not UTF-8 text") from None
    text: str = data
    return text[:-1] if text.endswith("\n") else text


def _read_password(args: argparse.Namespace) -> str:
    """The force-change password: from stdin, a file, or typed twice without echo."""
    if args.password_stdin:
        return _read_limited(getattr(sys.stdin, "buffer", sys.stdin))
    if args.password_file is not None:
        with _file_name(args.password_file, "--password-file").open("rb") as handle:
            return _read_limited(handle)
    if not sys.stdin.isatty():
        raise UsageError(
            "no terminal to ask for the new password: use --password-stdin or --password-file"
        )
    first = getpass.getpass("New password for every target: ")
    second = getpass.getpass("Type it again: ")
    if first != second:
        raise InvalidInputError("the two passwords differ; nothing was planned")
    return first


def _selection(args: argparse.Namespace) -> Selection:
    if args.all:
        return ALL
    if args.members is not None:
        ids = [part.strip() for part in args.members.split(",")]
        source = "--members"
    else:
        try:
            path = _file_name(args.members_file, "--members-file")
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{args.members_file!r:.120} is not UTF-8 text") from None
        ids = [line.strip() for line in text.splitlines()]
        ids = [i for i in ids if not i.startswith("#")]
        source = "--members-file"
    ids = [i for i in ids if i]
    if not ids:
        raise InvalidInputError(f"{source} names no member ID")
    return ids


# ---------------------------------------------------------------------- import


def _cmd_import(args: argparse.Namespace) -> int:
    path = _database(args, must_exist=False)
    members = load_members(args.file, format=args.format, admins=args.admin)
    service = _connect(path)
    try:
        service.store.add_members(members)
    finally:
        _close(service)
    admins = sum(1 for m in members if m.role.is_admin)
    _out(f"Imported {len(members):,} member(s) ({admins:,} administrator(s)) into {args.db}.")
    return 0


# ---------------------------------------------------------------------- plan


def plan_document(plan: ResetPlan) -> dict[str, Any]:
    """The plan as ``plan --json`` prints it: counts, never a member's details."""
    excluded = plan.exclusion_counts()
    warnings = plan.warning_counts()
    return {
        "plan_id": plan.plan_id,
        "mode": plan.mode.value,
        "actor": plan.actor,
        "created_at": plan.created_at.isoformat(),
        "expires_at": plan.expires_at.isoformat(),
        "confirmation": plan.confirmation,
        "selected": plan.selected,
        "targets": len(plan.targets),
        "excluded": {r.value: excluded[r] for r in ExclusionReason if r in excluded},
        "warnings": {k.value: warnings[k] for k in WarningKind if k in warnings},
        "precautions": list(plan.precautions),
        "settings": plan.settings.to_json(),
    }


_WARNING_TEXT = {
    WarningKind.CANNOT_SELF_RECOVER: "no mobile phone and no personal email",
}


def _print_plan(plan: ResetPlan, db: str) -> None:
    mode = plan.mode.value.replace("_", " ")
    _out(f"Plan {plan.plan_id}: {mode}, made by {plan.actor}")
    _out("Nothing has changed yet: this is a dry run.")
    _out()
    _out(f"  selected  {plan.selected:>9,}")
    _out(f"  targets   {len(plan.targets):>9,}")
    _out(f"  excluded  {len(plan.excluded):>9,}")
    excluded = plan.exclusion_counts()
    for reason in ExclusionReason:
        if reason in excluded:
            _out(f"    {reason.value:<22}{excluded[reason]:>7,}")
    warnings = plan.warning_counts()
    _out(f"  warnings  {len(plan.warnings):>9,}")
    for kind in WarningKind:
        if kind in warnings:
            _out(f"    {kind.value:<22}{warnings[kind]:>7,}  ({_WARNING_TEXT[kind]})")
    _out()
    _out("Precautions:")
    for line in plan.precautions:
        _out(f"  * {line}")
    _out()
    _out(f"Confirmation code: {plan.confirmation}")
    _out(f"The plan expires at {plan.expires_at:%Y-%m-%d %H:%M} UTC unless applied before.")
    _out(
        f"To apply it: {PROG} --db {shlex.quote(db)} apply {plan.plan_id} "
        f"--confirm {plan.confirmation}"
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    mode = _MODES[args.mode]
    force = mode is ResetMode.FORCE_CHANGE
    if not force and (args.password_stdin or args.password_file is not None):
        raise UsageError("--mode request takes no password (members choose their own)")
    if not force and (args.then_request or args.deliver_password or args.generate_passwords):
        raise UsageError(
            "--then-request, --deliver-password and --generate-passwords belong to --mode force"
        )
    if args.generate_passwords and (args.password_stdin or args.password_file is not None):
        raise UsageError("--generate-passwords takes no password: each target gets its own")
    path = _database(args)
    selection = _selection(args)
    password = _read_password(args) if force and not args.generate_passwords else None
    policy = ResetPolicy(
        mode,
        new_password=password,
        generate_passwords=args.generate_passwords,
        follow_with_request=args.then_request,
        deliver_password=args.deliver_password,
        approval_threshold=args.approval_threshold,
    )
    service = _connect(path)
    try:
        plan = service.plan(selection, policy, actor=args.actor)
        # Print while the store is open: a big plan is read from it a page at a time.
        if args.json:
            _json(plan_document(plan))
        else:
            _print_plan(plan, args.db)
    finally:
        _close(service)
    return 0


# ---------------------------------------------------------------------- apply


class ProgressBar:
    """A one-line progress bar on a terminal, fed by ``ResetService.apply(progress=...)``."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // total if total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\rapplying [{bar}] {done:,}/{total:,}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line, if one was drawn."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _ask_confirmation(plan: ResetPlan) -> str:
    if not sys.stdin.isatty():
        raise UsageError("--confirm CODE is needed when no terminal is attached")
    mode = plan.mode.value.replace("_", " ")
    sys.stderr.write(
        f"Plan {plan.plan_id}: {mode} of {len(plan.targets):,} member(s), "
        f"{len(plan.excluded):,} excluded.\n"
        "Type the plan's confirmation code to apply it: "
    )
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def result_document(result: ResetResult, report: Path | None = None) -> dict[str, Any]:
    """The result as ``apply --json`` prints it."""
    return {
        "plan_id": result.plan_id,
        "outcomes": {outcome.value: count for outcome, count in result.counts().items()},
        "unfinished": len(result.unfinished),
        "remaining": result.remaining,
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "report": str(report) if report is not None else None,
    }


def _print_result(result: ResetResult, plan: ResetPlan, report: Path | None) -> None:
    _out(f"Applied plan {result.plan_id} ({plan.mode.value.replace('_', ' ')}).")
    for outcome, count in result.counts().items():
        _out(f"  {outcome.value:<10}{count:>9,}")
    failed = result.count(Outcome.FAILED)
    unfinished = len(result.unfinished)
    if failed:
        _out(f"{failed:,} member(s) failed: apply the plan again to retry them.")
    if unfinished - failed > 0:
        _out(
            f"{unfinished - failed:,} member(s) are reset but their sign-out or notice is "
            "not yet confirmed: apply the plan again to retry."
        )
    if result.remaining:
        _out(
            f"Staged apply: {result.remaining:,} target(s) left for later; apply the plan "
            "again (with or without --limit) to continue."
        )
    if report is not None:
        _out(f"Report written to {report}.")


def _whole_number(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least *least*."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}")
        return value

    return parse


_at_least_zero = _whole_number(0)
_at_least_one = _whole_number(1)


def _cmd_approve(args: argparse.Namespace) -> int:
    path = _database(args)
    service = _connect(path)
    try:
        service.approve(args.plan_id, approver=args.approver)
    finally:
        _close(service)
    _out(f"Plan {args.plan_id} approved by {args.approver}.")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    path = _database(args)
    report = check_report_path(args.report) if args.report is not None else None
    service = _connect(path)
    try:
        plan = service.load_plan(args.plan_id)
        code = args.confirm if args.confirm is not None else _ask_confirmation(plan)
        bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
        try:
            result = service.apply(
                plan, confirm=code, progress=bar, handoff=args.handoff, limit=args.limit
            )
        finally:
            if bar is not None:
                bar.close()
        if report is not None:
            try:
                write_report(report, result, plan=plan)  # outcomes carry their login IDs
            except OSError as exc:
                raise InvalidInputError(
                    f"the plan was applied, but the report could not be written "
                    f"({exc.strerror or exc}); apply it again with --report to write it"
                ) from None
        # Print while the store is open: a big result is read from it a page at a time.
        if args.json:
            _json(result_document(result, report))
        else:
            _print_result(result, plan, report)
            if args.handoff is not None:
                _out(
                    f"Temporary passwords written to {args.handoff} (owner-only): hand them "
                    "over, then delete the file."
                )
    finally:
        _close(service)
    # 1: failed, not signed out, or not notified yet (targets a staged apply left are not)
    return 1 if result.unfinished else 0


# ---------------------------------------------------------------------- outbox


def notice_document(notice: Notice) -> dict[str, Any]:
    """A notice as ``outbox`` lists it: never its token or password."""
    return {
        "idempotency_key": notice.idempotency_key,
        "kind": notice.kind.value,
        "member_id": notice.member_id,
        "recipient": notice.recipient,
        "plan_id": notice.plan_id,
        "issued_at": notice.issued_at.isoformat() if notice.issued_at else None,
        "expires_at": notice.expires_at.isoformat() if notice.expires_at else None,
    }


def _smtp_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if (
        not host
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
        or not _is_host_name(host)
    ):
        raise UsageError(f"--smtp takes HOST:PORT, not {value!r:.80}")
    return host, int(port)


def _is_host_name(host: str) -> bool:
    """True when *host* can be looked up (IDNA-encodable, as ``socket`` needs)."""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def _rate(value: str | None) -> float | None:
    if value is None:
        return None
    number = value[:-2] if value.endswith("/s") else value
    try:
        rate = float(number)
    except ValueError:
        rate = 0.0
    if not 1 / 3600 <= rate < float("inf"):
        raise UsageError(f"--rate takes N/s, at least one an hour (0.0003/s), not {value!r:.40}")
    return rate


def _transport(args: argparse.Namespace) -> SmtpTransport:
    """The SMTP transport --send asks for; checked before anything is sent."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    host, port = _smtp_address(args.smtp)
    if (args.user is None) != (args.password_file is None):
        raise UsageError("--user and --password-file go together")
    password = None
    if args.password_file is not None:
        path = _file_name(args.password_file, "--password-file")
        try:
            with open(path, encoding="utf-8") as stream:
                password = stream.read(4097).split("\n", 1)[0]
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read --password-file: {type(exc).__name__}") from None
        if not password or len(password) > 4096:
            raise UsageError("--password-file must hold the SMTP password on its first line")
    try:
        zone = ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone: unknown time zone {args.timezone!r:.60}") from None
    if args.link is not None and not is_link_template(args.link):
        raise UsageError(
            "--link takes an http(s) URL with {token} where the token goes, "
            "e.g. https://accounts.example.com/reset?token={token}"
        )
    if args.user is not None and not (args.tls or args.starttls) and not is_loopback(host):
        raise UsageError("--user needs --starttls or --tls: never log in in clear text")
    return SmtpTransport(
        host,
        port,
        sender=args.sender,
        security="tls" if args.tls else "starttls" if args.starttls else "none",
        username=args.user,
        password=password,
        link_template=args.link,
        zone=zone,
    )


def _send_outbox(args: argparse.Namespace, service: ResetService) -> int:
    rate = _rate(args.rate)
    deliver = getattr(service.notifier, "deliver", None)
    if not callable(deliver):  # pragma: no cover - the SQLite outbox has it
        raise InvalidInputError("this database's notifier cannot deliver")
    with _transport(args) as transport:
        report = deliver(transport, rate=rate, only=transport.accepts)
    problems = [*report.failed, *report.deferred]
    if args.json:
        _json(
            {
                "delivered": report.delivered,
                "failed": [list(f) for f in report.failed],
                "deferred": [list(d) for d in report.deferred],
                "withdrawn": report.withdrawn,
                "stopped": report.stopped,
            }
        )
    else:
        _out(f"Delivered {report.delivered:,} notice(s) through {transport.host}:{transport.port}.")
        for key, reason in report.failed:
            _out(f"  failed for good: {key} ({reason})")
        for key, reason in report.deferred:
            _out(f"  not delivered yet, kept pending and retried later: {key} ({reason})")
        if report.withdrawn:
            _out(f"  {report.withdrawn:,} change request(s) withdrawn: their links had died.")
        if report.stopped:
            _out("  Stopped: the SMTP server cannot be used now; run --send again later.")
        waiting = service.notifier.pending_count()  # type: ignore[attr-defined]
        if waiting:
            _out(
                f"  {waiting:,} notice(s) still pending: retried later, or for another "
                "channel (no mail address: send them by SMS from Python)."
            )
    return 1 if problems or report.stopped else 0


def _cmd_outbox(args: argparse.Namespace) -> int:
    path = _database(args)
    if args.send and args.smtp is None:
        raise UsageError("--send needs --smtp HOST:PORT")
    if not args.send and (
        any(
            value not in (None, False)
            for value in (
                args.smtp,
                args.starttls,
                args.tls,
                args.user,
                args.password_file,
                args.rate,
                args.link,
            )
        )
        or args.sender != "bulkreset@localhost"
        or args.timezone != "UTC"
    ):
        raise UsageError("--smtp and its options go with --send")
    service = _connect(path)
    try:
        if args.send:
            return _send_outbox(args, service)
        pending = getattr(service.notifier, "pending", None)
        if not callable(pending):  # pragma: no cover - the SQLite outbox has it
            raise InvalidInputError("this database's notifier has no outbox to list")
        notices: list[Notice] = list(pending())
    finally:
        _close(service)
    documents = [notice_document(n) for n in notices]
    if args.json:
        _json({"pending": len(documents), "notices": documents})
        return 0
    _out(f"{len(documents):,} notice(s) waiting in the outbox.")
    for doc in documents:
        expires = f", expires {doc['expires_at']}" if doc["expires_at"] else ""
        _out(f"  {doc['kind']:<15} {doc['member_id']:<12} to {doc['recipient']}{expires}")
    return 0


# ---------------------------------------------------------------------- audit


def _moment(text: str) -> datetime:
    """An argparse type: an ISO 8601 time with its UTC offset (``Z`` allowed)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time's UTC offset: {text!r}")
    return value


def _cmd_audit(args: argparse.Namespace) -> int:
    path = _database(args)
    service = _connect(path)
    try:
        if args.plan_id is not None:
            service.load_plan(args.plan_id)  # an unknown plan is an error, not an empty log
        options: dict[str, Any] = {
            "plan_id": args.plan_id,
            "member_id": args.member,
            "since": args.since,
            "until": args.until,
            "format": args.format,
        }
        select_events((), since=args.since, until=args.until)  # a bad span: before any file
        if args.output is None:
            encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
            if encoding != "utf8":  # JSON escapes what the terminal cannot show; CSV cannot
                if args.format == "csv":
                    raise UsageError(
                        "standard output is not UTF-8: write the CSV with --output FILE"
                    )
                options["ascii_only"] = True
            service.export_audit(sys.stdout, **options)
            return 0
        target = Path(args.output)
        try:
            with target.open("x", encoding="utf-8", newline="") as handle:
                count = service.export_audit(handle, **options)
        except FileExistsError:
            raise InvalidInputError(f"{args.output!r} exists: give a new file") from None
        except OSError as exc:
            raise InvalidInputError(f"cannot write {args.output!r}: {exc.strerror}") from None
    finally:
        _close(service)
    _write(sys.stderr, f"{count:,} audit event(s) written to {target}.\n")
    return 0


# ---------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(sys.stdout)


_COMMANDS = {
    "import": _cmd_import,
    "plan": _cmd_plan,
    "apply": _cmd_apply,
    "outbox": _cmd_outbox,
    "audit": _cmd_audit,
    "approve": _cmd_approve,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    try:
        args = _parse(build_parser(), argv)
        return _COMMANDS[args.command](args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        return _fail(str(exc))
    except BulkResetError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # pragma: no cover - for example `bulkreset outbox | head`
        _silence_stdout()
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except sqlite3.Error as exc:  # pragma: no cover - the store wraps its errors
        return _fail(f"database error ({type(exc).__name__}: {exc})")
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse *argv*; unknown arguments are named without echoing their values.

    argparse would quote them all, and ``--password SECRET`` would put the
    secret in the error message (and in any log of it).
    """
    args, extras = parser.parse_known_args(argv)
    if extras:
        options = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
        others = len(extras) - len(options)
        named = " ".join(options)
        more = f"{' and ' if named else ''}{others} other value(s)" if others else ""
        hint = (
            "; passwords are never taken as arguments: use the prompt, "
            "--password-stdin or --password-file"
            if any(o.startswith("--pass") for o in options)
            else ""
        )
        parser.error(f"unrecognized arguments: {named}{more}{hint}")
    return args


def _silence_stdout() -> None:  # pragma: no cover - see main
    """Point stdout at /dev/null, so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _fail(message: str) -> int:
    _write(sys.stderr, f"{PROG}: error: {_one_line(message)}\n")
    return 2
