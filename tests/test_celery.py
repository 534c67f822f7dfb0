"""bulkreset.celery end to end: two real Celery workers apply a plan through RabbitMQ.

The workers (``celery -A tests.celery_app worker``) are separate processes on
the local RabbitMQ broker, with Redis as the result backend, and the
SQLAlchemy store on PostgreSQL; each test run uses a queue of its own. The
servers come from the environment (``.ci/run`` sets them)::

    BULKRESET_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672//
    BULKRESET_TEST_REDIS_URL=redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import argon2
import pytest
import sqlalchemy as sa

from bulkreset import ALL, Member, ResetMode, ResetPolicy
from bulkreset.adapters._sqlalchemy_schema import audit, credentials, outbox, plans, progress
from bulkreset.adapters.sqlalchemy import open_service
from bulkreset.errors import ConfirmationError

from .databases import empty_tables, open_server, server_url

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = 2_000
BROKERS = {
    "BULKRESET_TEST_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672//",
    "BULKRESET_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
}


def broker_env() -> dict[str, str]:
    """The broker and backend URLs, or skip (fail in CI) saying how to set them."""
    missing = [name for name in BROKERS if not os.environ.get(name)]
    if missing:
        examples = ", ".join(f"{name}={BROKERS[name]}" for name in missing)
        message = f"the Celery test needs a broker and a result backend: set {examples}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " — they must be set in CI")
        pytest.skip(message)
    return {name: os.environ[name] for name in BROKERS}


@pytest.fixture
def database(database_server: dict[str, Any]) -> tuple[sa.Engine, str, str]:
    url = server_url("postgresql")
    if "postgresql" not in database_server:
        database_server["postgresql"] = open_server("postgresql")
    engine, schema = database_server["postgresql"]
    empty_tables(engine)
    return engine, schema, url


@pytest.fixture
def workers(
    database: tuple[sa.Engine, str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, str]]:
    """Two Celery worker processes on a queue of this run's own; the app and the queue."""
    brokers = broker_env()
    _, schema, url = database
    env = {**os.environ, **brokers}
    env.update(BULKRESET_TEST_DATABASE_URL=url, BULKRESET_TEST_SCHEMA=schema)
    for name, value in env.items():
        if name.startswith("BULKRESET_TEST_"):
            monkeypatch.setenv(name, value)
    from tests.celery_app import app

    queue = f"bulkreset-test-{os.getpid()}"
    names = [f"w{i}-{os.getpid()}@localhost" for i in (1, 2)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celery_app",
                "worker",
                "-n",
                name,
                "-Q",
                queue,
                "--pool=solo",
                "--loglevel=WARNING",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 90
        ready: set[str] = set()
        while ready != set(names):
            assert time.monotonic() < deadline, "the Celery workers did not start"
            for process in processes:
                assert process.poll() is None, process.communicate()[1]
            replies = app.control.ping(destination=names, timeout=1.0) or []
            ready = {name for reply in replies for name in reply}
        yield app, queue
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_two_celery_workers_apply_a_plan(
    database: tuple[sa.Engine, str, str],
    workers: tuple[Any, str],
    cheap_hasher: argon2.PasswordHasher,
) -> None:
    """fan_out splits the plan and sends a task per chunk; two workers share them; the
    plan ends applied once per member, finished by exactly one task."""
    from tests.celery_app import resets

    engine = database[0]
    queue = workers[1]
    service = open_service(engine, hasher=cheap_hasher)
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("admin", "admin@corp.example", role="admin")]
        + [
            Member(f"u{i:04}", f"u{i:04}@corp.example", personal_email=f"u{i:04}@home.example")
            for i in range(MEMBERS)
        ]
    )
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    with pytest.raises(ConfirmationError):
        resets.fan_out(plan, confirm="wrong", queue=queue)  # checked before anything is sent
    sent = resets.fan_out(plan, confirm=plan.confirmation, chunk_size=100, queue=queue)
    reports = sent.get(timeout=180)
    assert 20 == len(reports)
    assert 1 == sum(r["finished"] for r in reports)
    assert list(range(20)) == sorted(r["chunk"] for r in reports)
    assert MEMBERS == sum(r["counts"].get("requested", 0) for r in reports)
    assert 2 == len({r["worker"] for r in reports})  # both workers took chunks

    def count(table: sa.Table, *where: Any) -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(*where)
                ).scalar_one()
            )

    assert MEMBERS == count(progress, progress.c.outcome == "requested", progress.c.notified)
    assert MEMBERS == count(outbox)
    assert MEMBERS == count(audit, audit.c.action == "member.requested")
    assert 0 == count(credentials)  # a change request changes no password
    with engine.connect() as conn:
        finished = conn.execute(sa.select(plans.c.finished_at, plans.c.token_key)).one()
    assert finished.finished_at is not None
    assert finished.token_key is None  # erased: every notice is out


