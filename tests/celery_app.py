"""The Celery application the worker processes of tests/test_celery.py load.

Configured from the environment the test gives each worker: the broker and
result backend URLs, the database URL and the schema of bulkreset's tables.
"""

from __future__ import annotations

import os

import argon2
import sqlalchemy as sa
from argon2.profiles import CHEAPEST
from celery import Celery

from bulkreset import ResetService
from bulkreset.adapters.sqlalchemy import open_service
from bulkreset.celery import register_tasks

app = Celery(
    "bulkreset_tests",
    broker=os.environ.get("BULKRESET_TEST_AMQP_URL", "memory://"),
    backend=os.environ.get("BULKRESET_TEST_REDIS_URL") or None,
)
app.conf.update(
    worker_prefetch_multiplier=1,  # one task at a time each, so both workers get some
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


def service() -> ResetService:
    engine = sa.create_engine(os.environ["BULKRESET_TEST_DATABASE_URL"]).execution_options(
        schema_translate_map={None: os.environ["BULKRESET_TEST_SCHEMA"]}
    )
    return open_service(engine, hasher=argon2.PasswordHasher.from_parameters(CHEAPEST))


resets = register_tasks(app, service)
