"""A worker process for tests/test_workers.py: apply chunks of a split plan, maybe dying.

Usage::

    python tests/worker_child.py URL SCHEMA PLAN_ID CODE LEASE [--die-after-commit K]

Opens the SQLAlchemy store at *URL* (bulkreset's tables in *SCHEMA*) with cheap
Argon2 and a lease of *LEASE* seconds, then works on *PLAN_ID* with
``ResetService.apply_chunks`` until no chunk is left. With
``--die-after-commit K`` it kills itself (``SIGKILL``) right after its K-th
``store.commit`` returns: in the middle of a chunk, its effects written but
its sessions and notices not yet recorded. Prints one JSON object at the end:
``{"chunks": [...], "finished": bool}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from datetime import timedelta
from typing import Any

import argon2
import sqlalchemy as sa
from argon2.profiles import CHEAPEST

from bulkreset.adapters.sqlalchemy import open_service


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("schema")
    parser.add_argument("plan_id")
    parser.add_argument("code")
    parser.add_argument("lease", type=float)
    parser.add_argument("--die-after-commit", type=int, default=0)
    args = parser.parse_args()
    engine = sa.create_engine(args.url).execution_options(schema_translate_map={None: args.schema})
    service = open_service(
        engine,
        hasher=argon2.PasswordHasher.from_parameters(CHEAPEST),
        lease=timedelta(seconds=args.lease),
    )
    store: Any = service.store
    if args.die_after_commit:
        real_commit = store.commit
        commits = 0

        def commit(batch: Any) -> None:
            nonlocal commits
            real_commit(batch)
            commits += 1
            if commits == args.die_after_commit:
                os.kill(os.getpid(), signal.SIGKILL)

        store.commit = commit
    chunks: list[int] = []
    real_apply_chunk = service.apply_chunk

    def apply_chunk(*a: Any, **k: Any) -> Any:
        done = real_apply_chunk(*a, **k)
        if done is not None:
            chunks.append(done.index)
        return done

    service.apply_chunk = apply_chunk  # type: ignore[method-assign]
    result = service.apply_chunks(args.plan_id, confirm=args.code, wait=0.2)
    print(json.dumps({"chunks": chunks, "finished": result is not None}))
    engine.dispose()


if __name__ == "__main__":
    main()
