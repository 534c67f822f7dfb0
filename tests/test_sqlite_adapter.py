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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import argon2
import attrs
import pytest

from bulkreset import (
    AuditEvent,
    Member,
    MemberOutcome,
    Notice,
    NoticeKind,
    Outcome,
    ResetMode,
    ResetPolicy,
    ResetService,
)
from bulkreset._clock import to_iso
from bulkreset._tokens import token_digest
from bulkreset.adapters import _sqlite_schema as schema
from bulkreset.adapters.sqlite import (
    DeliveryReport,
    SqliteOutbox,
    SqliteSessions,
    SqliteStorage,
    open_service,
)
from bulkreset.errors import (
    InvalidInputError,
    PermanentDeliveryError,
    PlanNotFoundError,
    StorageError,
    TemporaryDeliveryError,
)
from bulkreset.ports import CredentialWrite, EffectBatch, TokenRecord

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


def test_plan_round_trips(svc: ResetService, db: Path) -> None:
    """load_plan returns a plan equal to the one made, also from a new connection."""
    seed(svc, ["m1", "m3"])
    plan = svc.plan(["m1", "m2", "m3", "s1", "nobody"], force(), actor="admin")
    assert plan.excluded
    assert plan.warnings
    assert plan == svc.load_plan(plan.plan_id)
    with SqliteStorage(db) as other:
        record = other.load_plan(plan.plan_id)
    assert record is not None
    assert plan == record.plan
    assert record.password is None
    assert record.password_hash is not None


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


def test_force_plan_stores_only_the_hash(svc: ResetService) -> None:
    """Without deliver_password, the plain password is stored nowhere in the file."""
    seed(svc)
    plan = svc.plan(TARGETS, force(), actor="admin")
    assert PW not in flat(store(svc).dump())
    svc.apply(plan, confirm=plan.confirmation)
    assert PW not in flat(store(svc).dump())


def test_delivered_password_is_erased(svc: ResetService) -> None:
    """With deliver_password, the plan's copy goes once apply is done; the outbox's on delivery."""
    seed(svc)
    plan = svc.plan(TARGETS, force(deliver_password=True), actor="admin")
    assert [PW] == [r[3] for r in store(svc).dump()["plans"]]
    result = svc.apply(plan, confirm=plan.confirmation)
    assert result.ok
    dump = store(svc).dump()
    assert PW not in flat({"plans": dump["plans"]})
    assert PW in flat({"outbox": dump["outbox"]})
    assert 2 == outbox(svc).deliver(lambda notice: None).delivered  # m3: no channel
    assert PW not in flat(store(svc).dump())


def test_one_hash_per_force_plan(svc: ResetService) -> None:
    """Applying a force plan to many members stores one hash, in the plan; members point to it."""
    seed(svc)
    plan = svc.plan(TARGETS, force(), actor="admin")
    svc.apply(plan, confirm=plan.confirmation)
    dump = store(svc).dump()
    hashes = [v for v in flat(dump) if isinstance(v, str) and v.startswith("$argon2")]
    assert 1 == len(hashes)
    assert [None, None, None] == [row[1] for row in dump["credentials"]]
    credentials = store(svc).get_credentials(TARGETS)
    assert {hashes[0]} == {c.password_hash for c in credentials.values()}
    assert all(svc.authenticate(m.login_id, PW).ok for m in plan.targets)


def test_rehash_gives_the_member_their_own_hash(svc: ResetService) -> None:
    """rehash_credential detaches one member from the shared hash; a stale generation is ignored."""
    seed(svc)
    plan = svc.plan(TARGETS, force(), actor="admin")
    svc.apply(plan, confirm=plan.confirmation)
    st = store(svc)
    generation = st.get_credentials(["m1"])["m1"].generation
    st.rehash_credential("m1", generation - 1, "$argon2id$stale")
    assert plan.plan_id == st.get_credentials(["m1"])["m1"].shared_plan_id
    st.rehash_credential("m1", generation, "$argon2id$own")
    credentials = st.get_credentials(TARGETS)
    assert ("$argon2id$own", None) == (
        credentials["m1"].password_hash,
        credentials["m1"].shared_plan_id,
    )
    assert generation == credentials["m1"].generation
    assert plan.plan_id == credentials["m2"].shared_plan_id


