"""The SQLite adapter: schema and migrations, secrets at rest, outbox, sessions, concurrency.

The behaviour every store shares is in ``test_service.py`` (run over both
stores); these tests cover what only the SQLite file does.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import argon2
import pytest

from bulkreset import (
    AuditEvent,
    Member,
    Notice,
    NoticeKind,
    ResetMode,
    ResetPolicy,
    ResetService,
)
from bulkreset._clock import to_iso
from bulkreset.adapters import _sqlite_schema as schema
from bulkreset.adapters.sqlite import (
    SqliteOutbox,
    SqliteSessions,
    SqliteStorage,
    open_service,
)
from bulkreset.errors import (
    InvalidInputError,
    StorageError,
)
from bulkreset.ports import CredentialWrite

from .conftest import FakeClock, directory

PW = "Harbor 42 lanterns"
OWN = "my own secret passphrase 7"
TARGETS = ["m1", "m2", "m3"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bulkreset.db"


@pytest.fixture
def svc(db: Path, clock: FakeClock, cheap_hasher: argon2.PasswordHasher) -> Iterator[ResetService]:
    service = open_service(db, clock=clock, hasher=cheap_hasher, sleep=clock.sleep)
    store(service).add_members(directory())
    yield service
    store(service).close()


def store(service: ResetService) -> SqliteStorage:
    assert isinstance(service.store, SqliteStorage)
    return service.store


def outbox(service: ResetService) -> SqliteOutbox:
    assert isinstance(service.notifier, SqliteOutbox)
    return service.notifier


def sessions(service: ResetService) -> SqliteSessions:
    assert isinstance(service.sessions, SqliteSessions)
    return service.sessions


def seed(service: ResetService, ids: list[str] = TARGETS) -> None:
    for member_id in ids:
        service.set_password(member_id, OWN)


def force(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW, **options)


def flat(dump: dict[str, list[tuple[Any, ...]]]) -> list[object]:
    return [value for rows in dump.values() for row in rows for value in row]


def event(clock: FakeClock, action: str = "test", **fields: Any) -> AuditEvent:
    return AuditEvent(at=clock(), action=action, **fields)


# ----------------------------------------------------------------- schema


def test_new_file_gets_current_schema(db: Path) -> None:
    """A new file is created with every table and the current user_version."""
    with SqliteStorage(db) as created:
        assert str(db) == created.path
        tables = set(created.dump())
    conn = sqlite3.connect(db)
    try:
        assert schema.SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    assert {
        "members",
        "credentials",
        "plans",
        "plan_entries",
        "tokens",
        "progress",
        "audit",
        "outbox",
        "sessions",
    } == tables


def test_connection_runs_wal_with_busy_timeout_and_foreign_keys(db: Path) -> None:
    """The file is in WAL mode; busy_timeout is 30 s; foreign keys are enforced."""
    with SqliteStorage(db) as opened:
        conn = opened._db.conn
        assert "wal" == conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert 30000 == conn.execute("PRAGMA busy_timeout").fetchone()[0]
        assert 1 == conn.execute("PRAGMA foreign_keys").fetchone()[0]


def test_v1_file_is_migrated_with_its_data(db: Path) -> None:
    """A file at schema v1 is upgraded in place on open and keeps its members."""
    conn = sqlite3.connect(db, isolation_level=None)
    assert 0 == schema.migrate(conn, target=1)
    conn.execute(
        "INSERT INTO members (member_id, login_id, login_key, name, sign_in, status, role) "
        "VALUES ('old', 'Old@x.example', 'old@x.example', 'Old One', 'password', 'active', "
        "'member')"
    )
    conn.close()
    with SqliteStorage(db) as migrated:
        conn = migrated._db.conn
        assert schema.SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"attempts", "next_attempt_at"} <= columns
        assert "tokens_live_by_member" in indexes
        assert {"old": Member("old", "Old@x.example", "Old One")} == migrated.get_members(["old"])
        assert "old" == migrated.find_member_by_login("old@x.example").member_id  # type: ignore[union-attr]


def test_migration_already_done_by_another_process_is_skipped(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step whose version another process reached meanwhile is not run again."""
    SqliteStorage(db).close()
    real = schema._version
    answers = [0]  # the version seen before the transaction: stale

    def version(conn: sqlite3.Connection) -> int:
        return answers.pop() if answers else real(conn)

    monkeypatch.setattr(schema, "_version", version)
    with SqliteStorage(db) as reopened:
        assert [] == reopened.dump()["members"]


