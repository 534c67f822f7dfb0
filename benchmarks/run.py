"""Benchmark bulkreset against the floor and against the usual loop (SPEC §7, issue 4).

Usage::

    python benchmarks/run.py                      # 10,000 and 100,000 members; RSS 10k/100k/1M
    python benchmarks/run.py --quick              # 10,000 members; RSS 10k/100k (about a minute)
    python benchmarks/run.py --write              # also write benchmarks/RESULTS.md
    python benchmarks/run.py --sizes 10000,100000 --rss-sizes 10000,100000,1000000
    python benchmarks/run.py --hashing            # also per-member hashing, 1 vs 2 workers
    python benchmarks/run.py --profile            # also cProfile bulkreset at the largest size

What is measured (benchmarks/README.md says more):

* **floor**: plain :mod:`sqlite3` doing the durable writes a reset needs, on
  the same schema with the same pragmas as the SQLite store. Force change:
  one Argon2 hash (argon2-cffi defaults), one credential row and one outbox
  row per target. Request change: per target a 32-byte token from
  :mod:`secrets`, its SHA-256 digest, a token row and an outbox row. One
  transaction, ``executemany``.
* **usual loop**: what most scripts do: per member ``PasswordHasher().hash``
  then one ``UPDATE``; measured on a sample and extrapolated linearly.
* **bulkreset**: ``open_service(path)``, ``service.plan(ALL, policy, ...)``,
  ``service.apply(plan, confirm=...)``.

Every measurement runs in a fresh child process (this file, run with the
hidden ``--child`` option) on a fresh copy of a database built earlier by
another child, so the peak RSS it reports is that measurement's own. Only the
standard library, argon2-cffi and bulkreset are used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import platform
import resource
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"

ACTOR = "admin"
"""The administrator who plans and applies; excluded from ``ALL`` as the actor."""
PASSWORD = "Copper-Meadow-Falcon-77"  # noqa: S105 - the benchmark's shared password
LOOP_SAMPLE = 40
"""Members the usual loop really hashes; its time is extrapolated to N."""
DEFAULT_SIZES = (10_000, 100_000)
DEFAULT_RSS_SIZES = (10_000, 100_000, 1_000_000)
FORCE, REQUEST = "force", "request"
MODE_NAMES = {FORCE: "force change", REQUEST: "request change"}

# SPEC §7 targets.
TARGET_SIZE = 100_000
FORCE_FLOOR_LIMIT = 1.5
FORCE_LOOP_SPEEDUP = 100.0
REQUEST_FLOOR_LIMIT = 2.0
RSS_SIZE = 1_000_000
RSS_LIMIT_MB = 300.0
HASHING_SPEEDUP = 1.8
HASHING_NOT_SLOWER = 1.05  # the pool may cost at most 5 % (noise) over a plain loop

HASH_PROFILES: dict[str, dict[str, int]] = {
    "single-lane (t=2, m=19456 KiB, p=1; OWASP minimum)": {
        "time_cost": 2,
        "memory_cost": 19456,
        "parallelism": 1,
    },
    "argon2-cffi default (4 lanes)": {},
}

MEMBER_COLUMNS = (
    "member_id, login_id, name, sign_in, mobile_phone, personal_email, status, role, login_key"
)

_OUTBOX_INSERT = """
INSERT INTO outbox
    (member_id, kind, token, password, expires_at, idempotency_key, recipient, actor,
     issued_at, plan_id, name, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


# ============================================================================ the children


def _status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``VmHWM``/``VmRSS`` line of ``/proc/<pid>/status``, in KiB (Linux), or ``None``."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class _Meter:
    """Peak RSS of this process during the measured phase, in MB (MiB).

    After the imports, the kernel's high-water mark is reset to the current
    RSS (``/proc/self/clear_refs``, Linux ≥ 4.0) so the peak covers only what
    follows. ``ru_maxrss`` (which cannot be reset) is reported too.
    """

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.base_kib = _status_kib("VmRSS") or 0

    def report(self) -> dict[str, Any]:
        maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm_kib = _status_kib("VmHWM") if self.reset else None
        return {
            "rss_base_mb": self.base_kib / 1024,
            "rss_peak_mb": (hwm_kib if hwm_kib is not None else maxrss_kib) / 1024,
            "ru_maxrss_mb": maxrss_kib / 1024,
        }


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _member_rows(n: int) -> Iterator[tuple[str | None, ...]]:
    """The directory: one administrator, then *n* active members with personal emails."""
    from bulkreset import fold_login

    login = "admin@corp.example"
    yield (
        ACTOR,
        login,
        "Alex Admin",
        "password",
        None,
        "alex@home.example",
        "active",
        "admin",
        fold_login(login),
    )
    for i in range(n):
        login = f"user{i:07d}@corp.example"
        yield (
            f"m{i:07d}",
            login,
            f"Member {i}",
            "password",
            None,
            f"user{i:07d}@home.example",
            "active",
            "member",
            fold_login(login),
        )


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Make a database with bulkreset's schema and *n* members (plus the administrator).

    ``open_service`` creates the schema; the members go in with one plain
    ``executemany`` in the column layout ``SqliteStorage.add_members`` uses
    (fast, and the builder's memory stays flat); reading two back through the
    store checks the layout.
    """
    from bulkreset import Member
    from bulkreset.adapters.sqlite import open_service

    path, n = spec["db"], spec["n"]
    started = time.perf_counter()
    open_service(path).store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        f"INSERT INTO members ({MEMBER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        _member_rows(n),
    )
    conn.execute("COMMIT")
    conn.close()
    service = open_service(path)
    try:
        found = service.store.get_members([ACTOR, "m0000000"])
    finally:
        service.store.close()
    expected = Member(
        "m0000000",
        "user0000000@corp.example",
        "Member 0",
        personal_email="user0000000@home.example",
    )
    if found.get("m0000000") != expected or ACTOR not in found:
        raise SystemExit("the members table layout changed: update _member_rows")
    return {"seconds": time.perf_counter() - started}


def _connect_like_the_store(path: str) -> sqlite3.Connection:
    """A connection with the pragmas ``bulkreset.adapters.sqlite`` sets."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL").fetchone()
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def child_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain sqlite3: the same durable writes as a force or a request change."""
    import argon2

    meter = _Meter()
    started = time.perf_counter()
    conn = _connect_like_the_store(spec["db"])
    now = datetime.now(timezone.utc)
    at = _iso(now)
    plan_id = f"plan-{secrets.token_hex(8)}"
    members = conn.execute(
        "SELECT member_id, login_id, name, personal_email FROM members "
        "WHERE member_id <> ? AND status = 'active'",
        (ACTOR,),
    ).fetchall()
    if spec["mode"] == FORCE:
        password_hash = argon2.PasswordHasher().hash(PASSWORD)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO plans (plan_id, body, password_hash) VALUES (?, '{}', ?)",
            (plan_id, password_hash),
        )
        conn.executemany(
            "INSERT INTO credentials (member_id, password_hash, shared_plan_id, must_change, "
            "generation, changed_at, not_before) VALUES (?, NULL, ?, 1, 1, ?, ?)",
            ((m[0], plan_id, at, at) for m in members),
        )
        conn.executemany(
            _OUTBOX_INSERT,
            (
                (
                    m[0],
                    "password_reset",
                    None,
                    None,
                    None,
                    f"{plan_id}:{m[0]}:password_reset",
                    m[3] or m[1],
                    ACTOR,
                    at,
                    plan_id,
                    m[2],
                    at,
                )
                for m in members
            ),
        )
    else:
        expires = _iso(now + timedelta(hours=24))
        tokens = [secrets.token_urlsafe(32) for _ in members]
        digests = [hashlib.sha256(t.encode()).hexdigest() for t in tokens]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO plans (plan_id, body) VALUES (?, '{}')", (plan_id,))
        conn.executemany(
            "INSERT INTO tokens (digest, member_id, plan_id, issued_at, expires_at, generation) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            ((d, m[0], plan_id, at, expires) for d, m in zip(digests, members, strict=True)),
        )
        conn.executemany(
            _OUTBOX_INSERT,
            (
                (
                    m[0],
                    "change_request",
                    t,
                    None,
                    expires,
                    f"{plan_id}:{m[0]}:change_request",
                    m[1],
                    ACTOR,
                    at,
                    plan_id,
                    m[2],
                    at,
                )
                for t, m in zip(tokens, members, strict=True)
            ),
        )
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "targets": len(members), **meter.report()}


def child_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """The usual script: hash per member with argon2-cffi's defaults, one UPDATE each."""
    import argon2

    sample = spec["sample"]
    conn = sqlite3.connect(spec["db"], timeout=30.0)
    conn.execute("PRAGMA journal_mode = WAL").fetchone()
    conn.execute("PRAGMA synchronous = NORMAL")
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT member_id FROM members WHERE member_id <> ? ORDER BY member_id LIMIT ?",
            (ACTOR, sample),
        )
    ]
    old = _iso(datetime.now(timezone.utc) - timedelta(days=90))
    conn.executemany(  # the members' current passwords, before the reset (not timed)
        "INSERT INTO credentials (member_id, password_hash, must_change, generation, changed_at) "
        "VALUES (?, 'old-hash', 0, 1, ?)",
        ((i, old) for i in ids),
    )
    conn.commit()
    meter = _Meter()
    started = time.perf_counter()
    hasher = argon2.PasswordHasher()
    for member_id in ids:
        password_hash = hasher.hash(PASSWORD)
        conn.execute(
            "UPDATE credentials SET password_hash = ?, must_change = 1, "
            "generation = generation + 1, changed_at = ? WHERE member_id = ?",
            (password_hash, _iso(datetime.now(timezone.utc)), member_id),
        )
    conn.commit()
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "sample": len(ids), **meter.report()}


