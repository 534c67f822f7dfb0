"""Crash anywhere, apply again (SPEC §6, issue 3): fault injection with real child processes.

Each mode (force change, force change followed by a change request, request
change) gets one template SQLite file: a small directory, a password for most
members, one open session per member, and a plan over ``ALL``. Every run works
on a copy of that file, so all runs share one plan ID and token key.

1. An uninterrupted child applies a copy, counting its calls of each kind
   (``store.commit``, ``store.apply_chunk``, ``sessions.revoke``,
   ``notifier.send``, chunks, ``store.release_plan``). Its result and final
   store are the reference. It runs once per path: the SQLite store's
   set-based path (whole chunks in SQL) and the port-by-port path; both must
   leave the same store.
2. For every kill point (kind, k) of a path a child applies a fresh copy that
   way and ends itself (``os._exit(1)`` or ``SIGKILL``) there; then a fresh
   child applies the same plan (``load_plan``) to the end, once the dead
   apply's lease lapsed, on the default (set-based) path: chunks the dead
   apply left half done go port by port.
3. The store must then look as after the uninterrupted run, and meet the
   invariants: one effect, one credential write, one notice per key and one
   audit record per step for each target (``AuditEvent.steps``); sessions ended; one live token
   per member, and every token in the outbox redeems.

The kill points are described in ``tests/crash_child.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import argon2
import attrs
import pytest
from argon2.profiles import CHEAPEST

from bulkreset import ALL, Member, MemberStatus, NoticeKind, ResetMode, ResetPolicy, ResetService
from bulkreset._applying import LEASE
from bulkreset.adapters.sqlite import open_service

from .crash_child import COUNTED, KINDS

CHILD = Path(__file__).with_name("crash_child.py")
CHEAP = argon2.PasswordHasher.from_parameters(CHEAPEST)

PLANNED_AT = datetime(2026, 11, 30, 8, 59, tzinfo=timezone.utc)
CRASH_AT = PLANNED_AT + timedelta(minutes=1)
RESUME_AT = CRASH_AT + LEASE + timedelta(minutes=1)  # the dead apply's lease has lapsed
CHECKED_AT = RESUME_AT + timedelta(minutes=1)

PW = "Harbor 42 lanterns"
OWN = "my own secret passphrase 7"
NEW = "a brand new passphrase 9"

MEMBERS = [
    Member(
        "admin", "admin@corp.example", "Ada Admin", role="admin", personal_email="ada@h.example"
    ),
    Member("m1", "mina@corp.example", "Mina Kim", personal_email="mina@home.example"),
    Member("m2", "jun@corp.example", "Jun Park", mobile_phone="+821000000002"),
    Member("m3", "norecover@corp.example", "No Recovery"),
    Member("m4", "lee@corp.example", "Lee Song", personal_email="lee@home.example"),
    Member("m5", "ari@corp.example", "Ari Choi", mobile_phone="+821000000005"),
    Member("m6", "bo@corp.example", "Bo Han", personal_email="bo@home.example"),
    Member("q1", "quick@corp.example", "Quick Login", sign_in="quick_login"),
    Member("q2", "quick2@corp.example", "Quick Two", sign_in="quick_login", personal_email="q@h.x"),
    Member("s1", "suspended@corp.example", "Sus Pended", status="suspended"),
]
WITH_PASSWORD = ["admin", "m1", "m2", "m3", "m4", "m5", "m6", "q2", "s1"]

POLICIES = {
    "force": ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW),
    "force-follow": ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW, follow_with_request=True),
    "request": ResetPolicy(ResetMode.REQUEST_CHANGE),
}
FORCED = ["m1", "m2", "m3", "m4", "m5", "m6", "q2"]
EXPECTED: dict[
    str, dict[str, tuple[str, str | None]]
] = {  # mode -> member -> (outcome, reason) of an uninterrupted apply
    "force": {**dict.fromkeys(FORCED, ("reset", None)), "q1": ("excluded", "no_password")},
    "force-follow": {**dict.fromkeys(FORCED, ("reset", None)), "q1": ("excluded", "no_password")},
    "request": dict.fromkeys([*FORCED, "q1"], ("requested", None)),
}
for expected in EXPECTED.values():
    expected.update({"admin": ("excluded", "actor"), "s1": ("excluded", "suspended")})
UNREACHABLE = {"m3"}
"""No personal email and no phone: reset, but no password-reset notice (``no_channel``)."""
for mode in ("force", "force-follow"):
    EXPECTED[mode]["m3"] = ("reset", "no_channel")
COMPARED = ("credentials", "effects", "outbox", "active_sessions", "tokens", "live_tokens")
"""Facts that must equal the uninterrupted run's (tokens are checked by redeeming them)."""
EFFECT_ACTIONS = ("member.reset", "member.requested", "sessions.revoked", "notice.sent")
PATHS = ("set-based", "ports")
PATH_KINDS = {  # the kill kinds each path reaches
    "set-based": [k for k in KINDS if k != "commit-torn"],
    "ports": [k for k in KINDS if not k.startswith("chunk-")],
}


