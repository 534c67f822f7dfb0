"""PostgreSQL benchmarks: the SQLAlchemy store against the floor there, and 1, 2 and 4 workers.

Usage (from the repository root, with ``pip install -e '.[postgresql]'``)::

    python benchmarks/postgresql.py                 # 100,000 members, 3 runs each
    python benchmarks/postgresql.py --members 20000 --repeat 1
    python benchmarks/postgresql.py --write         # also record in benchmarks/RESULTS.md

The server is ``$BULKRESET_BENCH_POSTGRESQL_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); everything happens in
a schema of its own, ``bulkreset_bench``, dropped at the end.

For each mode (force change, request change) it measures:

* **the floor**: psycopg alone, one transaction, ``COPY`` of the same rows a
  bulk reset must leave: the plan's row and, per member, a credential
  pointing to the plan's one hash (force) or a token digest (request), and
  an outbox row. Reading the members and hashing the one password (force)
  are timed too. No progress, audit log or re-checks: the least any program
  must write;
* **bulkreset, whole**: ``plan`` then ``apply`` in this process;
* **bulkreset, N workers**: ``plan``, ``split`` into chunks of 1,000, then
  N worker processes (started beforehand, imports done) each running
  ``apply_chunks`` until the plan is finished.

Each is the median of ``--repeat`` runs; before each run every bulkreset
table but the members is emptied. Progress goes to stderr, the Markdown
report to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
MARKER = "<!-- benchmarks/postgresql.py writes below this line -->"
SCHEMA = "bulkreset_bench"
ACTOR = "admin"
PASSWORD = "Copper-Meadow-Falcon-77"  # noqa: S105 - the benchmark's shared password
CHUNK = 1000
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MODES = {"force": "force change", "request": "request change"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def engine_for(url: str) -> Any:
    import sqlalchemy as sa

    return sa.create_engine(url).execution_options(schema_translate_map={None: SCHEMA})


def build(url: str, members: int) -> None:
    """A fresh schema with bulkreset's tables and *members* members (plus the actor)."""
    import sqlalchemy as sa

    from bulkreset import Member
    from bulkreset.adapters.sqlalchemy import metadata

    root = sa.create_engine(url)
    with root.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    root.dispose()
    engine = engine_for(url)
    metadata.create_all(engine)
    rows = io.StringIO()
    people = [Member(ACTOR, "admin@corp.example", "Admin", role="admin")] + [
        Member(
            f"m{i:07d}",
            f"member{i}@corp.example",
            f"Member {i}",
            personal_email=f"member{i}@home.example",
        )
        for i in range(members)
    ]
    for m in people:
        digest = hashlib.sha256(m.login_key.encode()).hexdigest()
        fields = (
            m.member_id,
            m.login_id,
            m.login_key,
            digest,
            m.name,
            m.sign_in.value,
            r"\N",
            m.personal_email or r"\N",
            m.status.value,
            m.role.value,
            m.locale,
        )
        rows.write("\t".join(fields) + "\n")
    with _psycopg(url) as conn, conn.cursor() as cur:
        columns = (
            "member_id, login_id, login_key, login_digest, name, sign_in, mobile_phone, "
            "personal_email, status, role, locale"
        )
        with cur.copy(f"COPY bulkreset_members ({columns}) FROM STDIN") as copy:
            copy.write(rows.getvalue())
        conn.commit()
    engine.dispose()


def _psycopg(url: str) -> Any:
    import psycopg
    import sqlalchemy as sa

    parsed = sa.make_url(url).set(drivername="postgresql")
    dsn = parsed.render_as_string(hide_password=False)
    return psycopg.connect(dsn, options=f"-c search_path={SCHEMA}")


def empty(url: str) -> None:
    """Every bulkreset table but the members, emptied."""
    from bulkreset.adapters.sqlalchemy import metadata

    names = [t.name for t in metadata.sorted_tables if t.name != "bulkreset_members"]
    with _psycopg(url) as conn:
        conn.execute(f"TRUNCATE {', '.join(names)}")
        conn.commit()


