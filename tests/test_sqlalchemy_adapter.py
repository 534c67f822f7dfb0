"""What only the SQLAlchemy store does: a host's users table, chunks for workers, engines.

Run over SQLite, PostgreSQL and MariaDB (servers from ``tests/databases.py``).
The behaviour it shares with every store is in ``test_store_contract.py``
and ``test_service.py``.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import argon2
import pytest
import sqlalchemy as sa

from bulkreset import ALL, Member, Outcome, ResetMode, ResetPolicy, ResetService
from bulkreset.adapters.sqlalchemy import (
    SqlAlchemyStorage,
    UsersTable,
    metadata,
    open_service,
)
from bulkreset.errors import (
    ApprovalRequiredError,
    ConfirmationError,
    InvalidInputError,
    PlanInProgressError,
    StorageError,
)

from .conftest import FakeClock, directory

DATABASES = ["sqlalchemy-sqlite", "postgresql", "mariadb"]
PW = "Harbor 42 lanterns"
OWN = "my own secret passphrase 7"

host = sa.MetaData()
app_users = sa.Table(
    "app_users",
    host,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(256), nullable=False),
    sa.Column("email_key", sa.String(256)),
    sa.Column("display_name", sa.String(256), nullable=False, server_default=""),
    sa.Column("kind", sa.String(16), nullable=False, server_default="password"),
    sa.Column("phone", sa.String(64)),
    sa.Column("recovery_email", sa.String(256)),
    sa.Column("state", sa.String(16), nullable=False, server_default="active"),
    sa.Column("role", sa.String(16), nullable=False, server_default="member"),
    sa.Column("pw_hash", sa.Text),
    sa.Column("plan_tier", sa.String(16), nullable=False, server_default="free"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


def mapping(**options: Any) -> UsersTable:
    return UsersTable(
        app_users,
        member_id="id",
        login_id="email",
        name="display_name",
        sign_in="kind",
        mobile_phone="phone",
        personal_email="recovery_email",
        status="state",
        role="role",
        **options,
    )


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    engine: sa.Engine = request.getfixturevalue("database_engine")
    host.create_all(engine)
    with engine.begin() as conn:
        conn.execute(app_users.delete())
    return engine


def host_service(
    engine: sa.Engine, clock: FakeClock, hasher: argon2.PasswordHasher, **options: Any
) -> ResetService:
    service = open_service(
        engine, users=mapping(**options), clock=clock, hasher=hasher, sleep=clock.sleep
    )
    service.store.add_members(directory())  # type: ignore[attr-defined]
    return service


def host_rows(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(sa.select(app_users))}


def force(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW, **options)


# ----------------------------------------------------------------- a host's users table


def test_members_live_in_the_hosts_table(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """add_members fills the mapped columns (others keep their defaults); bulkreset's own
    members table stays empty; plans and applies read the host's rows."""
    service = host_service(engine, clock, cheap_hasher)
    rows = host_rows(engine)
    assert {m.member_id for m in directory()} == set(rows)
    assert ("Mina.Kim@corp.example", "free", "mina@home.example") == (
        rows["m1"].email,
        rows["m1"].plan_tier,
        rows["m1"].recovery_email,
    )
    assert [] == service.store.dump()["bulkreset_members"]  # type: ignore[attr-defined]
    for member_id in ("m1", "m2", "q1"):
        service.set_password(member_id, OWN)
    plan = service.plan(ALL, force(), actor="admin")
    result = service.apply(plan, confirm=plan.confirmation)
    reset = {i for i, o in result.outcomes.items() if o.outcome is Outcome.RESET}
    assert {"m1", "m2", "m3", "q1", "admin2"} == reset  # boss: an admin may not reset them
    assert service.authenticate("MINA.KIM@corp.example", PW).must_change_password
    assert all(row.pw_hash is None for row in host_rows(engine).values())  # not mapped


