"""Delivering an outbox table: the loop every shipped outbox shares.

Private to :mod:`bulkreset.adapters`. :class:`OutboxDelivery` holds the loop
(claim a row, hand its notice to the transport, record what happened); an
outbox over one database supplies the few row operations it needs, each one
short transaction.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from .._clock import Clock, read_clock
from .._model import Notice
from .._tokens import token_digest, token_is_live
from ..errors import DeliveryError, InvalidInputError, PermanentDeliveryError
from ..ports import Storage

__all__ = ["DELIVERY_LEASE", "DeliveryReport", "OutboxDelivery", "Transport", "outbox_status"]

DELIVERY_LEASE = timedelta(minutes=5)
"""How long a deliverer's claim on one notice lasts (the send must end within it)."""

Transport = Callable[[Notice], object]
"""Delivers one :class:`~bulkreset.Notice` (SMTP, SMS, a host's queue); raising means it failed."""


@attrs.frozen
class DeliveryReport:
    """What one ``deliver`` call did.

    Attributes:
        delivered: How many notices the transport took.
        failed: ``(idempotency_key, reason)`` per notice that failed for good
            (the transport raised :class:`~bulkreset.errors.PermanentDeliveryError`,
            for example ``"SMTP 550"``); it is never tried again.
        deferred: ``(idempotency_key, reason)`` per notice whose delivery
            failed for now (any other exception; the reason is a reply code
            or the exception's type, never its message, which could quote a
            secret); it stays pending and is retried after a backoff.
        withdrawn: How many change requests were withdrawn instead of sent,
            because their token died (superseded, used, expired, or the
            password changed): a dead link is never delivered.
        stopped: The transport said its server is unusable
            (``DeliveryError.stop_run``): the run stopped early.
    """

    delivered: int = 0
    failed: tuple[tuple[str, str], ...] = ()
    deferred: tuple[tuple[str, str], ...] = ()
    withdrawn: int = 0
    stopped: bool = False


def outbox_status(
    delivered_at: object, withdrawn_at: object, failed_at: object, attempts: int
) -> str:
    """A row's status name for ``listing()``, from its state columns."""
    if delivered_at is not None:
        return "delivered"
    if withdrawn_at is not None:
        return "withdrawn"
    if failed_at is not None:
        return "failed"
    return "deferred" if attempts else "pending"