def _copy(cur: Any, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _executemany(cur: Any, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    marks = ", ".join(["%s"] * len(columns.split(",")))
    cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)  # noqa: S608


def floor(url: str, mode: str, write: Callable[..., None] = _copy) -> float:
    """The floor: the same durable rows, with psycopg's COPY (or *write*), in one transaction."""
    import argon2

    started = time.perf_counter()
    with _psycopg(url) as conn, conn.cursor() as cur:
        now = datetime.now(timezone.utc)
        plan_id = f"plan-{secrets.token_hex(8)}"
        members = cur.execute(
            "SELECT member_id, login_id, name, personal_email FROM bulkreset_members "
            "WHERE member_id <> %s AND status = 'active'",
            (ACTOR,),
        ).fetchall()
        outbox_columns = (
            "member_id, kind, token, expires_at, idempotency_key, recipient, actor, "
            "issued_at, plan_id, name, locale, created_at, attempts"
        )
        if mode == "force":
            password_hash = argon2.PasswordHasher().hash(PASSWORD)
            cur.execute(
                "INSERT INTO bulkreset_plans (plan_id, body, password_hash) VALUES (%s, '{}', %s)",
                (plan_id, password_hash),
            )
            write(
                cur,
                "bulkreset_credentials",
                "member_id, shared_plan_id, must_change, generation, changed_at, not_before",
                [(m[0], plan_id, True, 1, now, now) for m in members],
            )
            write(
                cur,
                "bulkreset_outbox",
                outbox_columns,
                [
                    (
                        m[0],
                        "password_reset",
                        None,
                        None,
                        f"{plan_id}:{m[0]}:password_reset",
                        m[3],
                        ACTOR,
                        now,
                        plan_id,
                        m[2],
                        "en",
                        now,
                        0,
                    )
                    for m in members
                ],
            )
        else:
            expires = now + timedelta(hours=24)
            tokens = [secrets.token_urlsafe(32) for _ in members]
            cur.execute("INSERT INTO bulkreset_plans (plan_id, body) VALUES (%s, '{}')", (plan_id,))
            write(
                cur,
                "bulkreset_tokens",
                "digest, member_id, plan_id, issued_at, expires_at, generation",
                [
                    (hashlib.sha256(t.encode()).hexdigest(), m[0], plan_id, now, expires, 0)
                    for t, m in zip(tokens, members, strict=True)
                ],
            )
            write(
                cur,
                "bulkreset_outbox",
                outbox_columns,
                [
                    (
                        m[0],
                        "change_request",
                        t,
                        expires,
                        f"{plan_id}:{m[0]}:change_request",
                        m[1],
                        ACTOR,
                        now,
                        plan_id,
                        m[2],
                        "en",
                        now,
                        0,
                    )
                    for t, m in zip(tokens, members, strict=True)
                ],
            )
        conn.commit()
    return time.perf_counter() - started


def _policy(mode: str) -> Any:
    from bulkreset import ResetMode, ResetPolicy

    if mode == "force":
        return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PASSWORD)
    return ResetPolicy(ResetMode.REQUEST_CHANGE)


def whole(url: str, mode: str) -> float:
    """bulkreset in one process: plan, then apply."""
    from bulkreset import ALL
    from bulkreset.adapters.sqlalchemy import open_service

    engine = engine_for(url)
    service = open_service(engine)
    started = time.perf_counter()
    plan = service.plan(ALL, _policy(mode), actor=ACTOR)
    result = service.apply(plan, confirm=plan.confirmation)
    seconds = time.perf_counter() - started
    assert not result.unfinished, "the apply left members unfinished"
    engine.dispose()
    return seconds


def workers(url: str, mode: str, count: int) -> float:
    """bulkreset with *count* worker processes: plan, split, and the workers' apply_chunks."""
    from bulkreset import ALL
    from bulkreset.adapters.sqlalchemy import open_service

    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in processes:  # each says "ready" once its imports and engine are done
        assert process.stdout is not None
        assert "ready" == process.stdout.readline().strip()
    engine = engine_for(url)
    service = open_service(engine)
    started = time.perf_counter()
    plan = service.plan(ALL, _policy(mode), actor=ACTOR)
    service.split(plan, confirm=plan.confirmation, chunk_size=CHUNK)
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{plan.plan_id} {plan.confirmation}\n")
        process.stdin.flush()
    for process in processes:
        process.wait(timeout=1800)
        assert 0 == process.returncode
    seconds = time.perf_counter() - started
    record = service.store.load_plan(plan.plan_id)
    assert record is not None
    assert record.finished_at is not None, "the plan did not finish"
    engine.dispose()
    return seconds


def worker(url: str) -> None:
    from bulkreset.adapters.sqlalchemy import open_service

    engine = engine_for(url)
    service = open_service(engine)
    with engine.connect():
        pass  # the pool's first connection, before the clock starts
    print("ready", flush=True)
    plan_id, code = sys.stdin.readline().split()
    service.apply_chunks(plan_id, confirm=code, wait=0.1)
    engine.dispose()


