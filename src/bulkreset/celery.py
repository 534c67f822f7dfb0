"""Bulk resets on Celery: a task that applies one chunk, and a helper that fans a plan out.

Install with ``pip install 'bulkreset[celery]'`` (and a store that can split
plans, such as ``bulkreset[postgresql]``). In the module your workers load::

    from celery import Celery
    from bulkreset.adapters.sqlalchemy import open_service
    from bulkreset.celery import register_tasks

    app = Celery("myapp", broker="amqp://guest:guest@rabbit//")
    resets = register_tasks(app, lambda: open_service(DATABASE_URL))

and where the administrator confirms (a web request, a command)::

    resets.fan_out(plan, confirm=code)          # returns at once

Each task claims the first free chunk of the plan and applies it with
:meth:`bulkreset.ResetService.apply_chunk`, so it does not matter which task
a worker runs, nor how often: a task whose worker died is delivered again
(``acks_late``), and a task that finds every remaining chunk held by other
workers retries once their leases could have lapsed. The task that finishes
the last chunk finishes the plan. The guarantees are those of ``apply``:
every target reset once, every notice queued once per idempotency key.
See ``docs/howto/task-queue.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs

from ._model import ResetPlan
from ._service import ResetService
from .errors import BulkResetError, PlanInProgressError, StorageError

__all__ = ["BulkResetTasks", "register_tasks"]

DEFAULT_RETRIES = 100
"""How often a task that found no free chunk looks again (a lease apart each time)."""


@attrs.define
class BulkResetTasks:
    """The tasks :func:`register_tasks` registered, and the helper that sends them.

    Attributes:
        app: The Celery application.
        apply_chunk: The Celery task ``apply_chunk(plan_id, confirm)``: applies
            the first free chunk of the plan; returns a JSON-able dict
            (``plan_id``, ``chunk`` or ``None``, ``counts`` by outcome name,
            ``chunks_left``, ``finished``, ``worker``).
    """

    app: Any
    apply_chunk: Any
    _service: Callable[[], ResetService] = attrs.field(repr=False)

    def fan_out(
        self,
        plan: ResetPlan | str,
        *,
        confirm: str,
        chunk_size: int | None = None,
        queue: str | None = None,
    ) -> Any:
        """Split *plan* and send one ``apply_chunk`` task per chunk; return at once.

        Args:
            plan: A confirmed :class:`~bulkreset.ResetPlan`, or its ID.
            confirm: Its confirmation code (checked here, before anything is sent).
            chunk_size: Targets per chunk (see :meth:`~bulkreset.ResetService.split`).
            queue: The Celery queue to send to (default: the task's).

        Returns:
            The :class:`celery.result.GroupResult` of the tasks (its results
            need a result backend).

        Raises:
            What :meth:`~bulkreset.ResetService.split` raises; nothing is sent then.
        """
        from celery import group  # type: ignore[import-untyped]

        service = self._service()
        plan_id = plan.plan_id if isinstance(plan, ResetPlan) else plan
        count = service.split(plan_id, confirm=confirm, chunk_size=chunk_size)
        options = {"queue": queue} if queue else {}
        signature = self.apply_chunk.signature((plan_id, confirm), **options)
        return group(signature.clone() for _ in range(count)).apply_async()


def register_tasks(
    app: Any,
    service_factory: Callable[[], ResetService],
    *,
    name: str = "bulkreset.apply_chunk",
    max_retries: int = DEFAULT_RETRIES,
) -> BulkResetTasks:
    """Register bulkreset's task on a Celery *app*.

    Args:
        app: A :class:`celery.Celery` application.
        service_factory: Builds the :class:`~bulkreset.ResetService` a worker
            uses (its store must split plans: the SQLAlchemy store). Called
            once per worker process, on its first task, so each process has
            its own database connections.
        name: The task's name.
        max_retries: How often a task that finds every remaining chunk held
            by other workers looks again, one lease apart.

    Returns:
        A :class:`BulkResetTasks`.
    """
    lock = threading.Lock()
    built: list[ResetService] = []

    def service() -> ResetService:
        with lock:
            if not built:
                built.append(service_factory())
            return built[0]

    @app.task(  # type: ignore[untyped-decorator]
        bind=True,
        name=name,
        acks_late=True,  # a task whose worker dies is delivered again
        reject_on_worker_lost=True,
        max_retries=max_retries,
    )
    def apply_chunk(task: Any, plan_id: str, confirm: str) -> dict[str, Any]:
        svc = service()
        try:
            done = svc.apply_chunk(plan_id, confirm=confirm)
        except PlanInProgressError:  # the chunk went to another worker mid-way: take another
            raise task.retry(countdown=1) from None
        except Exception as exc:
            if isinstance(exc, BulkResetError) and not isinstance(exc, StorageError):
                raise  # a wrong code, an expired or unapproved plan: trying again cannot help
            # The database (or a port) failed for now: the chunk's lease lapses, and this
            # task (or any) takes it over then; without a retry, nothing would finish it.
            raise task.retry(countdown=svc._lease.total_seconds()) from None
        store: Any = svc.store
        if done is None:
            left, _ = store.chunks_left(plan_id)
            if left:  # held by workers that may be dead: look again once their lease lapsed
                raise task.retry(countdown=svc._lease.total_seconds())
            return _report(plan_id, None, {}, 0, False, task)
        counts = {outcome.value: n for outcome, n in done.counts.items() if n}
        return _report(plan_id, done.index, counts, done.chunks_left, done.result is not None, task)

    return BulkResetTasks(app=app, apply_chunk=apply_chunk, service=service)


def _report(
    plan_id: str,
    chunk: int | None,
    counts: dict[str, int],
    left: int,
    finished: bool,
    task: Any,
) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        "chunk": chunk,
        "counts": counts,
        "chunks_left": left,
        "finished": finished,
        "worker": task.request.hostname,
    }