def _bulkreset_run(path: str, mode: str, *, progress: bool = False) -> dict[str, Any]:
    from bulkreset import ALL, ResetMode, ResetPolicy
    from bulkreset.adapters.sqlite import open_service
    from bulkreset.cli import ProgressBar

    started = time.perf_counter()
    service = open_service(path)
    if mode == FORCE:
        policy = ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PASSWORD)
    else:
        policy = ResetPolicy(ResetMode.REQUEST_CHANGE)
    plan = service.plan(ALL, policy, actor=ACTOR)
    planned = time.perf_counter()
    calls: list[float] = []
    inside: list[float] = []  # time spent in each call of the callback
    callback = None
    if progress:  # the command's own bar, drawn into memory, timing every update
        bar = ProgressBar(io.StringIO())

        def callback(done: int, total: int) -> None:
            entered = time.perf_counter()
            calls.append(entered)
            bar(done, total)
            inside.append(time.perf_counter() - entered)

    service.apply(plan, confirm=plan.confirmation, progress=callback)
    applied = time.perf_counter()
    service.store.close()
    result: dict[str, Any] = {
        "seconds": applied - started,
        "plan_s": planned - started,
        "apply_s": applied - planned,
    }
    if progress:
        stamps = [planned, *calls]
        result["updates"] = len(calls)
        result["inside_s"] = sum(inside)
        result["max_gap_s"] = max(b - a for a, b in itertools.pairwise(stamps))
    return result