def test_a_row_the_host_edits_is_what_apply_sees(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A member the host suspends between plan and apply is re-checked from its table."""
    service = host_service(engine, clock, cheap_hasher)
    plan = service.plan(["m1", "m2"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    with engine.begin() as conn:
        conn.execute(app_users.update().where(app_users.c.id == "m2").values(state="suspended"))
    result = service.apply(plan, confirm=plan.confirmation)
    assert (Outcome.REQUESTED, Outcome.EXCLUDED) == (
        result.outcomes["m1"].outcome,
        result.outcomes["m2"].outcome,
    )
    assert "suspended" == result.outcomes["m2"].reason


def test_copy_mode_writes_the_plans_hash_into_each_row(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """shared_password="copy": every target's row holds the plan's one hash; a password a
    member sets goes to their row as their own hash (bulkreset keeps no copy)."""
    service = host_service(
        engine, clock, cheap_hasher, password_hash="pw_hash", shared_password="copy"
    )
    assert not service.store.hashes_each_member  # type: ignore[attr-defined]
    plan = service.plan(["m1", "m2"], force(), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    rows = host_rows(engine)
    assert rows["m1"].pw_hash.startswith("$argon2id$")
    assert rows["m1"].pw_hash == rows["m2"].pw_hash  # the documented copy
    assert rows["m3"].pw_hash is None
    assert service.authenticate("jun@corp.example", PW).ok
    service.change_password("m1", PW, OWN)
    rows = host_rows(engine)
    assert rows["m1"].pw_hash != rows["m2"].pw_hash
    assert cheap_hasher.verify(rows["m1"].pw_hash, OWN)
    own = [r for r in service.store.dump()["bulkreset_credentials"] if r[0] == "m1"]  # type: ignore[attr-defined]
    assert [None] == [r[1] for r in own]


def test_per_member_mode_hashes_once_per_member(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """shared_password="per_member" (SPEC §5): each target's row gets its own salt; the plan
    keeps the plain password only until the apply is done."""
    service = host_service(engine, clock, cheap_hasher, password_hash="pw_hash")
    assert service.store.hashes_each_member  # type: ignore[attr-defined]
    plan = service.plan(["m1", "m2"], force(), actor="admin")
    record = service.store.load_plan(plan.plan_id)
    assert record is not None
    assert PW == record.password
    result = service.apply(plan, confirm=plan.confirmation)
    assert 2 == result.count(Outcome.RESET)
    rows = host_rows(engine)
    assert rows["m1"].pw_hash != rows["m2"].pw_hash
    assert all(cheap_hasher.verify(rows[i].pw_hash, PW) for i in ("m1", "m2"))
    assert service.authenticate("jun@corp.example", PW).must_change_password
    record = service.store.load_plan(plan.plan_id)
    assert record is not None
    assert record.password is None  # erased once every member had their own hash


def test_a_hash_the_host_already_has_signs_in(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A member whose row already holds an Argon2id hash, and bulkreset nothing, signs in with
    it, counts as having a password (R2) and is reset like any other."""
    service = host_service(engine, clock, cheap_hasher, password_hash="pw_hash")
    with engine.begin() as conn:
        conn.execute(
            app_users.update()
            .where(app_users.c.id == "q1")
            .values(pw_hash=cheap_hasher.hash("quick but has one"))
        )
    assert service.authenticate("quick@corp.example", "quick but has one").ok
    plan = service.plan(["q1", "m1"], force(), actor="admin")
    assert ["m1", "q1"] == sorted(m.member_id for m in plan.targets)
    service.apply(plan, confirm=plan.confirmation)
    assert service.authenticate("quick@corp.example", PW).ok
    assert not service.authenticate("quick@corp.example", "quick but has one").ok


def test_sign_in_without_a_login_key_column_folds_case(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Without a login_key column, sign-in matches by lower() and folds in Python; with one,
    full case folding holds (Straße = STRASSE)."""
    service = host_service(engine, clock, cheap_hasher)
    service.set_password("m1", OWN)
    assert service.authenticate("MINA.KIM@CORP.EXAMPLE", OWN).ok
    keyed = host_service(engine, clock, cheap_hasher, login_key="email_key")
    keyed.store.add_members([Member("de", "Straße@corp.example")])  # type: ignore[attr-defined]
    keyed.set_password("de", OWN)
    assert keyed.authenticate("STRASSE@corp.example", OWN).ok
    assert "strasse@corp.example" == host_rows(engine)["de"].email_key


def test_a_login_taken_in_the_hosts_table_is_refused(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Two members with one folded login ID are refused, and nothing is written."""
    service = host_service(engine, clock, cheap_hasher)
    before = host_rows(engine)
    with pytest.raises(InvalidInputError, match="already used by 'm1'"):
        service.store.add_members(  # type: ignore[attr-defined]
            [Member("new", "new@corp.example"), Member("x", "mina.kim@CORP.example")]
        )
    assert before == host_rows(engine)


def test_a_unique_value_of_another_member_is_refused_not_merged(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A new member whose unique column (here the phone) is another member's is refused;
    that other member's row is left as it was (MariaDB's ON DUPLICATE KEY UPDATE would
    overwrite it)."""
    phones = sa.MetaData()
    table = sa.Table(
        "app_people",
        phones,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(256), nullable=False),
        sa.Column("phone", sa.String(32), unique=True),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    phones.drop_all(engine)
    phones.create_all(engine)
    service = open_service(
        engine,
        users=UsersTable(table, member_id="id", login_id="email", mobile_phone="phone"),
        hasher=cheap_hasher,
    )
    store: Any = service.store
    store.add_members([Member("alice", "alice@corp.example", mobile_phone="+15550001")])
    with pytest.raises(InvalidInputError, match="already used"):
        store.add_members([Member("mallory", "mallory@corp.example", mobile_phone="+15550001")])
    store.add_members([Member("alice", "alice.new@corp.example", mobile_phone="+15550001")])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.email)).all()
    assert [("alice", "alice.new@corp.example")] == [tuple(r) for r in rows]
    phones.drop_all(engine)


def test_the_hosts_hash_column_is_the_truth_in_copy_mode(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """After a force change in copy mode, a hash the host writes signs in at once, and a
    hash it clears stops the shared password: bulkreset does not keep a second copy."""
    service = host_service(
        engine, clock, cheap_hasher, password_hash="pw_hash", shared_password="copy"
    )
    plan = service.plan(["m1", "m2"], force(), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    with engine.begin() as conn:
        conn.execute(
            app_users.update().where(app_users.c.id == "m1").values(pw_hash=cheap_hasher.hash(OWN))
        )
        conn.execute(app_users.update().where(app_users.c.id == "m2").values(pw_hash=None))
    assert service.authenticate("mina.kim@corp.example", OWN).ok
    assert not service.authenticate("mina.kim@corp.example", PW).ok
    assert not service.authenticate("jun@corp.example", PW).ok


def test_a_database_error_carries_no_secret(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A failed write's StorageError, and the database error chained to it, show neither
    the statement's parameters nor any hash in them."""
    import traceback

    from bulkreset import AuditEvent
    from bulkreset.ports import CredentialWrite, EffectBatch

    service = open_service(engine, clock=clock, hasher=cheap_hasher)
    service.store.add_members(directory())  # type: ignore[attr-defined]
    secret = "$argon2id$v=19$m=8,t=1,p=1$SECRETSALT$SECRETHASH"
    good = CredentialWrite("m1", at=clock(), must_change=False, password_hash=secret)
    dangling = CredentialWrite("m2", at=clock(), must_change=True, shared_plan_id="no-plan")
    batch = EffectBatch(
        "p", credentials=(good, dangling), audit=(AuditEvent(at=clock(), action="x"),)
    )
    with pytest.raises(StorageError) as caught:
        service.store.commit(batch)
    text = "".join(traceback.format_exception(caught.value))
    assert "IntegrityError" in text
    assert "SECRET" not in text
    assert caught.value.__cause__ is not None
    assert getattr(caught.value.__cause__, "params", None) is None


def test_a_deadlock_is_tried_again(engine: sa.Engine) -> None:
    """A transaction the database chose as a deadlock victim runs again; others do not."""

    class DeadlockError(Exception):
        sqlstate = "40P01"
        args = (1213,)

    store = SqlAlchemyStorage(engine)
    attempts: list[int] = []

    def work(conn: sa.Connection) -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise sa.exc.OperationalError("UPDATE ...", {}, DeadlockError())
        return 7

    assert 7 == store._retrying(work)
    assert 3 == len(attempts)

    def broken(conn: sa.Connection) -> int:
        attempts.append(1)
        raise sa.exc.OperationalError("UPDATE ...", {}, ValueError("disk full"))

    with pytest.raises(StorageError):
        store._retrying(broken)
    assert 4 == len(attempts)


def test_users_table_names_real_columns() -> None:
    """A mapping naming a column the table lacks, a key column that is not text, or an
    unknown mode, is refused."""
    numbered = sa.Table(
        "numbered",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(256)),
    )
    with pytest.raises(InvalidInputError, match="must hold text"):
        UsersTable(numbered, member_id="id", login_id="email")
    with pytest.raises(InvalidInputError, match="no column 'mail'"):
        UsersTable(app_users, member_id="id", login_id="mail")
    with pytest.raises(InvalidInputError, match="per_member"):
        UsersTable(app_users, member_id="id", login_id="email", shared_password="twice")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        UsersTable("app_users", member_id="id", login_id="email")  # type: ignore[arg-type]


def test_an_invalid_row_is_left_out_and_logged_not_fatal(
    engine: sa.Engine,
    clock: FakeClock,
    cheap_hasher: argon2.PasswordHasher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A row whose values bulkreset does not know is left out with a warning naming the
    member: a plan of everyone still works (R8), that member is excluded as unknown."""
    service = host_service(engine, clock, cheap_hasher)
    with engine.begin() as conn:
        conn.execute(app_users.update().where(app_users.c.id == "m1").values(state="disabled"))
    assert {} == service.store.get_members(["m1"])
    assert "member 'm1' left out" in caplog.text
    plan = service.plan(["m1", "m2"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    assert (["m2"], ["unknown_member"]) == (
        [m.member_id for m in plan.targets],
        [e.reason.value for e in plan.excluded],
    )
    everyone = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    assert "m1" not in {m.member_id for m in everyone.targets}
    assert not service.authenticate("mina.kim@corp.example", OWN).ok


def test_non_ascii_logins_need_a_login_key_column(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Without login_key, sign-in can only match ASCII logins: others are refused at once."""
    service = host_service(engine, clock, cheap_hasher)
    with pytest.raises(InvalidInputError, match="login_key"):
        service.store.add_members([Member("de", "straße@corp.example")])  # type: ignore[attr-defined]
    keyed = host_service(engine, clock, cheap_hasher, login_key="email_key")
    keyed.store.add_members([Member("fr", "Émile@corp.example")])  # type: ignore[attr-defined]
    keyed.set_password("fr", OWN)
    assert keyed.authenticate("émile@corp.example", OWN).ok


# ----------------------------------------------------------------- engines and tables


def test_a_url_makes_an_engine_and_its_password_stays_hidden() -> None:
    """A URL string is accepted; repr shows the URL without its password; close disposes."""
    store = SqlAlchemyStorage("postgresql+psycopg://app:s3cret-pw@db.invalid/app")
    assert "s3cret-pw" not in repr(store)
    assert "db.invalid" in repr(store)
    store.close()
    with pytest.raises(InvalidInputError):
        SqlAlchemyStorage("not a url")
    with pytest.raises(InvalidInputError):
        SqlAlchemyStorage(42)  # type: ignore[arg-type]


def test_missing_tables_say_how_to_make_them(tmp_path: Any) -> None:
    """Without bulkreset's tables, a call fails with a StorageError naming create_all."""
    store = SqlAlchemyStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StorageError, match="create_all"):
        store.get_members(["m1"])
    store.close()
    made = SqlAlchemyStorage(f"sqlite:///{tmp_path / 'made.db'}", create_tables=True)
    assert {} == made.get_members(["m1"])
    assert {t.name for t in metadata.sorted_tables} == set(made.dump())
    made.close()


# ----------------------------------------------------------------- chunks for workers


@pytest.fixture
def chunked(
    request: pytest.FixtureRequest,
    engine: sa.Engine,
    clock: FakeClock,
    cheap_hasher: argon2.PasswordHasher,
) -> ResetService:
    service = open_service(engine, clock=clock, hasher=cheap_hasher, sleep=clock.sleep)
    members = [Member("admin", "admin@corp.example", role="admin")]
    members += [
        Member(f"u{i:03}", f"u{i:03}@corp.example", personal_email=f"u{i}@home.example")
        for i in range(25)
    ]
    service.store.add_members(members)  # type: ignore[attr-defined]
    return service


def test_workers_apply_a_split_plan_once(chunked: ResetService) -> None:
    """split makes chunks; apply_chunk applies the first free one; the last chunk's worker
    finishes the plan and returns the whole result; nothing is applied twice."""
    service = chunked
    plan = service.plan(ALL, force(), actor="admin")
    with pytest.raises(ConfirmationError):
        service.split(plan, confirm="nope")
    assert 3 == service.split(plan, confirm=plan.confirmation, chunk_size=10)
    assert 3 == service.split(plan, confirm=plan.confirmation, chunk_size=2)  # kept
    seen = []
    while (done := service.apply_chunk(plan, confirm=plan.confirmation)) is not None:
        seen.append(done)
    assert [(0, 10), (10, 20), (20, 25)] == [(c.start, c.stop) for c in seen]
    assert [10, 10, 5] == [c.count(Outcome.RESET) for c in seen]
    assert [2, 1, 0] == [c.chunks_left for c in seen]
    assert [None, None] == [c.result for c in seen[:2]]
    final = seen[-1].result
    assert final is not None
    assert (25, 1) == (final.count(Outcome.RESET), final.count(Outcome.EXCLUDED))
    notices: Any = service.notifier
    assert 25 == len(notices.pending())  # one notice each, never two
    record = service.store.load_plan(plan.plan_id)
    assert record is not None
    assert record.finished_at is not None


def test_a_crashed_workers_chunk_is_taken_over_after_its_lease(
    chunked: ResetService, clock: FakeClock
) -> None:
    """A chunk whose worker vanished stays claimed until its lease lapses; then the next
    worker takes it over (taken_over) and resumes it without repeating an effect."""
    service = chunked
    store: Any = service.store
    plan = service.plan(ALL, force(), actor="admin")
    service.split(plan, confirm=plan.confirmation, chunk_size=10)
    now = clock()
    crashed = store.claim_chunk(plan.plan_id, "dead-worker", now, now + timedelta(minutes=2))
    assert 0 == crashed.index
    first = service.apply_chunk(plan, confirm=plan.confirmation)
    assert first is not None
    assert 1 == first.index  # chunk 0 is still leased
    assert service.apply_chunk(plan, confirm=plan.confirmation, chunk=0) is None
    clock.advance(minutes=3)
    taken = service.apply_chunk(plan, confirm=plan.confirmation, chunk=0)
    assert taken is not None
    assert (0, True, 10) == (taken.index, taken.taken_over, taken.count(Outcome.RESET))
    assert not store.finish_chunk(plan.plan_id, 0, "dead-worker", clock())  # it lost it


def test_a_workers_loop_waits_for_a_dead_workers_chunk_then_finishes_the_plan(
    chunked: ResetService, clock: FakeClock
) -> None:
    """apply_chunks applies every free chunk, waits (the injected sleep moves the clock) while
    a dead worker's lease lasts, takes that chunk over, and returns the plan's result."""
    service = chunked
    store: Any = service.store
    plan = service.plan(ALL, force(), actor="admin")
    service.split(plan, confirm=plan.confirmation, chunk_size=10)
    now = clock()
    store.claim_chunk(plan.plan_id, "dead-worker", now, now + timedelta(minutes=2), index=1)
    assert service.apply_chunks(plan, confirm=plan.confirmation, wait=None) is None
    assert (1, 3) == store.chunks_left(plan.plan_id)  # without waiting, chunk 1 stays
    result = service.apply_chunks(plan.plan_id, confirm=plan.confirmation, wait=30)
    assert result is not None
    assert 25 == result.count(Outcome.RESET)
    assert clock() >= now + timedelta(minutes=2)


def test_whole_applies_and_workers_exclude_each_other(
    chunked: ResetService, clock: FakeClock
) -> None:
    """While a worker holds a chunk, apply() refuses; while apply() holds the plan, no chunk
    is handed out."""
    service = chunked
    store: Any = service.store
    plan = service.plan(ALL, force(), actor="admin")
    service.split(plan, confirm=plan.confirmation, chunk_size=10)
    now = clock()
    assert store.claim_chunk(plan.plan_id, "w1", now, now + timedelta(minutes=2)) is not None
    with pytest.raises(PlanInProgressError):
        service.apply(plan, confirm=plan.confirmation)
    clock.advance(minutes=3)
    now = clock()
    assert store.claim_plan(plan.plan_id, "whole", now, now + timedelta(minutes=2))
    assert service.apply_chunk(plan, confirm=plan.confirmation) is None


def test_concurrent_claims_get_different_chunks(chunked: ResetService, clock: FakeClock) -> None:
    """Many threads claiming at once each get a different chunk, and none is lost."""
    service = chunked
    plan = service.plan(ALL, force(), actor="admin")
    service.split(plan, confirm=plan.confirmation, chunk_size=2)  # 13 chunks
    store: Any = service.store
    got: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        now = clock()
        while (claim := store.claim_chunk(plan.plan_id, name, now, now + timedelta(1))) is not None:
            with lock:
                got.append(claim.index)
            store.finish_chunk(plan.plan_id, claim.index, name, now)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(range(13)) == sorted(got)
    assert (0, 13) == store.chunks_left(plan.plan_id)


def test_an_unapproved_plan_is_not_split(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """With two-person approval, split and apply_chunk refuse a plan nobody approved."""
    service = open_service(engine, clock=clock, hasher=cheap_hasher, approval_threshold=0)
    service.store.add_members(directory())  # type: ignore[attr-defined]
    plan = service.plan(["m1"], force(), actor="admin")
    with pytest.raises(ApprovalRequiredError):
        service.split(plan, confirm=plan.confirmation)
    service.approve(plan, approver="admin2")
    assert 1 == service.split(plan, confirm=plan.confirmation)


def test_stores_that_cannot_split_say_so(cheap_hasher: argon2.PasswordHasher) -> None:
    """split and apply_chunk on a store without chunks raise InvalidInputError."""
    from bulkreset.adapters.memory import open_service as open_memory

    service = open_memory(directory(), hasher=cheap_hasher)
    plan = service.plan(["m1"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    with pytest.raises(InvalidInputError, match="cannot split"):
        service.split(plan, confirm=plan.confirmation)
    with pytest.raises(InvalidInputError, match="cannot split"):
        service.apply_chunk(plan, confirm=plan.confirmation)


def test_alembic_autogenerate_sees_the_tables_and_no_drift(engine: sa.Engine) -> None:
    """Alembic's autogenerate, given ``metadata``, proposes every bulkreset table on an
    empty database and finds nothing to change once they exist (types and indexes match)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    schema = (engine.get_execution_options().get("schema_translate_map") or {}).get(None)
    # Alembic compares the connection's default schema: point it at the scratch one.
    inspected = engine
    if schema and engine.dialect.name != "postgresql":  # MariaDB: the database is the schema
        inspected = sa.create_engine(engine.url.set(database=schema))

    def diff() -> list[Any]:
        with inspected.begin() as conn:
            if schema and engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL search_path TO {schema}")
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return [d for d in compare_metadata(context, metadata) if _ours(d)]

    assert [] == diff()  # the fixture created them: no drift
    metadata.drop_all(engine)
    try:
        missing = {d[1].name for d in diff() if d[0] == "add_table"}
        assert {t.name for t in metadata.sorted_tables} == missing
    finally:
        metadata.create_all(engine)
        if inspected is not engine:
            inspected.dispose()


def _ours(change: Any) -> bool:
    """Only differences about bulkreset's tables (the host's test table is not in metadata)."""
    first = change[0] if isinstance(change, tuple) else change[0][0]
    subject = change[1] if isinstance(change, tuple) else change[0][1]
    name = getattr(subject, "name", "") or ""
    table = getattr(getattr(subject, "table", None), "name", "") or ""
    return first != "remove_table" and (
        name.startswith("bulkreset_") or table.startswith("bulkreset_")
    )


def test_odd_calls_get_clear_errors(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """An unknown option, a chunk that is not a number, a plan never split, a session for
    no member: each an InvalidInputError; reprs need no database."""
    with pytest.raises(InvalidInputError, match="bad option"):
        open_service(engine, bogus=1)
    service = open_service(engine, clock=clock, hasher=cheap_hasher)
    service.store.add_members(directory())  # type: ignore[attr-defined]
    plan = service.plan(["m1"], force(), actor="admin")
    with pytest.raises(InvalidInputError, match="not split"):
        service.apply_chunk(plan, confirm=plan.confirmation)
    service.split(plan, confirm=plan.confirmation)
    with pytest.raises(InvalidInputError, match="chunk number"):
        service.apply_chunk(plan, confirm=plan.confirmation, chunk="0")  # type: ignore[arg-type]
    sessions: Any = service.sessions
    for bad in ("", "\x00", "\ud800"):
        with pytest.raises(InvalidInputError):
            sessions.create(bad)
    assert (0, 0) == service.store.chunks_left("\ud800")  # type: ignore[attr-defined]
    down = open_service("postgresql+psycopg://nobody:pw@127.0.0.1:1/none")
    assert "on postgresql" in repr(down.notifier) + repr(down.sessions)
    assert "pw@" not in repr(down.notifier)


def test_a_per_member_store_refuses_a_plan_that_kept_no_password(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A plan made while hashes lived in bulkreset's table, applied once the host's table
    holds them per member, is refused before it starts, with a reason."""
    before = host_service(engine, clock, cheap_hasher)
    plan = before.plan(["m1"], force(), actor="admin")
    after = host_service(engine, clock, cheap_hasher, password_hash="pw_hash")
    with pytest.raises(InvalidInputError, match="did not keep its password"):
        after.apply(plan, confirm=plan.confirmation)
    record = after.store.load_plan(plan.plan_id)
    assert record is not None
    assert record.started_at is None


def test_a_staged_apply_counts_targets_workers_did_before(chunked: ResetService) -> None:
    """A chunk applied by a worker, then a staged apply: the counts cover every target,
    those done earlier included, and match the outcomes."""
    service = chunked
    plan = service.plan(ALL, force(), actor="admin")
    service.split(plan, confirm=plan.confirmation, chunk_size=5)
    done = service.apply_chunk(plan, confirm=plan.confirmation, chunk=2)  # targets 10-14
    assert done is not None
    staged = service.apply(plan, confirm=plan.confirmation, limit=3)
    by_outcome = Counter(o.outcome for o in staged.outcomes.values())
    assert (8, 17) == (staged.count(Outcome.RESET), staged.remaining)
    assert {k: v for k, v in staged.counts().items() if v} == dict(by_outcome)


def test_a_trailing_space_never_aliases_another_member(
    engine: sa.Engine, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """ "m1 " is not "m1": MariaDB/MySQL (which compare trailing spaces away) refuse such
    IDs and find nothing by them; the others keep them distinct. m1 is never touched."""
    service = open_service(engine, clock=clock, hasher=cheap_hasher)
    store: Any = service.store
    store.add_members(directory())
    before = store.get_members(["m1"])["m1"]
    padded = Member("m1 ", "other@corp.example")
    if engine.dialect.name in ("mysql", "mariadb"):
        with pytest.raises(InvalidInputError, match="trailing space"):
            store.add_members([padded])
        assert {} == store.get_members(["m1 "])
    else:
        store.add_members([padded])
        assert "other@corp.example" == store.get_members(["m1 "])["m1 "].login_id
    assert before == store.get_members(["m1"])["m1"]
    session = service.sessions.create("m1")  # type: ignore[attr-defined]
    assert not service.sessions.is_active(session + " ")  # type: ignore[attr-defined]