@attrs.frozen
class Scenario:
    """One mode's template file and the uninterrupted run's result and store."""

    mode: str
    path: str
    template: Path
    plan_id: str
    sessions: dict[str, str]
    reference: dict[str, Any]  # the uninterrupted child's JSON
    facts: dict[str, Any]  # what the store holds after it

    @property
    def force(self) -> bool:
        return POLICIES[self.mode].mode is ResetMode.FORCE_CHANGE

    @property
    def sends_request(self) -> bool:
        return not self.force or POLICIES[self.mode].follow_with_request

    @property
    def targets(self) -> list[str]:
        return [m for m, (outcome, _) in EXPECTED[self.mode].items() if outcome != "excluded"]

    def kill_points(self, kind: str) -> list[str]:
        count = self.reference["calls"].get(COUNTED[kind], 0)
        return [f"{kind}:{k}:{how(kind, k)}" for k in range(1, count + 1)]


def how(kind: str, k: int) -> str:
    """SIGKILL mid-transaction and at every even point; ``os._exit(1)`` elsewhere."""
    return "kill" if kind == "commit-torn" or k % 2 == 0 else "exit"


def child_env() -> dict[str, str]:
    """The environment without coverage hooks: children must start fast."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE_")}


def run_child(
    db: Path, plan_id: str, now: datetime, kill: str | None = None, *, ports: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run tests/crash_child.py on *db* at *now*, killed at *kill* if given."""
    argv = [sys.executable, str(CHILD), str(db), plan_id, now.isoformat()]
    if kill is not None:
        argv += ["--kill", kill]
    if ports:
        argv.append("--ports")
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=child_env(), check=False
    )


def applied(db: Path, plan_id: str, now: datetime, *, ports: bool = False) -> dict[str, Any]:
    """Apply the plan to the end in a fresh child; its JSON report."""
    done = run_child(db, plan_id, now, ports=ports)
    assert 0 == done.returncode, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@contextlib.contextmanager
def opened(db: Path, now: datetime = CHECKED_AT) -> Iterator[ResetService]:
    """The SQLite service over *db* in this (the test) process, with a fixed clock."""
    service = open_service(db, clock=lambda: now, hasher=CHEAP)
    try:
        yield service
    finally:
        service.store.close()  # type: ignore[attr-defined]


def build_template(db: Path, mode: str) -> tuple[str, dict[str, str]]:
    """The directory, passwords, one session per member, and a plan over ALL."""
    with opened(db, PLANNED_AT) as service:
        service.store.add_members(MEMBERS)
        for member_id in WITH_PASSWORD:
            service.set_password(member_id, OWN)
        sessions = {m.member_id: service.sessions.create(m.member_id) for m in MEMBERS}  # type: ignore[attr-defined]
        plan = service.plan(ALL, POLICIES[mode], actor="admin")
    return plan.plan_id, sessions