def _count_effects(path: str, mode: str) -> int:
    """Targets whose effects are in the file: the check that the work was really done."""
    conn = sqlite3.connect(path)
    try:
        table = "credentials" if mode == FORCE else "tokens"
        (effects,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        (notices,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
    finally:
        conn.close()
    return int(min(effects, notices))


def child_bulkreset(spec: dict[str, Any]) -> dict[str, Any]:
    """``plan`` + ``apply`` through ``open_service(path)`` with the default hasher."""
    import bulkreset.adapters.sqlite  # noqa: F401 - imported before measuring

    meter = _Meter()
    result = _bulkreset_run(spec["db"], spec["mode"])
    return {**result, **meter.report()}


def child_progress(spec: dict[str, Any]) -> dict[str, Any]:
    """``plan`` + ``apply`` with the command's progress bar as the callback."""
    import bulkreset.adapters.sqlite  # noqa: F401 - imported before measuring

    meter = _Meter()
    result = _bulkreset_run(spec["db"], spec["mode"], progress=True)
    return {**result, **meter.report()}


def child_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """``plan`` + ``apply`` under cProfile: where bulkreset's time goes."""
    import cProfile
    import io
    import pstats

    import bulkreset.adapters.sqlite  # noqa: F401

    profiler = cProfile.Profile()
    profiler.enable()
    result = _bulkreset_run(spec["db"], spec["mode"])
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(spec.get("top", 25))
    text = out.getvalue()
    body = text[text.find("   ncalls") :] if "   ncalls" in text else text
    for prefix in (str(REPO), sys.prefix, sys.base_prefix):
        body = body.replace(prefix + os.sep, "")
    return {**result, "profile": body.rstrip()}


def child_hashing(spec: dict[str, Any]) -> dict[str, Any]:
    """``bulkreset._hashing.hash_many`` (or a plain loop) over *count* passwords."""
    import argon2

    from bulkreset import _hashing  # type: ignore[attr-defined]

    hasher = argon2.PasswordHasher(**HASH_PROFILES[spec["profile"]])
    passwords = [secrets.token_urlsafe(16) for _ in range(spec["count"])]
    meter = _Meter()
    started = time.perf_counter()
    if spec["workers"] == 0:
        hashes = [hasher.hash(p) for p in passwords]
    else:
        hashes = list(_hashing.hash_many(passwords, hasher=hasher, workers=spec["workers"]))
    seconds = time.perf_counter() - started
    if len(hashes) != len(passwords):
        raise SystemExit(f"hash_many returned {len(hashes)} hashes for {len(passwords)}")
    first = hashes[0] if isinstance(hashes[0], str) else None
    if first is not None and not hasher.verify(first, passwords[0]):
        raise SystemExit("hash_many's first hash does not verify its password")
    return {"seconds": seconds, **meter.report()}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": child_build,
    "floor": child_floor,
    "loop": child_loop,
    "bulkreset": child_bulkreset,
    "progress": child_progress,
    "profile": child_profile,
    "hashing": child_hashing,
}


def run_child(kind: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = CHILDREN[kind](spec)
    if "db" in spec and kind in ("floor", "bulkreset"):
        result["effects"] = _count_effects(spec["db"], spec["mode"])
    print("RESULT " + json.dumps(result))
    return 0


# ============================================================================ the parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Runner:
    """Spawns the children, one measurement each, in a scratch directory."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.bases: dict[int, Path] = {}

    def spawn(
        self, kind: str, spec: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Run one child; return its result, or ``{"error": ...}`` / ``{"timeout": ...}``.

        The parent watches the child's ``VmHWM`` while it runs, so a child
        killed at the time limit still tells how much memory it had reached.
        """
        limit = timeout if timeout is not None else self.timeout
        out_path = self.workdir / "child.out"
        err_path = self.workdir / "child.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            child = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)],
                stdout=out,
                stderr=err,
                cwd=REPO,
            )
            deadline = time.monotonic() + limit
            seen_kib = 0
            while True:
                try:
                    child.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    seen_kib = max(seen_kib, _status_kib("VmHWM", child.pid) or 0)
                    if time.monotonic() > deadline:
                        child.kill()
                        child.wait()
                        return {"timeout": limit, "rss_peak_mb": seen_kib / 1024}
        stdout = out_path.read_text(encoding="utf-8", errors="replace")
        stderr = err_path.read_text(encoding="utf-8", errors="replace")
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return result
        tail = (stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return {"error": tail[:300]}

    def base(self, n: int) -> Path:
        """The database with *n* members, built once by a child and then only copied."""
        if n not in self.bases:
            path = self.workdir / f"base-{n}.db"
            result = self.spawn("build", {"db": str(path), "n": n}, timeout=max(self.timeout, 900))
            if "seconds" not in result:
                raise SystemExit(f"building the {n:,}-member database failed: {result}")
            _log(f"  built {n:,} members in {result['seconds']:.1f} s")
            self.bases[n] = path
        return self.bases[n]

    def fresh(self, n: int) -> Path:
        """A fresh copy of the *n*-member database (the copy is not timed)."""
        self.drop()
        path = self.workdir / "run.db"
        shutil.copyfile(self.base(n), path)
        return path

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            (self.workdir / f"run.db{suffix}").unlink(missing_ok=True)

    def measure(self, kind: str, n: int, **spec: Any) -> dict[str, Any]:
        path = self.fresh(n)
        result = self.spawn(kind, {"db": str(path), **spec})
        self.drop()
        if "effects" in result and result["effects"] != n:
            result = {"error": f"{result['effects']:,} of {n:,} targets written"}
        return result


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of repeated runs (peak RSS: the highest), or the first failure."""
    good = [r for r in runs if "seconds" in r]
    if len(good) < len(runs):
        return next(r for r in runs if "seconds" not in r)
    times = [r["seconds"] for r in good]
    summary: dict[str, Any] = {
        "seconds": statistics.median(times),
        "spread": (max(times) / min(times) - 1) if min(times) > 0 else 0.0,
        "runs": len(good),
        "rss_peak_mb": max(r["rss_peak_mb"] for r in good),
    }
    for key in ("plan_s", "apply_s"):
        value = _median(good, key)
        if value is not None:
            summary[key] = value
    return summary


def _describe_failure(result: dict[str, Any]) -> str:
    if "timeout" in result:
        return f"timed out after {result['timeout']:.0f} s"
    return f"failed: {result.get('error', 'unknown error')}"


def _shown(result: dict[str, Any]) -> str:
    return f"{result['seconds']:.2f} s" if "seconds" in result else _describe_failure(result)


def run_resets(runner: Runner, sizes: list[int], repeat: int) -> dict[str, Any]:
    """Floor, bulkreset and the usual loop, interleaved, each *repeat* times.

    Within one repeat the measurements run back to back (usual loop, then
    per mode floor and bulkreset), so a burst of load from elsewhere on the
    machine hits neighbours alike; the medians are reported.
    """
    raw: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    loops: list[dict[str, Any]] = []
    for n in sizes:
        runner.base(n)
        for attempt in range(repeat):
            if n == sizes[0]:
                loop = runner.measure("loop", n, sample=LOOP_SAMPLE)
                loops.append(loop)
                _log(
                    f"  usual loop, {LOOP_SAMPLE} members (run {attempt + 1}/{repeat}): "
                    f"{_shown(loop)}"
                )
            for mode in (FORCE, REQUEST):
                for kind in ("floor", "bulkreset"):
                    result = runner.measure(kind, n, mode=mode)
                    raw.setdefault((kind, mode, n), []).append(result)
                    _log(
                        f"  {kind} {MODE_NAMES[mode]} {n:,} (run {attempt + 1}/{repeat}): "
                        f"{_shown(result)}"
                    )
    loop = _summary(loops)
    if "seconds" in loop:
        loop["sample"] = loops[0]["sample"]
        loop["per_member"] = loop["seconds"] / loop["sample"]
    results: dict[str, Any] = {"floor": {}, "bulkreset": {}, "loop": loop, "raw": raw}
    for (kind, mode, n), found in raw.items():
        results[kind][(mode, n)] = _summary(found)
    return results


def run_rss(
    runner: Runner, sizes: list[int], timeout: float, earlier: dict[str, Any] | None
) -> dict[int, dict[str, Any]]:
    """Peak RSS of plan + apply (force change) through bulkreset, per size.

    A size the reset runs already measured is not run again: the same child
    measured the same thing there; its highest peak is reported.
    """
    series: dict[int, dict[str, Any]] = {}
    for n in sizes:
        done = (earlier or {}).get("raw", {}).get(("bulkreset", FORCE, n), [])
        if done and all("seconds" in r for r in done):
            result = {**max(done, key=lambda r: r["rss_peak_mb"]), "reused": True}
        else:
            runner.base(n)
            path = runner.fresh(n)
            result = runner.spawn("bulkreset", {"db": str(path), "mode": FORCE}, timeout=timeout)
            runner.drop()
            if "effects" in result and result["effects"] != n:
                result = {"error": f"{result['effects']:,} of {n:,} targets written", **result}
        shown = (
            f"{result['seconds']:.1f} s, peak RSS {result['rss_peak_mb']:.0f} MB"
            if "seconds" in result
            else _describe_failure(result)
        )
        _log(f"  RSS series {n:,}: {shown}" + (" (from the runs above)" if done else ""))
        series[n] = result
    return series


def run_progress(runner: Runner, n: int, repeat: int) -> dict[str, Any]:
    """Force change of *n* members with and without the progress bar, interleaved."""
    plain: list[dict[str, Any]] = []
    drawn: list[dict[str, Any]] = []
    runner.base(n)
    for attempt in range(repeat):
        for kind, bucket in (("bulkreset", plain), ("progress", drawn)):
            result = runner.measure(kind, n, mode=FORCE)
            bucket.append(result)
            _log(f"  {kind} (progress) {n:,} (run {attempt + 1}/{repeat}): {_shown(result)}")
    found = {"n": n, "plain": _summary(plain), "progress": _summary(drawn)}
    gaps = [r["max_gap_s"] for r in drawn if "max_gap_s" in r]
    updates = [r["updates"] for r in drawn if "updates" in r]
    found["max_gap_s"] = max(gaps) if gaps else None
    found["updates"] = max(updates) if updates else None
    shares = [r["inside_s"] / r["apply_s"] for r in drawn if "inside_s" in r and r["apply_s"]]
    found["inside_share"] = max(shares) if shares else None
    return found


def progress_table(found: dict[str, Any]) -> str:
    plain = found["plain"].get("apply_s")
    drawn = found["progress"].get("apply_s")
    lines = [
        "| members | apply without (s) | apply with the bar (s) | difference (noisy) "
        "| time inside the bar | updates | longest gap (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if plain and drawn and found["max_gap_s"] is not None and found["inside_share"] is not None:
        lines.append(
            f"| {found['n']:,} | {plain:.2f} | {drawn:.2f} | {drawn / plain - 1:+.1%} | "
            f"{found['inside_share']:.3%} of apply | {found['updates']:,} | "
            f"{found['max_gap_s']:.2f} |"
        )
    else:
        lines.append(f"| {found['n']:,} | — | — | — | — | — | — |")
    return "\n".join(lines) + "\n"


def run_profiles(runner: Runner, n: int) -> dict[str, dict[str, Any]]:
    profiles = {}
    for mode in (FORCE, REQUEST):
        _log(f"profiling bulkreset {MODE_NAMES[mode]} at {n:,} members")
        profiles[mode] = runner.measure("profile", n, mode=mode)
    return profiles


def hashing_available() -> tuple[bool, str]:
    """Whether ``bulkreset._hashing.hash_many(passwords, hasher=, workers=)`` exists."""
    import importlib.util

    if importlib.util.find_spec("bulkreset._hashing") is None:
        return False, "skipped: bulkreset._hashing does not exist yet"
    check = (
        "import inspect, bulkreset._hashing as h\n"
        "if hasattr(h, 'hash_many'):\n"
        "    s = inspect.signature(h.hash_many)\n"
        "    e = inspect.Parameter.empty\n"
        "    ps = [p.replace(annotation=e) for p in s.parameters.values()]\n"
        "    print(s.replace(parameters=ps, return_annotation=e))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False
    )
    signature = found.stdout.strip()
    if found.returncode != 0 or not signature:
        return False, "skipped: bulkreset._hashing has no hash_many yet"
    if "hasher" not in signature or "workers" not in signature:
        return False, f"skipped: hash_many{signature} takes no hasher=/workers= (update run.py)"
    return True, f"`bulkreset._hashing.hash_many{signature}`"


def run_hashing(runner: Runner, count: int, repeat: int) -> dict[str, Any]:
    """A plain loop, then ``hash_many`` with 1 and 2 workers, per parameter set, interleaved."""
    available, note = hashing_available()
    _log(f"hashing: {note}")
    if not available:
        return {"note": note}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for attempt in range(repeat):
        for profile in HASH_PROFILES:
            for workers in (0, 1, 2):
                result = runner.spawn(
                    "hashing", {"profile": profile, "workers": workers, "count": count}
                )
                runs.setdefault((profile, workers), []).append(result)
                _log(
                    f"  {profile}, {f'workers={workers}' if workers else 'plain loop'} "
                    f"(run {attempt + 1}/{repeat}): {_shown(result)}"
                )
    found: dict[str, Any] = {"note": note, "count": count, "repeat": repeat, "profiles": {}}
    for (profile, workers), results in runs.items():
        found["profiles"].setdefault(profile, {})[workers] = _summary(results)
    return found


# ============================================================================ reporting


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds:,.0f} ({seconds / 3600:.1f} h)"
    if seconds >= 100:
        return f"{seconds:,.0f}"
    return f"{seconds:.2f}" if seconds >= 1 else f"{seconds:.3f}"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.2f}×"


def reset_table(results: dict[str, Any], sizes: list[int]) -> str:
    loop = results["loop"]
    per_member = loop.get("per_member")
    header = (
        "| mode | members | measurement | time (s) | members/s | × floor "
        "| × faster than usual loop | peak RSS (MB) |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for mode in (FORCE, REQUEST):
        for n in sizes:
            floor = results["floor"].get((mode, n), {})
            floor_s = floor.get("seconds")
            loop_s = per_member * n if per_member is not None and mode == FORCE else None
            rows: list[tuple[str, dict[str, Any]]] = [("floor (plain sqlite3)", floor)]
            if mode == FORCE:
                label = f"usual loop (extrapolated from {loop.get('sample', LOOP_SAMPLE)})"
                extrapolated = {"seconds": loop_s, "rss_peak_mb": loop.get("rss_peak_mb", 0)}
                rows.append((label, extrapolated if loop_s else loop))
            rows.append(("bulkreset", results["bulkreset"].get((mode, n), {})))
            for label, row in rows:
                seconds = row.get("seconds")
                if seconds is None:
                    failure = _describe_failure(row)
                    lines.append(f"| {MODE_NAMES[mode]} | {n:,} | {label} | {failure} | | | | |")
                    continue
                spread = row.get("spread")
                runs = row.get("runs", 1)
                time_cell = _fmt_s(seconds)
                if runs > 1 and spread is not None:
                    time_cell += f" (±{spread * 50:.0f} %)"
                lines.append(
                    f"| {MODE_NAMES[mode]} | {n:,} | {label} | {time_cell} "
                    f"| {n / seconds:,.0f} "
                    f"| {_fmt_ratio(seconds / floor_s if floor_s else None)} "
                    f"| {_fmt_ratio(loop_s / seconds if loop_s else None)} "
                    f"| {row.get('rss_peak_mb', 0):.0f} |"
                )
    return header + "\n".join(lines) + "\n"


def phase_table(results: dict[str, Any], sizes: list[int]) -> str:
    lines = [
        "| mode | members | plan (s) | apply (s) | total (s) | × floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in (FORCE, REQUEST):
        for n in sizes:
            row = results["bulkreset"].get((mode, n), {})
            floor = results["floor"].get((mode, n), {}).get("seconds")
            if "seconds" not in row:
                continue
            ratio = _fmt_ratio(row["seconds"] / floor if floor else None)
            lines.append(
                f"| {MODE_NAMES[mode]} | {n:,} | {row.get('plan_s', 0):.2f} "
                f"| {row.get('apply_s', 0):.2f} | {row['seconds']:.2f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def rss_table(series: dict[int, dict[str, Any]]) -> str:
    lines = [
        "| members | plan (s) | apply (s) | peak RSS (MB) | RSS before plan (MB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, row in series.items():
        if "seconds" in row:
            mark = " ¹" if row.get("reused") else ""
            lines.append(
                f"| {n:,}{mark} | {row['plan_s']:.1f} | {row['apply_s']:.1f} "
                f"| {row['rss_peak_mb']:.0f} | {row['rss_base_mb']:.0f} |"
            )
        else:
            reached = row.get("rss_peak_mb")
            note = f" (peak seen: {reached:.0f})" if reached else ""
            lines.append(f"| {n:,} | {_describe_failure(row)}{note} | | | |")
    if any(row.get("reused") for row in series.values()):
        lines.append(
            "\n¹ Taken from the force-change runs above (the same measurement: a fresh child "
            "doing plan + apply); the run with the highest peak."
        )
    return "\n".join(lines) + "\n"


def hashing_table(found: dict[str, Any]) -> str:
    if "profiles" not in found:
        return found["note"] + "\n"
    lines = [
        f"{found['note']}: {found['count']} passwords per run, median of "
        f"{found['repeat']} run(s), each in a fresh process (a pool's start-up included).\n",
        "| parameters | plain loop (s) | workers=1 (s) | workers=2 (s) "
        "| speed-up 1→2 | workers=2 vs plain loop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for profile, rows in found["profiles"].items():
        secs = {w: r.get("seconds") for w, r in rows.items()}
        cells = [f"{secs[w]:.2f}" if secs[w] else _describe_failure(rows[w]) for w in (0, 1, 2)]
        speedup = f"{secs[1] / secs[2]:.2f}×" if secs[1] and secs[2] else "—"
        versus = f"{secs[2] / secs[0]:.2f}× the time" if secs[0] and secs[2] else "—"
        lines.append(f"| {profile} | {' | '.join(cells)} | {speedup} | {versus} |")
    return "\n".join(lines) + "\n"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(
    results: dict[str, Any] | None,
    series: dict[int, dict[str, Any]] | None,
    hashing: dict[str, Any] | None,
) -> list[tuple[str, str, str]]:
    """SPEC §7 targets: (target, measured, verdict)."""
    out: list[tuple[str, str, str]] = []
    size = f"{TARGET_SIZE:,}"

    def reset(mode: str) -> tuple[float | None, float | None]:
        if results is None:
            return None, None
        mine = results["bulkreset"].get((mode, TARGET_SIZE), {}).get("seconds")
        floor = results["floor"].get((mode, TARGET_SIZE), {}).get("seconds")
        return mine, floor

    not_run = f"not measured ({size} not in --sizes)"
    mine, floor = reset(FORCE)
    name = f"force change, {size} members: ≤ {FORCE_FLOOR_LIMIT}× the floor"
    if mine and floor:
        ratio = mine / floor
        out.append((name, f"{ratio:.2f}× ({mine:.2f} s vs {floor:.2f} s)", _verdict(ratio <= 1.5)))
    else:
        out.append((name, not_run, "—"))
    name = f"force change, {size} members: ≥ {FORCE_LOOP_SPEEDUP:.0f}× faster than the usual loop"
    per_member = results["loop"].get("per_member") if results else None
    if mine and per_member:
        speedup = per_member * TARGET_SIZE / mine
        measured = (
            f"{speedup:,.0f}× ({per_member * TARGET_SIZE:,.0f} s extrapolated vs {mine:.2f} s)"
        )
        out.append((name, measured, _verdict(speedup >= FORCE_LOOP_SPEEDUP)))
    else:
        out.append((name, not_run, "—"))
    mine, floor = reset(REQUEST)
    name = f"request change, {size} members: ≤ {REQUEST_FLOOR_LIMIT}× the floor"
    if mine and floor:
        ratio = mine / floor
        measured = f"{ratio:.2f}× ({mine:.2f} s vs {floor:.2f} s)"
        out.append((name, measured, _verdict(ratio <= REQUEST_FLOOR_LIMIT)))
    else:
        out.append((name, not_run, "—"))
    name = f"plan + apply of {RSS_SIZE:,} members: peak RSS < {RSS_LIMIT_MB:.0f} MB"
    row = (series or {}).get(RSS_SIZE)
    if row is None:
        out.append((name, f"not measured ({RSS_SIZE:,} not in --rss-sizes)", "—"))
    elif "seconds" in row:
        peak = row["rss_peak_mb"]
        out.append((name, f"{peak:.0f} MB", _verdict(peak < RSS_LIMIT_MB)))
    else:
        peak = row.get("rss_peak_mb") or 0
        verdict = "FAIL" if peak >= RSS_LIMIT_MB else "—"
        out.append((name, f"{_describe_failure(row)}; peak seen {peak:.0f} MB", verdict))
    name = f"per-member hashing, single lane: 1→2 workers ≥ {HASHING_SPEEDUP}×"
    other = "per-member hashing, default 4 lanes: the pool is not slower than a plain loop"
    profiles = (hashing or {}).get("profiles")
    if not profiles:
        why = (hashing or {}).get("note", "not measured (run with --hashing)")
        out.append((name, why, "—"))
        out.append((other, why, "—"))
    else:
        single, default = (profiles[p] for p in HASH_PROFILES)
        one, two = single[1].get("seconds"), single[2].get("seconds")
        if one and two:
            out.append((name, f"{one / two:.2f}×", _verdict(one / two >= HASHING_SPEEDUP)))
        else:
            out.append((name, "failed", "FAIL"))
        plain, two = default[0].get("seconds"), default[2].get("seconds")
        if plain and two:
            ok = two <= plain * HASHING_NOT_SLOWER
            out.append((other, f"{two / plain:.2f}× the plain loop's time", _verdict(ok)))
        else:
            out.append((other, "failed", "FAIL"))
    return out


def targets_table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| SPEC §7 target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | **{verdict}** |" for name, measured, verdict in rows]
    return "\n".join(lines) + "\n"


def machine(load_at_start: tuple[float, float, float]) -> list[str]:
    """The machine and software the numbers come from."""
    from importlib import metadata

    import argon2

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        first = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()[0]
        memory = f"{int(first.split()[1]) / 1024**2:.0f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    hasher = argon2.PasswordHasher()
    params = (
        f"Argon2{hasher.type.name.lower()}, time_cost={hasher.time_cost}, "
        f"memory_cost={hasher.memory_cost} KiB, parallelism={hasher.parallelism}, "
        f"hash_len={hasher.hash_len}, salt_len={hasher.salt_len}"
    )
    commit = "?"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],  # noqa: S607
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout.strip()
        commit = head + (" with uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    start_load = ", ".join(f"{x:.2f}" for x in load_at_start)
    end_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- CPU: {os.cpu_count()} cores, {model}; {memory} RAM; {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"SQLite {sqlite3.sqlite_version}",
        f"- argon2-cffi {metadata.version('argon2-cffi')}; default parameters: {params}",
        f"- bulkreset {metadata.version('bulkreset')} at commit {commit}",
        f"- Load average (1, 5, 15 min) at the start: {start_load}; at the end: {end_load}",
    ]


# ============================================================================ main


def _sizes(text: str) -> list[int]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark bulkreset against the floor and the usual loop (SPEC §7).",
    )
    parser.add_argument("--sizes", help="members per reset run (default 10000,100000)")
    parser.add_argument("--rss-sizes", help="members per RSS run (default 10000,100000,1000000)")
    parser.add_argument(
        "--quick", action="store_true", help="10,000 members, RSS at 10k/100k, one run each"
    )
    parser.add_argument(
        "--repeat", type=int, help="runs per floor/bulkreset measurement (median; default 3)"
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    parser.add_argument(
        "--hashing", action="store_true", help="also benchmark bulkreset._hashing.hash_many"
    )
    parser.add_argument("--hash-count", type=int, default=100, help="passwords per hashing run")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="also measure apply with the command's progress bar as its callback (cost, gaps)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile bulkreset at the largest size"
    )
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="seconds before a child is stopped"
    )
    parser.add_argument("--workdir", help="where the scratch databases go (default: a temp dir)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(*args.child)
    sizes = _sizes(args.sizes) if args.sizes else ([10_000] if args.quick else list(DEFAULT_SIZES))
    if args.rss_sizes:
        rss_sizes = _sizes(args.rss_sizes)
    else:
        rss_sizes = [n for n in DEFAULT_RSS_SIZES if not (args.quick and n >= 1_000_000)]
    repeat = args.repeat or (1 if args.quick else 3)
    command = " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    started = datetime.now(timezone.utc)
    load_at_start = os.getloadavg()
    wall = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bulkreset-bench-", dir=args.workdir))
    try:
        runner = Runner(workdir, args.timeout)
        results = run_resets(runner, sizes, repeat) if sizes else None
        series = None
        if rss_sizes:
            _log("RSS series: plan + apply, force change")
            series = run_rss(runner, rss_sizes, args.timeout, results)
        profiles = run_profiles(runner, max(sizes)) if args.profile and sizes else None
        hashing = run_hashing(runner, args.hash_count, repeat) if args.hashing else None
        progress = None
        if args.progress and sizes:
            _log("progress callback: apply with and without the command's bar")
            progress = run_progress(runner, max(sizes), repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - wall

    sections: list[str] = []
    if results is not None:
        sections += [
            "## Bulk reset: bulkreset vs the floor vs the usual loop\n",
            (
                f"Time is the median of {repeat} runs (± half the spread between the slowest "
                "and the fastest); peak RSS is the highest of them. "
                if repeat > 1
                else "One run each. "
            )
            + "The usual loop hashes "
            f"{results['loop'].get('sample', LOOP_SAMPLE)} members for real and is "
            "extrapolated linearly to N.\n",
            reset_table(results, sizes),
            "bulkreset's time split into `plan` and `apply` (open included in `plan`):\n",
            phase_table(results, sizes),
        ]
    if series is not None:
        sections += [
            "## Peak RSS of plan + apply (force change) through bulkreset\n",
            rss_table(series),
        ]
    if hashing is not None:
        sections += ["## Per-member password hashing\n", hashing_table(hashing)]
    if progress is not None:
        sections += [
            "## Progress callback (force change, the command's progress bar)\n",
            "The cost is the time spent inside the callback (the command's bar, drawn "
            "into memory), as a share of the apply's time, in the run where it was "
            "largest: the library does nothing else for progress than call it once a "
            "chunk. The difference between the median apply times with and without the "
            "bar is shown too, but timing noise of several per cent either way is usual on "
            "2 shared cores. The longest gap is the most time between two updates (the "
            "issue asks for one a second at least).\n",
            progress_table(progress),
        ]
    rows = targets(results, series, hashing)
    if progress is not None:
        plain = progress["plain"].get("apply_s")
        drawn = progress["progress"].get("apply_s")
        gap = progress["max_gap_s"]
        n = f"{progress['n']:,}"
        share = progress["inside_share"]
        if plain and drawn and gap is not None and share is not None:
            rows.append(
                (
                    f"progress callback at {n} members: costs < 2 %",
                    f"{share:.3%} of apply inside the callback "
                    f"(medians with and without it differ by {drawn / plain - 1:+.1%}: "
                    "run-to-run noise, see above)",
                    _verdict(share < 0.02),
                )
            )
            rows.append(
                (f"progress at {n} members: an update at least every second",
                 f"longest gap {gap:.2f} s", _verdict(gap <= 1.0))
            )  # fmt: skip
    sections += ["## SPEC §7 targets\n", targets_table(rows)]
    if profiles:
        sections.append(f"## Where bulkreset's time goes ({max(sizes):,} members, cProfile)\n")
        for mode, found in profiles.items():
            body = found.get("profile") or _describe_failure(found)
            sections.append(f"### {MODE_NAMES[mode]}\n\n```\n{body}\n```\n")
    report = "\n".join(sections)
    print(report)
    _log(f"done in {elapsed:.0f} s")
    if args.write:
        head = [
            "# Benchmark results\n",
            "Produced by `benchmarks/run.py` (see `benchmarks/README.md` for what each row "
            "means and how the floor is defined).\n",
            f"- Command: `{command}`",
            f"- Date: {started:%Y-%m-%d %H:%M} UTC (the run took {elapsed:.0f} s)",
            *machine(load_at_start),
            "",
        ]
        # Keep what benchmarks/postgresql.py recorded below its marker line.
        marker = "<!-- benchmarks/postgresql.py writes below this line -->"
        current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
        kept = f"\n{marker}{current.split(marker, 1)[1]}" if marker in current else ""
        RESULTS.write_text("\n".join(head) + "\n" + report + kept, encoding="utf-8")
        _log(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