class OutboxDelivery(ABC):
    """``deliver`` and the dead-link check, over row operations a subclass supplies.

    A row is named by an opaque ``ref`` (the outbox's sequence number).
    """

    _clock: Clock
    _store: Storage

    @abstractmethod
    def _due(self, now: datetime, limit: int | None) -> Sequence[tuple[Any, int, Notice]]:
        """Pending rows due at *now*, oldest first: ``(ref, attempts, notice)``."""

    @abstractmethod
    def _claim(self, ref: Any, now: datetime, until: datetime) -> bool:
        """Take a due row until *until* (sets its next attempt); ``False`` if gone or taken."""

    @abstractmethod
    def _mark_delivered(self, ref: Any, at: datetime) -> None:
        """Mark delivered, erase the token and password."""

    @abstractmethod
    def _fail(self, ref: Any, reason: str, at: datetime) -> None:
        """Mark failed for good (one more attempt), erase the token and password."""

    @abstractmethod
    def _defer(self, ref: Any, reason: str, retry_at: datetime) -> None:
        """Count one more attempt; due again at *retry_at*."""

    @abstractmethod
    def _release(self, ref: Any) -> None:
        """Give a claim back, counting nothing (the deliverer was interrupted)."""

    @abstractmethod
    def _withdraw(self, ref: Any, at: datetime) -> None:
        """Mark withdrawn (its token died), erase the token and password."""

    def _link_is_live(self, notice: Notice, now: datetime) -> bool:
        """True unless *notice* carries a reset token this store knows to be dead."""
        if notice.token is None:
            return True
        digest = token_digest(notice.token)
        record = self._store.find_token(digest)
        if record is None:  # issued by another store: not this one's to judge
            return True
        credential = self._store.get_credentials([record.member_id]).get(record.member_id)
        generation = credential.generation if credential else 0
        return token_is_live(record, digest=digest, generation=generation, now=now)

    def deliver(
        self,
        transport: Transport,
        *,
        limit: int | None = None,
        rate: float | None = None,
        backoff: timedelta = timedelta(minutes=1),
        max_backoff: timedelta = timedelta(hours=6),
        max_attempts: int = 30,
        only: Callable[[Notice], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DeliveryReport:
        """Hand pending notices to *transport*, oldest first, one at a time.

        Before each call the row is claimed for a few minutes, so another
        process delivering the same outbox at once skips it: no notice is
        handed over twice. After the transport returns, one transaction marks
        the notice delivered and erases its token and password; it is never
        delivered again. (A crash between the two hands it over once more
        later, with the same idempotency key and ``Message-ID``.)

        When the transport raises
        :class:`~bulkreset.errors.PermanentDeliveryError` (a 5xx reply, a
        refused recipient), the notice is marked failed, its secrets erased,
        and the others still go. Any other exception (a 4xx reply, a dropped
        connection) leaves it pending, retried no sooner than ``backoff ×
        2^(attempts - 1)`` later (at most *max_backoff*): exponential backoff;
        after *max_attempts* attempts it is marked failed instead. An error
        with ``stop_run`` set (the server is unusable) ends the run.

        Args:
            transport: Called with each :class:`~bulkreset.Notice`
                (an :class:`~bulkreset.adapters.smtp.SmtpTransport`, say).
            limit: Deliver at most this many notices (default: all due).
            rate: At most this many notices a second (default: no limit; at
                least one an hour).
            backoff: The first retry delay.
            max_backoff: The longest retry delay.
            max_attempts: Attempts before a notice that keeps failing for
                now is given up (marked failed, its secret erased).
            only: Deliver only the notices it accepts (for example
                ``SmtpTransport.accepts``: those with a mail address); the
                others stay pending for another channel.
            sleep: Waits between notices to keep to *rate* (tests pass a fake).

        Returns:
            A :class:`DeliveryReport`.

        Raises:
            InvalidInputError: *limit* is negative, *rate* not positive, or a
                backoff not positive.
            StorageError: the database failed.
        """
        if limit is not None and limit < 0:
            raise InvalidInputError("limit must not be negative")
        if rate is not None and not 1 / 3600 <= rate < float("inf"):
            raise InvalidInputError("rate must be between one notice an hour and infinity")
        if backoff <= timedelta(0) or max_backoff < backoff:
            raise InvalidInputError("backoff must be positive and at most max_backoff")
        if max_attempts < 1:
            raise InvalidInputError("max_attempts must be at least 1")
        now = read_clock(self._clock)
        interval = 1.0 / rate if rate is not None else 0.0
        last_sent: float | None = None
        delivered = withdrawn = 0
        failed: list[tuple[str, str]] = []
        deferred: list[tuple[str, str]] = []
        stopped = False
        for ref, attempts, notice in self._due(now, limit):
            if only is not None and not only(notice):
                continue
            if last_sent is not None and interval:
                wait = last_sent + interval - time.monotonic()
                if wait > 0:
                    sleep(wait)  # before the claim: the claim covers the send alone
            claimed_at = read_clock(self._clock)
            if not self._claim(ref, claimed_at, claimed_at + DELIVERY_LEASE):
                continue
            if not self._link_is_live(notice, now):
                self._withdraw(ref, read_clock(self._clock))
                withdrawn += 1
                continue
            last_sent = time.monotonic()
            try:
                transport(notice)
            except PermanentDeliveryError as exc:
                self._fail(ref, str(exc), read_clock(self._clock))
                failed.append((notice.idempotency_key, str(exc)))
                continue
            except Exception as exc:
                reason = str(exc) if isinstance(exc, DeliveryError) else type(exc).__name__
                if attempts + 1 >= max_attempts:
                    reason = f"gave up after {attempts + 1} attempts ({reason})"
                    self._fail(ref, reason, read_clock(self._clock))
                    failed.append((notice.idempotency_key, reason))
                    continue
                delay = max_backoff if attempts >= 40 else min(backoff * 2**attempts, max_backoff)
                self._defer(ref, reason, read_clock(self._clock) + delay)
                deferred.append((notice.idempotency_key, reason))
                if getattr(exc, "stop_run", False):
                    stopped = True
                    break
                continue
            except BaseException:
                self._release(ref)
                raise
            self._mark_delivered(ref, read_clock(self._clock))
            delivered += 1
        return DeliveryReport(delivered, tuple(failed), tuple(deferred), withdrawn, stopped)
