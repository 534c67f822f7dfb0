"""The SQLite store's set-based plan and apply give what the port-by-port path gives.

``SetBasedStorage`` writes the domain's rules (``_planning.classify``) once
more as SQL. Hypothesis generates directories with every odd case the rules
care about, a selection (or ``ALL``) and a policy, and checks that both paths
make the same plan, the same outcomes and leave the same rows.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import argon2
import pytest
from argon2.profiles import CHEAPEST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkreset import (
    ALL,
    Member,
    Notice,
    NoticeKind,
    Outcome,
    ResetMode,
    ResetPolicy,
    ResetService,
)
from bulkreset.adapters import _sqlite_bulk as bulk
from bulkreset.adapters.sqlite import SqliteOutbox, SqliteStorage, open_service
from bulkreset.errors import RetryLaterError, StorageError

from .conftest import FakeClock, port_by_port

CHEAP = argon2.PasswordHasher.from_parameters(CHEAPEST)
PASSWORD = "Harbor 42 lanterns"
STARTED = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)

ids = st.sampled_from([f"u{i}" for i in range(10)] + ["7", "10"])  # "10" < "7" as text


@st.composite
def members(draw: st.DrawFn) -> Member:
    member_id = draw(ids)
    return Member(
        member_id,
        f"{member_id}@corp.example",
        draw(st.sampled_from(["", "Mina Kim", "김민아"])),
        sign_in=draw(st.sampled_from(["password", "password", "quick_login"])),
        mobile_phone=draw(st.sampled_from([None, "+821000000001"])),
        personal_email=draw(st.sampled_from([None, f"{member_id}@home.example"])),
        status=draw(st.sampled_from(["active", "active", "active", "suspended", "pending"])),
        role=draw(st.sampled_from(["member", "member", "admin", "super_admin"])),
        locale=draw(st.sampled_from(["en", "ko", "ja-JP"])),
    )


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    directory = {m.member_id: m for m in draw(st.lists(members(), max_size=10))}
    actor = Member(
        "boss",
        "boss@corp.example",
        role=draw(st.sampled_from(["admin", "super_admin"])),
        personal_email="boss@home.example",
    )
    everyone = [actor, *directory.values()]
    passwords = draw(st.lists(st.sampled_from([m.member_id for m in everyone]), unique=True))
    selection = draw(
        st.one_of(
            st.just(ALL),
            st.lists(st.one_of(ids, st.just("boss"), st.just("ghost")), max_size=14),
        )
    )
    mode = draw(st.sampled_from(list(ResetMode)))
    options = {
        "include_actor": draw(st.booleans()),
        "include_suspended": draw(st.booleans()),
    }
    if mode is ResetMode.FORCE_CHANGE:
        options["new_password"] = PASSWORD
        options["follow_with_request"] = draw(st.booleans())
        options["deliver_password"] = draw(st.booleans())
    # between plan and apply: some members change (suspended, pending again, Quick Login)
    changes = draw(
        st.lists(
            st.tuples(
                st.sampled_from([m.member_id for m in everyone[1:]] or ["boss"]),
                st.sampled_from(["suspended", "pending", "quick_login", "active", "contact"]),
            ),
            max_size=3,
        )
    )
    return {
        "members": everyone,
        "passwords": passwords,
        "selection": selection,
        "policy": ResetPolicy(mode, **options),  # type: ignore[arg-type]
        "changes": changes,
    }


@contextmanager
def service_over(case: dict[str, Any], *, ports: bool) -> Iterator[ResetService]:
    """A fresh in-memory SQLite service holding the case's directory and passwords."""
    clock = FakeClock(STARTED)
    service = open_service(":memory:", clock=clock, hasher=CHEAP, chunk_size=3)
    try:
        if ports:
            port_by_port(service)
        service.store.add_members(case["members"])  # type: ignore[attr-defined]
        for member_id in case["passwords"]:
            service.set_password(member_id, "my own secret passphrase 7")
        clock.advance(minutes=1)
        yield service
    finally:
        service.store.close()  # type: ignore[attr-defined]


