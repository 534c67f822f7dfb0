"""Two processes on one SQLite file at once (SPEC §6): never double effects."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import argon2
import pytest
from argon2.profiles import CHEAPEST

from bulkreset import Member, ResetMode, ResetPolicy
from bulkreset.adapters.sqlite import SqliteStorage, open_service

MEMBERS = [Member("admin", "admin@x", role="admin")] + [
    Member(f"u{i:03d}", f"u{i:03d}@x", personal_email=f"u{i}@home") for i in range(120)
]

CHILD = """
import json, sys, time
import argon2
from argon2.profiles import CHEAPEST
from bulkreset.adapters.sqlite import open_service
from bulkreset.errors import PlanInProgressError

path, plan_id, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
service = open_service(path, hasher=argon2.PasswordHasher.from_parameters(CHEAPEST), chunk_size=5)
plan = service.load_plan(plan_id)
while time.time() < start:
    time.sleep(0.001)
try:
    result = service.apply(plan, confirm=plan.confirmation)
except PlanInProgressError:
    print(json.dumps({"in_progress": True}))
else:
    print(json.dumps({o.member_id: o.outcome.value for o in result}))
"""


def cheap() -> argon2.PasswordHasher:
    return argon2.PasswordHasher.from_parameters(CHEAPEST)


def apply_at_once(path: Path, *plan_ids: str) -> list[dict[str, Any]]:
    """Apply each plan in its own process, all starting at the same instant."""
    start = time.time() + 1.0
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), plan_id, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for plan_id in plan_ids
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert 0 == child.returncode, err
        outputs.append(json.loads(out))
    return outputs


def prepared(tmp_path: Path, *policies: ResetPolicy, members: list[str]) -> tuple[Path, list[str]]:
    path = tmp_path / "shared.db"
    service = open_service(path, hasher=cheap())
    service.store.add_members(MEMBERS)  # type: ignore[attr-defined]
    plan_ids = [service.plan(members, p, actor="admin").plan_id for p in policies]
    service.store.close()  # type: ignore[attr-defined]
    return path, plan_ids


def force(password: str) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=password)


def test_two_applies_of_one_plan_never_double_an_effect(tmp_path: Path) -> None:
    """One process does the work; the other waits its turn or reports it in progress."""
    targets = [m.member_id for m in MEMBERS[1:]]
    path, (plan_id,) = prepared(tmp_path, force("Harbor 42 lanterns"), members=targets)
    outputs = apply_at_once(path, plan_id, plan_id)
    finished = [o for o in outputs if "in_progress" not in o]
    assert finished
    for output in finished:
        assert dict.fromkeys(targets, "reset") == output or output == {}
    with SqliteStorage(path) as store:
        steps = [(step, e.member_id) for e in store.audit_events() for step in e.steps]
        resets = Counter(member for step, member in steps if step == "member.reset")
        notices = Counter(member for step, member in steps if step == "notice.sent")
        credentials = store.get_credentials(targets)
        outbox = store.dump()["outbox"]
    assert dict.fromkeys(targets, 1) == dict(resets)
    assert dict.fromkeys(targets, 1) == dict(notices)
    assert {1} == {c.generation for c in credentials.values()}
    assert len(targets) == len(outbox)


def test_two_plans_over_the_same_members_both_finish(tmp_path: Path) -> None:
    """Overlapping plans at once: each member ends with one plan's password; the log says which."""
    first = [m.member_id for m in MEMBERS[1:81]]
    second = [m.member_id for m in MEMBERS[41:]]
    path, (a,) = prepared(tmp_path, force("first shared passphrase"), members=first)
    service = open_service(path, hasher=cheap())
    b = service.plan(second, force("second shared passphrase"), actor="admin").plan_id
    service.store.close()  # type: ignore[attr-defined]
    outputs = apply_at_once(path, a, b)
    assert all("in_progress" not in o for o in outputs)
    with SqliteStorage(path) as store:
        credentials = store.get_credentials(sorted(set(first) | set(second)))
        last_reset: dict[str, str | None] = {}
        for event in store.audit_events():
            if event.action == "member.reset" and event.member_id is not None:
                last_reset[event.member_id] = event.plan_id
    for member_id, credential in credentials.items():
        assert credential.shared_plan_id == last_reset[member_id]
        both = member_id in first and member_id in second
        assert (2 if both else 1) == credential.generation
    service = open_service(path, hasher=cheap())
    for member_id, credential in credentials.items():
        password = "first" if credential.shared_plan_id == a else "second"
        assert service.authenticate(f"{member_id}@x", f"{password} shared passphrase").ok
    service.store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["request"])
def test_two_request_plans_leave_one_live_link_per_member(tmp_path: Path, mode: str) -> None:
    """Overlapping change requests: one live token each, and every pending notice redeems."""
    first = [m.member_id for m in MEMBERS[1:61]]
    second = [m.member_id for m in MEMBERS[31:91]]
    request = ResetPolicy(ResetMode.REQUEST_CHANGE)
    path = tmp_path / "shared.db"
    service = open_service(path, hasher=cheap())
    service.store.add_members(MEMBERS)  # type: ignore[attr-defined]
    a = service.plan(first, request, actor="admin").plan_id
    b = service.plan(second, request, actor="admin").plan_id
    service.store.close()  # type: ignore[attr-defined]
    apply_at_once(path, a, b)
    service = open_service(path, hasher=cheap())
    store: Any = service.store
    tokens = list(store.dump()["tokens"])
    live = Counter(
        store.find_token(row[0]).member_id
        for row in tokens
        if (record := store.find_token(row[0])).used_at is None and record.revoked_at is None
    )
    assert dict.fromkeys(sorted(set(first) | set(second)), 1) == dict(live)
    pending = service.notifier.pending()  # type: ignore[attr-defined]
    assert pending
    for notice in pending:
        assert notice.member_id == service.check_token(notice.token)
    store.close()
