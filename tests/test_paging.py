"""Big plans and results stay in the store and are read a page at a time (issue 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import argon2
import pytest

import bulkreset._applying
import bulkreset.adapters._sqlite_schema
from bulkreset import (
    ALL,
    Member,
    Outcome,
    PagedSequence,
    ResetMode,
    ResetPolicy,
    ResetService,
    ResultSummary,
)
from bulkreset.adapters.sqlite import SqliteStorage, open_service
from bulkreset.errors import StorageError
from bulkreset.ports import PlanEntry

from .conftest import FakeClock, writes_fail_for

PW = "Harbor 42 lanterns"


def members(n: int) -> list[Member]:
    people = [Member("admin", "admin@x", role="admin")]
    people += [
        Member(f"u{i:04d}", f"u{i:04d}@x", personal_email=None if i % 5 else f"u{i}@home")
        for i in range(n)
    ]
    people.append(Member("zz-pending", "pending@x", status="pending"))
    return people


def test_paged_sequence_behaves_like_a_tuple() -> None:
    """len, indexing (also negative), slicing, iteration and equality, a page at a time."""
    data = tuple(range(10))
    fetched: list[tuple[int, int]] = []

    def fetch(start: int, stop: int) -> tuple[int, ...]:
        fetched.append((start, stop))
        return data[start:stop]

    paged = PagedSequence(10, fetch, page_size=4)
    assert 10 == len(paged)
    assert (0, 9) == (paged[0], paged[-1])
    assert (2, 3, 4) == paged[2:5]
    assert (0, 2, 4, 6, 8) == paged[::2]
    assert () == paged[5:2]
    assert data == tuple(paged)
    assert [(0, 4), (4, 8), (8, 10)] == fetched[-3:]
    assert paged == data
    assert data == paged
    assert paged != data[:-1]
    assert paged != "0123456789"
    assert "10 item(s)" in repr(paged)
    with pytest.raises(IndexError):
        paged[10]
    with pytest.raises(IndexError):
        paged[-11]


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat plans of more than 5 members as big, to exercise the paged paths cheaply."""
    monkeypatch.setattr(bulkreset.adapters._sqlite_schema, "IN_MEMORY_LIMIT", 5)
    monkeypatch.setattr(bulkreset._applying, "IN_MEMORY_LIMIT", 5)


def open_store(kind: str, path: Path, **options: Any) -> ResetService:
    if kind == "sqlite":
        return open_service(path, **options)
    from bulkreset.adapters.sqlalchemy import open_service as open_sqlalchemy

    return open_sqlalchemy(f"sqlite:///{path}", create_tables=True, **options)


@pytest.mark.usefixtures("small_limit")
@pytest.mark.parametrize("kind", ["sqlite", "sqlalchemy-sqlite"])
def test_a_big_plan_and_its_result_are_read_from_the_store(
    kind: str, tmp_path: Path, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Sections are PagedSequences, outcomes a paged mapping; both read right."""
    service = open_store(kind, tmp_path / "big.db", clock=clock, hasher=cheap_hasher, chunk_size=4)
    service.store.add_members(members(23))  # type: ignore[attr-defined]
    plan = service.plan(ALL, ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW), actor="admin")
    assert isinstance(plan.targets, PagedSequence)
    assert [f"u{i:04d}" for i in range(23)] == [m.member_id for m in plan.targets]
    assert ["admin", "zz-pending"] == [e.member_id for e in plan.excluded]
    assert 18 == len(plan.warnings)
    assert plan == service.load_plan(plan.plan_id)
    result = service.apply(plan, confirm=plan.confirmation)
    assert {Outcome.RESET: 23, Outcome.EXCLUDED: 2} == {
        o: n for o, n in result.counts().items() if n
    }
    outcomes: Any = result.outcomes
    assert "read from the store" in repr(outcomes)
    assert 25 == len(outcomes)
    assert [*[f"u{i:04d}" for i in range(23)], "admin", "zz-pending"] == list(outcomes)
    assert Outcome.RESET == outcomes["u0007"].outcome
    assert "actor" == outcomes["admin"].reason
    with pytest.raises(KeyError):
        outcomes["nobody"]
    assert result.summary == ResultSummary.of(outcomes.values())
    assert dict(outcomes.items()) == dict(outcomes)
    again = service.apply(plan, confirm=plan.confirmation)
    assert dict(result.outcomes) == dict(again.outcomes)
    service.store.close()  # type: ignore[attr-defined]


@pytest.mark.usefixtures("small_limit")
def test_members_that_fail_in_a_big_apply_are_in_its_result(
    tmp_path: Path, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A failed member's outcome, never stored, still shows in the paged result."""
    service = open_service(tmp_path / "big.db", clock=clock, hasher=cheap_hasher, chunk_size=4)
    service.store.add_members(members(8))  # type: ignore[attr-defined]
    plan = service.plan(ALL, ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW), actor="admin")
    with writes_fail_for(service, "u0003"):
        result = service.apply(plan, confirm=plan.confirmation)
    assert Outcome.FAILED == result.outcomes["u0003"].outcome
    assert ("u0003",) == result.unfinished
    assert Outcome.FAILED == dict(result.outcomes.items())["u0003"].outcome
    service.store.close()  # type: ignore[attr-defined]


