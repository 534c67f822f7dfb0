"""The contract every persistent store meets, run over each of them.

The SQLite file store, and the SQLAlchemy store over SQLite, PostgreSQL and
MariaDB (servers from ``tests/databases.py``): plans, leases, atomic writes,
tokens, the outbox and its delivery, sessions, secrets at rest. The service's
behaviour over every store is in ``test_service.py``; what only one store
does is in ``test_sqlite_adapter.py`` and ``test_sqlalchemy_adapter.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
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
from bulkreset._tokens import token_digest
from bulkreset.adapters._delivery import DeliveryReport
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

PERSISTENT = ["sqlite", "sqlalchemy-sqlite", "postgresql", "mariadb"]


@pytest.fixture(params=PERSISTENT)
def svc(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: FakeClock,
    cheap_hasher: argon2.PasswordHasher,
) -> Iterator[ResetService]:
    options: dict[str, Any] = {"clock": clock, "hasher": cheap_hasher, "sleep": clock.sleep}
    if request.param == "sqlite":
        from bulkreset.adapters.sqlite import open_service

        service = open_service(tmp_path / "bulkreset.db", **options)
    else:
        from bulkreset.adapters.sqlalchemy import open_service as open_sqlalchemy

        service = open_sqlalchemy(request.getfixturevalue("database_engine"), **options)
    service.store.add_members(directory())  # type: ignore[attr-defined]
    yield service
    service.store.close()  # type: ignore[attr-defined]


def store(service: ResetService) -> Any:
    return service.store


def outbox(service: ResetService) -> Any:
    return service.notifier


def sessions(service: ResetService) -> Any:
    return service.sessions


def other_store(service: ResetService) -> Any:
    """A second store object on the same database (its own connections)."""
    first = store(service)
    if hasattr(first, "engine"):
        return type(first)(first.engine)
    return type(first)(first.path)


def table(dump: dict[str, list[tuple[Any, ...]]], name: str) -> list[tuple[Any, ...]]:
    """A table's rows in a store's dump (the SQLAlchemy store prefixes ``bulkreset_``)."""
    return dump.get(name, dump.get(f"bulkreset_{name}", []))


def rows(service: ResetService, name: str) -> list[tuple[Any, ...]]:
    return table(store(service).dump(), name)


def seed(service: ResetService, ids: list[str] = TARGETS) -> None:
    for member_id in ids:
        service.set_password(member_id, OWN)


def force(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW, **options)


def flat(dump: dict[str, list[tuple[Any, ...]]]) -> list[object]:
    return [value for rows in dump.values() for row in rows for value in row]


def event(clock: FakeClock, action: str = "test", **fields: Any) -> AuditEvent:
    return AuditEvent(at=clock(), action=action, **fields)


def test_plan_round_trips(svc: ResetService) -> None:
    """load_plan returns a plan equal to the one made, also from a new connection."""
    seed(svc, ["m1", "m3"])
    plan = svc.plan(["m1", "m2", "m3", "s1", "nobody"], force(), actor="admin")
    assert plan.excluded
    assert plan.warnings
    assert plan == svc.load_plan(plan.plan_id)
    with other_store(svc) as other:
        record = other.load_plan(plan.plan_id)
    assert record is not None
    assert plan == record.plan
    assert record.password is None
    assert record.password_hash is not None


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
    assert [PW] == [r[3] for r in rows(svc, "plans")]
    result = svc.apply(plan, confirm=plan.confirmation)
    assert result.ok
    dump = store(svc).dump()
    assert PW not in flat({"plans": table(dump, "plans")})
    assert PW in flat({"outbox": table(dump, "outbox")})
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
    assert [None, None, None] == [row[1] for row in table(dump, "credentials")]
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


def test_claim_and_release_lease(svc: ResetService, clock: FakeClock) -> None:
    """The apply lease is exclusive across connections until released or expired."""
    seed(svc)
    plan = svc.plan(TARGETS, force(), actor="admin")
    now = clock()
    st = store(svc)
    with other_store(svc) as other:
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
    assert "IntegrityError" in type(caught.value.__cause__).__name__  # the driver's, chained
    assert before == st.dump()
    with pytest.raises((UnicodeEncodeError, StorageError)):
        st.commit(EffectBatch("p", credentials=(good,), audit=(event(clock, detail="\ud800"),)))
    assert before == st.dump()


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
    assert [None] == [r[4] for r in rows(svc, "outbox") if r[1] == "p:m1:x"]  # type: ignore[attr-defined]


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


def test_concurrent_deliverers_do_not_double_send(svc: ResetService, clock: FakeClock) -> None:
    """A notice being delivered by one process is skipped by another delivering meanwhile."""
    box = outbox(svc)
    box.send([notice("p:m1:x"), notice("p:m2:x")])
    with other_store(svc) as second:
        other = type(box)(second, clock=clock)
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
    assert all(row[4] is None for row in rows(svc, "outbox"))  # type: ignore[attr-defined]


def test_a_cancelled_requests_notice_is_withdrawn(svc: ResetService) -> None:
    """Cancelling a request whose notice still waits in the outbox withdraws that notice."""
    plan = svc.plan(["m1", "m2"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    svc.apply(plan, confirm=plan.confirmation)
    assert 1 == svc.cancel_change_requests(actor="admin", member_id="m1")
    assert ["m2"] == [n.member_id for n in outbox(svc).pending()]
    seen: list[Notice] = []
    report = outbox(svc).deliver(seen.append)
    assert (1, 1, ["m2"]) == (report.delivered, report.withdrawn, [n.member_id for n in seen])