def facts(db: Path, plan_id: str, sessions: dict[str, str]) -> dict[str, Any]:
    """What the store holds, without times: comparable across runs of one template."""
    ids = [m.member_id for m in MEMBERS]
    with opened(db) as service:
        store: Any = service.store
        outbox: Any = service.notifier
        credentials = store.get_credentials(ids)
        events = service.audit_events(plan_id=plan_id)
        active = sorted(m for m, s in sessions.items() if service.sessions.is_active(s))  # type: ignore[attr-defined]
        listing = outbox.listing()
        pending = sorted(n.idempotency_key for n in outbox.pending())
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        token_rows = conn.execute(
            "SELECT member_id, plan_id, used_at IS NULL AND revoked_at IS NULL FROM tokens"
        ).fetchall()
        # every change request queued, as queued: pending() may hide dead links
        tokens_in_outbox = {
            key: (member_id, token)
            for key, member_id, token in conn.execute(
                "SELECT idempotency_key, member_id, token FROM outbox WHERE kind = ?",
                (NoticeKind.CHANGE_REQUEST.value,),
            )
        }
    return {
        "credentials": {
            m: (c.generation, c.shared_plan_id == plan_id, c.must_change)
            for m, c in sorted(credentials.items())
        },
        "effects": sorted(
            Counter(
                (step, e.member_id) for e in events if e.member_id is not None for step in e.steps
            ).items()
        ),
        "outbox": sorted(
            (r["key"], r["member_id"], r["kind"], r["recipient"], r["status"]) for r in listing
        ),
        "pending": pending,
        "active_sessions": active,
        "tokens": sorted(Counter((m, p) for m, p, _ in token_rows).items()),
        "live_tokens": sorted(Counter(m for m, _, live in token_rows if live).items()),
        "tokens_in_outbox": tokens_in_outbox,
    }


def invariant_problems(scenario: Scenario, found: dict[str, Any]) -> list[str]:
    """Every way *found* (a store's facts) breaks SPEC §6 for this scenario."""
    plan, targets = scenario.plan_id, scenario.targets
    problems = []
    # each effect exactly once per target, and no effect for anyone else
    effects = dict(found["effects"])
    for member in targets:
        wanted = ["member.reset" if scenario.force else "member.requested"]
        if scenario.force:
            wanted.append("sessions.revoked")
        if scenario.sends_request or member not in UNREACHABLE:
            wanted.append("notice.sent")
        elif effects.get(("notice.sent", member), 0):
            problems.append(f"a notice.sent event for {member}, who has no channel")
        for action in wanted:
            if effects.get((action, member), 0) != 1:
                problems.append(f"{effects.get((action, member), 0)} {action} events for {member}")
    strays = {k: n for k, n in effects.items() if k[0] in EFFECT_ACTIONS and k[1] not in targets}
    if strays:
        problems.append(f"effect events for non-targets: {strays}")
    # the credential written exactly once (force), untouched otherwise
    for member in [*WITH_PASSWORD, "q1"]:
        reset = scenario.force and member in targets
        want = (2, True, True) if reset else (1, False, False) if member != "q1" else None
        got = found["credentials"].get(member)
        if got != want:
            problems.append(f"credential of {member} is {got} (generation, shared, must_change)")
    # one outbox row per idempotency key, no others
    keys = []
    for member in targets:
        if scenario.force and member not in UNREACHABLE:
            keys.append((f"{plan}:{member}:password_reset", member, "password_reset"))
        if scenario.sends_request:
            keys.append((f"{plan}:{member}:change_request", member, "change_request"))
    if sorted(keys) != sorted(row[:3] for row in found["outbox"]):
        problems.append(f"outbox holds {[r[0] for r in found['outbox']]}")
    if found["pending"] != sorted(row[0] for row in found["outbox"]):
        problems.append(f"not pending: {[r[::4] for r in found['outbox']]}")
    # sessions opened before the apply end for force targets only
    still_on = sorted(m for m in targets if m in found["active_sessions"]) if scenario.force else []
    if still_on:
        problems.append(f"sessions still active for {still_on}")
    untouched = [m.member_id for m in MEMBERS if not (scenario.force and m.member_id in targets)]
    if sorted(untouched) != [m for m in found["active_sessions"] if m in untouched]:
        problems.append(f"sessions of others ended: {found['active_sessions']}")
    # request change: one token per member, live, carried by its notice
    if scenario.sends_request:
        if found["live_tokens"] != sorted((m, 1) for m in targets):
            problems.append(f"live tokens per member: {found['live_tokens']}")
        if found["tokens"] != sorted(((m, plan), 1) for m in targets):
            problems.append(f"token rows per member: {found['tokens']}")
        missing = [k for k, (_, token) in found["tokens_in_outbox"].items() if not token]
        if missing:
            problems.append(f"change requests without a token: {missing}")
    elif found["tokens"]:
        problems.append(f"tokens written without a change request: {found['tokens']}")
    return problems