def test_claim_and_release_lease(svc: ResetService, db: Path, clock: FakeClock) -> None:
    """The apply lease is exclusive across connections until released or expired."""
    seed(svc)
    plan = svc.plan(TARGETS, force(), actor="admin")
    now = clock()
    st = store(svc)
    with SqliteStorage(db) as other:
        assert st.claim_plan(plan.plan_id, "a", now, now + timedelta(minutes=10))
        assert not other.claim_plan(plan.plan_id, "b", now, now + timedelta(minutes=10))
        assert st.claim_plan(plan.plan_id, "a", now + timedelta(seconds=1), now + timedelta(1))
        later = now + timedelta(days=2)
        assert other.claim_plan(plan.plan_id, "b", later, later + timedelta(minutes=10))
        st.release_plan(plan.plan_id, "a", finished_at=None, erase_secrets=False)
        assert not st.claim_plan(plan.plan_id, "a", later, later)
        other.release_plan(plan.plan_id, "b", finished_at=later, erase_secrets=False)
        assert st.claim_plan(plan.plan_id, "a", later, later)
    record = st.load_plan(plan.plan_id)
    assert record is not None
    assert (now, later) == (record.started_at, record.finished_at)
    with pytest.raises(PlanNotFoundError):
        st.claim_plan("nope", "a", now, now)
    with pytest.raises(PlanNotFoundError):
        st.release_plan("nope", "a", finished_at=None, erase_secrets=True)


# ----------------------------------------------------------------- writes


def test_commit_token_rules(svc: ResetService, clock: FakeClock) -> None:
    """Tokens get the post-write generation; later one supersedes; a repeated digest is a no-op."""
    seed(svc, ["m1"])
    st = store(svc)
    plan = svc.plan(["m1"], force(follow_with_request=True), actor="admin")
    now = clock()

    def token(digest: str) -> TokenRecord:
        return TokenRecord(digest, "m1", plan.plan_id, now, now + timedelta(hours=1))

    write = CredentialWrite("m1", at=now, must_change=True, shared_plan_id=plan.plan_id)
    st.commit(EffectBatch(plan.plan_id, credentials=(write,), tokens=(token("d1"), token("d2"))))
    first, second = st.find_token("d1"), st.find_token("d2")
    assert first is not None
    assert second is not None
    assert (2, 2) == (first.generation, second.generation)
    assert (now, None) == (first.revoked_at, second.revoked_at)
    st.commit(EffectBatch(plan.plan_id, tokens=(token("d2"),)))
    assert second == st.find_token("d2")
    st.commit(EffectBatch(plan.plan_id, tokens=(token("d3"),)))
    assert now == st.find_token("d2").revoked_at  # type: ignore[union-attr]


def test_commit_writes_progress_and_audit(svc: ResetService, clock: FakeClock) -> None:
    """Progress rows upsert by member and keep their times; audit events append in order."""
    seed(svc, ["m1"])
    st = store(svc)
    now = clock()
    row = MemberOutcome("m1", Outcome.RESET, login_id="x", at=now, attempted_at=now)
    st.commit(EffectBatch("p", progress=(row,), audit=(event(clock, plan_id="p"),)))
    st.commit(EffectBatch("p", progress=(attrs.evolve(row, notified=True),)))
    stored = st.get_progress("p")["m1"]
    assert (True, now, now) == (stored.notified, stored.at, stored.attempted_at)
    assert ["test"] == [e.action for e in st.audit_events(plan_id="p")]
    assert [] == st.audit_events(plan_id="p", member_id="m1")
    assert ["password.set"] == [e.action for e in st.audit_events(member_id="m1")]


def test_failed_commit_writes_nothing(svc: ResetService, clock: FakeClock) -> None:
    """A batch that fails part-way (SQLite or Python error) is rolled back whole."""
    seed(svc, ["m1", "m2"])
    st = store(svc)
    before = st.dump()
    now = clock()
    good = CredentialWrite("m1", at=now, must_change=True, password_hash="h")
    dangling = CredentialWrite("m2", at=now, must_change=True, shared_plan_id="no-such-plan")
    with pytest.raises(StorageError) as caught:
        st.commit(EffectBatch("p", credentials=(good, dangling), audit=(event(clock),)))
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert before == st.dump()
    with pytest.raises(UnicodeEncodeError):
        st.commit(EffectBatch("p", credentials=(good,), audit=(event(clock, detail="\ud800"),)))
    assert before == st.dump()


def test_transaction_ended_inside_is_not_rolled_back_twice(svc: ResetService) -> None:
    """An error after the transaction already ended passes through unchanged."""

    def end_then_fail() -> None:
        with store(svc)._db.write() as conn:
            conn.execute("ROLLBACK")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        end_then_fail()
    assert not store(svc)._db.conn.in_transaction