def effects(url: str, mode: str) -> int:
    table = "bulkreset_credentials" if mode == "force" else "bulkreset_tokens"
    with _psycopg(url) as conn:
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        outbox = conn.execute("SELECT count(*) FROM bulkreset_outbox").fetchone()
    assert rows is not None
    assert outbox is not None
    return min(int(rows[0]), int(outbox[0]))


def measure(
    url: str, members: int, repeat: int, name: str, run: Callable[[], float], mode: str
) -> dict[str, float]:
    times = []
    for attempt in range(repeat):
        empty(url)
        seconds = run()
        done = effects(url, mode)
        assert members == done, f"{name}: {done} of {members} members have their effects"
        times.append(seconds)
        _log(f"  {MODES[mode]}, {name}, run {attempt + 1}: {seconds:.2f} s")
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def report(
    url: str,
    members: int,
    repeat: int,
    found: dict[str, dict[str, dict[str, float]]],
    elapsed: float,
    command: str,
) -> str:
    import sqlalchemy as sa

    server = sa.create_engine(url)
    with server.connect() as conn:
        version = conn.exec_driver_sql("SHOW server_version").scalar_one()
    server.dispose()
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            cwd=HERE,
        ).stdout.strip()
        or "?"
    )
    cores = os.cpu_count()
    lines = [
        f"## PostgreSQL: the SQLAlchemy store, whole and with workers ({members:,} members)\n",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC (the run took {elapsed:.0f} s)",
        f"- Machine: {cores} cores; PostgreSQL {version} on the same machine (127.0.0.1), "
        f"psycopg 3, SQLAlchemy {sa.__version__}; bulkreset at commit {commit}",
        f"- Time is the median of {repeat} run(s) (± half the spread); the floor is psycopg's "
        "`COPY` of the same rows in one transaction (see the script's docstring).",
        "",
        "| mode | measurement | time (s) | members/s | × floor | × whole |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode, rows in found.items():
        floor_time = rows["floor"]["median"]
        whole_time = rows["whole"]["median"]
        for name, row in rows.items():
            spread = (row["max"] - row["min"]) / 2 / row["median"] * 100
            label = {
                "floor": "floor (psycopg COPY)",
                "executemany": "the same rows with psycopg `executemany`",
                "whole": "bulkreset, one process (`apply`)",
            }.get(name, f"bulkreset, {name} (`apply_chunks`)")
            lines.append(
                f"| {MODES[mode]} | {label} | {row['median']:.2f} (±{spread:.0f} %) | "
                f"{members / row['median']:,.0f} | {row['median'] / floor_time:.2f}× | "
                f"{row['median'] / whole_time:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    url = os.environ.get("BULKRESET_BENCH_POSTGRESQL_URL", DEFAULT_URL)
    counts = [int(n) for n in args.workers.split(",") if n]
    started = time.perf_counter()
    _log(f"building {args.members:,} members in schema {SCHEMA}")
    build(url, args.members)
    found: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for mode in MODES:
            rows: dict[str, dict[str, float]] = {}
            rows["floor"] = measure(
                url, args.members, args.repeat, "floor", lambda mode=mode: floor(url, mode), mode
            )
            rows["executemany"] = measure(
                url,
                args.members,
                args.repeat,
                "executemany",
                lambda mode=mode: floor(url, mode, _executemany),
                mode,
            )
            rows["whole"] = measure(
                url, args.members, args.repeat, "whole", lambda mode=mode: whole(url, mode), mode
            )
            for n in counts:
                rows[f"{n} worker(s)"] = measure(
                    url,
                    args.members,
                    args.repeat,
                    f"{n} worker(s)",
                    lambda mode=mode, n=n: workers(url, mode, n),
                    mode,
                )
            found[mode] = rows
    finally:
        import sqlalchemy as sa

        root = sa.create_engine(url)
        with root.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        root.dispose()
    command = "python benchmarks/postgresql.py " + " ".join(sys.argv[1:])
    text = report(
        url, args.members, args.repeat, found, time.perf_counter() - started, command.strip()
    )
    print(text)
    if args.write:
        current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
        kept = current.split(MARKER)[0].rstrip("\n")
        RESULTS.write_text(f"{kept}\n\n{MARKER}\n\n{text}", encoding="utf-8")
        _log(f"wrote {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
