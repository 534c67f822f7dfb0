"""A child process for tests/test_crash.py: apply a stored plan, maybe dying on the way.

Usage::

    python tests/crash_child.py DB PLAN_ID NOW [--kill KIND:K:HOW] [--ports]

Opens the SQLite file *DB* with cheap Argon2, a fixed clock at *NOW* (ISO 8601;
``sleep`` moves it) and ``chunk_size=3``, loads *PLAN_ID* with ``load_plan``
and applies it: chunk by chunk in SQL (the store's set-based path), or with
``--ports`` port by port. With ``--kill`` the process ends itself at one step
boundary:

``commit-before:K``  before the K-th ``store.commit``;
``commit-torn:K``    inside the K-th ``store.commit``, every statement run
                     but ``COMMIT`` not yet (a torn transaction);
``commit-after:K``   after the K-th ``store.commit`` returned;
``chunk-before:K``   before the K-th set-based ``store.apply_chunk``;
``chunk-torn:K``     inside the K-th ``store.apply_chunk``, every statement
                     run (ports called) but ``COMMIT`` not yet;
``chunk-after:K``    after the K-th ``store.apply_chunk`` returned;
``revoke-mid:K``     in the K-th ``sessions.revoke``: the first half
                     (rounded up) of the members are revoked, then death;
``send-mid:K``       in the K-th ``notifier.send``: the first half (rounded
                     up) of the notices reach the outbox, then death;
``chunk:K``          in the progress callback after the K-th chunk;
``release-before:K`` / ``release-after:K``  around ``store.release_plan``.

*HOW* is ``exit`` (``os._exit(1)``) or ``kill`` (``SIGKILL``). Without
``--kill`` the apply finishes and the child prints one JSON object: the
outcomes (member ID to ``[outcome, reason, sessions_revoked, notified]``),
how many calls of each kind it made, the idempotency keys it sent and the
member IDs it asked to revoke, and the progress it found stored before applying
(member ID to ``[outcome, sessions_revoked, notified]``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import argon2
from argon2.profiles import CHEAPEST

from bulkreset import Notice
from bulkreset.adapters.sqlite import SqliteOutbox, SqliteSessions, open_service

CHUNK_SIZE = 3
KINDS = (
    "commit-before",
    "commit-torn",
    "commit-after",
    "chunk-before",
    "chunk-torn",
    "chunk-after",
    "revoke-mid",
    "send-mid",
    "chunk",
    "release-before",
    "release-after",
)
COUNTED = {  # kill kind -> the call it counts
    "commit-before": "commit",
    "commit-torn": "commit",
    "commit-after": "commit",
    "chunk-before": "apply_chunk",
    "chunk-torn": "apply_chunk",
    "chunk-after": "apply_chunk",
    "revoke-mid": "revoke",
    "send-mid": "send",
    "chunk": "chunk",
    "release-before": "release",
    "release-after": "release",
}


class SteppingClock:
    """A fixed clock that moves only when the service sleeps."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def die(how: str) -> None:
    sys.stdout.flush()
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("plan_id")
    parser.add_argument("now", type=datetime.fromisoformat)
    parser.add_argument("--kill", default=None, help="KIND:K:HOW")
    parser.add_argument("--ports", action="store_true", help="the port-by-port path")
    args = parser.parse_args(argv)
    kind, at, how = ("", 0, "exit")
    if args.kill:
        kind, k, how = args.kill.split(":")
        at = int(k)
        if kind not in KINDS or how not in ("exit", "kill"):
            parser.error(f"bad --kill {args.kill!r}")

    clock = SteppingClock(args.now)
    service = open_service(
        args.db,
        clock=clock,
        hasher=argon2.PasswordHasher.from_parameters(CHEAPEST),
        chunk_size=CHUNK_SIZE,
        sleep=clock.sleep,
    )
    calls: Counter[str] = Counter()
    sent_keys: list[str] = []
    revoked: list[str] = []

    def step(name: str) -> int:
        calls[name] += 1
        return calls[name] if COUNTED.get(kind) == name else 0

    store: Any = service.store
    store.set_based = not args.ports
    real_commit: Callable[..., None] = store.commit
    real_chunk: Callable[..., Any] = store.apply_chunk
    real_release: Callable[..., None] = store.release_plan
    # The ports are wrapped on their classes: a wrapper on the instance would
    # send every chunk port by port (the store applies in SQL only its own,
    # unwrapped outbox and sessions), and the set-based path must be crashed too.
    real_revoke = SqliteSessions.revoke
    real_send = SqliteOutbox.send
    conn = store._db.conn  # the torn transaction needs the connection itself

    def commit(batch: Any) -> None:
        n = step("commit")
        if n == at and kind == "commit-before":
            die(how)
        if n == at and kind == "commit-torn":
            conn.set_trace_callback(
                lambda sql: die(how) if sql.strip().upper() == "COMMIT" else None
            )
        real_commit(batch)
        if n == at and kind == "commit-after":
            die(how)

    def apply_chunk(request: Any) -> Any:
        n = step("apply_chunk")
        if n == at and kind == "chunk-before":
            die(how)
        if n == at and kind == "chunk-torn":
            conn.set_trace_callback(
                lambda sql: die(how) if sql.strip().upper() == "COMMIT" else None
            )
        try:
            tally = real_chunk(request)
        except Exception:
            calls["chunk_error"] += 1  # the apply falls back; the tests want to know
            raise
        if n == at and kind == "chunk-after":
            die(how)
        return tally

    def release_plan(*a: Any, **kw: Any) -> None:
        n = step("release")
        if n == at and kind == "release-before":
            die(how)
        real_release(*a, **kw)
        if n == at and kind == "release-after":
            die(how)

    def revoke(self: SqliteSessions, member_ids: Sequence[str], issued_before: datetime) -> None:
        n = step("revoke")
        if n == at and kind == "revoke-mid":
            half = list(member_ids)[: (len(member_ids) + 1) // 2]
            real_revoke(self, half, issued_before)
            die(how)
        revoked.extend(member_ids)
        real_revoke(self, member_ids, issued_before)

    def send(self: SqliteOutbox, notices: Sequence[Notice]) -> None:
        n = step("send")
        if n == at and kind == "send-mid":
            real_send(self, list(notices)[: (len(notices) + 1) // 2])
            die(how)
        sent_keys.extend(x.idempotency_key for x in notices)
        real_send(self, notices)

    def progress(done: int, total: int) -> None:
        if step("chunk") == at and kind == "chunk":
            die(how)

    store.commit = commit
    store.apply_chunk = apply_chunk
    store.release_plan = release_plan
    SqliteSessions.revoke = revoke  # type: ignore[method-assign]
    SqliteOutbox.send = send  # type: ignore[method-assign]

    plan = service.load_plan(args.plan_id)
    before = store.get_progress(plan.plan_id)
    result = service.apply(plan, confirm=plan.confirmation, progress=progress)
    store.close()
    if kind:  # the kill point was never reached
        print(f"kill point {args.kill} not reached", file=sys.stderr)
        return 3
    json.dump(
        {
            "outcomes": {
                o.member_id: [o.outcome.value, o.reason, o.sessions_revoked, o.notified]
                for o in result
            },
            "before": {
                o.member_id: [o.outcome.value, o.sessions_revoked, o.notified]
                for o in before.values()
            },
            "calls": dict(calls),
            "sent_keys": sent_keys,
            "revoked": revoked,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