def test_failed_migration_rolls_back(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration step that fails leaves the file at its old version, without half a step."""
    monkeypatch.setattr(schema, "MIGRATIONS", (("CREATE TABLE half (x)", "NOT SQL"),))
    with pytest.raises(StorageError) as caught:
        SqliteStorage(db)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    conn = sqlite3.connect(db)
    try:
        assert 0 == conn.execute("PRAGMA user_version").fetchone()[0]
        assert [] == conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall()
    finally:
        conn.close()


def test_newer_schema_is_refused(db: Path) -> None:
    """A file written by a newer bulkreset raises StorageError, untouched."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="schema version 99"):
        open_service(db)


def test_not_a_database_is_refused(db: Path) -> None:
    """A file that is not SQLite raises StorageError with the sqlite3 error chained."""
    db.write_bytes(b"name,login\n" * 200)
    with pytest.raises(StorageError) as caught:
        open_service(db)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_unopenable_path_is_refused(tmp_path: Path) -> None:
    """A path SQLite cannot open (a directory's child that cannot exist) raises StorageError."""
    with pytest.raises(StorageError):
        SqliteStorage(tmp_path / "missing-dir" / "x.db")


def test_bad_options_close_the_store(db: Path) -> None:
    """open_service with a bad option raises InvalidInputError and leaves no open store."""
    with pytest.raises(InvalidInputError):
        open_service(db, chunk_size=0)


def test_closed_store_raises_storage_error(db: Path) -> None:
    """Reads and writes on a closed store raise StorageError, not a raw sqlite3 error."""
    closed = SqliteStorage(db)
    closed.close()
    with pytest.raises(StorageError):
        closed.get_members(["m1"])
    with pytest.raises(StorageError):
        closed.add_members([Member("a", "a@x.example")])


# ----------------------------------------------------------------- directory


def test_duplicate_login_writes_nothing(svc: ResetService) -> None:
    """A login ID already used (compared case-folded) rejects the whole call; nothing written."""
    before = store(svc).dump()
    batch = [
        Member("new1", "new1@corp.example"),
        Member("new2", "MINA.KIM@CORP.EXAMPLE"),
    ]
    with pytest.raises(InvalidInputError, match="'new2' is already used by 'm1'"):
        store(svc).add_members(batch)
    assert before == store(svc).dump()


def test_non_member_item_is_rejected(svc: ResetService) -> None:
    """add_members refuses anything but Member objects before writing."""
    before = store(svc).dump()
    with pytest.raises(InvalidInputError):
        store(svc).add_members([Member("x", "x@x.example"), "y"])  # type: ignore[list-item]
    assert before == store(svc).dump()


def test_update_moves_login_key(svc: ResetService) -> None:
    """Updating a member's login ID frees the old one for another member in the same call."""
    store(svc).add_members(
        [Member("m1", "mina@new.example", "Mina Kim"), Member("z", "Mina.Kim@corp.example")]
    )
    assert "m1" == store(svc).find_member_by_login("mina@new.example").member_id  # type: ignore[union-attr]
    assert "z" == store(svc).find_member_by_login("mina.kim@corp.example").member_id  # type: ignore[union-attr]


def test_iter_members_pages_by_id(svc: ResetService) -> None:
    """iter_members yields pages of at most page_size, in member_id order, and ends."""
    ids = sorted(m.member_id for m in directory())
    for size in (1, 2, 3, 9, 50):
        pages = list(store(svc).iter_members(page_size=size))
        assert all(0 < len(page) <= size for page in pages)
        assert ids == [m.member_id for page in pages for m in page]
    with pytest.raises(InvalidInputError):
        store(svc).iter_members(page_size=0)


def test_empty_store_has_no_pages(db: Path) -> None:
    """An empty directory yields no page at all."""
    with SqliteStorage(db) as empty:
        assert [] == list(empty.iter_members())


def test_surrogate_lookups_are_not_found(svc: ResetService) -> None:
    """Strings with lone surrogates are treated as unknown, never as a crash."""
    bad = "m1\ud800"
    st = store(svc)
    assert {} == st.get_members([bad])
    assert {"m1"} == set(st.get_members(["m1", bad]))
    assert {} == st.get_credentials([bad])
    assert st.find_member_by_login(bad) is None
    assert st.load_plan(bad) is None
    assert st.load_plan("plan-unknown") is None
    assert {} == st.get_members([None])  # type: ignore[list-item]
    assert st.find_token(bad) is None
    assert {} == st.get_progress(bad)
    assert [] == st.audit_events(plan_id=bad)
    assert [] == st.audit_events(member_id=bad)
    write = CredentialWrite("m1", at=datetime.now(timezone.utc), must_change=False)
    assert not st.redeem_token(bad, write, AuditEvent(at=write.at, action="x"))
    assert not sessions(svc).is_active(bad)
    assert not svc.authenticate(bad, OWN).ok


def test_threads_share_the_connection(svc: ResetService) -> None:
    """Several threads writing and reading at once all succeed."""
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                store(svc).add_members([Member(f"t{n}-{i}", f"t{n}-{i}@x.example")])
                sessions(svc).create(f"t{n}-{i}")
                store(svc).get_members([f"t{n}-{i}"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [] == errors
    assert 9 + 120 == sum(len(p) for p in store(svc).iter_members())


# ----------------------------------------------------------------- plans


def test_plan_applied_in_another_process(svc: ResetService, db: Path, clock: FakeClock) -> None:
    """A plan made here is loaded, equal, and applied by another process on the same file."""
    seed(svc)
    plan = svc.plan(TARGETS, force(), actor="admin")
    script = """
import json, sys
from datetime import datetime
import argon2, argon2.profiles
from bulkreset.adapters.sqlite import open_service

path, plan_id, confirm, now = sys.argv[1:]
at = datetime.fromisoformat(now)
hasher = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
service = open_service(path, clock=lambda: at, hasher=hasher, sleep=lambda s: None)
plan = service.load_plan(plan_id)
result = service.apply(plan, confirm=confirm)
print(json.dumps({
    "plan_id": plan.plan_id,
    "targets": [m.member_id for m in plan.targets],
    "reset": result.count(result.outcomes["m1"].outcome),
}))
service.store.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(db), plan.plan_id, plan.confirmation, to_iso(clock())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert {"plan_id": plan.plan_id, "targets": TARGETS, "reset": 3} == answer
    credentials = store(svc).get_credentials(TARGETS)
    assert {plan.plan_id} == {c.shared_plan_id for c in credentials.values()}
    assert all(svc.authenticate(m.login_id, PW).ok for m in plan.targets)
    assert {f"{plan.plan_id}:{i}:password_reset" for i in ("m1", "m2")} == {
        n.idempotency_key for n in outbox(svc).pending()
    }  # m3 has neither a personal email nor a phone: no notice (no_channel)


# ----------------------------------------------------------------- writes


def test_transaction_ended_inside_is_not_rolled_back_twice(svc: ResetService) -> None:
    """An error after the transaction already ended passes through unchanged."""

    def end_then_fail() -> None:
        with store(svc)._db.write() as conn:
            conn.execute("ROLLBACK")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        end_then_fail()
    assert not store(svc)._db.conn.in_transaction


# ----------------------------------------------------------------- outbox


# ----------------------------------------------------------------- sessions


# ----------------------------------------------------------------- secrets


def test_reprs_hold_no_secret(svc: ResetService) -> None:
    """The adapters' reprs show counts and the path, never a secret."""
    seed(svc)
    outbox(svc).send([Notice("m1", NoticeKind.CHANGE_REQUEST, token="tok-x", idempotency_key="k")])
    sessions(svc).create("m1")
    text = " ".join(repr(x) for x in (store(svc), outbox(svc), sessions(svc), svc))
    assert "<SqliteOutbox 1 pending>" in text
    assert "<SqliteSessions 1 active>" in text
    assert "tok-x" not in text
    assert "$argon2" not in text


def test_another_applications_database_is_left_alone(tmp_path: Path) -> None:
    """A versionless file that already has tables is refused, untouched (no schema, no WAL)."""
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    before = path.read_bytes()
    with pytest.raises(StorageError, match="another application"):
        open_service(path)
    assert before == path.read_bytes()
    assert not (tmp_path / "theirs.db-wal").exists()