def sign_in_problems(db: Path, scenario: Scenario) -> list[str]:
    """Force targets sign in with the plan's password and must change it; others keep theirs."""
    problems = []
    with opened(db) as service:
        for member in MEMBERS:
            reset = scenario.force and member.member_id in scenario.targets
            password = PW if reset else OWN
            got = service.authenticate(member.login_id, password)
            active = member.member_id in WITH_PASSWORD and member.status is MemberStatus.ACTIVE
            if (got.ok, got.must_change_password) != (active, reset and active):
                problems.append(f"{member.member_id} signs in with {got}")
    return problems


def token_problems(db: Path, found: dict[str, Any], redeem: int = 2) -> list[str]:
    """Every token in the outbox is live for its member; the first *redeem* of them redeem."""
    problems = []
    with opened(db) as service:
        carried = sorted(found["tokens_in_outbox"].values())
        for member_id, token in carried:
            try:
                owner = service.check_token(token)
            except Exception as exc:
                problems.append(f"token of {member_id} is dead ({type(exc).__name__})")
                continue
            if owner != member_id:
                problems.append(f"token of {member_id} belongs to {owner}")
        for member_id, token in carried[:redeem]:
            try:
                assert member_id == service.redeem(token, NEW)
            except Exception as exc:
                problems.append(f"token of {member_id} does not redeem ({type(exc).__name__})")
                continue
            login = next(m.login_id for m in MEMBERS if m.member_id == member_id)
            if not service.authenticate(login, NEW).ok:
                problems.append(f"{member_id} cannot sign in after redeeming")
    return problems


@attrs.frozen
class Template:
    """One mode's file before any apply: the plan over ALL, and each member's open session."""

    path: Path
    plan_id: str
    sessions: dict[str, str]


def build_scenario(mode: str, path: str, template: Template) -> Scenario:
    reference = template.path.parent / f"reference-{path}.db"
    shutil.copyfile(template.path, reference)
    report = applied(reference, template.plan_id, CRASH_AT, ports=path == "ports")
    found = facts(reference, template.plan_id, template.sessions)
    return Scenario(mode, path, template.path, template.plan_id, template.sessions, report, found)