def changed(member: Member, change: str) -> Member:
    if change == "contact":  # moved: new name, login and personal email
        return Member(
            **{
                **_fields(member),
                "name": "Moved Person",
                "login_id": f"new-{member.login_id}",
                "personal_email": f"new-{member.member_id}@home.example",
                "locale": "ko",
            }
        )
    if change == "quick_login":
        return Member(**{**_fields(member), "sign_in": "quick_login"})
    return Member(**{**_fields(member), "status": change})


def _fields(member: Member) -> dict[str, Any]:
    return {
        "member_id": member.member_id,
        "login_id": member.login_id,
        "name": member.name,
        "locale": member.locale,
        "sign_in": member.sign_in,
        "mobile_phone": member.mobile_phone,
        "personal_email": member.personal_email,
        "status": member.status,
        "role": member.role,
    }


def plan_view(plan: Any) -> tuple[Any, ...]:
    return (
        list(plan.targets),
        list(plan.excluded),
        list(plan.warnings),
        plan.precautions,
    )


def outcome_view(result: Any) -> list[tuple[Any, ...]]:
    return [
        (o.member_id, o.outcome, o.reason, o.sessions_revoked, o.notified, o.login_id)
        for o in result
    ]


def store_view(service: ResetService, plan_id: str, ids: list[str]) -> dict[str, Any]:
    """The rows an apply leaves, without times, tokens or plan IDs (they differ by run)."""
    store: Any = service.store
    dump = store.dump()
    credentials = store.get_credentials(ids)

    def key(text: str) -> str:
        return text.replace(plan_id, "PLAN")

    return {
        "credentials": sorted(
            (m, c.generation, c.shared_plan_id == plan_id, c.must_change)
            for m, c in credentials.items()
        ),
        "outbox": [
            (
                key(n.idempotency_key),
                n.member_id,
                n.kind,
                n.recipient,
                n.name,
                n.password,
                n.token is not None,
                n.expires_at,
                n.locale,
                n.phone,
            )
            for n in service.notifier.pending()  # type: ignore[attr-defined]
        ],
        "steps": sorted(  # a chunk's steps, member by member or step by step
            (e.member_id or "", step, e.detail.startswith("at apply"))
            for e in service.audit_events(plan_id=plan_id)
            for step in e.steps
        ),
        "live_tokens": sorted(
            row[1] for row in dump["tokens"] if row[6] is None and row[7] is None
        ),
        "revoked_sessions": sorted(row[1] for row in dump["sessions"] if row[3] is not None),
    }


@contextmanager
def small_pages(size: int = 3) -> Iterator[None]:
    """Plan a few members per page, so every generated plan spans several pages."""
    saved = bulk.PAGE
    bulk.PAGE = size
    try:
        yield
    finally:
        bulk.PAGE = saved


def run_case(case: dict[str, Any], *, ports: bool) -> tuple[Any, ...]:
    with small_pages(), service_over(case, ports=ports) as service:
        sessions = {m.member_id: service.sessions.create(m.member_id) for m in case["members"]}  # type: ignore[attr-defined]
        plan = service.plan(case["selection"], case["policy"], actor="boss")
        current = {m.member_id: m for m in case["members"]}
        for member_id, change in case["changes"]:
            if member_id != "boss":  # the actor stays an active administrator
                current[member_id] = changed(current[member_id], change)
        service.store.add_members(current.values())  # type: ignore[attr-defined]
        result = service.apply(plan, confirm=plan.confirmation)
        again = service.apply(plan, confirm=plan.confirmation)  # nothing left to do
        assert outcome_view(again) == outcome_view(result)
        assert result.summary == again.summary
        return (
            plan_view(plan),
            outcome_view(result),
            result.summary,
            store_view(service, plan.plan_id, list(current)),
            len(sessions),
        )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_set_based_and_port_by_port_give_the_same_plan_result_and_rows(
    case: dict[str, Any],
) -> None:
    """Plans, outcomes, summaries and stored rows agree, whatever the directory and policy."""
    assert run_case(case, ports=True) == run_case(case, ports=False)