def test_write_credential_is_compare_and_set(svc: ResetService, clock: FakeClock) -> None:
    """write_credential writes only at the expected generation, and then revokes live tokens."""
    seed(svc, ["m1"])
    st = store(svc)
    now = clock()
    st.commit(EffectBatch("p", tokens=(TokenRecord("d", "m1", "p", now, now),)))
    before = st.dump()
    write = CredentialWrite("m1", at=now, must_change=False, password_hash="h2")
    assert not st.write_credential(write, expected_generation=0, audit=event(clock))
    assert before == st.dump()
    assert st.write_credential(write, expected_generation=1, audit=event(clock))
    assert 2 == st.get_credentials(["m1"])["m1"].generation
    assert now == st.find_token("d").revoked_at  # type: ignore[union-attr]


def test_redeem_token_checks_and_uses(svc: ResetService, clock: FakeClock) -> None:
    """redeem_token refuses unknown, used and outdated tokens; a good one is used once."""
    seed(svc, ["m1"])
    st = store(svc)
    now = clock()
    st.commit(
        EffectBatch(
            "p",
            tokens=(
                TokenRecord("d1", "m1", "p", now, now),
                TokenRecord("d2", "m2", "p", now, now),
            ),
        )
    )
    write = CredentialWrite("m1", at=now, must_change=False, password_hash="h")
    assert not st.redeem_token("unknown", write, event(clock))
    outdated = CredentialWrite("m2", at=now, must_change=False, password_hash="h")
    svc.set_password("m2", OWN)
    assert not st.redeem_token("d2", outdated, event(clock))
    assert st.redeem_token("d1", write, event(clock))
    assert now == st.find_token("d1").used_at  # type: ignore[union-attr]
    assert not st.redeem_token("d1", write, event(clock))