@pytest.fixture(scope="module")
def scenario_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Scenario]:
    """Builds each mode's template once, and its reference run once per path."""
    templates: dict[str, Template] = {}
    built: dict[tuple[str, str], Scenario] = {}

    def get(mode: str, path: str = "set-based") -> Scenario:
        if mode not in templates:
            db = tmp_path_factory.mktemp(mode) / "template.db"
            templates[mode] = Template(db, *build_template(db, mode))
        if (mode, path) not in built:
            built[mode, path] = build_scenario(mode, path, templates[mode])
        return built[mode, path]

    return get


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", list(POLICIES))
def test_an_uninterrupted_apply_meets_the_invariants(
    scenario_of: Callable[[str, str], Scenario], mode: str, path: str
) -> None:
    """The reference run: expected outcomes, each effect once, tokens that redeem."""
    scenario = scenario_of(mode, path)
    outcomes = scenario.reference["outcomes"]
    for member, (outcome, reason) in EXPECTED[mode].items():
        got = outcomes[member]
        assert [outcome, reason] == got[:2], member
        if outcome != "excluded":
            notified = not (scenario.force and member in UNREACHABLE)
            assert [scenario.force, notified] == got[2:], member
    assert sorted(m.member_id for m in MEMBERS) == sorted(outcomes)
    assert 0 == scenario.reference["calls"].get("chunk_error", 0)
    assert [] == invariant_problems(scenario, scenario.facts)
    reference = scenario.template.parent / f"reference-{path}.db"
    assert [] == sign_in_problems(reference, scenario)
    calls = scenario.reference["calls"]
    assert 3 == calls["chunk"]  # several chunks, so there are kill points between them
    if path == "ports":
        assert calls["commit"] >= 2 * calls["chunk"]
    else:  # every chunk in one transaction of SQL
        assert calls["apply_chunk"] == calls["chunk"]
    copy = scenario.template.parent / f"redeem-{path}.db"
    shutil.copyfile(reference, copy)
    assert [] == token_problems(copy, scenario.facts, redeem=len(scenario.targets))


def repeated_work(report: dict[str, Any]) -> list[str]:
    """What a resumed apply (its child's *report*) did again that was already recorded done."""
    before = report["before"]
    notified = {m for m, (_, _, done) in before.items() if done}
    revoked = {m for m, (_, done, _) in before.items() if done}
    problems = []
    resent = [k for k in report["sent_keys"] if k.split(":")[1] in notified]
    if resent:
        problems.append(f"sent again though recorded as notified: {resent}")
    again = sorted(set(report["revoked"]) & revoked)
    if again:
        problems.append(f"revoked again though recorded as revoked: {again}")
    return problems


def crash_and_resume(scenario: Scenario, kills: Sequence[str], workdir: Path) -> list[str]:
    """Kill a child at each of *kills* in turn, then apply to the end: what went wrong, if anything.

    Each child starts once the one before it lost its lease. The killed
    children take the scenario's path; the last one the default path.
    """
    db = workdir / f"{'+'.join(kills).replace(':', '_')}.db"
    shutil.copyfile(scenario.template, db)
    now = CRASH_AT
    for kill in kills:
        crashed = run_child(db, scenario.plan_id, now, kill, ports=scenario.path == "ports")
        expected_code = -signal.SIGKILL if kill.endswith(":kill") else 1
        if crashed.returncode != expected_code:
            return [f"the child for {kill} exited {crashed.returncode}: {crashed.stderr[-2000:]}"]
        now += RESUME_AT - CRASH_AT
    done = run_child(db, scenario.plan_id, now)
    if done.returncode != 0:
        return [f"applying again failed: {done.stderr[-2000:]}"]
    report = json.loads(done.stdout)
    problems = repeated_work(report)
    if report["calls"].get("chunk_error"):
        problems.append(f"{report['calls']['chunk_error']} set-based chunk(s) failed on resume")
    if report["outcomes"] != scenario.reference["outcomes"]:
        diff = {
            m: (o, scenario.reference["outcomes"].get(m))
            for m, o in report["outcomes"].items()
            if o != scenario.reference["outcomes"].get(m)
        }
        problems.append(f"outcomes differ (got, uninterrupted): {diff}")
    found = facts(db, scenario.plan_id, scenario.sessions)
    problems += invariant_problems(scenario, found)
    for key in COMPARED:
        if found[key] != scenario.facts[key]:
            problems.append(f"{key} differ from the uninterrupted run: {found[key]}")
    problems += sign_in_problems(db, scenario)
    if scenario.sends_request:
        problems += token_problems(db, found)
    return problems


