"""Shared fixtures: a fake clock, cheap Argon2, and a service over every shipped store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import argon2
import pytest
from argon2.profiles import CHEAPEST

from bulkreset import Member, ResetService

from .databases import SQLALCHEMY_STORES, database_engine, database_server  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

STORES = ["memory", "sqlite", "sqlite-ports", "sqlalchemy-sqlite", "postgresql", "mariadb"]
"""The stores every service test runs on: ``sqlite`` plans and applies whole chunks in
SQL (``SetBasedStorage``); ``sqlite-ports`` is the same store sent down the
port-by-port path, so both paths of one store meet the same tests; the last three
are the SQLAlchemy store over SQLite, PostgreSQL and MariaDB (see :mod:`tests.databases`)."""


class FakeClock:
    """An injected clock: aware UTC time that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **delta: float) -> datetime:
        self.now += timedelta(seconds=seconds, **delta)
        return self.now

    def sleep(self, seconds: float) -> None:
        """A ``sleep`` for ResetService that moves this clock instead of waiting."""
        self.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def cheap_hasher() -> argon2.PasswordHasher:
    """Argon2id with argon2-cffi's CHEAPEST profile: for unit tests only."""
    return argon2.PasswordHasher.from_parameters(CHEAPEST)


def directory() -> list[Member]:
    """A small invented directory with every odd case the rules care about."""
    return [
        Member(
            "admin",
            "admin@corp.example",
            "Ada Admin",
            role="admin",
            personal_email="ada@home.example",
        ),
        Member(
            "boss",
            "boss@corp.example",
            "Sam Super",
            role="super_admin",
            mobile_phone="+821000000001",
        ),
        Member("m1", "Mina.Kim@corp.example", "Mina Kim", personal_email="mina@home.example"),
        Member("m2", "jun@corp.example", "Jun Park", mobile_phone="+821000000002"),
        Member("m3", "norecover@corp.example", "No Recovery"),
        Member(
            "q1",
            "quick@corp.example",
            "Quick Login",
            sign_in="quick_login",
            personal_email="quick@home.example",
        ),
        Member("p1", "pending@corp.example", "Pending Person", status="pending"),
        Member(
            "s1",
            "suspended@corp.example",
            "Sus Pended",
            status="suspended",
            personal_email="sus@home.example",
        ),
        Member(
            "admin2",
            "admin2@corp.example",
            "Second Admin",
            role="admin",
            mobile_phone="+821000000003",
        ),
    ]


ServiceFactory = Callable[..., ResetService]


@pytest.fixture(params=STORES)
def make_service(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: FakeClock,
    cheap_hasher: argon2.PasswordHasher,
) -> ServiceFactory:
    """Build a service over the parametrized store with the fake clock and cheap hashing."""

    def factory(members: Iterable[Member] | None = None, **options: Any) -> ResetService:
        options.setdefault("sleep", clock.sleep)
        members = directory() if members is None else list(members)
        if request.param == "memory":
            from bulkreset.adapters.memory import open_service as open_memory

            return open_memory(members, clock=clock, hasher=cheap_hasher, **options)
        if request.param in SQLALCHEMY_STORES:
            from bulkreset.adapters.sqlalchemy import open_service as open_sqlalchemy

            engine = request.getfixturevalue("database_engine")
            service = open_sqlalchemy(engine, clock=clock, hasher=cheap_hasher, **options)
            service.store.add_members(members)  # type: ignore[attr-defined]
            return service
        from bulkreset.adapters.sqlite import open_service as open_sqlite

        service = open_sqlite(
            tmp_path / "bulkreset.db", clock=clock, hasher=cheap_hasher, **options
        )
        request.addfinalizer(service.store.close)  # type: ignore[attr-defined]
        if request.param == "sqlite-ports":
            port_by_port(service)
        service.store.add_members(members)  # type: ignore[attr-defined]
        return service

    return factory


@pytest.fixture
def service(make_service: ServiceFactory) -> ResetService:
    return make_service()


def port_by_port(service: ResetService) -> ResetService:
    """Send *service*'s plans and applies down the port-by-port path (no set-based SQL)."""
    if hasattr(service.store, "set_based"):
        service.store.set_based = False
    return service


@contextmanager
def writes_fail_for(
    service: ResetService, member_id: str, part: str = "credentials"
) -> Iterator[None]:
    """Within the block, the store refuses every batch writing *part* of *member_id*.

    A set-based store's chunk transactions fail too (the disk refuses them),
    so its apply falls back to the port-by-port path, which isolates the member.
    """
    store: Any = service.store
    real_commit = store.commit
    real_chunk = getattr(store, "apply_chunk", None)

    def commit(batch: Any) -> None:
        if any(write.member_id == member_id for write in getattr(batch, part)):
            raise OSError("disk says no")
        real_commit(batch)

    def apply_chunk(request: Any) -> Any:
        raise OSError("disk says no")

    store.commit = commit
    if real_chunk is not None:
        store.apply_chunk = apply_chunk
    try:
        yield
    finally:
        store.commit = real_commit
        if real_chunk is not None:
            store.apply_chunk = real_chunk


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def shared_data_file(name: str) -> Path:
    """A file of ``shared/data``: skipped with a reason when absent, a failure in CI."""
    path = SHARED_DATA / name
    if not path.is_file():
        if in_ci():
            pytest.fail(f"shared data file {path} is absent in CI")
        pytest.skip(f"shared data file {path} is absent (expected next to the repository)")
    return path
