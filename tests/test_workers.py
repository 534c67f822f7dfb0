"""Many worker processes on one plan, on PostgreSQL, one of them killed mid-chunk.

Four processes (``tests/worker_child.py``) apply a force change of 50,000
members, split into 50 chunks; one kills itself right after writing a chunk's
effects, before recording its sessions and notices. The others take its chunk
over once its lease lapses. At the end every target was reset once, signed
out, and notified once; every audit event is there once; the plan is finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import argon2
import sqlalchemy as sa

from bulkreset import ALL, Member, ResetMode, ResetPolicy
from bulkreset.adapters._sqlalchemy_schema import (
    audit,
    chunks,
    credentials,
    outbox,
    plans,
    progress,
    sessions,
)
from bulkreset.adapters.sqlalchemy import open_service

from .databases import empty_tables, open_server, server_url

MEMBERS = 50_000
WORKERS = 4
CHILD = Path(__file__).with_name("worker_child.py")


def scalar(engine: sa.Engine, stmt: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def members_with(engine: sa.Engine, action: str) -> tuple[int, int]:
    """(members with an audit event *action*, members with more than one)."""
    per_member = (
        sa.select(audit.c.member_id, sa.func.count().label("n"))
        .where(audit.c.action == action)
        .group_by(audit.c.member_id)
        .subquery()
    )
    once = scalar(engine, sa.select(sa.func.count()).select_from(per_member))
    more = scalar(
        engine, sa.select(sa.func.count()).select_from(per_member).where(per_member.c.n > 1)
    )
    return once, more


def test_four_workers_one_killed_reset_everyone_once(
    database_server: dict[str, Any], cheap_hasher: argon2.PasswordHasher
) -> None:
    """50,000 members, 4 worker processes, one SIGKILLed mid-chunk: each target reset,
    signed out and notified exactly once; no audit event twice; the plan finished."""
    url = server_url("postgresql")
    if "postgresql" not in database_server:
        database_server["postgresql"] = open_server("postgresql")
    engine, schema = database_server["postgresql"]
    empty_tables(engine)
    service = open_service(engine, hasher=cheap_hasher)
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("admin", "admin@corp.example", role="admin")]
        + [
            Member(f"u{i:05}", f"u{i:05}@corp.example", personal_email=f"u{i:05}@home.example")
            for i in range(MEMBERS)
        ]
    )
    with engine.begin() as conn:  # everyone is signed in somewhere
        conn.execute(
            sessions.insert(),
            [
                {"session_id": f"s{i:05}", "member_id": f"u{i:05}", "issued_at": plan_time()}
                for i in range(MEMBERS)
            ],
        )
    plan = service.plan(
        ALL, ResetPolicy(ResetMode.FORCE_CHANGE, new_password="Harbor 42 lanterns"), actor="admin"
    )
    assert 50 == service.split(plan, confirm=plan.confirmation, chunk_size=1000)

    def worker(*extra: str) -> subprocess.Popen[str]:
        command = [sys.executable, str(CHILD), url, schema, plan.plan_id, plan.confirmation, "3"]
        return subprocess.Popen(
            [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    doomed = worker("--die-after-commit", "5")  # dies with its 3rd chunk's effects written
    others = [worker() for _ in range(WORKERS - 1)]
    outs = []
    for process in others:
        out, err = process.communicate(timeout=600)
        assert 0 == process.returncode, err
        outs.append(json.loads(out))
    doomed.communicate(timeout=60)
    assert -9 == doomed.returncode  # SIGKILL

    assert 1 == sum(o["finished"] for o in outs)  # one worker finished the plan
    done_by_others = sorted(i for o in outs for i in o["chunks"])
    assert len(done_by_others) == len(set(done_by_others))
    assert 1 <= scalar(
        engine, sa.select(sa.func.count()).select_from(chunks).where(chunks.c.claims > 1)
    )  # the dead worker's chunk was taken over
    assert 0 == scalar(
        engine, sa.select(sa.func.count()).select_from(chunks).where(chunks.c.done_at.is_(None))
    )
    g = progress
    assert MEMBERS == scalar(
        engine,
        sa.select(sa.func.count())
        .select_from(g)
        .where(g.c.outcome == "reset", g.c.notified, g.c.sessions_revoked, g.c.reason.is_(None)),
    )
    assert (MEMBERS + 1, "excluded") == (
        scalar(engine, sa.select(sa.func.count()).select_from(g)),
        scalar(engine, sa.select(g.c.outcome).where(g.c.member_id == "admin")),
    )  # the finishing worker recorded the plan's exclusion (the actor)
    c = credentials
    assert (MEMBERS, 0) == (
        scalar(engine, sa.select(sa.func.count()).select_from(c)),
        scalar(engine, sa.select(sa.func.count()).select_from(c).where(c.c.generation != 1)),
    )  # reset once each: a second reset would have raised the generation
    for action in ("member.reset", "sessions.revoked", "notice.sent"):
        assert (MEMBERS, 0) == members_with(engine, action), action
    assert (MEMBERS, MEMBERS) == (
        scalar(engine, sa.select(sa.func.count()).select_from(outbox)),
        scalar(engine, sa.select(sa.func.count(sa.distinct(outbox.c.member_id)))),
    )
    assert 0 == scalar(
        engine,
        sa.select(sa.func.count()).select_from(sessions).where(sessions.c.revoked_at.is_(None)),
    )
    assert scalar(engine, sa.select(plans.c.finished_at)) is not None
    assert service.authenticate("u04242@corp.example", "Harbor 42 lanterns").must_change_password


def plan_time() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
