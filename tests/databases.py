"""Real databases for the SQLAlchemy store's tests: SQLite files, PostgreSQL, MariaDB.

The servers come from environment variables (``.ci/run`` sets them)::

    BULKRESET_TEST_POSTGRESQL_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test
    BULKRESET_TEST_MARIADB_URL=mysql+pymysql://root@127.0.0.1:3306/test

Without one, its tests skip with the reason; in CI (``CI=true``) they fail
instead, so they never skip there. Each test session works in a schema of
its own (PostgreSQL) or a database of its own (MariaDB), named after the
process, so two runs on one server never meet; each test starts from empty
tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SQLALCHEMY_STORES = {
    "sqlalchemy-sqlite": None,
    "postgresql": "BULKRESET_TEST_POSTGRESQL_URL",
    "mariadb": "BULKRESET_TEST_MARIADB_URL",
}
"""Store name → the environment variable holding its server's URL (SQLite needs none)."""


EXAMPLES = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def server_url(kind: str) -> str:
    """The URL of the *kind* server, or skip (fail in CI) saying how to set it."""
    variable = SQLALCHEMY_STORES[kind]
    assert variable is not None
    url = os.environ.get(variable)
    if url:
        return url
    message = f"{kind} tests need a server: set {variable} (for example {EXAMPLES[kind]})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " — it must be set in CI")
    pytest.skip(message)


def scratch_schema() -> str:
    return f"bulkreset_test_{os.getpid()}"


def open_server(kind: str) -> tuple[Any, str]:
    """An engine on a fresh scratch schema of the *kind* server, and that schema's name."""
    import sqlalchemy as sa

    from bulkreset.adapters.sqlalchemy import metadata

    url = server_url(kind)
    schema = scratch_schema()
    root = sa.create_engine(url)
    try:
        with root.begin() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {schema}")
                conn.exec_driver_sql(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as exc:
        root.dispose()
        message = (
            f"{kind} server at {sa.make_url(url).render_as_string()} is not reachable: {exc.orig}"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    engine = root.execution_options(schema_translate_map={None: schema})
    metadata.create_all(engine)
    return engine, schema


def drop_server_schema(kind: str, engine: Any, schema: str) -> None:
    with engine.begin() as conn:
        if kind == "postgresql":
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        else:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {schema}")
    engine.dispose()


@pytest.fixture(scope="session")
def database_server(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Engines on the servers opened so far this session (opened on first use)."""
    opened: dict[str, Any] = {}
    yield opened
    for kind, (engine, schema) in opened.items():
        drop_server_schema(kind, engine, schema)


def empty_tables(engine: Any) -> None:
    from bulkreset.adapters.sqlalchemy import metadata

    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def database_engine(
    request: pytest.FixtureRequest, tmp_path: Path, database_server: dict[str, Any]
) -> Iterator[Any]:
    """An engine on empty bulkreset tables of the store the test is parametrized with."""
    import sqlalchemy as sa

    from bulkreset.adapters.sqlalchemy import metadata

    # the store the test is parametrized with, whatever its fixture is called
    kind = next(v for v in request.node.callspec.params.values() if v in SQLALCHEMY_STORES)
    if kind == "sqlalchemy-sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'sqlalchemy.db'}")
        metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    if kind not in database_server:
        database_server[kind] = open_server(kind)
    engine = database_server[kind][0]
    empty_tables(engine)
    yield engine
