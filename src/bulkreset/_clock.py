"""Time: the injected clock, and aware UTC instants everywhere."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache

from .errors import InvalidInputError

Clock = Callable[[], datetime]
"""A zero-argument callable returning an aware :class:`~datetime.datetime`."""


def system_clock() -> datetime:
    """The real time, in UTC."""
    return datetime.now(timezone.utc)


def to_utc(value: datetime, *, what: str = "time") -> datetime:
    """Return *value* as an aware UTC datetime.

    Raises:
        InvalidInputError: *value* is naive (has no UTC offset): its instant
            is unknown, so comparing it with an expiry would be a guess.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{what} must be timezone-aware (got a naive datetime)")
    return value.astimezone(timezone.utc)


def read_clock(clock: Clock) -> datetime:
    """Call *clock* and normalize what it returns to UTC.

    Raises:
        InvalidInputError: the clock returned a naive datetime or not a datetime.
    """
    return to_utc(clock(), what="the clock's time")


@lru_cache(maxsize=64)  # a chunk's rows share one instant: format it once
def to_iso(value: datetime) -> str:
    """Serialize an aware instant as ISO 8601 in UTC with microseconds."""
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    """Parse what :func:`to_iso` wrote."""
    return datetime.fromisoformat(text).astimezone(timezone.utc)