def test_an_abandoned_plan_writer_keeps_nothing(
    tmp_path: Path, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A write_plan block that ends without finish() writes nothing; a closed writer refuses."""
    with SqliteStorage(tmp_path / "s.db") as store:
        store.add_members(members(2))
        before = store.dump()
        with store.write_plan("plan-x") as writer:
            writer.add([PlanEntry("u0000", members(2)[1])])
        assert before == store.dump()
        with pytest.raises(StorageError):
            writer.add([])


def test_a_plan_stored_before_schema_version_4_still_loads(
    tmp_path: Path, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Plans kept inline as one JSON body (older files) load as before."""
    service = open_service(tmp_path / "old.db", clock=clock, hasher=cheap_hasher)
    service.store.add_members(members(3))  # type: ignore[attr-defined]
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    store: Any = service.store
    from bulkreset.adapters._sqlite_schema import plan_to_json

    with store._db.write() as conn:
        conn.execute(
            "UPDATE plans SET body = ? WHERE plan_id = ?", (plan_to_json(plan), plan.plan_id)
        )
        conn.execute("DELETE FROM plan_entries")
    assert "targets" in json.loads(store.dump()["plans"][0][1])
    assert plan == service.load_plan(plan.plan_id)
    result = service.apply(plan, confirm=plan.confirmation)
    assert 3 == result.count(Outcome.REQUESTED)
    store.close()


def test_memory_plan_writer_without_finish_keeps_nothing() -> None:
    """The in-memory store, too, keeps nothing of an unfinished plan."""
    from bulkreset.adapters.memory import MemoryStorage

    store = MemoryStorage()
    with store.write_plan("plan-y") as writer:
        writer.add([PlanEntry("x")])
    assert store.load_plan("plan-y") is None
    assert [] == store.audit_events()


def test_paged_sequence_slices_with_any_step() -> None:
    """Negative and odd steps give what a tuple gives; a non-integer index is a TypeError."""
    data = tuple(range(10))
    paged = PagedSequence(10, lambda a, b: data[a:b])
    for index in [slice(None, None, -1), slice(5, 1, -1), slice(1, 9, 3), slice(-3, None)]:
        assert data[index] == paged[index]
    with pytest.raises(TypeError):
        paged[1.0]  # type: ignore[call-overload]


@pytest.mark.usefixtures("small_limit")
def test_a_big_plan_through_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cheap_hasher: argon2.PasswordHasher
) -> None:
    """plan and apply print a big plan (read from the store) before closing it."""
    from bulkreset import cli

    path = tmp_path / "cli.db"
    seed = open_service(path, hasher=cheap_hasher)
    seed.store.add_members(members(12))  # type: ignore[attr-defined]
    seed.store.close()  # type: ignore[attr-defined]
    monkeypatch.setattr(cli, "_connect", lambda p: open_service(p, hasher=cheap_hasher))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(PW + "\n"))
    code = cli.main(
        ["--db", str(path), "plan", "--mode", "force", "--all", "--actor", "admin",
         "--password-stdin", "--json"]
    )  # fmt: skip
    assert 0 == code
    for extra in ([], ["--json"]):
        plan_args = ["--db", str(path), "plan", "--mode", "request", "--all", "--actor", "admin"]
        assert 0 == cli.main([*plan_args, *extra])


def test_a_closed_store_says_so(
    tmp_path: Path, clock: FakeClock, cheap_hasher: argon2.PasswordHasher
) -> None:
    """Reading a big plan after closing its store names the cause."""
    service = open_service(tmp_path / "c.db", clock=clock, hasher=cheap_hasher)
    service.store.close()  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="closed"):
        service.store.get_members(["x"])