def test_the_task_in_process(tmp_path: Path, cheap_hasher: argon2.PasswordHasher) -> None:
    """Run eagerly (no broker): each call applies the first free chunk; the last finishes
    the plan; with every remaining chunk held by a live worker, the task retries and, out
    of retries, fails rather than return as if done."""
    from celery import Celery
    from celery.exceptions import MaxRetriesExceededError

    from bulkreset.celery import register_tasks

    url = f"sqlite:///{tmp_path / 'celery.db'}"
    service = open_service(url, create_tables=True, hasher=cheap_hasher)
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("admin", "admin@corp.example", role="admin")]
        + [Member(f"u{i}", f"u{i}@corp.example") for i in range(5)]
    )
    app = Celery("eager", broker="memory://", backend="cache+memory://")
    tasks = register_tasks(app, lambda: service, max_retries=2)
    assert "bulkreset.apply_chunk" == tasks.apply_chunk.name
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.split(plan, confirm=plan.confirmation, chunk_size=2)  # 3 chunks
    store: Any = service.store
    now = service._now()
    store.claim_chunk(plan.plan_id, "live-worker", now, now + service._lease, index=2)
    reports = [tasks.apply_chunk.apply((plan.plan_id, plan.confirmation)).get() for _ in range(2)]
    assert [(0, 2, False), (1, 1, False)] == [
        (r["chunk"], r["chunks_left"], r["finished"]) for r in reports
    ]
    assert {"requested": 2} == reports[0]["counts"]
    held = tasks.apply_chunk.apply((plan.plan_id, plan.confirmation))
    with pytest.raises(MaxRetriesExceededError):
        held.get()
    store.finish_chunk(plan.plan_id, 2, "live-worker", now)  # pretend it ended well
    idle = tasks.apply_chunk.apply((plan.plan_id, plan.confirmation)).get()
    assert (None, 0, False) == (idle["chunk"], idle["chunks_left"], idle["finished"])


def test_the_task_retries_a_failing_database_but_not_a_wrong_code(
    tmp_path: Path, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A StorageError is retried (the plan must still finish); a wrong code is final."""
    from celery import Celery

    from bulkreset.celery import register_tasks
    from bulkreset.errors import StorageError

    service = open_service(f"sqlite:///{tmp_path / 'retry.db'}", create_tables=True)
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("admin", "admin@corp.example", role="admin"), Member("u1", "u1@corp.example")]
    )
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.split(plan, confirm=plan.confirmation)
    real = service.apply_chunk
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("the database failed (OperationalError)")
        return real(*args, **kwargs)

    service.apply_chunk = flaky  # type: ignore[method-assign]
    tasks = register_tasks(Celery("eager", broker="memory://"), lambda: service)
    report = tasks.apply_chunk.apply((plan.plan_id, plan.confirmation)).get()
    assert (2, 0, True) == (len(calls), report["chunk"], report["finished"])
    with pytest.raises(ConfirmationError):
        tasks.apply_chunk.apply((plan.plan_id, "WRONG-CODE")).get()
    assert 3 == len(calls)  # not retried