def test_the_set_based_path_is_the_one_taken(clock: FakeClock) -> None:
    """A plain SQLite service plans and applies in SQL: no port-by-port commit at all."""
    service = open_service(":memory:", clock=clock, hasher=CHEAP)
    store: Any = service.store
    store.add_members([Member("boss", "b@x", role="admin"), Member("m1", "m1@x")])
    commits: list[Any] = []
    real_commit = store.commit
    store.commit = lambda batch: (commits.append(batch), real_commit(batch))
    plan = service.plan(["m1"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="boss")
    result = service.apply(plan, confirm=plan.confirmation)
    assert Outcome.REQUESTED == result.outcomes["m1"].outcome
    assert [] == commits
    store.close()


def test_a_wrapped_notifier_sees_plain_lists_outside_any_transaction(clock: FakeClock) -> None:
    """A wrapper on the outbox instance sends the apply port by port: it gets lists of
    Notices, once each, with live tokens, and may use the store from another thread."""
    service = open_service(":memory:", clock=clock, hasher=CHEAP, chunk_size=2)
    store: Any = service.store
    store.add_members(
        [Member("boss", "b@x", role="admin")]
        + [Member(f"m{i}", f"m{i}@x", personal_email=f"m{i}@home") for i in range(5)]
    )
    seen: list[Notice] = []
    batches: list[type] = []
    real_send = service.notifier.send

    def send(notices: Sequence[Notice]) -> None:
        batches.append(type(notices))
        seen.extend(notices)
        worker = threading.Thread(target=lambda: service.check_token(notices[-1].token or ""))
        worker.start()  # a wrapper may hand notices to a thread that uses the store
        worker.join(timeout=10)
        assert not worker.is_alive()
        real_send(notices)

    service.notifier.send = send  # type: ignore[method-assign]
    policy = ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PASSWORD, follow_with_request=True)
    plan = service.plan(ALL, policy, actor="boss")
    result = service.apply(plan, confirm=plan.confirmation)
    assert 5 == result.count(Outcome.RESET)
    assert {list} == set(batches)
    assert [
        (f"m{i}", kind)
        for i in range(5)
        for kind in (NoticeKind.PASSWORD_RESET, NoticeKind.CHANGE_REQUEST)
    ] == [(n.member_id, n.kind) for n in seen]
    pending = service.notifier.pending()  # type: ignore[attr-defined]
    assert [n.idempotency_key for n in seen] == [n.idempotency_key for n in pending]
    assert all(n.recipient == f"{n.member_id}@home" for n in seen[::2])  # signed out: home
    requests = [n for n in seen if n.kind is NoticeKind.CHANGE_REQUEST]
    assert all(service.check_token(n.token) == n.member_id for n in requests)  # type: ignore[arg-type]
    store.close()