def test_redeem_through_the_service(svc: ResetService) -> None:
    """A request change's token, taken from the outbox, can be redeemed once."""
    seed(svc, ["m1"])
    plan = svc.plan(["m1"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    svc.apply(plan, confirm=plan.confirmation)
    got: list[Notice] = []
    outbox(svc).deliver(got.append)
    [notice] = got
    assert notice.token is not None
    assert store(svc).find_token(token_digest(notice.token)) is not None
    assert notice.token not in flat(store(svc).dump())  # only its digest is kept
    assert "m1" == svc.redeem(notice.token, "a brand new passphrase 9")
    assert svc.authenticate("mina.kim@corp.example", "a brand new passphrase 9").ok


# ----------------------------------------------------------------- outbox


def notice(key: str, **fields: Any) -> Notice:
    member_id = key.split(":")[1]
    return Notice(member_id, NoticeKind.CHANGE_REQUEST, idempotency_key=key, **fields)


def test_outbox_ignores_a_repeated_key(svc: ResetService) -> None:
    """send keeps the first notice of a key; repeats, in one call or later, are ignored."""
    box = outbox(svc)
    box.send([notice("p:m1:x", token="t1"), notice("p:m1:x", token="t2")])
    box.send([notice("p:m1:x", token="t3"), notice("p:m2:x")])
    pending = box.pending()
    assert ["p:m1:x", "p:m2:x"] == [n.idempotency_key for n in pending]
    assert "t1" == pending[0].token


def test_outbox_keeps_every_field(svc: ResetService, clock: FakeClock) -> None:
    """A queued notice comes back equal, secrets included, until delivered."""
    full = Notice(
        "m1",
        NoticeKind.PASSWORD_RESET,
        token="tok",
        password="pw",
        expires_at=clock() + timedelta(hours=1),
        idempotency_key="p:m1:password_reset",
        recipient="mina@home.example",
        actor="admin",
        issued_at=clock(),
        plan_id="p",
        name="Mina Kim",
    )
    outbox(svc).send([full])
    assert [full] == outbox(svc).pending()


def test_deliver_erases_secrets_and_never_resends(svc: ResetService) -> None:
    """A delivered notice loses its token and password and is never handed over again."""
    box = outbox(svc)
    box.send([notice("p:m1:x", token="tok-1"), notice("p:m2:x", password="pw-2")])
    got: list[Notice] = []
    assert DeliveryReport(2) == box.deliver(got.append)
    assert ("tok-1", "pw-2") == (got[0].token, got[1].password)
    assert [] == box.pending()
    assert [n.without_secrets() for n in got] == box.delivered()
    assert not {"tok-1", "pw-2"} & set(flat(store(svc).dump()))
    box.send([notice("p:m1:x", token="tok-1")])
    assert DeliveryReport(0) == box.deliver(got.append)
    assert 2 == len(got)
    assert ["delivered", "delivered"] == [row["status"] for row in box.listing()]


def test_failed_delivery_stays_pending(svc: ResetService, clock: FakeClock) -> None:
    """A transport error keeps the notice pending, counts the attempt and names the error type;
    it is retried after a backoff that doubles with every attempt."""
    box = outbox(svc)
    box.send([notice("p:m1:x", token="secret-token"), notice("p:m2:x")])

    def flaky(n: Notice) -> None:
        if n.member_id == "m1":
            raise ConnectionError("smtp said secret-token")

    report = box.deliver(flaky)
    assert DeliveryReport(1, deferred=(("p:m1:x", "ConnectionError"),)) == report
    [row, done] = box.listing()
    assert ("deferred", 1, "ConnectionError") == (
        row["status"],
        row["attempts"],
        row["last_error"],
    )
    assert clock.now + timedelta(minutes=1) == row["retry_at"]
    assert "secret-token" not in repr(row)
    assert "delivered" == done["status"]
    assert ["secret-token"] == [n.token for n in box.pending()]
    assert DeliveryReport() == box.deliver(lambda n: None)  # not due yet
    clock.advance(minutes=1)
    assert DeliveryReport(deferred=(("p:m1:x", "ConnectionError"),)) == box.deliver(flaky)
    assert clock.now + timedelta(minutes=2) == box.listing()[0]["retry_at"]  # doubled
    clock.advance(minutes=2)
    assert DeliveryReport(1) == box.deliver(lambda n: None)


def test_a_permanent_failure_is_final_and_the_others_still_go(svc: ResetService) -> None:
    """PermanentDeliveryError marks that notice failed, erases its secret; the rest go."""
    box = outbox(svc)
    box.send([notice("p:m1:x", token="secret-token"), notice("p:m2:x")])

    def refuse_m1(n: Notice) -> None:
        if n.member_id == "m1":
            raise PermanentDeliveryError("SMTP 550", code=550)

    assert DeliveryReport(1, failed=(("p:m1:x", "SMTP 550"),)) == box.deliver(refuse_m1)
    [row, done] = box.listing()
    assert ("failed", "SMTP 550", None) == (row["status"], row["last_error"], row["retry_at"])
    assert "delivered" == done["status"]
    assert [] == box.pending()
    assert DeliveryReport() == box.deliver(lambda n: None)  # never again
    assert [None] == [r[4] for r in svc.store.dump()["outbox"] if r[1] == "p:m1:x"]  # type: ignore[attr-defined]


def test_a_server_that_is_down_stops_the_run(svc: ResetService) -> None:
    """An error with stop_run (server unreachable) defers that notice and stops trying others."""
    box = outbox(svc)
    box.send([notice(f"p:m{i}:x") for i in range(3)])
    calls: list[str] = []

    def down(n: Notice) -> None:
        calls.append(n.idempotency_key)
        raise TemporaryDeliveryError(
            "SMTP server unreachable (ConnectionRefusedError)", stop_run=True
        )

    report = box.deliver(down)
    assert (True, ["p:m0:x"]) == (report.stopped, calls)
    assert 3 == len(box.pending())


def test_rate_spaces_the_notices(svc: ResetService) -> None:
    """rate=N: at most N notices a second (the waits go through the injected sleep)."""
    box = outbox(svc)
    box.send([notice(f"p:m{i}:x") for i in range(4)])
    waits: list[float] = []
    assert 4 == box.deliver(lambda n: None, rate=2, sleep=waits.append).delivered
    assert 3 == len(waits)
    assert all(0.4 < w <= 0.5 for w in waits)
    for bad in (0, -1.0):
        with pytest.raises(InvalidInputError):
            box.deliver(lambda n: None, rate=bad)
    with pytest.raises(InvalidInputError):
        box.deliver(lambda n: None, backoff=timedelta(0))


def test_deliver_limit(svc: ResetService) -> None:
    """limit caps how many notices one call delivers; a negative one is refused."""
    box = outbox(svc)
    box.send([notice(f"p:m{i}:x") for i in range(3)])
    assert 2 == box.deliver(lambda n: None, limit=2).delivered
    assert ["p:m2:x"] == [n.idempotency_key for n in box.pending()]
    assert "pending" == box.listing()[2]["status"]
    with pytest.raises(InvalidInputError):
        box.deliver(lambda n: None, limit=-1)


def test_interrupted_delivery_releases_the_notice(svc: ResetService) -> None:
    """KeyboardInterrupt in the transport propagates; the notice stays pending, unclaimed."""
    box = outbox(svc)
    box.send([notice("p:m1:x")])

    def interrupt(n: Notice) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        box.deliver(interrupt)
    assert (0, "pending") == (box.listing()[0]["attempts"], box.listing()[0]["status"])
    assert 1 == box.deliver(lambda n: None).delivered


def test_concurrent_deliverers_do_not_double_send(
    svc: ResetService, db: Path, clock: FakeClock
) -> None:
    """A notice being delivered by one process is skipped by another delivering meanwhile."""
    box = outbox(svc)
    box.send([notice("p:m1:x"), notice("p:m2:x")])
    with SqliteStorage(db) as other_store:
        other = SqliteOutbox(other_store, clock=clock)
        inner: list[DeliveryReport] = []

        def transport(n: Notice) -> None:
            if not inner:
                inner.append(other.deliver(lambda n: None))

        report = box.deliver(transport)
    assert [DeliveryReport(1)] == inner  # it took m2 only
    assert DeliveryReport(1) == report  # m1 here; m2 was claimed by the other
    assert [] == box.pending()


def test_empty_key_gets_its_own(svc: ResetService) -> None:
    """Notices without an idempotency key are all kept, each under a generated key."""
    box = outbox(svc)
    box.send([Notice("m1", NoticeKind.CHANGE_REQUEST), Notice("m2", NoticeKind.CHANGE_REQUEST)])
    keys = [n.idempotency_key for n in box.pending()]
    assert 2 == len(set(keys))
    assert all(k.startswith("auto:") for k in keys)


def test_apply_fills_the_outbox_once(svc: ResetService) -> None:
    """Applying a plan twice queues each notice once."""
    seed(svc)
    plan = svc.plan(TARGETS, force(follow_with_request=True), actor="admin")
    svc.apply(plan, confirm=plan.confirmation)
    svc.apply(plan, confirm=plan.confirmation)
    assert 5 == len(outbox(svc).pending())  # 3 change requests, 2 resets (m3: no channel)


# ----------------------------------------------------------------- sessions


def test_sessions_create_and_revoke(svc: ResetService, clock: FakeClock) -> None:
    """revoke ends the members' sessions issued at or before the cutoff, and no others."""
    box = sessions(svc)
    early = box.create("m1")
    other = box.create("m2")
    cutoff = clock()
    clock.advance(1)
    late = box.create("m1")
    assert all(box.is_active(s) for s in (early, other, late))
    assert not box.is_active("no-such-session")
    box.revoke(["m1"], cutoff)
    assert (False, True, True) == tuple(box.is_active(s) for s in (early, other, late))
    box.revoke(["m1", "m2"], clock())
    assert not any(box.is_active(s) for s in (early, other, late))
    with pytest.raises(InvalidInputError):
        box.revoke(["m1"], datetime(2026, 1, 1))


def test_force_apply_ends_sessions(svc: ResetService, clock: FakeClock) -> None:
    """A force change ends the targets' sessions in the file."""
    seed(svc)
    session = sessions(svc).create("m1")
    clock.advance(1)
    plan = svc.plan(TARGETS, force(), actor="admin")
    result = svc.apply(plan, confirm=plan.confirmation)
    assert result.outcomes["m1"].sessions_revoked
    assert not sessions(svc).is_active(session)


# ----------------------------------------------------------------- secrets


def test_reprs_hold_no_secret(svc: ResetService) -> None:
    """The adapters' reprs show counts and the path, never a secret."""
    seed(svc)
    outbox(svc).send([notice("p:m1:x", token="tok-x")])
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


def test_a_dead_link_is_withdrawn_not_delivered(svc: ResetService) -> None:
    """A change request superseded before delivery is withdrawn: no dead link goes out."""
    svc.store.add_members([Member("admin", "admin@x", role="admin"), Member("m1", "m1@x")])  # type: ignore[attr-defined]
    request = ResetPolicy(ResetMode.REQUEST_CHANGE)
    for _ in range(2):
        plan = svc.plan(["m1"], request, actor="admin")
        svc.apply(plan, confirm=plan.confirmation)
    outbox: Any = svc.notifier
    pending = outbox.pending()
    assert 1 == len(pending)  # the older link is dead: not listed
    assert "m1" == svc.check_token(pending[0].token)
    seen: list[Notice] = []
    report = outbox.deliver(seen.append)
    assert (1, 1) == (report.delivered, report.withdrawn)
    assert [pending[0].token] == [n.token for n in seen]
    statuses = sorted(row["status"] for row in outbox.listing())
    assert ["delivered", "withdrawn"] == statuses
    assert all(row[4] is None for row in svc.store.dump()["outbox"])  # type: ignore[attr-defined]