def crash_all(scenario: Scenario, chains: Sequence[Sequence[str]], workdir: Path) -> None:
    """Run every chain of kill points, two at a time; fail listing every chain that broke."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda kills: crash_and_resume(scenario, kills, workdir), chains))
    failures = {
        " then ".join(kills): problems
        for kills, problems in zip(chains, results, strict=True)
        if problems
    }
    assert {} == failures


def test_both_paths_leave_the_same_store(scenario_of: Callable[[str, str], Scenario]) -> None:
    """Set-based and port-by-port applies of one plan end with the same facts and outcomes."""
    for mode in POLICIES:
        fast, ports = scenario_of(mode, "set-based"), scenario_of(mode, "ports")
        assert ports.facts == fast.facts, mode
        assert ports.reference["outcomes"] == fast.reference["outcomes"], mode


@pytest.mark.parametrize(
    ("mode", "path", "kind"),
    [
        pytest.param(mode, path, kind, id=f"{mode}-{path}-{kind}")
        for mode in POLICIES
        for path in PATHS
        for kind in PATH_KINDS[path]
        if not (kind == "revoke-mid" and POLICIES[mode].mode is ResetMode.REQUEST_CHANGE)
    ],
)
def test_crash_anywhere_then_apply_again_ends_as_if_uninterrupted(
    scenario_of: Callable[[str, str], Scenario], mode: str, path: str, kind: str, tmp_path: Path
) -> None:
    """After a kill at every point of this kind, a fresh apply ends as an uninterrupted one."""
    scenario = scenario_of(mode, path)
    kills = scenario.kill_points(kind)
    assert kills, f"the uninterrupted run made no {COUNTED[kind]} call"
    crash_all(scenario, [[kill] for kill in kills], tmp_path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", list(POLICIES))
def test_crashing_again_while_resuming_still_ends_as_if_uninterrupted(
    scenario_of: Callable[[str, str], Scenario], mode: str, path: str, tmp_path: Path
) -> None:
    """Several crashes in a row (each apply killed at another point) lose and repeat nothing."""
    scenario = scenario_of(mode, path)
    middle = "revoke-mid:1:kill" if scenario.force else "send-mid:1:kill"
    if path == "ports":
        chains = [
            ["commit-torn:2:kill", middle, "chunk:1:exit"],
            ["send-mid:2:exit", "commit-after:1:exit"],
            ["chunk:2:kill", "send-mid:1:exit", "commit-torn:1:kill", "release-before:1:exit"],
        ]
    else:
        chains = [
            ["chunk-torn:2:kill", middle, "chunk:1:exit"],
            ["send-mid:2:exit", "chunk-after:1:exit"],
            ["chunk:2:kill", "send-mid:1:exit", "chunk-torn:1:kill", "release-before:1:exit"],
        ]
    crash_all(scenario, chains, tmp_path)


def test_applying_again_before_the_dead_apply_lease_lapses_reports_in_progress(
    scenario_of: Callable[[str], Scenario], tmp_path: Path
) -> None:
    """Within the dead apply's lease a new apply is refused and writes nothing; later it resumes."""
    scenario = scenario_of("force-follow", "ports")
    db = tmp_path / "leased.db"
    shutil.copyfile(scenario.template, db)
    killed = run_child(db, scenario.plan_id, CRASH_AT, "commit-after:4:exit", ports=True)
    assert 1 == killed.returncode
    with opened(db) as service:
        dead = service.store.dump()  # type: ignore[attr-defined]
    refused = run_child(db, scenario.plan_id, CRASH_AT + LEASE - timedelta(seconds=1))
    assert 0 != refused.returncode
    assert "PlanInProgressError" in refused.stderr
    with opened(db) as service:
        assert dead == service.store.dump()  # type: ignore[attr-defined]
    assert scenario.reference["outcomes"] == applied(db, scenario.plan_id, RESUME_AT)["outcomes"]