def test_the_outbox_reads_a_set_based_chunk_in_sql_and_late_readers_are_refused(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Patched on its class, the outbox's send gets the chunk's notices as a sequence that
    reads as Notices during send, equals them, copies as a list, and refuses reads later."""
    service = open_service(":memory:", clock=clock, hasher=CHEAP, chunk_size=2)
    store: Any = service.store
    store.add_members(
        [Member("boss", "b@x", role="admin")] + [Member(f"m{i}", f"m{i}@x") for i in range(3)]
    )
    kept: list[Sequence[Notice]] = []
    copies: list[list[Notice]] = []
    real_send = SqliteOutbox.send

    def send(self: SqliteOutbox, notices: Sequence[Notice]) -> None:
        kept.append(notices)
        if len(kept) == 1:  # the first chunk is read during send; the second is not
            copies.append(list(notices))
            assert notices == copies[-1]
            assert copies[-1] == copy.deepcopy(notices)  # a plain list
            assert "notice(s) of plan" in repr(notices)
        real_send(self, notices)

    monkeypatch.setattr(SqliteOutbox, "send", send)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="boss")
    result = service.apply(plan, confirm=plan.confirmation)
    assert 3 == result.count(Outcome.REQUESTED)
    assert [2, 1] == [len(n) for n in kept]
    assert ["m0", "m1"] == [n.member_id for n in kept[0]]  # read during send: kept
    with pytest.raises(StorageError, match="during send"):
        list(kept[1])
    assert 3 == len(service.notifier.pending())  # type: ignore[attr-defined]
    store.close()


def test_a_notifier_failing_inside_the_chunk_leaves_nothing_then_falls_back(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk's transaction rolls back whole; the port-by-port path then does the chunk."""
    service = open_service(":memory:", clock=clock, hasher=CHEAP)
    store: Any = service.store
    store.add_members([Member("boss", "b@x", role="admin"), Member("m1", "m1@x")])
    real_send = SqliteOutbox.send
    calls: list[int] = []

    def send(self: SqliteOutbox, notices: Sequence[Notice]) -> None:
        calls.append(len(notices))
        real_send(self, notices)  # queued inside the chunk's transaction ...
        if len(calls) == 1:
            raise ConnectionError("relay down")  # ... then undone with it

    monkeypatch.setattr(SqliteOutbox, "send", send)
    plan = service.plan(["m1"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="boss")
    result = service.apply(plan, confirm=plan.confirmation)
    assert (Outcome.REQUESTED, True) == (
        result.outcomes["m1"].outcome,
        result.outcomes["m1"].notified,
    )
    assert [1, 1] == calls
    assert 1 == len(service.notifier.pending())  # type: ignore[attr-defined]
    assert 1 == len(store.dump()["tokens"])
    steps = [s for e in service.audit_events(plan_id=plan.plan_id) for s in e.steps]
    assert 1 == steps.count("member.requested")
    assert 1 == steps.count("notice.sent")
    store.close()


def test_nested_writes_join_the_open_transaction(tmp_path: Any) -> None:
    """A write inside a write is a savepoint: its failure undoes only itself."""
    store = SqliteStorage(tmp_path / "nested.db")
    db = store._db

    def insert_then_fail(session_id: str) -> None:
        with db.write() as inner:
            inner.execute("INSERT INTO sessions VALUES (?, 'm1', '2026', NULL)", (session_id,))
            raise ValueError("inner")

    def insert(session_id: str) -> None:
        with db.write() as inner:
            inner.execute("INSERT INTO sessions VALUES (?, 'm1', '2026', NULL)", (session_id,))

    with db.write() as conn:
        conn.execute("INSERT INTO sessions VALUES ('s1', 'm1', '2026', NULL)")
        with pytest.raises(ValueError, match="inner"):
            insert_then_fail("s2")
        with pytest.raises(StorageError):
            insert("s1")  # a duplicate: SQLite refuses it
        with db.write() as inner:
            inner.execute("INSERT INTO sessions VALUES ('s3', 'm1', '2026', NULL)")
    assert ["s1", "s3"] == [row[0] for row in store.dump()["sessions"]]
    store.close()


def test_a_plan_made_port_by_port_applies_in_sql_and_the_reverse(clock: FakeClock) -> None:
    """Both paths read the same plan entries: plan one way, apply the other."""
    for plan_ports, apply_ports in ((True, False), (False, True)):
        service = open_service(":memory:", clock=clock, hasher=CHEAP, chunk_size=2)
        store: Any = service.store
        store.add_members(
            [Member("boss", "b@x", role="admin")] + [Member(f"m{i}", f"m{i}@x") for i in range(5)]
        )
        store.set_based = not plan_ports
        plan = service.plan(
            ["m4", "m0", "ghost", "m2", "m0"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="boss"
        )
        store.set_based = not apply_ports
        result = service.apply(plan, confirm=plan.confirmation)
        assert ["m4", "m0", "m2", "ghost"] == list(result.outcomes)
        assert 3 == result.count(Outcome.REQUESTED)
        assert 1 == result.count(Outcome.EXCLUDED)
        store.close()


def test_a_resumed_apply_finishes_half_done_members_port_by_port(clock: FakeClock) -> None:
    """Progress left unfinished (a session store that was down) sends that chunk by ports."""
    service = open_service(":memory:", clock=clock, hasher=CHEAP, sleep=clock.sleep)
    store: Any = service.store
    store.add_members([Member("boss", "b@x", role="admin"), Member("m1", "m1@x")])
    service.set_password("m1", "my own secret passphrase 7")
    real_revoke = service.sessions.revoke
    down = True

    def revoke(member_ids: Sequence[str], issued_before: datetime) -> None:
        if down:
            raise ConnectionError("session store down")
        real_revoke(member_ids, issued_before)

    service.sessions.revoke = revoke  # type: ignore[method-assign]
    plan = service.plan(
        ["m1"], ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PASSWORD), actor="boss"
    )
    first = service.apply(plan, confirm=plan.confirmation)
    assert (Outcome.RESET, False) == (
        first.outcomes["m1"].outcome,
        first.outcomes["m1"].sessions_revoked,
    )
    down = False
    clock.advance(timedelta(minutes=1).total_seconds())
    second = service.apply(plan, confirm=plan.confirmation)
    assert second.ok
    assert 2 == store.get_credentials(["m1"])["m1"].generation  # reset once
    store.close()


def test_the_actor_is_read_again_for_every_chunk(clock: FakeClock) -> None:
    """A super admin demoted to admin mid-apply no longer resets super admins (both paths)."""
    for set_based in (True, False):
        service = open_service(":memory:", clock=clock, hasher=CHEAP, chunk_size=1)
        store: Any = service.store
        store.set_based = set_based
        boss = Member("boss", "boss@x", role="super_admin")
        store.add_members([boss, Member("a", "a@x"), Member("z", "z@x", role="super_admin")])
        plan = service.plan(["a", "z"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="boss")

        def demote(done: int, total: int, store: Any = store) -> None:
            if done == 1:
                store.add_members([Member("boss", "boss@x", role="admin")])

        result = service.apply(plan, confirm=plan.confirmation, progress=demote)
        assert (Outcome.EXCLUDED, "not_permitted") == (
            result.outcomes["z"].outcome,
            result.outcomes["z"].reason,
        ), set_based
        store.close()


def test_a_rate_limited_outbox_defers_the_rest_of_the_apply(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RetryLaterError inside a chunk: effects still stored, notices left for the next apply."""
    service = open_service(":memory:", clock=clock, hasher=CHEAP, chunk_size=1)
    store: Any = service.store
    store.add_members(
        [Member("boss", "b@x", role="admin"), Member("m1", "m1@x"), Member("m2", "m2@x")]
    )
    real_send = SqliteOutbox.send
    calls: list[int] = []

    def limited(self: SqliteOutbox, notices: Sequence[Notice]) -> None:
        calls.append(len(notices))
        raise RetryLaterError(retry_after=60)

    monkeypatch.setattr(SqliteOutbox, "send", limited)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="boss")
    first = service.apply(plan, confirm=plan.confirmation)
    assert [1] == calls  # asked once; nothing more sent in this apply
    assert ("m1", "m2") == first.summary.unfinished
    assert 2 == first.count(Outcome.REQUESTED)
    monkeypatch.setattr(SqliteOutbox, "send", real_send)
    second = service.apply(plan, confirm=plan.confirmation)
    assert second.ok
    assert 2 == len(service.notifier.pending())  # type: ignore[attr-defined]
    store.close()
